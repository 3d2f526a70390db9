//! The event contract, in one place: the broker's names ([`topology`]) and one typed,
//! versioned payload per message.
//!
//! A write stages a typed value ([`encode`]); a consumer decodes one ([`decode`]) and
//! never reads raw JSON. The body of every message is the payload's JSON object with
//! its version under `"v"`; a body without `"v"` is version 1 (messages staged before
//! versions were written down). A message whose type or version this build does not
//! know is a [`DecodeError`], which consumers answer by dead-lettering it with the
//! error as the reason: it is kept, visible (`bakery dead list`) and replayable once a
//! build that knows it runs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod topology;

use topology::{EVENTS, JOBS, job_kind, key};

/// One kind of message: where it is published and the version of its payload.
pub trait Event: Serialize + DeserializeOwned {
    /// The exchange it is published to.
    const EXCHANGE: &'static str;
    /// The payload's version; bump it when a field changes meaning or goes away.
    const VERSION: u32;
    /// The routing key (the message's `type`).
    fn routing_key(&self) -> &str;
}

/// A seat was taken (`rsvp.created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RsvpCreated {
    pub rsvp_id: i64,
    pub event_id: i64,
    pub user_id: i64,
    pub status: String,
    pub created_at: i64,
}

/// A seat was given back (`rsvp.cancelled`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RsvpCancelled {
    pub rsvp_id: i64,
    pub event_id: i64,
    pub user_id: i64,
}

/// The email service sent the mail about an RSVP event (`email.sent`), the
/// follow-up the calendar turns into `confirmation_sent_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailSent {
    /// The routing key of the event the mail was about (`rsvp.created`, ...).
    pub about: String,
    pub rsvp_id: i64,
    pub event_id: i64,
    pub user_id: i64,
    pub sent_at: i64,
}

impl EmailSent {
    /// Whether the mail confirmed a seat (rather than a cancellation).
    pub fn confirms_a_seat(&self) -> bool {
        self.about == key::RSVP_CREATED
    }
}

/// A job someone owns ended (`job.finished`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFinished {
    pub job_id: i64,
    pub kind: String,
    pub state: String,
    /// The owner; a job nobody owns (an operator's, a benchmark's) has nobody to tell.
    pub user_id: Option<i64>,
}

/// A product, its price, description, photos or reviews changed (`product.changed`):
/// its pre-rendered page is re-rendered, or dropped when `deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductChanged {
    pub product_id: i64,
    #[serde(default)]
    pub deleted: bool,
}

/// An account has an address nobody verified yet (a sign-up, or a changed email):
/// the email service sends it a verification mail (`account.email_added`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailAdded {
    pub user_id: i64,
    pub email: String,
}

/// Jobs of one kind are ready to be claimed: a wake-up on `bakery.jobs` (routing key
/// = the kind). The rows carry everything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsReady {
    #[serde(skip)]
    pub kind: String,
    /// Messages staged before versions named one job as `job_id`.
    #[serde(default, skip_serializing)]
    pub job_id: Option<i64>,
    #[serde(default)]
    pub job_ids: Vec<i64>,
}

impl JobsReady {
    pub fn new(kind: &str, job_ids: Vec<i64>) -> Self {
        Self {
            kind: kind.to_string(),
            job_id: None,
            job_ids,
        }
    }

    /// Every job the message names.
    pub fn ids(&self) -> Vec<i64> {
        self.job_id
            .into_iter()
            .chain(self.job_ids.iter().copied())
            .collect()
    }
}

macro_rules! domain_event {
    ($type:ty, $key:expr, $version:expr) => {
        impl Event for $type {
            const EXCHANGE: &'static str = EVENTS;
            const VERSION: u32 = $version;
            fn routing_key(&self) -> &str {
                $key
            }
        }
    };
}

domain_event!(RsvpCreated, key::RSVP_CREATED, 1);
domain_event!(RsvpCancelled, key::RSVP_CANCELLED, 1);
domain_event!(EmailSent, key::EMAIL_SENT, 1);
domain_event!(JobFinished, key::JOB_FINISHED, 1);
domain_event!(ProductChanged, key::PRODUCT_CHANGED, 1);
domain_event!(EmailAdded, key::ACCOUNT_EMAIL_ADDED, 1);

impl Event for JobsReady {
    const EXCHANGE: &'static str = JOBS;
    const VERSION: u32 = 1;
    fn routing_key(&self) -> &str {
        &self.kind
    }
}

/// The field of a body that holds its payload's version.
const VERSION_FIELD: &str = "v";

/// A message ready for the outbox: exchange, routing key and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub exchange: &'static str,
    pub routing_key: String,
    pub body: String,
}

/// The message `event` is published as.
pub fn encode<E: Event>(event: &E) -> Encoded {
    let mut value = serde_json::to_value(event).expect("event payloads serialise");
    if let Some(fields) = value.as_object_mut() {
        fields.insert(VERSION_FIELD.into(), E::VERSION.into());
    }
    Encoded {
        exchange: E::EXCHANGE,
        routing_key: event.routing_key().to_string(),
        body: value.to_string(),
    }
}

/// A message as its consumer reads it (serialised as its payload alone).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Incoming {
    RsvpCreated(RsvpCreated),
    RsvpCancelled(RsvpCancelled),
    EmailSent(EmailSent),
    JobFinished(JobFinished),
    ProductChanged(ProductChanged),
    EmailAdded(EmailAdded),
    JobsReady(JobsReady),
}

impl Incoming {
    /// The user the event is about, for the events that become their notifications.
    pub fn notified_user(&self) -> Option<i64> {
        match self {
            Self::RsvpCreated(e) => Some(e.user_id),
            Self::RsvpCancelled(e) => Some(e.user_id),
            Self::EmailSent(e) => Some(e.user_id),
            Self::JobFinished(e) => e.user_id,
            Self::ProductChanged(_) | Self::EmailAdded(_) | Self::JobsReady(_) => None,
        }
    }

    /// The payload as a user sees it in a notification (no version field).
    pub fn payload_json(&self) -> String {
        serde_json::to_string(self).expect("event payloads serialise")
    }
}

/// Why a message could not be read. Its `Display` is the dead letter's reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown message type {kind:?}: no consumer of this build knows it")]
    UnknownType { kind: String },
    #[error("unknown version {version} of {kind:?}: this build reads version {known}")]
    UnknownVersion {
        kind: String,
        version: u64,
        known: u32,
    },
    #[error("malformed {kind:?}: {reason}")]
    Malformed { kind: String, reason: String },
}

/// Reads a message of type `kind` (its routing key) with JSON `body`.
pub fn decode(kind: &str, body: &str) -> Result<Incoming, DecodeError> {
    match kind {
        key::RSVP_CREATED => payload(kind, body).map(Incoming::RsvpCreated),
        key::RSVP_CANCELLED => payload(kind, body).map(Incoming::RsvpCancelled),
        key::EMAIL_SENT => payload(kind, body).map(Incoming::EmailSent),
        key::JOB_FINISHED => payload(kind, body).map(Incoming::JobFinished),
        key::PRODUCT_CHANGED => payload(kind, body).map(Incoming::ProductChanged),
        key::ACCOUNT_EMAIL_ADDED => payload(kind, body).map(Incoming::EmailAdded),
        _ if job_kind::ALL.contains(&kind) => payload::<JobsReady>(kind, body).map(|mut ready| {
            ready.kind = kind.to_string();
            Incoming::JobsReady(ready)
        }),
        _ => Err(DecodeError::UnknownType {
            kind: kind.to_string(),
        }),
    }
}

fn payload<E: Event>(kind: &str, body: &str) -> Result<E, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        kind: kind.to_string(),
        reason,
    };
    let mut value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| malformed(e.to_string()))?;
    let fields = value
        .as_object_mut()
        .ok_or_else(|| malformed("the body is not a JSON object".into()))?;
    let version = match fields.remove(VERSION_FIELD) {
        None => 1,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| malformed(format!("its version is not a number: {v}")))?,
    };
    if version != u64::from(E::VERSION) {
        return Err(DecodeError::UnknownVersion {
            kind: kind.to_string(),
            version,
            known: E::VERSION,
        });
    }
    serde_json::from_value(value).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_to_the_same_value() {
        let created = RsvpCreated {
            rsvp_id: 7,
            event_id: 3,
            user_id: 12,
            status: "confirmed".into(),
            created_at: 1_700_000_000_000,
        };
        let encoded = encode(&created);
        assert_eq!(encoded.exchange, EVENTS);
        assert_eq!(encoded.routing_key, key::RSVP_CREATED);
        assert!(encoded.body.contains(r#""v":1"#), "{}", encoded.body);
        assert_eq!(
            decode(&encoded.routing_key, &encoded.body),
            Ok(Incoming::RsvpCreated(created))
        );
        let jobs = encode(&JobsReady::new(job_kind::IMAGE, vec![1, 2]));
        assert_eq!((jobs.exchange, jobs.routing_key.as_str()), (JOBS, "image"));
        assert_eq!(
            decode(&jobs.routing_key, &jobs.body),
            Ok(Incoming::JobsReady(JobsReady::new(
                job_kind::IMAGE,
                vec![1, 2]
            )))
        );
    }

    #[test]
    fn bodies_without_a_version_are_version_one() {
        let old = r#"{"product_id": 4, "deleted": false}"#;
        assert_eq!(
            decode(key::PRODUCT_CHANGED, old),
            Ok(Incoming::ProductChanged(ProductChanged {
                product_id: 4,
                deleted: false
            }))
        );
        let single = decode(job_kind::NOOP, r#"{"job_id": 9}"#);
        let Ok(Incoming::JobsReady(ready)) = single else {
            panic!("{single:?}")
        };
        assert_eq!(ready.ids(), [9]);
    }

    #[test]
    fn unknown_types_versions_and_shapes_say_so() {
        assert!(matches!(
            decode("rsvp.teleported", "{}"),
            Err(DecodeError::UnknownType { .. })
        ));
        let future = decode(key::RSVP_CANCELLED, r#"{"v": 2, "rsvp_id": 1}"#);
        assert_eq!(
            future,
            Err(DecodeError::UnknownVersion {
                kind: key::RSVP_CANCELLED.into(),
                version: 2,
                known: 1
            })
        );
        let reason = future.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(reason.contains("unknown version 2"), "{reason}");
        assert!(matches!(
            decode(key::RSVP_CANCELLED, r#"{"rsvp_id": "one"}"#),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode(key::EMAIL_SENT, "[1]"),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_notification_payload_carries_no_version() {
        let finished = Incoming::JobFinished(JobFinished {
            job_id: 1,
            kind: job_kind::IMAGE.into(),
            state: "succeeded".into(),
            user_id: Some(5),
        });
        assert_eq!(finished.notified_user(), Some(5));
        assert!(!finished.payload_json().contains("\"v\""));
    }
}
