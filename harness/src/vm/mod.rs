//! vm stage: QEMU under TCG (`virt`, GICv3 ITS, SMMUv3), QMP, SSH, serial
//! console, host traces, teardown.
//!
//! [`Vm::boot`] turns a [`VmConfig`] into a running guest that is ready: the
//! init printed [`READY_MARKER`] and, when SSH is configured, a login
//! worked. The [`Vm`] handle is the only way the rest of the harness talks
//! to a guest: commands and uploads over SSH, a long-lived agent
//! [`Session`], QMP, console and trace cursors. Dropping it kills QEMU's
//! whole process group.
//!
//! Every operation also watches the guest: when QEMU exits or the kernel
//! panics, whatever is in flight fails at once with QEMU's stderr or the
//! panic text, not after its own timeout.
//!
//! The run directory keeps what a failed run needs: `qemu-cmdline.sh`
//! (runnable), `console.log`, `qemu-stderr.log`, `trace.log`, `qmp.log`,
//! and per agent session its stderr and request/response transcript.
//!
//! Errors: one enum per concern ([`BootError`], [`VmFailure`],
//! [`qmp::QmpError`], [`ssh::SshError`], [`process::CleanupError`]); at this
//! module's boundary each is wrapped in a [`crate::Error`] that says what,
//! where and how long, so `exit_code_of` sees infrastructure (exit 2) or, for
//! a guest kernel panic, a finding (exit 1). A configuration this QEMU
//! cannot run carries [`Unsupported`]: see [`skip_reason`].

pub mod console;
pub mod floor;
mod preflight;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod ssh;
pub mod trace;

mod boot;
mod error;
mod health;
mod ops;
mod save;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use boot::BootTimings;
pub use console::{ConsoleCursor, ConsoleLine, KernelReport, ReportKind, READY_MARKER};
pub use error::{skip_reason, BootError, VmFailure};
pub use ops::{PendingUnplug, Session};
pub use preflight::preflight;
pub use process::{kill_all, CleanupError, ExitInfo};
pub use qemu::{
    caps_of, probe, Bdf, Device, Incoming, Iommu, Machine, PlacedDevice, QemuCaps, SmmuStage,
    SshConfig, Unsupported, VmConfig, QEMU,
};
pub use qmp::{Qmp, QmpError};
pub use save::SaveReport;
pub use ssh::{sh_quote, ExecOutput, SshError};
pub use trace::{TraceCursor, TraceEvent, TraceKind};

use health::Health;
use process::QemuProcess;
use qemu::QemuPlan;

/// A running, ready guest. Dropping it kills QEMU.
pub struct Vm {
    // Declared first: dropped (QEMU killed) before the SSH connection, so
    // the connection's goodbye does not wait on a live guest.
    process: QemuProcess,
    health: Health,
    qmp: Qmp,
    ssh: Option<SshState>,
    plan: QemuPlan,
    trace_file: PathBuf,
    timings: BootTimings,
    ssh_port: Option<u16>,
    command_line: String,
    sessions: std::sync::atomic::AtomicU32,
    /// A shell command the guest must run before anything else it is asked
    /// ([`Vm::run_first`]); taken by the next command or session.
    first: Mutex<Option<String>>,
    /// Holds the QMP socket; removed on drop.
    _sock_dir: tempfile::TempDir,
}

struct SshState {
    target: ssh::SshTarget,
    /// The connection for `exec`/`upload`, re-made after a transport error.
    conn: Arc<Mutex<Option<ssh::Conn>>>,
}

/// A file in the run directory.
fn artifact(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name)
}
