//! The QEMU process: its own process group, killed with the group on drop,
//! and never outliving the harness.
//!
//! Three layers make sure no QEMU is left behind:
//! - `Drop` kills the whole process group (SIGKILL) and reaps it against a
//!   deadline; that covers errors and panics that unwind.
//! - QEMU is spawned with `PR_SET_PDEATHSIG = SIGKILL` from a thread that
//!   lives exactly as long as QEMU (it spawns the child, then waits for it).
//!   The kernel sends the signal when the *thread* that forked dies, so the
//!   thread must outlive the child; with this one it does, and the signal
//!   then means "the harness is gone": Ctrl-C with the default disposition,
//!   `panic = "abort"`, SIGKILL, `std::process::exit`.
//! - [`kill_all`] kills every live group, for a Ctrl-C handler that wants to
//!   exit cleanly.
//!
//! The waiter observes the exit with `waitid(WNOWAIT)` first and only reaps
//! under the same lock that `kill` takes, so a kill can never hit a recycled
//! pid.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How the leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: ExitStatus,
    pub at: Instant,
}

/// A spawned QEMU and its output pipes.
pub(crate) struct Spawned {
    pub process: QemuProcess,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    pub started: Instant,
}

/// Owns the QEMU process group; dropping it kills the group.
pub(crate) struct QemuProcess {
    pid: i32,
    shared: Arc<Shared>,
    exit_rx: watch::Receiver<Option<ExitInfo>>,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Default)]
struct State {
    /// The leader has exited (it may not be reaped yet).
    exited: bool,
    exit: Option<ExitInfo>,
}

/// Live process groups, for [`kill_all`].
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// SIGKILLs every QEMU process group this process started and has not
/// reaped yet; for a signal handler that is about to exit.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    for &pgid in live.iter() {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
}

/// Why cleanup did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("qemu (pid {pid}) was still running {after:?} after SIGKILL")]
    Lingered { pid: i32, after: Duration },
    #[error("processes of qemu's process group {pgid} survived {after:?} after SIGKILL")]
    GroupLingered { pgid: i32, after: Duration },
}

impl QemuProcess {
    /// Spawns `program args` in a new process group with stdin closed and
    /// stdout/stderr piped.
    pub fn spawn(program: OsString, args: Vec<String>) -> io::Result<Spawned> {
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let shared2 = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("qemu-waiter".into())
            .spawn(move || {
                let mut cmd = Command::new(&program);
                cmd.args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                crate::process::die_with_the_harness(&mut cmd, libc::SIGKILL);
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = spawned_tx.send(Err(e));
                        return;
                    }
                };
                let started = Instant::now();
                let pid = child.id() as i32;
                LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
                let stdout = child.stdout.take().expect("piped");
                let stderr = child.stderr.take().expect("piped");
                if spawned_tx.send(Ok((pid, stdout, stderr, started))).is_err() {
                    // The caller is gone; nobody will kill it for us.
                    // SAFETY: pid is our unreaped child.
                    unsafe { libc::killpg(pid, libc::SIGKILL) };
                }
                wait_exited_no_reap(pid);
                let mut st = shared2.state.lock().unwrap_or_else(|p| p.into_inner());
                st.exited = true;
                // Reap while holding the lock: `kill` checks `exited` under it.
                let status = loop {
                    match child.wait() {
                        Ok(s) => break s,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // Cannot happen for our own child; report a kill.
                        Err(_) => {
                            break std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)
                        }
                    }
                };
                let info = ExitInfo {
                    status,
                    at: Instant::now(),
                };
                st.exit = Some(info);
                // Publish everywhere before waking blocking waiters, so that
                // whoever `wait_blocking` returns to sees the same state
                // through `exit()` and the live registry.
                LIVE.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|&p| p != pid);
                let _ = exit_tx.send(Some(info));
                drop(st);
                shared2.cond.notify_all();
            })?;
        let (pid, stdout, stderr, started) = spawned_rx
            .recv()
            .map_err(|_| io::Error::other("qemu waiter thread died before spawning"))??;
        Ok(Spawned {
            process: QemuProcess {
                pid,
                shared,
                exit_rx,
            },
            stdout,
            stderr,
            started,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How QEMU exited, if it has.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit_rx.borrow()
    }

    /// A receiver that changes once, when QEMU has exited and been reaped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit_rx.clone()
    }

    /// SIGKILLs the process group unless the leader already exited.
    pub fn kill(&self) {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.exited {
            // SAFETY: the leader is not reaped (we hold the lock), so the
            // pgid still names our group.
            unsafe { libc::killpg(self.pid, libc::SIGKILL) };
        }
    }

    /// Blocks until the leader is reaped or `timeout` passes.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.exit.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.exit
    }

    /// Waits (async) until QEMU has exited, up to `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Option<ExitInfo> {
        let mut rx = self.exit_rx.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some())).await;
        self.exit()
    }

    /// Kills the group and waits for it to be gone: the leader reaped and no
    /// other member left.
    pub fn kill_and_reap(&self, timeout: Duration) -> Result<ExitInfo, CleanupError> {
        let started = Instant::now();
        self.kill();
        let Some(info) = self.wait_blocking(timeout) else {
            return Err(CleanupError::Lingered {
                pid: self.pid,
                after: started.elapsed(),
            });
        };
        self.reap_group(started, timeout)?;
        Ok(info)
    }

    /// After the leader is gone, kills anything left in its group (QEMU
    /// helpers) and waits until the group is empty.
    fn reap_group(&self, started: Instant, timeout: Duration) -> Result<(), CleanupError> {
        let alive = || {
            // SAFETY: signal 0 only checks for existence.
            unsafe { libc::killpg(self.pid, 0) == 0 }
        };
        if !alive() {
            return Ok(());
        }
        // SAFETY: see above; the group outlives its leader while it has
        // members, so the id is not recycled.
        unsafe { libc::killpg(self.pid, libc::SIGKILL) };
        while alive() {
            if started.elapsed() > timeout {
                return Err(CleanupError::GroupLingered {
                    pgid: self.pid,
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill_and_reap(Duration::from_secs(5)) {
            // Drop cannot return it; say it where a person will see it.
            eprintln!("msi-harness: {e}");
        }
    }
}

/// Blocks until `pid` has exited, leaving it unreaped.
fn wait_exited_no_reap(pid: i32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // ECHILD: already reaped (impossible here) — nothing to wait for.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_alive(pgid: i32) -> bool {
        unsafe { libc::killpg(pgid, 0) == 0 }
    }

    #[test]
    fn drop_kills_the_whole_group() {
        // A shell with a child of its own: both must die with the handle.
        let sp = QemuProcess::spawn("sh".into(), vec!["-c".into(), "sleep 60 & sleep 60".into()])
            .unwrap();
        let pgid = sp.process.pid();
        std::thread::sleep(Duration::from_millis(100));
        assert!(group_alive(pgid));
        let started = Instant::now();
        drop(sp);
        assert!(!group_alive(pgid), "group {pgid} survived the drop");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// The child side of `a_killed_harness_takes_its_qemu_along`: spawns a
    /// stand-in for QEMU, says its pid, and waits to be killed.
    #[test]
    fn pdeathsig_helper() {
        if std::env::var_os("MSI_HARNESS_PDEATHSIG_HELPER").is_none() {
            return;
        }
        let sp = QemuProcess::spawn("sleep".into(), vec!["60".into()]).unwrap();
        println!("CHILD-PID {}", sp.process.pid());
        std::thread::sleep(Duration::from_secs(60));
    }

    /// SIGKILL leaves no chance to run destructors: the kernel's parent-death
    /// signal must take the child along.
    #[test]
    fn a_killed_harness_takes_its_qemu_along() {
        use std::io::BufRead;
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "vm::process::tests::pdeathsig_helper",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("MSI_HARNESS_PDEATHSIG_HELPER", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = helper.stdout.take().unwrap();
        let pid: i32 = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once("CHILD-PID ")
                    .and_then(|(_, p)| p.trim().parse().ok())
            })
            .expect("helper printed its child's pid");
        assert!(group_alive(pid));
        helper.kill().unwrap();
        helper.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // The orphan is reaped by init (or a subreaper) once it dies.
        while group_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !group_alive(pid),
            "child {pid} outlived its SIGKILLed parent"
        );
    }

    #[test]
    fn exit_is_observed_with_status() {
        let sp = QemuProcess::spawn("sh".into(), vec!["-c".into(), "exit 3".into()]).unwrap();
        let info = sp.process.wait_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(info.status.code(), Some(3));
        assert_eq!(sp.process.exit(), Some(info));
        assert!(!LIVE.lock().unwrap().contains(&sp.process.pid()));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = QemuProcess::spawn("/nonexistent/qemu".into(), vec![])
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
