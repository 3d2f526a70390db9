//! The contract's names: exchanges, queues, routing keys, and which routing keys
//! reach which queue. RabbitMQ is told this at start (idempotently); the embedded
//! broker routes by the same table, so both engines deliver a message to the same
//! queues. This module is the only place these names are written out.

/// Topic exchange of domain events (`rsvp.created`, `email.sent`, ...).
pub const EVENTS: &str = "bakery.events";
/// Direct exchange of jobs: the routing key is the job kind.
pub const JOBS: &str = "bakery.jobs";
/// Where dead letters go, routed by the name of the queue they died in.
pub const DEAD: &str = "bakery.dead";

pub const EMAIL_RSVP: &str = "email.rsvp";
/// Addresses to verify, for the email service (an addition to the contract's table).
pub const EMAIL_ACCOUNTS: &str = "email.accounts";
pub const PUSH_NOTIFICATIONS: &str = "push.notifications";
pub const CALENDAR_FOLLOWUPS: &str = "calendar.followups";
pub const JOBS_IMAGE: &str = "jobs.image";
pub const JOBS_RENDER: &str = "jobs.render";
/// Jobs that do nothing: for measuring the job machinery alone (not in the contract's
/// table; an addition).
pub const JOBS_NOOP: &str = "jobs.noop";
/// `product.changed` for the workers, which re-render the product's page for the
/// edge (an addition to the contract's table).
pub const RENDER_PRODUCTS: &str = "render.products";
/// `product.changed` for the workers, which make the product's document again
/// (Path 2 of the lesson; an addition to the contract's table).
pub const DOCUMENTS_PRODUCTS: &str = "documents.products";

/// Routing keys of `bakery.events`.
pub mod key {
    pub const RSVP_CREATED: &str = "rsvp.created";
    pub const RSVP_CANCELLED: &str = "rsvp.cancelled";
    pub const EMAIL_SENT: &str = "email.sent";
    pub const JOB_FINISHED: &str = "job.finished";
    pub const PRODUCT_CHANGED: &str = "product.changed";
    pub const ACCOUNT_EMAIL_ADDED: &str = "account.email_added";
}

/// Job kinds: the routing keys of `bakery.jobs` (one queue, `jobs.<kind>`, each).
pub mod job_kind {
    /// Resize a product photo.
    pub const IMAGE: &str = "image";
    /// Pre-render a page for the edge.
    pub const RENDER: &str = "render";
    /// Does nothing: measures the job machinery alone.
    pub const NOOP: &str = "noop";
    /// Every kind a worker runs.
    pub const ALL: &[&str] = &[NOOP, IMAGE, RENDER];
}

/// Exchanges and their kinds.
pub const EXCHANGES: &[(&str, ExchangeKind)] = &[
    (EVENTS, ExchangeKind::Topic),
    (JOBS, ExchangeKind::Direct),
    (DEAD, ExchangeKind::Direct),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Topic,
    Direct,
}

/// `(exchange, binding key, queue)`: the contract's bindings.
pub const BINDINGS: &[(&str, &str, &str)] = &[
    (EVENTS, "rsvp.*", EMAIL_RSVP),
    (EVENTS, "rsvp.*", PUSH_NOTIFICATIONS),
    (EVENTS, key::JOB_FINISHED, PUSH_NOTIFICATIONS),
    (EVENTS, key::EMAIL_SENT, PUSH_NOTIFICATIONS),
    (EVENTS, key::EMAIL_SENT, CALENDAR_FOLLOWUPS),
    (EVENTS, key::PRODUCT_CHANGED, RENDER_PRODUCTS),
    (EVENTS, key::PRODUCT_CHANGED, DOCUMENTS_PRODUCTS),
    (EVENTS, key::ACCOUNT_EMAIL_ADDED, EMAIL_ACCOUNTS),
    (JOBS, job_kind::IMAGE, JOBS_IMAGE),
    (JOBS, job_kind::RENDER, JOBS_RENDER),
    (JOBS, job_kind::NOOP, JOBS_NOOP),
];

/// The queue of jobs of `kind`.
pub fn job_queue(kind: &str) -> Option<&'static str> {
    route(JOBS, kind).first().copied()
}

/// Every queue a consumer reads (each has its `dead.<queue>`).
pub const QUEUES: &[&str] = &[
    EMAIL_RSVP,
    EMAIL_ACCOUNTS,
    PUSH_NOTIFICATIONS,
    CALENDAR_FOLLOWUPS,
    JOBS_IMAGE,
    JOBS_RENDER,
    JOBS_NOOP,
    RENDER_PRODUCTS,
    DOCUMENTS_PRODUCTS,
];

/// The dead-letter queue of `queue`.
pub fn dead_queue(queue: &str) -> String {
    format!("dead.{queue}")
}

/// The queue a dead-letter queue belongs to (`dead.email.rsvp` → `email.rsvp`).
pub fn live_queue(dead: &str) -> Option<&'static str> {
    let name = dead.strip_prefix("dead.")?;
    QUEUES.iter().copied().find(|q| *q == name)
}

/// The contract's queue of that name, or `None` for a name that is not ours.
pub fn known_queue(name: &str) -> Option<&'static str> {
    QUEUES.iter().copied().find(|q| *q == name)
}

/// The queues a message published to `exchange` with `routing_key` reaches.
pub fn route(exchange: &str, routing_key: &str) -> Vec<&'static str> {
    let kind = EXCHANGES
        .iter()
        .find(|(name, _)| *name == exchange)
        .map(|(_, kind)| *kind);
    let mut queues: Vec<&'static str> = BINDINGS
        .iter()
        .filter(|(ex, _, _)| *ex == exchange)
        .filter(|(_, key, _)| match kind {
            Some(ExchangeKind::Topic) => topic_matches(key, routing_key),
            Some(ExchangeKind::Direct) => *key == routing_key,
            None => false,
        })
        .map(|(_, _, queue)| *queue)
        .collect();
    queues.dedup();
    queues
}

/// AMQP topic matching: words split by `.`, `*` is one word, `#` zero or more.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                go(&pattern[1..], key) || (!key.is_empty() && go(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => go(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => go(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rsvp_reaches_email_and_push_and_a_job_one_queue() {
        assert_eq!(
            route(EVENTS, "rsvp.created"),
            [EMAIL_RSVP, PUSH_NOTIFICATIONS]
        );
        assert_eq!(
            route(EVENTS, "email.sent"),
            [PUSH_NOTIFICATIONS, CALENDAR_FOLLOWUPS]
        );
        assert_eq!(
            route(EVENTS, "product.changed"),
            [RENDER_PRODUCTS, DOCUMENTS_PRODUCTS]
        );
        assert_eq!(route(EVENTS, "page.unknown"), Vec::<&str>::new());
        assert_eq!(route(JOBS, "image"), [JOBS_IMAGE]);
        assert_eq!(route(JOBS, "rsvp.created"), Vec::<&str>::new());
        assert_eq!(route("nope", "image"), Vec::<&str>::new());
    }

    #[test]
    fn topic_patterns_follow_amqp() {
        assert!(topic_matches("rsvp.*", "rsvp.created"));
        assert!(!topic_matches("rsvp.*", "rsvp.created.late"));
        assert!(!topic_matches("rsvp.*", "rsvp"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert_eq!(live_queue("dead.email.rsvp"), Some(EMAIL_RSVP));
        assert_eq!(live_queue("dead.nope"), None);
    }
}
