//! Operations on a live guest: commands and uploads over SSH, agent
//! [`Session`]s, QMP, hotplug and unplug, trace and console cursors,
//! shutdown.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::error::wrap;
use super::{
    artifact, qemu, sh_quote, ssh, trace, Bdf, BootTimings, ConsoleCursor, ConsoleLine, Device,
    ExecOutput, Health, KernelReport, PlacedDevice, Qmp, SshError, TraceCursor, TraceEvent, Vm,
};
use crate::Error;

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

/// The exit status of a command whose [`Vm::run_first`] prefix failed.
const FIRST_FAILED: i32 = 125;

impl Vm {
    /// Has the guest run `cmd` (a shell command) before the next command
    /// or session it is asked for, as that command's prefix: a guest just
    /// restored from a saved machine runs everything slowly until TCG has
    /// translated it again, so a separate round trip would cost a whole
    /// command. If `cmd` fails, the command it prefixes is not run and
    /// fails with its output and status 125.
    pub fn run_first(&self, cmd: &str) {
        *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(cmd.to_string());
    }

    /// `cmd` behind the pending [`Vm::run_first`] command, if any.
    fn after_first(&self, cmd: &str) -> String {
        match self.first.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Its own stderr says why; the line after it says what it was.
            Some(first) => format!(
                "{{ {first} ; }} || {{ echo 'msi-harness: the command run first in this guest failed' >&2; exit {FIRST_FAILED}; }}; {cmd}"
            ),
            None => cmd.to_string(),
        }
    }

    /// Runs a shell command in the guest. Build `cmd` from values with
    /// [`sh_quote`](super::sh_quote).
    pub async fn exec(&self, cmd: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        let full = self.after_first(cmd);
        self.with_conn(cmd, timeout, move |conn, _| {
            ssh::exec(conn, &full, &[], timeout)
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
    ///
    /// The session takes the connection the boot logged in with, when it
    /// is still idle: a key exchange under TCG is a large part of a start
    /// (`cargo xtask bench`). A later [`Vm::exec`] connects anew.
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
        let command = self.after_first(cmd);
        let idle = Arc::clone(&ssh.conn);
        let inner = self
            .health
            .guard("open session", async move {
                tokio::task::spawn_blocking(move || {
                    let taken = idle.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let conn = match taken {
                        Some(c) => c,
                        None => ssh::connect_once(&target, Duration::from_secs(5))?,
                    };
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
            bus: Some(port_id.clone()),
            arguments: extra.into_iter().collect(),
        })
        .await?;
        // QEMU keeps an empty slot powered off and shows a plugged device
        // only once the OS powers the slot on. The guest kernel has no
        // pciehp (its hotplug interrupts would be more MSIs through the ITS
        // than the scenarios ask for), so power it on by hand.
        let port_bdf = self.device(&port_id).map(|p| p.bdf.to_string());
        if let Some(port_bdf) = port_bdf {
            self.exec_ok(&slot_power_script(&port_bdf, true), Duration::from_secs(10))
                .await?;
        }
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

    /// Unplugs the device `id` that [`Vm::hotplug`] put into port `port`
    /// at `bdf`, and waits for QEMU's `DEVICE_DELETED`. With no pciehp in
    /// the guest, the guest's part is done here: the device is removed from
    /// the guest's PCI core (vfio-pci's remove waits until no process holds
    /// the device open, so close it first), then the slot is powered off,
    /// which is when QEMU detaches the device.
    pub async fn unplug(
        &self,
        id: &str,
        port: u32,
        bdf: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (pending, release) = self.begin_unplug(id, port, bdf).await?;
        self.exec_ok(&release, timeout).await?;
        self.wait_unplugged(pending, timeout).await
    }

    /// Asks QEMU to unplug `id` (`device_del`, its events watched from
    /// before the request on) and returns the guest's part as a script:
    /// remove the device at `bdf` from the PCI core, then power port
    /// `port`'s slot off.
    async fn begin_unplug(
        &self,
        id: &str,
        port: u32,
        bdf: &str,
    ) -> anyhow::Result<(PendingUnplug, String)> {
        let port_id = format!("hp{port}");
        let Some(port_bdf) = self.device(&port_id).map(|p| p.bdf.to_string()) else {
            return Err(Error::infra(format!("no hotplug port {port_id} for {id}")).into());
        };
        let events = self.qmp.subscribe();
        self.qmp_execute(&qapi::qmp::device_del { id: id.to_string() })
            .await?;
        let dev = sh_quote(&format!("/sys/bus/pci/devices/{bdf}"));
        let release = format!(
            "if [ -e {dev} ]; then echo 1 > {dev}/remove; fi\n{}",
            slot_power_script(&port_bdf, false)
        );
        let pending = PendingUnplug {
            id: id.to_string(),
            events,
        };
        Ok((pending, release))
    }

    /// Starts the unplug of `id` (hotplugged into port `port` at `bdf`)
    /// without waiting for it: QEMU is asked (`device_del`) and the guest's
    /// part ([`Vm::unplug`]'s) runs in the background. Returns once the
    /// device is gone from the guest's PCI core, or once vfio-pci says its
    /// remove is blocked on the process holding the device (a VMM that
    /// must let go): that kernel line, without its timestamp, or `None`
    /// when it went at once. [`Vm::wait_unplugged`] then waits for
    /// `DEVICE_DELETED`.
    pub async fn request_unplug(
        &self,
        id: &str,
        port: u32,
        bdf: &str,
        timeout: Duration,
    ) -> anyhow::Result<(PendingUnplug, Option<String>)> {
        let (pending, release) = self.begin_unplug(id, port, bdf).await?;
        let dev = sh_quote(&format!("/sys/bus/pci/devices/{bdf}"));
        let script_file = sh_quote(&format!("/tmp/unplug-{id}.sh"));
        let blocked = sh_quote(&format!(
            "{bdf}: No device request channel registered, blocked until released by user"
        ));
        let tenths = timeout.as_millis() / 100;
        let script = format!(
            "cat > {script_file} <<'MSI_HARNESS_EOF'\n{release}MSI_HARNESS_EOF\n\
             before=$(dmesg | grep -cF {blocked} || true)\n\
             setsid sh {script_file} > /dev/null 2>&1 < /dev/null &\n\
             i=0\n\
             while [ $i -lt {tenths} ]; do\n\
             [ -e {dev} ] || exit 0\n\
             if [ \"$(dmesg | grep -cF {blocked} || true)\" != \"$before\" ]; then dmesg | grep -F {blocked} | tail -n 1 | sed 's/^\\[[^]]*\\] *//'; exit 0; fi\n\
             sleep 0.1; i=$((i+1))\n\
             done\n\
             echo 'the guest neither removed the device nor blocked on its user' >&2; exit 1\n"
        );
        let out = self
            .exec_ok(&script, timeout + Duration::from_secs(5))
            .await?;
        let line = out.stdout_str().trim().to_string();
        Ok((pending, (!line.is_empty()).then_some(line)))
    }

    /// Waits for the `DEVICE_DELETED` of an unplug [`Vm::request_unplug`] started.
    pub async fn wait_unplugged(
        &self,
        mut pending: PendingUnplug,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let id = pending.id.clone();
        self.health
            .guard("unplug", async {
                Qmp::wait_event(
                    &mut pending.events,
                    "DEVICE_DELETED",
                    |ev| ev["data"]["device"] == id.as_str(),
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

    /// When QEMU was started (what [`BootTimings`] count from).
    pub fn started_at(&self) -> Instant {
        self.health.started
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

/// An unplug QEMU was asked for and the guest is carrying out
/// ([`Vm::request_unplug`]); its QMP events are kept from the request on.
pub struct PendingUnplug {
    id: String,
    events: tokio::sync::broadcast::Receiver<serde_json::Value>,
}

/// Shell helpers over a PCI function's sysfs `config`: `cfgr OFF LEN`,
/// `cfgw OFF LEN VALUE` (one access of LEN bytes at an OFF aligned to it:
/// QEMU's PCIe slot logic reads a Slot Control write's value as the whole
/// register, so two byte writes would not power a slot off), `findcap ID`
/// (a standard capability's offset).
pub(crate) fn cfg_helpers(bdf: &str) -> String {
    let d = sh_quote(&format!("/sys/bus/pci/devices/{bdf}"));
    format!(
        r#"set -e
d={d}
cfgw() {{ printf "$(printf '\\%03o' $(( $3 & 255 )) $(( ($3>>8) & 255 )) $(( ($3>>16) & 255 )) $(( ($3>>24) & 255 )) | head -c $(( $2 * 4 )))" | dd of=$d/config bs=$2 seek=$(( $1 / $2 )) count=1 conv=notrunc 2>/dev/null; }}
cfgr() {{ dd if=$d/config bs=1 skip=$1 count=$2 2>/dev/null | od -An -tu$2 | tr -d ' '; }}
findcap() {{ c=$(cfgr 52 1); while [ "$c" != 0 ] && [ "$(cfgr $c 1)" != "$1" ]; do c=$(cfgr $((c+1)) 1); done; [ "$c" != 0 ]; echo $c; }}
"#
    )
}

/// Shell that powers the slot of the PCIe port at `port_bdf` on or off
/// through its Slot Control register (PCIe capability + 0x18): on clears
/// Power Controller Control (bit 10); off sets it and turns the power
/// indicator off (bits 9:8 = 11), the state in which QEMU detaches a device
/// whose unplug was requested.
pub(crate) fn slot_power_script(port_bdf: &str, on: bool) -> String {
    let set = if on {
        "$((ctl & ~1024))"
    } else {
        "$((ctl | 1024 | 768))"
    };
    format!(
        "{}cap=$(findcap 16)\nctl=$(cfgr $((cap+24)) 2)\ncfgw $((cap+24)) 2 {set}\nsleep 0.2\n",
        cfg_helpers(port_bdf)
    )
}
