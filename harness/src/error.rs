//! Errors that reach the user.
//!
//! Two tiers, as in nextest: a [`Error`] is an expected failure (bad input,
//! a missing tool, a kernel that did not build, a finding) and always carries
//! a message fit for the terminal; anything else is an internal bug and is
//! reported as an infrastructure failure. Which exit code each deserves is
//! decided in [`crate::outcome`].

use std::fmt;

/// Why something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The kernel misbehaved.
    Finding,
    /// The harness could not do its job.
    Infrastructure,
}

/// An expected failure: what went wrong, said for a person, and whether it
/// is a finding about the kernel or a failure of the harness.
#[derive(Debug)]
pub struct Error {
    pub kind: Failure,
    pub message: String,
}

impl Error {
    /// A failure of the harness or its inputs (exit 2).
    pub fn infra(message: impl Into<String>) -> Error {
        Error {
            kind: Failure::Infrastructure,
            message: message.into(),
        }
    }

    /// A finding about the system under test (exit 1).
    pub fn finding(message: impl Into<String>) -> Error {
        Error {
            kind: Failure::Finding,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
