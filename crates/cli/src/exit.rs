//! How a command fails: one exit code scheme for every command (docs/cli.md has the table),
//! so that a script can tell "not there" from "try again later" without reading messages.
use std::process::ExitCode;

use fluxcb_core::ports::StoreError;
use serde_json::{json, Value};

/// The exit codes besides 0 (success).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: the command line or the request is wrong (a bad flag or value, an answer of 400, 401,
    /// 403, 413, 422 …), or a failure no other code names.
    Error = 1,
    /// 2: what the command names does not exist (a 404; an unknown key to revoke).
    NotFound = 2,
    /// 3: it exists but is in the wrong state, or the change conflicts with another (a 409:
    /// cancel a delivered callback, retry one that has not failed; a key name taken; a data
    /// directory another fluxcb uses).
    Conflict = 3,
    /// 4: the server or a store it needs cannot be reached or is overloaded: connection
    /// failed, 5xx, 429. Trying again later may work.
    Unavailable = 4,
    /// 5: the command ran to the end and its result fails the check it exists for
    /// (`migrate compare` over its threshold, `migrate import` with skipped rows). Its report
    /// is on stdout as usual.
    CheckFailed = 5,
}

impl Exit {
    /// The name of the code in a JSON error object.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Error => "error",
            Exit::NotFound => "not_found",
            Exit::Conflict => "conflict",
            Exit::Unavailable => "unavailable",
            Exit::CheckFailed => "check_failed",
        }
    }

    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }

    /// The code an HTTP error answer from the fluxcb API maps to.
    pub fn of_http_status(status: u16) -> Self {
        match status {
            404 => Exit::NotFound,
            409 => Exit::Conflict,
            429 | 500..=599 => Exit::Unavailable,
            _ => Exit::Error,
        }
    }
}

/// A failed command: its exit code, one line for stderr and, for API errors, the answer.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The HTTP status and problem document of an API error answer.
    pub answer: Option<(u16, Value)>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            answer: None,
        }
    }

    /// The JSON error object `--output json` prints on stdout in place of the result.
    pub fn to_json(&self) -> Value {
        let mut error = json!({
            "exit_code": self.exit as u8,
            "kind": self.exit.name(),
            "message": self.message,
        });
        if let Some((status, problem)) = &self.answer {
            error["status"] = json!(status);
            error["problem"] = problem.clone();
        }
        json!({ "error": error })
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::new(Exit::Error, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::new(Exit::Error, message)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let exit = match &e {
            StoreError::Busy(_) | StoreError::Unavailable(_) => Exit::Unavailable,
            StoreError::Conflict(_) => Exit::Conflict,
            StoreError::TooLarge(_) | StoreError::Unsupported(_) | StoreError::Internal(_) => {
                Exit::Error
            }
        };
        Failure::new(exit, e.to_string())
    }
}
