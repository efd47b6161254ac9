//! Ordered delivery per key: callbacks of one tenant with the same `ordering_key` are delivered
//! one at a time, in the order they were accepted. A callback whose key has an unfinished
//! predecessor waits (no due time, no attempt) until the predecessor is delivered, cancelled or
//! dead-lettered; what a dead letter does to the rest of its key is [`AfterDeadLetter`].
use std::fmt;
use std::str::FromStr;

/// What happens to a key's later callbacks when one of them is dead-lettered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterDeadLetter {
    /// The next one goes: a dead letter does not hold its key up.
    #[default]
    Continue,
    /// The key waits until an operator retries the dead letter (it goes first again) or
    /// releases the key.
    Hold,
}

impl AfterDeadLetter {
    pub fn as_str(&self) -> &'static str {
        match self {
            AfterDeadLetter::Continue => "continue",
            AfterDeadLetter::Hold => "hold",
        }
    }
}

impl fmt::Display for AfterDeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AfterDeadLetter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "continue" => Ok(AfterDeadLetter::Continue),
            "hold" => Ok(AfterDeadLetter::Hold),
            other => Err(format!("`{other}`: expected continue or hold")),
        }
    }
}
