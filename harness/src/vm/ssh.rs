//! SSH into the guest with `ssh2` (libssh2), which is blocking: every call
//! runs on a blocking thread with a deadline.
//!
//! - [`connect_until`]: QEMU's user-mode `hostfwd` accepts TCP connections
//!   before the guest listens, so a connection may succeed and then stall in
//!   the banner exchange; each attempt gets a short timeout and the loop
//!   retries until the boot deadline.
//! - [`exec`]: runs a command and collects stdout, stderr and the exit
//!   status. The channel is driven non-blocking and both streams are drained
//!   in one loop, so a command that fills stderr while we wait on stdout
//!   cannot deadlock; stdin (for uploads) is fed in the same loop.
//! - [`AgentSession`]: a long-lived command (the guest agent) on its own
//!   connection and thread, spoken to one line at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub addr: SocketAddr,
    pub user: String,
    pub key: PathBuf,
}

/// What went wrong over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot log in to {user}@{addr} within {after:?} ({attempts} attempts)")]
    Connect {
        user: String,
        addr: SocketAddr,
        after: Duration,
        attempts: u32,
        #[source]
        last: Box<SshError>,
    },
    #[error("tcp connect failed")]
    Tcp(#[source] std::io::Error),
    #[error("ssh {step} failed")]
    Protocol {
        step: &'static str,
        #[source]
        source: ssh2::Error,
    },
    #[error("ssh public key authentication with {key} was refused")]
    Auth { key: String },
    #[error("ssh i/o failed during {step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {after:?}; stdout so far: {stdout:?}; stderr so far: {stderr:?}")]
    Timeout {
        command: String,
        after: Duration,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` exited (status {status:?}) before answering; its stderr: {stderr}")]
    SessionEnded {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("session `{command}` is unusable after an earlier failure: {reason}")]
    SessionBroken { command: String, reason: String },
}

/// A command's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit status; `-1` if the command was killed by a signal.
    pub status: i32,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// An authenticated connection and its socket (kept for `poll`).
pub struct Conn {
    sess: ssh2::Session,
    fd: RawFd,
}

/// libssh2's "would block".
const EAGAIN: ssh2::ErrorCode = ssh2::ErrorCode::Session(-37);

/// Values built into guest commands are quoted with this (busybox ash reads
/// shlex's quoting back as the same word).
pub use crate::process::quote as sh_quote;

/// One connection attempt.
pub fn connect_once(t: &SshTarget, timeout: Duration) -> Result<Conn, SshError> {
    let tcp = TcpStream::connect_timeout(&t.addr, timeout).map_err(SshError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut sess = ssh2::Session::new().map_err(|e| SshError::Protocol {
        step: "init",
        source: e,
    })?;
    sess.set_tcp_stream(tcp);
    sess.set_timeout(timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
    sess.handshake().map_err(|e| SshError::Protocol {
        step: "handshake",
        source: e,
    })?;
    sess.userauth_pubkey_file(&t.user, None, &t.key, None)
        .map_err(|_| SshError::Auth {
            key: t.key.display().to_string(),
        })?;
    if !sess.authenticated() {
        return Err(SshError::Auth {
            key: t.key.display().to_string(),
        });
    }
    sess.set_timeout(0);
    Ok(Conn { sess, fd })
}

/// Retries [`connect_once`] until `deadline` or until `give_up()` says the
/// guest is gone.
pub fn connect_until(
    t: &SshTarget,
    deadline: Instant,
    give_up: &dyn Fn() -> bool,
) -> Result<Conn, SshError> {
    let started = Instant::now();
    let mut attempts = 0;
    // Short first attempts: a connection the guest never answers stalls in
    // the handshake until this runs out. Longer later ones: a loaded host
    // may need them for the key exchange under TCG.
    let mut per_attempt = Duration::from_millis(700);
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.min(per_attempt).max(Duration::from_millis(50));
        per_attempt = (per_attempt * 2).min(Duration::from_secs(5));
        let err = match connect_once(t, attempt) {
            Ok(c) => return Ok(c),
            // Wrong key: retrying cannot help.
            Err(e @ SshError::Auth { .. }) => e,
            Err(e) => {
                if Instant::now() < deadline && !give_up() {
                    std::thread::sleep(Duration::from_millis(30));
                    continue;
                }
                e
            }
        };
        return Err(SshError::Connect {
            user: t.user.clone(),
            addr: t.addr,
            after: started.elapsed(),
            attempts,
            last: Box::new(err),
        });
    }
}

impl Conn {
    /// Waits until libssh2 can make progress or `max` passes.
    fn wait_io(&self, max: Duration) {
        let dirs = self.sess.block_directions();
        let mut events = 0;
        if matches!(
            dirs,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLIN;
        }
        if matches!(
            dirs,
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            events = libc::POLLIN;
        }
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        };
        let ms = max.as_millis().clamp(1, 100) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Opens a channel and starts `command` (blocking mode, bounded).
    fn start(&self, command: &str, timeout: Duration) -> Result<ssh2::Channel, SshError> {
        self.sess.set_blocking(true);
        self.sess
            .set_timeout(timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        let mut ch = self
            .sess
            .channel_session()
            .map_err(|e| SshError::Protocol {
                step: "open channel",
                source: e,
            })?;
        ch.exec(command).map_err(|e| SshError::Protocol {
            step: "exec",
            source: e,
        })?;
        self.sess.set_timeout(0);
        self.sess.set_blocking(false);
        Ok(ch)
    }
}

/// Runs `command`, feeding `stdin` and collecting everything until it exits.
pub fn exec(
    conn: &Conn,
    command: &str,
    stdin: &[u8],
    timeout: Duration,
) -> Result<ExecOutput, SshError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut ch = conn.start(command, timeout)?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut written = 0;
    let mut eof_sent = false;
    let mut buf = vec![0u8; 64 * 1024];
    let timed_out = |out: &[u8], err: &[u8]| SshError::Timeout {
        command: command.to_string(),
        after: started.elapsed(),
        stdout: tail_str(out),
        stderr: tail_str(err),
    };
    loop {
        let mut progress = false;
        if written < stdin.len() {
            match ch.write(&stdin[written..]) {
                Ok(n) => {
                    written += n;
                    progress |= n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(SshError::Io {
                        step: "write stdin",
                        source: e,
                    })
                }
            }
        }
        if written == stdin.len() && !eof_sent {
            match ch.send_eof() {
                Ok(()) => eof_sent = true,
                Err(e) if e.code() == EAGAIN => {}
                Err(e) => {
                    return Err(SshError::Protocol {
                        step: "send eof",
                        source: e,
                    })
                }
            }
        }
        let (n_out, open_out) = drain(&mut ch.stream(0), &mut buf, &mut out)?;
        let (n_err, open_err) = drain(&mut ch.stderr(), &mut buf, &mut err)?;
        progress |= n_out + n_err > 0;
        if ch.eof() && !open_out && !open_err {
            break;
        }
        if Instant::now() >= deadline {
            let _ = ch.close();
            return Err(timed_out(&out, &err));
        }
        if !progress {
            conn.wait_io(deadline.saturating_duration_since(Instant::now()));
        }
    }
    loop {
        match ch.wait_close() {
            Ok(()) => break,
            Err(e) if e.code() == EAGAIN => {
                if Instant::now() >= deadline {
                    return Err(timed_out(&out, &err));
                }
                conn.wait_io(deadline.saturating_duration_since(Instant::now()));
            }
            Err(e) => {
                return Err(SshError::Protocol {
                    step: "close",
                    source: e,
                })
            }
        }
    }
    let status = ch.exit_status().map_err(|e| SshError::Protocol {
        step: "exit status",
        source: e,
    })?;
    let status = if ch.exit_signal().ok().and_then(|s| s.exit_signal).is_some() {
        -1
    } else {
        status
    };
    Ok(ExecOutput {
        stdout: out,
        stderr: err,
        status,
    })
}

/// Reads what is available; returns (bytes read, stream still open).
fn drain(r: &mut impl Read, buf: &mut [u8], into: &mut Vec<u8>) -> Result<(usize, bool), SshError> {
    let mut total = 0;
    loop {
        match r.read(buf) {
            Ok(0) => return Ok((total, false)),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok((total, true)),
            Err(e) => {
                return Err(SshError::Io {
                    step: "read output",
                    source: e,
                })
            }
        }
    }
}

fn tail_str(b: &[u8]) -> String {
    let from = b.len().saturating_sub(2048);
    String::from_utf8_lossy(&b[from..]).into_owned()
}

/// Writes `data` to `path` in the guest (mode `mode`), through `cat`:
/// dropbear has no SFTP or SCP server of its own.
pub fn upload(
    conn: &Conn,
    data: &[u8],
    path: &str,
    mode: u32,
    timeout: Duration,
) -> Result<(), SshError> {
    let q = sh_quote(path);
    let cmd = format!("cat > {q} && chmod {mode:o} {q}");
    let out = exec(conn, &cmd, data, timeout)?;
    if out.success() {
        Ok(())
    } else {
        Err(SshError::SessionEnded {
            command: cmd,
            status: Some(out.status),
            stderr: out.stderr_str(),
        })
    }
}

enum Request {
    Line {
        line: String,
        timeout: Duration,
        reply: oneshot::Sender<Result<String, SshError>>,
    },
}

/// A long-lived command in the guest (the agent), spoken to in lines: one
/// request line in, one response line out. It runs on its own connection
/// and thread, so other SSH work does not wait for it. Its stderr goes to
/// a log file.
pub struct AgentSession {
    command: String,
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentSession {
    /// Starts `command` on `conn` (which the session then owns).
    pub fn start(
        conn: Conn,
        command: &str,
        stderr_log: &Path,
        timeout: Duration,
    ) -> Result<AgentSession, SshError> {
        let ch = conn.start(command, timeout)?;
        let log = std::fs::File::create(stderr_log).map_err(|e| SshError::Io {
            step: "create session log",
            source: e,
        })?;
        let (tx, rx) = mpsc::channel();
        let cmd = command.to_string();
        let thread = std::thread::Builder::new()
            .name("ssh-session".into())
            .spawn(move || session_thread(conn, ch, cmd, rx, log))
            .map_err(|e| SshError::Io {
                step: "spawn session thread",
                source: e,
            })?;
        Ok(AgentSession {
            command: command.to_string(),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Sends `line` (a newline is added) and waits for one line back
    /// (returned without its newline).
    pub async fn request_line(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Result<String, SshError> {
        let (reply, rx) = oneshot::channel();
        let gone = || SshError::SessionBroken {
            command: self.command.clone(),
            reason: "session thread ended".into(),
        };
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send(Request::Line {
            line: line.to_string(),
            timeout,
            reply,
        })
        .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn command(&self) -> &str {
        &self.command
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        // Closing the request channel ends the thread: it sends EOF to the
        // command and closes the connection. Don't join: a guest that is gone
        // could hold it up to the request deadline.
        self.tx.take();
        self.thread.take();
    }
}

fn session_thread(
    conn: Conn,
    mut ch: ssh2::Channel,
    command: String,
    rx: mpsc::Receiver<Request>,
    mut log: std::fs::File,
) {
    let mut out: Vec<u8> = Vec::new();
    let mut err: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut broken: Option<String> = None;
    // Drain both streams; stderr goes to the log. Returns false at EOF.
    let mut pump =
        |ch: &mut ssh2::Channel, out: &mut Vec<u8>, err: &mut Vec<u8>| -> Result<bool, SshError> {
            let (_, open_out) = drain(&mut ch.stream(0), &mut buf, out)?;
            let before = err.len();
            let (_, open_err) = drain(&mut ch.stderr(), &mut buf, err)?;
            if err.len() > before {
                let _ = log.write_all(&err[before..]);
                // Keep only a tail for messages.
                if err.len() > 16 * 1024 {
                    let cut = err.len() - 16 * 1024;
                    err.drain(..cut);
                }
            }
            Ok(!(ch.eof() && !open_out && !open_err))
        };
    loop {
        let req = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Keep stderr flowing so the command never blocks on it.
                if broken.is_none() {
                    match pump(&mut ch, &mut out, &mut err) {
                        Ok(true) => {}
                        Ok(false) => broken = Some("the command exited".into()),
                        Err(e) => broken = Some(e.to_string()),
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let Request::Line {
            line,
            timeout,
            reply,
        } = req;
        if let Some(reason) = &broken {
            let _ = reply.send(Err(ended_or_broken(&ch, &command, reason, &err)));
            continue;
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut data = line.into_bytes();
        data.push(b'\n');
        let mut written = 0;
        let result = loop {
            if written < data.len() {
                match ch.write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        break Err(SshError::Io {
                            step: "write request",
                            source: e,
                        })
                    }
                }
            }
            let open = match pump(&mut ch, &mut out, &mut err) {
                Ok(o) => o,
                Err(e) => break Err(e),
            };
            if let Some(i) = out.iter().position(|&b| b == b'\n') {
                let resp: Vec<u8> = out.drain(..=i).collect();
                let resp = String::from_utf8_lossy(&resp[..resp.len() - 1])
                    .trim_end_matches('\r')
                    .to_string();
                break Ok(resp);
            }
            if !open {
                break Err(ended_or_broken(&ch, &command, "the command exited", &err));
            }
            if Instant::now() >= deadline {
                break Err(SshError::Timeout {
                    command: command.clone(),
                    after: started.elapsed(),
                    stdout: tail_str(&out),
                    stderr: tail_str(&err),
                });
            }
            conn.wait_io(deadline.saturating_duration_since(Instant::now()));
        };
        if let Err(e) = &result {
            // A late answer would be taken for the next request's.
            broken = Some(e.to_string());
        }
        let _ = reply.send(result);
    }
    // Bounded goodbye: EOF on stdin, then close.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match ch.send_eof() {
            Err(e) if e.code() == EAGAIN => conn.wait_io(Duration::from_millis(20)),
            _ => break,
        }
    }
    while Instant::now() < until {
        match ch.close() {
            Err(e) if e.code() == EAGAIN => conn.wait_io(Duration::from_millis(20)),
            _ => break,
        }
    }
}

fn ended_or_broken(ch: &ssh2::Channel, command: &str, reason: &str, err: &[u8]) -> SshError {
    if ch.eof() {
        SshError::SessionEnded {
            command: command.to_string(),
            status: ch.exit_status().ok(),
            stderr: tail_str(err),
        }
    } else {
        SshError::SessionBroken {
            command: command.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_values_single_words() {
        assert_eq!(sh_quote("0000:00:02.0"), "0000:00:02.0");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r#""it's""#);
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$(reboot)"), "'$(reboot)'");
    }
}
