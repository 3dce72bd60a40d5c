//! Booting a guest: [`Vm::boot`] from a [`VmConfig`] to a ready guest, and
//! the [`BootTimings`] it records.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::console::{Console, Stderr};
use super::error::{is_port_clash, wrap};
use super::process::QemuProcess;
use super::qemu::{self, PlanError, QemuPlan, Runtime};
use super::{
    artifact, qmp, ssh, BootError, Health, QemuCaps, Qmp, SshState, Vm, VmConfig, READY_MARKER,
};
use crate::Error;

/// How long boot phases took, from QEMU's spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTimings {
    /// First line on the serial console (the kernel's banner).
    pub kernel_first_line: Option<Duration>,
    /// `Run /init as init process` (absent with `quiet`).
    pub init_started: Option<Duration>,
    /// The readiness marker; for a guest restored from a saved machine,
    /// the moment it ran again.
    pub ready: Duration,
    /// Whether the guest was restored from a saved machine (`-incoming`)
    /// rather than booted.
    pub restored: bool,
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
        if self.restored {
            writeln!(f, "qemu start → restored, running  {}", s(Some(self.ready)))?;
        } else {
            writeln!(f, "qemu start → {READY_MARKER}  {}", s(Some(self.ready)))?;
        }
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

impl Vm {
    /// Starts QEMU and returns when the guest is ready.
    pub async fn boot(cfg: VmConfig) -> anyhow::Result<Vm> {
        let caps = super::caps_of(&cfg).await?;
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
            incoming: cfg.incoming.as_ref().map(|i| i.state.as_path()),
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
        // The same machine without this run's paths and port, for bundles.
        fs::write(
            artifact(&run_dir, qemu::RecordedPlan::FILE),
            serde_json::to_string_pretty(&plan.recorded(&caps.version_line))?,
        )?;

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
        let replayed = cfg.incoming.as_ref().map_or(&[][..], |i| &i.console[..]);
        let console = Console::spawn_after(
            sp.stdout,
            &artifact(&run_dir, "console.log"),
            started,
            replayed,
        )?;
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

        let ssh_target = match (&cfg.ssh, ssh_port, cfg.start_paused) {
            (Some(s), Some(port), false) => Some(ssh::SshTarget {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                user: s.user.clone(),
                key: s.private_key.clone(),
            }),
            _ => None,
        };
        // The login waits for a restored guest to run: a connection made
        // while QEMU still loads it loses its first packets, and slirp's
        // retransmission comes a second later (measured: 1.0 s to login
        // instead of 0.4 s).

        // A paused start stops here: QMP answers only once QEMU's
        // initialisation is over, so the machine and every device exist.
        let ready = if cfg.start_paused {
            Duration::ZERO
        } else if let Some(incoming) = &cfg.incoming {
            // The saved machine was ready when it was saved: it is ready
            // again once QEMU has loaded it and runs it.
            let uri = format!("file:{}", incoming.state.display());
            health
                .guard("restore", async {
                    qmp.execute_raw(
                        "migrate-set-capabilities",
                        serde_json::json!({ "capabilities": super::save::mapped_ram() }),
                    )
                    .await
                    .map_err(|e| boot_err(BootError::Qmp(e), "the saved machine to load"))?;
                    qmp.execute_raw("migrate-incoming", serde_json::json!({ "uri": uri }))
                        .await
                        .map_err(|e| boot_err(BootError::Qmp(e), "the saved machine to load"))?;
                    wait_running(&qmp, deadline)
                        .await
                        .map_err(|e| boot_err(e, "the saved machine to load"))
                })
                .await?;
            started.elapsed()
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
        if let Some(target) = ssh_target {
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
                restored: cfg.incoming.is_some(),
                ssh_ready,
            },
            ssh_port,
            command_line,
            sessions: Default::default(),
            first: Default::default(),
            _sock_dir: sock_dir,
        })
    }
}

/// Polls `query-status` until an incoming migration has been loaded and
/// the guest runs. A machine saved stopped (`Vm::save_state` stops it
/// first) loads as `paused` and is continued here. A stream that does not
/// load makes QEMU exit, which the health guard reports with QEMU's stderr.
async fn wait_running(qmp: &Qmp, deadline: std::time::Instant) -> Result<(), BootError> {
    let mut continued = false;
    loop {
        let status = qmp
            .execute_raw("query-status", serde_json::Value::Null)
            .await
            .map_err(BootError::Qmp)?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("running") => return Ok(()),
            Some("inmigrate") | Some("prelaunch") | Some("finish-migrate") => {}
            Some("paused") if !continued => {
                qmp.execute_raw("cont", serde_json::Value::Null)
                    .await
                    .map_err(BootError::Qmp)?;
                continued = true;
            }
            other => {
                return Err(BootError::Restore(format!(
                    "the saved machine did not run: QEMU's status is {}",
                    other.unwrap_or("missing")
                )))
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(BootError::Timeout {
                waiting_for: "the saved machine to load",
                after: Duration::ZERO,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A free TCP port on 127.0.0.1 (released before QEMU binds it).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}
