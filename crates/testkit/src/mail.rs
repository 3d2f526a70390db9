//! A real SMTP server for a test (`scripts/smtp_sink.py`, aiosmtpd) on a port of its
//! own, whose answers the test controls, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TempDir;

pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/smtp_sink.py")
}

impl SmtpSink {
    /// Starts the server; fails naming aiosmtpd when it cannot (`scripts/services.sh`
    /// installs it).
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_at("127.0.0.1", port)
    }

    /// The same on a given address and port (the mail relay of several hosts).
    pub fn start_at(ip: &str, port: u16) -> Self {
        let dir = TempDir::new();
        let mut child = Command::new("python3")
            .arg(script())
            .arg(port.to_string())
            .arg(&dir.0)
            .arg(ip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP server (python3 scripts/smtp_sink.py)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the SMTP server's first line");
        assert!(
            line.starts_with("listening"),
            "the SMTP server (aiosmtpd, installed by scripts/services.sh) did not start: {line:?}"
        );
        Self { child, port, dir }
    }

    /// `BAKERY_SMTP_URL` for this server.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The mails accepted so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir.0)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.messages().len()
    }

    /// Answer 451 to the next `n` messages.
    pub fn tempfail(&self, n: u32) {
        std::fs::write(self.dir.0.join("tempfail"), n.to_string()).expect("write tempfail");
    }

    /// Answer 550 to every message while `on`.
    pub fn reject(&self, on: bool) {
        let path = self.dir.0.join("reject");
        if on {
            std::fs::write(path, "").expect("write reject");
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// What the server noted of each message it stored.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// While `on`, hold every message before answering it.
    pub fn hold(&self, on: bool) {
        let path = self.dir.0.join("hold");
        if on {
            std::fs::write(path, "").expect("write hold");
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// How many messages [`Self::hold`] is holding right now.
    pub fn held(&self) -> usize {
        std::fs::read_dir(&self.dir.0)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("held-"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The value of `header` in a raw mail.
pub fn header(mail: &str, header: &str) -> Option<String> {
    let prefix = format!("{}:", header.to_ascii_lowercase());
    mail.lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
}

/// The mails the sink got for `address`.
pub fn mails_to(sink: &SmtpSink, address: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| header(m, "To").is_some_and(|to| to.contains(address)))
        .collect()
}

/// A mail's text as a reader sees it (quoted-printable undone: soft line breaks
/// joined, `=XX` decoded).
pub fn readable(mail: &str) -> String {
    let joined = mail.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The token in a verification mail's link (`/verify-email?token=...`).
pub fn token_in(mail: &str) -> String {
    let mail = readable(mail);
    let at = mail
        .find("/verify-email?token=")
        .expect("a verification link");
    mail[at + "/verify-email?token=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}
