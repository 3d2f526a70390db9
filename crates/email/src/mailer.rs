//! Where mail goes: an SMTP server (lettre's async transport), or `.eml` files when
//! none is configured (named by message id, so writing one twice is a no-op).

use std::path::PathBuf;
use std::time::Duration;

use bakery_config::{Config, ConfigError};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// The sender of every mail.
const FROM: &str = "Bakery classes <classes@bakery.localhost>";
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        server: String,
    },
    Files(PathBuf),
}

/// One mail to send.
pub struct Letter<'a> {
    /// The broker message's id: the mail's `Message-ID` and its file name.
    pub message_id: &'a str,
    pub to_name: &'a str,
    pub to_address: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
}

#[derive(Debug)]
pub enum SendError {
    /// Worth trying again later: SMTP 4xx, a server away.
    Transient(String),
    /// Never going to work as it is: SMTP 5xx, an address that is not one.
    Permanent(String),
}

impl Mailer {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(match &config.email.smtp_url {
            Some(url) => Self::Smtp {
                transport: AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                    url.host.as_str(),
                )
                .port(url.port)
                .timeout(Some(SMTP_TIMEOUT))
                .build(),
                server: format!("smtp://{}:{}", url.host, url.port),
            },
            None => {
                let dir = config.data_dir.join("mail");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    ConfigError::new(
                        "BAKERY_DATA_DIR",
                        format!("cannot create {}: {e}", dir.display()),
                    )
                })?;
                Self::Files(dir)
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Smtp { server, .. } => server.clone(),
            Self::Files(dir) => format!("files in {}", dir.display()),
        }
    }

    pub async fn send(&self, letter: &Letter<'_>) -> Result<(), SendError> {
        let message = build(letter)?;
        let sent = self.deliver(letter, message).await;
        if sent.is_ok() {
            let via = match self {
                Self::Smtp { .. } => "SMTP",
                Self::Files(_) => "an .eml file",
            };
            bakery_telemetry::journey::note(
                &bakery_telemetry::correlation_id(),
                format!("mailed {} through {via}", letter.to_address),
                serde_json::json!({"message_id": letter.message_id, "to": letter.to_address, "subject": letter.subject}),
            );
        }
        sent
    }

    async fn deliver(&self, letter: &Letter<'_>, message: Message) -> Result<(), SendError> {
        match self {
            Self::Smtp { transport, .. } => match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP: {e}"))),
                Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
            },
            Self::Files(dir) => {
                let path = dir.join(format!("{}.eml", letter.message_id));
                let temp = dir.join(format!(".{}.eml.tmp", letter.message_id));
                let bytes = message.formatted();
                // Written aside then renamed: a reader never sees half a mail.
                let written = tokio::fs::write(&temp, bytes).await;
                let renamed = match written {
                    Ok(()) => tokio::fs::rename(&temp, &path).await,
                    Err(e) => Err(e),
                };
                renamed.map_err(|e| {
                    SendError::Transient(format!("cannot write {}: {e}", path.display()))
                })
            }
        }
    }
}

fn build(letter: &Letter<'_>) -> Result<Message, SendError> {
    let to = if letter.to_name.is_empty() {
        letter.to_address.to_string()
    } else {
        format!("{} <{}>", letter.to_name, letter.to_address)
    };
    let to: Mailbox = to.parse().map_err(|e| {
        SendError::Permanent(format!("not a mail address ({e}): {}", letter.to_address))
    })?;
    Message::builder()
        .message_id(Some(format!("<{}@bakery.localhost>", letter.message_id)))
        .from(FROM.parse().expect("the sender is a valid mailbox"))
        .to(to)
        .subject(letter.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(letter.body.to_string())
        .map_err(|e| SendError::Permanent(format!("cannot build the mail: {e}")))
}
