//! Errors that reach the user, and the exit codes they map to.
//!
//! Two tiers, as in nextest: a [`Error`] is an expected failure (bad input,
//! a missing tool, a kernel that did not build, a finding) and always carries
//! a message fit for the terminal; anything else is an internal bug and is
//! reported as an infrastructure failure.

use std::fmt;

/// Process exit codes, defined in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything ran and every expectation held.
    Pass = 0,
    /// The system under test misbehaved: a snapshot mismatch, a failed
    /// expectation, a kernel WARN or BUG.
    Finding = 1,
    /// The harness could not do its job: bad input, a missing tool, a build
    /// failure, QEMU dying, a timeout.
    Infrastructure = 2,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An expected failure: what went wrong, said for a person, and which exit
/// code it deserves.
#[derive(Debug)]
pub struct Error {
    pub kind: ExitCode,
    pub message: String,
}

impl Error {
    /// A failure of the harness or its inputs (exit 2).
    pub fn infra(message: impl Into<String>) -> Error {
        Error {
            kind: ExitCode::Infrastructure,
            message: message.into(),
        }
    }

    /// A finding about the system under test (exit 1).
    pub fn finding(message: impl Into<String>) -> Error {
        Error {
            kind: ExitCode::Finding,
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

/// The exit code an `anyhow::Error` deserves: the kind of the first
/// [`Error`] in its chain, else infrastructure.
pub fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>())
        .map(|e| e.kind)
        .unwrap_or(ExitCode::Infrastructure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_follows_the_chain() {
        let e: anyhow::Error = Error::finding("snapshot mismatch").into();
        let e = e.context("scenario default-window");
        assert_eq!(exit_code_of(&e), ExitCode::Finding);
        let e = anyhow::anyhow!("io").context("boot");
        assert_eq!(exit_code_of(&e), ExitCode::Infrastructure);
        let r: anyhow::Result<()> = Err(Error::infra("no qemu")).context("deps");
        assert_eq!(exit_code_of(&r.unwrap_err()), ExitCode::Infrastructure);
    }
}
