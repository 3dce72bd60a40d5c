//! The vm stage's error types and how they reach callers: [`BootError`],
//! [`VmFailure`], the wrapping into a [`crate::Error`] with its exit code,
//! and the checks callers make on a wrapped error.

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn errors_keep_their_exit_code_and_type_through_context() {
        let failure = VmFailure::QemuExited {
            status: "exit status: 1".into(),
            after: Duration::from_millis(40),
            stderr: "qemu-system-aarch64: -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:36039-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:36039-:22'".into(),
            console_tail: String::new(),
        };
        let err = wrap(failure, "during boot".into()).context("scenario x");
        assert_eq!(
            crate::outcome::exit_code_of(&err),
            crate::ExitCode::Infrastructure
        );
        assert!(is_port_clash(&err));
        let text = format!("{err:#}");
        assert!(
            text.starts_with("scenario x: qemu exited (exit status: 1)"),
            "{text}"
        );

        let panic = VmFailure::GuestPanic {
            after: Duration::from_secs(1),
            excerpt: "Kernel panic".into(),
        };
        let err =
            wrap_kind(panic, crate::error::Failure::Finding, "during x".into()).context("step 3");
        assert_eq!(crate::outcome::exit_code_of(&err), crate::ExitCode::Finding);
        assert!(matches!(
            err.downcast_ref::<VmFailure>(),
            Some(VmFailure::GuestPanic { .. })
        ));

        let ssh = SshError::Io {
            step: "read output",
            source: std::io::Error::other("transport read"),
        };
        let err = wrap(ssh, "guest command `true` over ssh".into());
        assert_eq!(
            format!("{err:#}"),
            "ssh i/o failed during read output: guest command `true` over ssh: transport read"
        );

        let skip = wrap(
            BootError::Unsupported(Unsupported {
                reason: "no edu".into(),
            }),
            "x".into(),
        )
        .context("y");
        assert_eq!(skip_reason(&skip).as_deref(), Some("no edu"));
        assert_eq!(skip_reason(&anyhow::anyhow!("other")), None);
    }
}

use std::time::Duration;

use super::{QmpError, SshError, Unsupported};
use crate::Error;

/// Why a boot did not produce a ready guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error("invalid vm config: {0}")]
    InvalidConfig(String),
    #[error("cannot start {qemu}")]
    Spawn {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no {waiting_for} within {after:?}")]
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// Saving a machine or starting from a saved one failed.
    #[error("{0}")]
    Restore(String),
}

/// The guest is gone: QEMU exited or the kernel panicked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmFailure {
    #[error("qemu exited ({status}) {after:.2?} after start")]
    QemuExited {
        status: String,
        after: Duration,
        stderr: String,
        console_tail: String,
    },
    #[error("guest kernel panicked {after:.2?} after start")]
    GuestPanic { after: Duration, excerpt: String },
}

/// The reason to skip, when `err` says this QEMU cannot run the config.
pub fn skip_reason(err: &anyhow::Error) -> Option<String> {
    match err.downcast_ref::<BootError>() {
        Some(BootError::Unsupported(u)) => Some(u.reason.clone()),
        _ => err.downcast_ref::<Unsupported>().map(|u| u.reason.clone()),
    }
}

/// The error handed to callers: the root is a [`crate::Error`] (so that
/// `exit_code_of` finds its kind) saying what failed and, after `: `, the
/// typed error's causes; the typed error sits on top, so `{:#}` reads
/// "<typed>: <what>: <causes>" and `err.downcast_ref::<SshError>()` (or
/// `BootError`, `VmFailure`, `QmpError`, ...) still works through any
/// context callers add.
pub(super) fn wrap<E: std::error::Error + Send + Sync + 'static>(
    typed: E,
    what: String,
) -> anyhow::Error {
    wrap_kind(typed, crate::error::Failure::Infrastructure, what)
}

pub(super) fn wrap_kind<E: std::error::Error + Send + Sync + 'static>(
    typed: E,
    kind: crate::error::Failure,
    what: String,
) -> anyhow::Error {
    let mut message = what;
    let mut cause = typed.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    anyhow::Error::new(Error { kind, message }).context(typed)
}

pub(super) fn is_port_clash(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<VmFailure>() {
        Some(VmFailure::QemuExited { stderr, .. }) => is_port_clash_text(stderr),
        _ => false,
    }
}

/// QEMU 10.0 says: `-netdev user,...: Could not set up host forwarding rule
/// 'tcp:127.0.0.1:36039-:22'`.
fn is_port_clash_text(stderr: &str) -> bool {
    stderr.contains("Could not set up host forwarding rule")
}
