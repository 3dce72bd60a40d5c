//! The health guard: watches QEMU's exit and kernel panics so that any
//! operation on the guest fails at once when the guest is gone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::console::{Console, Stderr};
use super::error::wrap_kind;
use super::{ExitInfo, VmFailure};

/// Watches for the guest's end: QEMU's exit and kernel panics.
#[derive(Clone)]
pub(super) struct Health {
    pub(super) console: Console,
    pub(super) stderr: Stderr,
    pub(super) exit: watch::Receiver<Option<ExitInfo>>,
    pub(super) started: Instant,
    pub(super) run_dir: PathBuf,
}

impl Health {
    pub(super) fn gone_now(&self) -> bool {
        self.exit.borrow().is_some() || self.console.lock().panic_line.is_some()
    }

    /// Resolves when the guest is gone; never otherwise.
    async fn gone(&self) -> VmFailure {
        let mut con = self.console.watch();
        let mut exit = self.exit.clone();
        let (mut con_open, mut exit_open) = (true, true);
        loop {
            if self.gone_now() {
                return self.describe().await;
            }
            tokio::select! {
                r = con.changed(), if con_open => con_open = r.is_ok(),
                r = exit.changed(), if exit_open => exit_open = r.is_ok(),
                // Both closed: nothing can change any more.
                _ = std::future::pending::<()>(), if !con_open && !exit_open => {}
            }
        }
    }

    /// What happened, once the guest is gone: waits briefly for the panic
    /// text to end and for QEMU's last words.
    pub(super) async fn describe(&self) -> VmFailure {
        let mut con = self.console.watch();
        let settle = async {
            loop {
                {
                    let st = self.console.lock();
                    if st.eof || (st.panic_line.is_some() && st.panic_complete) {
                        return;
                    }
                }
                if con.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), settle).await;
        let panic = {
            let st = self.console.lock();
            st.panic_line.map(|i| st.lines[i].t)
        };
        if let (Some(after), Some(excerpt)) = (panic, self.console.panic_excerpt()) {
            return VmFailure::GuestPanic { after, excerpt };
        }
        let info = *self.exit.borrow();
        let stderr = self.stderr.text_after_close(Duration::from_secs(1)).await;
        let (status, after) = match info {
            Some(i) => (i.status.to_string(), i.at.duration_since(self.started)),
            None => ("still running".into(), self.started.elapsed()),
        };
        VmFailure::QemuExited {
            status,
            after,
            stderr,
            console_tail: self.console.tail(30),
        }
    }

    /// `failure` as the error a user sees, for an operation `during`: a
    /// panic is a finding about the kernel, anything else infrastructure
    /// (the exit code each gets is `crate::outcome`'s decision).
    pub(super) fn error(&self, failure: VmFailure, during: &str) -> anyhow::Error {
        let dir = self.run_dir.display();
        let (kind, detail) = match &failure {
            VmFailure::GuestPanic { excerpt, .. } => (
                crate::error::Failure::Finding,
                format!("during {during}:\n{excerpt}\n(console: {dir}/console.log)"),
            ),
            VmFailure::QemuExited { stderr, console_tail, .. } => (
                crate::error::Failure::Infrastructure,
                format!(
                    "during {during}\n--- qemu stderr ---\n{}\n--- last console lines ---\n{console_tail}\n(artifacts: {dir})",
                    stderr.trim_end()
                ),
            ),
        };
        wrap_kind(failure, kind, detail)
    }

    /// Runs `fut`, failing at once if the guest goes away meanwhile.
    ///
    /// When `fut` fails on its own, the guest's end may be the cause and
    /// simply not observed yet (a dead QEMU resets the SSH and QMP sockets a
    /// moment before it is reaped, a panic reaches the console a moment
    /// after the connection drops), so a failure waits briefly for that and
    /// reports the guest's end instead.
    pub(super) async fn guard<T>(
        &self,
        during: &str,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let r = tokio::select! {
            r = fut => r,
            f = self.gone() => return Err(self.error(f, during)),
        };
        match r {
            Ok(v) => Ok(v),
            Err(e) => match tokio::time::timeout(Duration::from_millis(500), self.gone()).await {
                Ok(f) => Err(self.error(f, during)),
                Err(_) => Err(e),
            },
        }
    }
}
