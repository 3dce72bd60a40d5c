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
mod preflight;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod ssh;
pub mod trace;

#[cfg(test)]
mod tests;

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

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

pub use console::{ConsoleCursor, ConsoleLine, KernelReport, ReportKind, READY_MARKER};
pub use preflight::preflight;
pub use process::{kill_all, CleanupError, ExitInfo};
pub use qemu::{
    probe, Bdf, Device, Iommu, Machine, PlacedDevice, QemuCaps, SmmuStage, SshConfig, Unsupported,
    VmConfig,
};
pub use qmp::{Qmp, QmpError};
pub use ssh::{sh_quote, ExecOutput, SshError};
pub use trace::{TraceCursor, TraceEvent, TraceKind};

use crate::Error;
use console::{Console, Stderr};
use process::QemuProcess;
use qemu::{PlanError, QemuPlan, Runtime};

/// How long boot phases took, from QEMU's spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTimings {
    /// First line on the serial console (the kernel's banner).
    pub kernel_first_line: Option<Duration>,
    /// `Run /init as init process` (absent with `quiet`).
    pub init_started: Option<Duration>,
    /// The readiness marker.
    pub ready: Duration,
    /// First successful SSH login, when SSH is configured.
    pub ssh_ready: Option<Duration>,
}

impl BootTimings {
    /// QEMU start to ready (SSH included when configured).
    pub fn total(&self) -> Duration {
        self.ssh_ready.unwrap_or(self.ready)
    }
}

impl fmt::Display for BootTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.3} s", d.as_secs_f64()))
        };
        writeln!(
            f,
            "qemu start → kernel first line  {}",
            s(self.kernel_first_line)
        )?;
        writeln!(
            f,
            "qemu start → /init              {}",
            s(self.init_started)
        )?;
        writeln!(f, "qemu start → {READY_MARKER}  {}", s(Some(self.ready)))?;
        if self.ssh_ready.is_some() {
            writeln!(f, "qemu start → ssh login          {}", s(self.ssh_ready))?;
        }
        write!(
            f,
            "total                           {}",
            s(Some(self.total()))
        )
    }
}

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
    /// Holds the QMP socket; removed on drop.
    _sock_dir: tempfile::TempDir,
}

struct SshState {
    target: ssh::SshTarget,
    /// The connection for `exec`/`upload`, re-made after a transport error.
    conn: Arc<Mutex<Option<ssh::Conn>>>,
}

/// Watches for the guest's end: QEMU's exit and kernel panics.
#[derive(Clone)]
struct Health {
    console: Console,
    stderr: Stderr,
    exit: watch::Receiver<Option<ExitInfo>>,
    started: Instant,
    run_dir: PathBuf,
}

impl Health {
    fn gone_now(&self) -> bool {
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
    async fn describe(&self) -> VmFailure {
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
    fn error(&self, failure: VmFailure, during: &str) -> anyhow::Error {
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
    async fn guard<T>(
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

/// An interactive command in the guest (the agent), kept alive across
/// requests; see [`Vm::open_session`].
pub struct Session {
    inner: ssh::AgentSession,
    health: Health,
    transcript: fs::File,
    started: Instant,
}

impl Session {
    /// Sends one request line and returns the response line.
    pub async fn request_line(&mut self, line: &str, timeout: Duration) -> anyhow::Result<String> {
        self.log("->", line);
        let command = self.inner.command().to_string();
        let during = format!("request to `{command}`");
        let health = self.health.clone();
        let r = health
            .guard(&during, async {
                self.inner.request_line(line, timeout).await.map_err(|e| {
                    let msg = format!("in guest session `{command}`");
                    wrap(e, msg)
                })
            })
            .await;
        match &r {
            Ok(resp) => self.log("<-", resp),
            Err(e) => self.log("!!", &format!("{e:#}")),
        }
        r
    }

    fn log(&mut self, dir: &str, text: &str) {
        let t = self.started.elapsed();
        let _ = writeln!(
            self.transcript,
            "[{:>5}.{:06}] {dir} {text}",
            t.as_secs(),
            t.subsec_micros()
        );
    }
}

/// The error handed to callers: the root is a [`crate::Error`] (so that
/// `exit_code_of` finds its kind) saying what failed and, after `: `, the
/// typed error's causes; the typed error sits on top, so `{:#}` reads
/// "<typed>: <what>: <causes>" and `err.downcast_ref::<SshError>()` (or
/// `BootError`, `VmFailure`, `QmpError`, ...) still works through any
/// context callers add.
fn wrap<E: std::error::Error + Send + Sync + 'static>(typed: E, what: String) -> anyhow::Error {
    wrap_kind(typed, crate::error::Failure::Infrastructure, what)
}

fn wrap_kind<E: std::error::Error + Send + Sync + 'static>(
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

/// A file in the run directory.
fn artifact(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name)
}

impl Vm {
    /// Starts QEMU and returns when the guest is ready.
    pub async fn boot(cfg: VmConfig) -> anyhow::Result<Vm> {
        let qemu_path = cfg.qemu.clone();
        let caps = tokio::task::spawn_blocking(move || probe(&qemu_path))
            .await
            .context("qemu probe task")?
            .with_context(|| format!("probe {}", cfg.qemu.display()))?;
        let plan = match qemu::plan(&cfg, &caps) {
            Ok(p) => p,
            Err(PlanError::Unsupported(u)) => {
                let msg = "this qemu cannot run the vm config (skip it)".to_string();
                return Err(wrap(BootError::Unsupported(u), msg));
            }
            Err(PlanError::Invalid(m)) => {
                let msg = "invalid vm config".to_string();
                return Err(wrap(BootError::InvalidConfig(m), msg));
            }
        };
        for (what, p) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd)] {
            if !p.is_file() {
                return Err(Error::infra(format!("{what} {} does not exist", p.display())).into());
            }
        }
        if let Some(s) = &cfg.ssh {
            if !s.private_key.is_file() {
                return Err(Error::infra(format!(
                    "ssh key {} does not exist",
                    s.private_key.display()
                ))
                .into());
            }
        }
        fs::create_dir_all(&cfg.run_dir)
            .with_context(|| format!("create run dir {}", cfg.run_dir.display()))?;
        // A fresh port can be taken between our probe and QEMU's bind; QEMU
        // then fails at once and we try another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Vm::boot_once(&cfg, &plan, &caps).await {
                Err(e) if attempt < 3 && is_port_clash(&e) => continue,
                r => return r,
            }
        }
    }

    async fn boot_once(cfg: &VmConfig, plan: &QemuPlan, caps: &QemuCaps) -> anyhow::Result<Vm> {
        let run_dir = cfg.run_dir.clone();
        let sock_dir = tempfile::Builder::new()
            .prefix("msi-harness-qmp-")
            .tempdir()
            .context("create qmp socket dir")?;
        fs::set_permissions(sock_dir.path(), fs::Permissions::from_mode(0o700))?;
        let qmp_socket = sock_dir.path().join("qmp.sock");
        let trace_file = artifact(&run_dir, "trace.log");
        let ssh_port = match &cfg.ssh {
            Some(_) => Some(free_port().context("pick a local port for ssh")?),
            None => None,
        };
        let argv = plan.argv(&Runtime {
            qmp_socket: &qmp_socket,
            trace_file: &trace_file,
            ssh_port,
        })?;
        let mut full = vec![caps.path.display().to_string()];
        full.extend(argv.iter().cloned());
        let command_line = qemu::shell_quote(&full);
        // Runnable as is: it recreates the private socket dir (gone after
        // the run). The console is on stdout with signals off, so Ctrl-C
        // goes to the guest; stop QEMU with `kill` or QMP `quit`.
        fs::write(
            artifact(&run_dir, "qemu-cmdline.sh"),
            format!(
                "#!/bin/sh\n# {} as msi-harness ran it; console on stdout, Ctrl-C goes to the guest.\nmkdir -p -m 0700 {}\nexec {command_line}\n",
                caps.version_line,
                qemu::shell_quote(&[sock_dir.path().display().to_string()])
            ),
        )?;
        let _ = fs::set_permissions(
            artifact(&run_dir, "qemu-cmdline.sh"),
            fs::Permissions::from_mode(0o755),
        );

        let sp = QemuProcess::spawn(caps.path.clone().into_os_string(), argv).map_err(|e| {
            let msg = "qemu did not start".to_string();
            wrap(
                BootError::Spawn {
                    qemu: caps.path.display().to_string(),
                    source: e,
                },
                msg,
            )
        })?;
        let started = sp.started;
        let process = sp.process;
        let console = Console::spawn(sp.stdout, &artifact(&run_dir, "console.log"), started)?;
        let stderr = Stderr::spawn(sp.stderr, &artifact(&run_dir, "qemu-stderr.log"))?;
        let health = Health {
            console,
            stderr,
            exit: process.exit_watch(),
            started,
            run_dir: run_dir.clone(),
        };
        let deadline = started + cfg.boot_timeout;
        let boot_err = |e: BootError, waited: &str| -> anyhow::Error {
            let msg = format!(
                "boot, waiting for {waited} ({:.1} s after qemu start)\n--- last console lines ---\n{}\n(artifacts: {})",
                started.elapsed().as_secs_f64(),
                health.console.tail(20),
                run_dir.display()
            );
            wrap(e, msg)
        };

        let transcript = qmp::Transcript::create(&artifact(&run_dir, "qmp.log"), started)?;
        let alive = {
            let exit = process.exit_watch();
            move || exit.borrow().is_none()
        };
        let qmp = health
            .guard("qmp connect", async {
                Qmp::connect(&qmp_socket, Duration::from_secs(10), transcript, alive)
                    .await
                    .map_err(|e| boot_err(e.into(), "the qmp socket"))
            })
            .await?;

        // A paused start stops here: QMP answers only once QEMU's
        // initialisation is over, so the machine and every device exist.
        let ready = if cfg.start_paused {
            Duration::ZERO
        } else {
            // Ready marker.
            let waiting = async {
                let mut rx = health.console.watch();
                loop {
                    if let Some(t) = health.console.lock().ready {
                        return Ok(t);
                    }
                    if rx.changed().await.is_err() {
                        // Console closed: the guard reports QEMU's exit.
                        std::future::pending::<()>().await;
                    }
                }
            };
            health
                .guard("boot", async {
                    match tokio::time::timeout_at(deadline.into(), waiting).await {
                        Ok(r) => r,
                        Err(_) => Err(boot_err(
                            BootError::Timeout {
                                waiting_for: "readiness marker on the console",
                                after: cfg.boot_timeout,
                            },
                            READY_MARKER,
                        )),
                    }
                })
                .await?
        };

        let mut ssh_state = None;
        let mut ssh_ready = None;
        if let (Some(s), Some(port), false) = (&cfg.ssh, ssh_port, cfg.start_paused) {
            let target = ssh::SshTarget {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                user: s.user.clone(),
                key: s.private_key.clone(),
            };
            let t2 = target.clone();
            let h2 = health.clone();
            let conn = health
                .guard("ssh login", async move {
                    tokio::task::spawn_blocking(move || {
                        ssh::connect_until(&t2, deadline, &|| h2.gone_now())
                    })
                    .await
                    .context("ssh connect task")?
                    .map_err(|e| boot_err(e.into(), "ssh login"))
                })
                .await?;
            ssh_ready = Some(started.elapsed());
            ssh_state = Some(SshState {
                target,
                conn: Arc::new(Mutex::new(Some(conn))),
            });
        }
        let (kernel_first_line, init_started) = {
            let st = health.console.lock();
            (st.first_line, st.init_started)
        };
        Ok(Vm {
            process,
            health,
            qmp,
            ssh: ssh_state,
            plan: plan.clone(),
            trace_file,
            timings: BootTimings {
                kernel_first_line,
                init_started,
                ready,
                ssh_ready,
            },
            ssh_port,
            command_line,
            sessions: Default::default(),
            _sock_dir: sock_dir,
        })
    }

    /// Runs a shell command in the guest. Build `cmd` from values with
    /// [`sh_quote`].
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        self.with_conn(cmd, timeout, move |conn, cmd| {
            ssh::exec(conn, &cmd, &[], timeout)
        })
        .await
    }

    /// Like [`Vm::exec`], but a non-zero exit status is an error carrying
    /// the command's stderr.
    pub async fn exec_ok(&self, cmd: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        let out = self.exec(cmd, timeout).await?;
        if !out.success() {
            return Err(Error::infra(format!(
                "guest command `{cmd}` exited with status {}: {}",
                out.status,
                out.stderr_str().trim_end()
            ))
            .into());
        }
        Ok(out)
    }

    /// Writes `data` to `guest_path` with `mode`.
    pub async fn upload(
        &self,
        data: Vec<u8>,
        guest_path: &str,
        mode: u32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let path = guest_path.to_string();
        let what = format!("upload to {guest_path}");
        self.with_conn(&what, timeout, move |conn, _| {
            ssh::upload(conn, &data, &path, mode, timeout)
        })
        .await
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        op: impl FnOnce(&ssh::Conn, String) -> Result<T, SshError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let Some(ssh) = &self.ssh else {
            return Err(Error::infra(format!(
                "`{what}` needs ssh, but this vm was booted without it"
            ))
            .into());
        };
        let conn = Arc::clone(&ssh.conn);
        let target = ssh.target.clone();
        let arg = what.to_string();
        let what_owned = what.to_string();
        let task = async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    *guard = Some(ssh::connect_once(
                        &target,
                        timeout.min(Duration::from_secs(5)),
                    )?);
                }
                let r = op(guard.as_ref().expect("just set"), arg);
                if matches!(
                    r,
                    Err(SshError::Io { .. } | SshError::Protocol { .. } | SshError::Timeout { .. })
                ) {
                    // The transport may be wedged; start afresh next time.
                    *guard = None;
                }
                r
            })
            .await
            .context("ssh task")?
            .map_err(|e| {
                let msg = format!("guest command `{what_owned}` over ssh");
                wrap(e, msg)
            })
        };
        self.health.guard(what, task).await
    }

    /// Starts `cmd` (e.g. `/bin/msi-agent serve`) on its own SSH connection
    /// and keeps it running for line-by-line requests.
    pub async fn open_session(&self, cmd: &str) -> anyhow::Result<Session> {
        let Some(ssh) = &self.ssh else {
            return Err(Error::infra(format!(
                "session `{cmd}` needs ssh, but this vm was booted without it"
            ))
            .into());
        };
        let n = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_log = artifact(self.run_dir(), &format!("session-{n}.stderr.log"));
        let transcript = fs::File::create(artifact(self.run_dir(), &format!("session-{n}.log")))?;
        let target = ssh.target.clone();
        let command = cmd.to_string();
        let inner = self
            .health
            .guard("open session", async move {
                tokio::task::spawn_blocking(move || {
                    let conn = ssh::connect_once(&target, Duration::from_secs(5))?;
                    ssh::AgentSession::start(conn, &command, &stderr_log, Duration::from_secs(5))
                })
                .await
                .context("ssh session task")?
                .map_err(|e| {
                    let msg = "starting a guest session".to_string();
                    wrap(e, msg)
                })
            })
            .await?;
        Ok(Session {
            inner,
            health: self.health.clone(),
            transcript,
            started: self.health.started,
        })
    }

    /// The QMP connection.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// Runs a typed QMP command, failing at once if the guest goes away.
    pub async fn qmp_execute<C: qapi::Command>(&self, cmd: &C) -> anyhow::Result<C::Ok> {
        let during = format!("qmp `{}`", C::NAME);
        self.health
            .guard(&during, async {
                self.qmp.execute(cmd).await.map_err(|e| {
                    let msg = format!("qmp `{}`", C::NAME);
                    wrap(e, msg)
                })
            })
            .await
    }

    /// Enables or disables trace events (name or glob) at run time.
    pub async fn set_trace(&self, pattern: &str, enable: bool) -> anyhow::Result<()> {
        self.qmp_execute(&qapi::qmp::trace_event_set_state {
            name: pattern.to_string(),
            enable,
            ignore_unavailable: None,
        })
        .await
        .map(|_| ())
    }

    /// Hotplugs an `edu` or `e1000e` into the free root port `hp{port}` and
    /// returns where the guest will see it (after a rescan: the guest needs
    /// pciehp to notice by itself).
    pub async fn hotplug(&self, device: &Device, port: u32) -> anyhow::Result<PlacedDevice> {
        let port_id = format!("hp{port}");
        let Some(bus) = self.device(&port_id).and_then(|p| p.secondary_bus) else {
            return Err(Error::infra(format!(
                "no hotplug port {port_id}: boot with hotplug_ports > {port}"
            ))
            .into());
        };
        let (driver, id, extra) = match device {
            Device::Edu { id, dma_mask } => {
                let mut extra = serde_json::Map::new();
                if let Some(m) = dma_mask {
                    extra.insert("dma_mask".into(), (*m).into());
                }
                ("edu", id, extra)
            }
            Device::E1000e { id } => {
                let mut extra = serde_json::Map::new();
                // No option ROM: see qemu::NO_OPTION_ROM.
                extra.insert("romfile".into(), "".into());
                ("e1000e", id, extra)
            }
            Device::EduPairBehindBridge { .. } | Device::EduPairMultifunction { .. } => {
                return Err(
                    Error::infra("edu pairs cannot be hotplugged; plug single devices").into(),
                )
            }
        };
        self.qmp_execute(&qapi::qmp::device_add {
            driver: driver.into(),
            id: Some(id.clone()),
            bus: Some(port_id),
            arguments: extra.into_iter().collect(),
        })
        .await?;
        let bdf = Bdf {
            bus,
            dev: 0,
            func: 0,
        };
        Ok(PlacedDevice {
            id: id.clone(),
            driver: driver.into(),
            bdf,
            requester_id: bdf.rid(),
            infrastructure: false,
            secondary_bus: None,
        })
    }

    /// Unplugs a device and waits for QEMU's `DEVICE_DELETED` (which needs
    /// the guest to release it).
    pub async fn unplug(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let mut events = self.qmp.subscribe();
        self.qmp_execute(&qapi::qmp::device_del { id: id.to_string() })
            .await?;
        let id2 = id.to_string();
        self.health
            .guard("unplug", async {
                Qmp::wait_event(
                    &mut events,
                    "DEVICE_DELETED",
                    |ev| ev["data"]["device"] == id2.as_str(),
                    timeout,
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    let msg = format!("unplug of {id}");
                    wrap(e, msg)
                })
            })
            .await
    }

    /// Devices as placed at boot (hotplugged ones are not listed).
    pub fn devices(&self) -> &[PlacedDevice] {
        &self.plan.devices
    }

    pub fn device(&self, id: &str) -> Option<&PlacedDevice> {
        self.plan.devices.iter().find(|d| d.id == id)
    }

    /// The machine type actually used (e.g. `virt-9.0` for an S1 SMMU).
    pub fn machine(&self) -> &str {
        &self.plan.machine
    }

    /// A cursor at the current end of the trace file.
    pub fn trace_cursor(&self) -> TraceCursor {
        trace::cursor_at_end(&self.trace_file)
    }

    /// Trace records written since `cursor` (advanced past them), only
    /// those naming `requester_id` when given.
    pub fn traces_since(
        &self,
        cursor: &mut TraceCursor,
        requester_id: Option<u16>,
    ) -> anyhow::Result<Vec<TraceEvent>> {
        let mut events = trace::read_since(&self.trace_file, cursor)?;
        if let Some(rid) = requester_id {
            events.retain(|e| e.requester_id() == Some(u32::from(rid)));
        }
        Ok(events)
    }

    pub fn trace_file(&self) -> &Path {
        &self.trace_file
    }

    /// A cursor at the current end of the console.
    pub fn console_cursor(&self) -> ConsoleCursor {
        ConsoleCursor(self.health.console.lock().lines.len())
    }

    /// Console lines since `cursor`, advancing it.
    pub fn console_since(&self, cursor: &mut ConsoleCursor) -> Vec<ConsoleLine> {
        self.health.console.since(cursor)
    }

    /// Console lines since `cursor` up to and including the first for which
    /// `is_barrier` holds, advancing the cursor past it; waits for it until
    /// `deadline`. `found` says whether the barrier line came (the lines
    /// are those that arrived either way).
    pub async fn console_until(
        &self,
        cursor: &mut ConsoleCursor,
        is_barrier: impl Fn(&str) -> bool,
        deadline: Duration,
    ) -> (Vec<ConsoleLine>, bool) {
        let mut watch = self.health.console.watch();
        let until = tokio::time::Instant::now() + deadline;
        let mut lines = Vec::new();
        loop {
            let mut probe = *cursor;
            let new = self.health.console.since(&mut probe);
            if let Some(at) = new.iter().position(|l| is_barrier(&l.text)) {
                cursor.0 += at + 1;
                lines.extend(new.into_iter().take(at + 1));
                return (lines, true);
            }
            *cursor = probe;
            lines.extend(new);
            tokio::select! {
                r = watch.changed() => if r.is_err() { return (lines, false) },
                _ = tokio::time::sleep_until(until) => return (lines, false),
            }
        }
    }

    /// Kernel reports (WARNING, BUG, Oops, panic) at or after `cursor`.
    pub fn kernel_reports_since(&self, cursor: ConsoleCursor) -> Vec<KernelReport> {
        self.health.console.reports_since(cursor)
    }

    pub fn boot_timings(&self) -> &BootTimings {
        &self.timings
    }

    pub fn run_dir(&self) -> &Path {
        &self.health.run_dir
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The QEMU command line, shell-quoted (also in `qemu-cmdline.sh`).
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// A command a person can paste to log in while the VM runs.
    pub fn ssh_command_line(&self) -> Option<String> {
        let ssh = self.ssh.as_ref()?;
        let port = self.ssh_port?;
        Some(qemu::shell_quote(&[
            "ssh".into(),
            "-i".into(),
            ssh.target.key.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            format!("{}@127.0.0.1", ssh.target.user),
        ]))
    }

    /// Fails if the guest is gone (QEMU exited, kernel panicked).
    pub async fn check_alive(&self, during: &str) -> anyhow::Result<()> {
        if self.health.gone_now() {
            let f = self.health.describe().await;
            return Err(self.health.error(f, during));
        }
        Ok(())
    }

    /// Asks QEMU to quit, then makes sure the process group is gone.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let started = Instant::now();
        if self.process.exit().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
            self.process.wait(Duration::from_secs(3)).await;
        }
        let Vm { process, .. } = self;
        tokio::task::spawn_blocking(move || process.kill_and_reap(Duration::from_secs(5)))
            .await
            .context("cleanup task")?
            .map_err(|e| {
                let msg = format!(
                    "qemu cleanup, {:.1} s after shutdown began",
                    started.elapsed().as_secs_f64()
                );
                wrap(e, msg)
            })?;
        Ok(())
    }
}

fn is_port_clash(e: &anyhow::Error) -> bool {
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

/// A free TCP port on 127.0.0.1 (released before QEMU binds it).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}
