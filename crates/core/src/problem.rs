//! What an error means to whoever asked: a kind, a stable snake_case code and a
//! sentence for people. Each crate that owns an error type says what it means here
//! ([`IntoProblem`]); the process shell (`bakery-service`) turns a [`Problem`] into
//! the contract's HTTP answer. No HTTP in this module: the kinds are meanings, the
//! statuses are the shell's.

/// What kind of failure it is, to the one who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed or invalid input (400).
    Invalid,
    /// Not logged in, or credentials that do not match (401).
    Unauthenticated,
    /// Not allowed (403).
    Forbidden,
    /// Nothing there (404).
    NotFound,
    /// In conflict with the current state (409).
    Conflict,
    /// Well-formed but impossible to act on (422).
    Unprocessable,
    /// Too many attempts (429).
    RateLimited,
    /// Something needed is away or too busy; worth trying again (503).
    Unavailable,
    /// A fault of ours (500): logged with its cause, told without it.
    Internal,
}

/// An error as the one who asked is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which trying again makes sense.
    pub retry_after: Option<u64>,
    /// What went wrong underneath, for the log only: never told to the client.
    pub cause: Option<String>,
}

impl Problem {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Keeps what went wrong underneath for the log.
    pub fn because(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// A fault of ours: logged with its cause, told without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            Kind::Internal,
            "internal",
            "something went wrong on our side",
        )
        .because(cause)
    }
}

/// An error that knows what it means to the one who asked.
pub trait IntoProblem {
    fn into_problem(self) -> Problem;
}

impl IntoProblem for Problem {
    fn into_problem(self) -> Problem {
        self
    }
}

impl IntoProblem for crate::Invalid {
    fn into_problem(self) -> Problem {
        Problem::new(Kind::Invalid, self.code, self.message)
    }
}
