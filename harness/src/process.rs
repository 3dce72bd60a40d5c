//! The one way the harness runs an external program (QEMU aside: see
//! `vm::process`).
//!
//! Every run:
//! - starts in its own process group (duct's `before_spawn` hook sets
//!   `process_group(0)`), with `PR_SET_PDEATHSIG = SIGTERM` so that the
//!   leader hears of a harness that died without unwinding;
//! - has a deadline, a required argument: when it passes, the whole group
//!   gets SIGTERM, then after [`TERM_GRACE`] SIGKILL, and the leader is
//!   reaped; dropping a [`Running`] (an error, a panic) does the same;
//! - reads stdout and stderr with `poll` on non-blocking pipes in the
//!   calling thread, so that a grandchild that keeps a pipe open cannot
//!   hold the run: once the leader has exited, reading goes on for at most
//!   [`LINGER`], then whatever is left of the group is killed;
//! - writes its command line, output and end to the stage's [`Log`], and
//!   hands each line to a callback (progress);
//! - fails with a message that names the command (quoted with [`display`]),
//!   its exit status or deadline, how long it ran and its last lines; a
//!   program that is not installed is named with its Debian package
//!   ([`crate::programs::spawn_error`]).
//!
//! The leader's exit is observed with `waitid(WNOWAIT)` and it is reaped
//! only after the last signal to its group: an unreaped leader keeps its pid,
//! which is the group's id, from being reused, so no signal can reach an
//! unrelated process.
//!
//! Quoting for a POSIX shell lives here too ([`quote`], [`display`]): log
//! lines, QEMU's saved command line and guest commands all use shlex.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::Error;

/// How long the group has, after SIGTERM, before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// How long output is still read after the leader exited: a grandchild that
/// inherited a pipe can keep it open long after the command is done.
pub const LINGER: Duration = Duration::from_secs(2);

/// How many of the last output lines an error quotes.
pub const TAIL_LINES: usize = 20;

/// How often `on_tick` is called while a command runs.
const TICK: Duration = Duration::from_millis(200);

/// Quotes one word for a POSIX shell (shlex; sh, dash, bash and busybox ash
/// read it back as the same word). A NUL byte, which no argv can carry, is
/// kept as is.
pub fn quote(word: &str) -> String {
    shlex::Quoter::new()
        .allow_nul(true)
        .quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| word.to_string())
}

/// An argv as one shell command line that runs it as is.
pub fn display<I, S>(argv: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    argv.into_iter()
        .map(|a| quote(&a.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A stage's log file in the run's artifact directory: command lines, their
/// output line by line, and how each ended.
pub struct Log {
    path: PathBuf,
    file: Mutex<File>,
}

impl Log {
    /// Opens `path` for appending, creating it and its directory.
    pub fn create(path: &Path) -> anyhow::Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open log {}", path.display()))?;
        Ok(Log {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a line; a log that cannot be written must not fail the run.
    pub fn line(&self, text: &str) {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{text}");
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What becomes of the command's stdout (stderr is always read, logged and
/// kept, except with [`Stdout::Inherit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Logged line by line, handed to `on_line` and kept.
    Log,
    /// Kept whole but not logged: large or machine-readable output (`git
    /// diff`, cargo's JSON messages).
    Keep,
    /// The harness's own stdout and stderr, for output meant for the user
    /// (nextest's report); nothing is kept.
    Inherit,
}

/// A command line to run: program, arguments, environment changes, working
/// directory and stdin (`/dev/null` unless given bytes). Built like
/// `std::process::Command`; run with [`Cmd::run`], [`Cmd::output`] or
/// [`Cmd::start`].
#[derive(Debug, Clone)]
pub struct Cmd {
    argv: Vec<OsString>,
    /// In order; `None` removes the variable.
    env: Vec<(OsString, Option<OsString>)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
}

/// A command that runs `program` (looked up on PATH when it has no `/`).
pub fn cmd(program: impl AsRef<OsStr>) -> Cmd {
    Cmd {
        argv: vec![program.as_ref().to_os_string()],
        env: Vec::new(),
        dir: None,
        stdin: None,
    }
}

/// A callback for each line of output.
pub type OnLine<'a> = &'a mut dyn FnMut(Stream, &str);

/// Where a run's lines go besides the [`Finished`] it returns.
pub struct Io<'a> {
    pub log: Option<&'a Log>,
    pub stdout: Stdout,
    /// Each logged line as it arrives.
    pub on_line: Option<OnLine<'a>>,
    /// About every 200 ms while the command runs (download progress).
    pub on_tick: Option<&'a mut dyn FnMut()>,
}

impl<'a> Io<'a> {
    /// Stdout and stderr to `log`, no callbacks.
    pub fn log(log: &'a Log) -> Io<'a> {
        Io {
            log: Some(log),
            stdout: Stdout::Log,
            on_line: None,
            on_tick: None,
        }
    }

    /// Nothing logged; the output is still kept for the caller and errors.
    pub fn quiet() -> Io<'a> {
        Io {
            log: None,
            stdout: Stdout::Log,
            on_line: None,
            on_tick: None,
        }
    }
}

impl Cmd {
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Cmd {
        self.argv.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets `name` for the child; a later `env` or `env_remove` of the same
    /// name replaces this one, as with `std::process::Command` (duct lets
    /// the first, innermost setting win, so the list keeps one per name).
    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Cmd {
        self.env.retain(|(n, _)| n.as_os_str() != name.as_ref());
        self.env.push((
            name.as_ref().to_os_string(),
            Some(value.as_ref().to_os_string()),
        ));
        self
    }

    pub fn env_remove(&mut self, name: impl AsRef<OsStr>) -> &mut Cmd {
        self.env.retain(|(n, _)| n.as_os_str() != name.as_ref());
        self.env.push((name.as_ref().to_os_string(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Cmd {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Feeds `bytes` to stdin (instead of `/dev/null`).
    pub fn stdin_bytes(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.argv[0]
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.argv[1..]
    }

    /// Runs to completion or until `timeout` has passed; a non-zero exit is
    /// not an error here (see [`Finished::check`]), the deadline is.
    pub fn run(&self, timeout: Duration, io: Io<'_>) -> anyhow::Result<Finished> {
        self.start(timeout, io)?.wait()
    }

    /// Runs a command that must succeed and returns its stdout; stdout and
    /// stderr go to `log`.
    pub fn output(&self, timeout: Duration, log: &Log) -> anyhow::Result<String> {
        let done = self.run(timeout, Io::log(log))?.check()?;
        Ok(done.stdout_text())
    }

    /// Starts the command; [`Running::wait`] follows it to the end, and
    /// dropping the [`Running`] kills its process group. The thread that
    /// starts it must outlive it (the leader's PDEATHSIG follows that
    /// thread).
    pub fn start<'a>(&self, timeout: Duration, io: Io<'a>) -> anyhow::Result<Running<'a>> {
        let shown = self.to_string();
        if let Some(log) = io.log {
            let note = match io.stdout {
                Stdout::Keep => "  # stdout not logged",
                Stdout::Log | Stdout::Inherit => "",
            };
            log.line(&format!("$ {shown}{note}"));
        }
        let mut expr = duct::cmd(&self.argv[0], &self.argv[1..]).unchecked();
        for (name, value) in &self.env {
            expr = match value {
                Some(v) => expr.env(name, v),
                None => expr.env_remove(name),
            };
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        expr = match &self.stdin {
            Some(bytes) => expr.stdin_bytes(bytes.clone()),
            None => expr.stdin_null(),
        };
        let mut readers = Vec::new();
        if io.stdout != Stdout::Inherit {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            expr = expr.stdout_file(out_w).stderr_file(err_w);
            readers.push(Reader::new(Stream::Stdout, out_r));
            readers.push(Reader::new(Stream::Stderr, err_r));
        }
        expr = expr.before_spawn(move |command| {
            command.process_group(0);
            die_with_the_harness(command, libc::SIGTERM);
            Ok(())
        });
        let started = Instant::now();
        let handle = expr
            .start()
            .map_err(|e| crate::programs::spawn_error(&self.get_program().to_string_lossy(), &e))?;
        // Our copies of the pipes' write ends went with `expr`: end of file
        // now means every process that inherited them has closed them.
        drop(expr);
        let pid = handle.pids()[0] as i32;
        Ok(Running {
            shown,
            handle,
            pid,
            reaped: false,
            started,
            timeout,
            readers,
            io,
            stdout: Vec::new(),
            stderr: Vec::new(),
            tail: VecDeque::new(),
        })
    }
}

/// `NAME=value … program args`, quoted for a shell (removed variables are
/// not shown).
/// Makes the child of `command` get `signal` when the thread that spawns
/// it dies (`PR_SET_PDEATHSIG`), and exit at once if the harness is already
/// gone: a child never outlives the harness. Shared with QEMU's spawn in
/// `vm::process`.
pub fn die_with_the_harness(command: &mut std::process::Command, signal: libc::c_int) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The harness may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.env {
            if let Some(v) = value {
                write!(
                    f,
                    "{}={} ",
                    name.to_string_lossy(),
                    quote(&v.to_string_lossy())
                )?;
            }
        }
        f.write_str(&display(&self.argv))
    }
}

/// A started command. Dropping it before [`Running::wait`] returned kills
/// its process group.
pub struct Running<'a> {
    shown: String,
    handle: duct::Handle,
    pid: i32,
    reaped: bool,
    started: Instant,
    timeout: Duration,
    readers: Vec<Reader>,
    io: Io<'a>,
    stdout: Vec<u8>,
    stderr: Vec<String>,
    tail: VecDeque<String>,
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// All of stdout (empty with [`Stdout::Inherit`]).
    pub stdout: Vec<u8>,
    /// Every stderr line.
    pub stderr: Vec<String>,
    pub elapsed: Duration,
    /// The last [`TAIL_LINES`] lines of logged output, both streams.
    tail: Vec<String>,
    shown: String,
    log: Option<PathBuf>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last `n` (at most [`TAIL_LINES`]) lines of output, joined.
    pub fn tail(&self, n: usize) -> String {
        self.tail[self.tail.len().saturating_sub(n)..].join("\n")
    }

    /// `Ok(self)` on success, else the error that names the command, its
    /// exit status, how long it ran and its last lines.
    pub fn check(self) -> anyhow::Result<Finished> {
        if self.success() {
            return Ok(self);
        }
        let log = match &self.log {
            Some(p) => format!("\n(log: {})", p.display()),
            None => String::new(),
        };
        Err(Error::infra(format!(
            "`{}` failed ({}) after {}; its last output:\n{}{log}",
            self.shown,
            self.status,
            human(self.elapsed),
            self.tail(TAIL_LINES)
        ))
        .into())
    }
}

impl Running<'_> {
    /// The leader's pid, which is also its process group's id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Follows the command to its end: output read and dispatched, the
    /// deadline enforced, leftovers of the group killed, the leader reaped.
    pub fn wait(mut self) -> anyhow::Result<Finished> {
        let deadline = self.started + self.timeout;
        let mut last_tick = Instant::now();
        let mut exited_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if exited_at.is_none() && self.leader_exited() {
                exited_at = Some(now);
            }
            match exited_at {
                // The leader is done: its output is read until the pipes
                // close, for LINGER at most and not past the deadline.
                Some(t) if self.readers.is_empty() || now >= t + LINGER || now >= deadline => break,
                Some(_) => {}
                None if now >= deadline => return Err(self.timed_out()),
                None => {}
            }
            // Short waits: the leader's exit does not wake `poll` while a
            // grandchild holds the pipes.
            let step = Duration::from_millis(if self.readers.is_empty() { 10 } else { 50 })
                .min(deadline.saturating_duration_since(now));
            self.read_for(step)?;
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                if let Some(tick) = self.io.on_tick.as_mut() {
                    tick();
                }
            }
        }
        // Lines without a final newline; then what is still running of the
        // group (it holds a pipe, or was left behind) goes.
        for mut r in std::mem::take(&mut self.readers) {
            let rest = std::mem::take(&mut r.partial);
            self.emit(r.stream, &rest);
        }
        self.signal_group(Signal::SIGKILL);
        let status = self.reap()?;
        let elapsed = self.started.elapsed();
        if let Some(log) = self.io.log {
            let kept = match self.io.stdout {
                Stdout::Keep => format!(", stdout {} bytes (not logged)", self.stdout.len()),
                Stdout::Log | Stdout::Inherit => String::new(),
            };
            log.line(&format!("# {status} after {}{kept}", human(elapsed)));
        }
        Ok(Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            elapsed,
            tail: std::mem::take(&mut self.tail).into(),
            shown: self.shown.clone(),
            log: self.io.log.map(|l| l.path().to_path_buf()),
        })
    }

    /// Waits up to `step` for output and dispatches what came.
    fn read_for(&mut self, step: Duration) -> anyhow::Result<()> {
        if self.readers.is_empty() {
            std::thread::sleep(step);
            return Ok(());
        }
        let mut fds: Vec<libc::pollfd> = self
            .readers
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = step.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e).context("poll the command's output");
        }
        let mut i = 0;
        for pfd in fds {
            if pfd.revents == 0 {
                i += 1;
                continue;
            }
            let (open, lines) = self.readers[i].drain()?;
            let stream = self.readers[i].stream;
            for line in lines {
                self.emit(stream, &line);
            }
            if open {
                i += 1;
            } else {
                let mut r = self.readers.remove(i);
                let rest = std::mem::take(&mut r.partial);
                self.emit(stream, &rest);
            }
        }
        Ok(())
    }

    /// One line (or, with [`Stdout::Keep`], raw stdout bytes) of output.
    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if stream == Stream::Stdout && self.io.stdout == Stdout::Keep {
            self.stdout.extend_from_slice(bytes);
            return;
        }
        if stream == Stream::Stdout {
            self.stdout.extend_from_slice(bytes);
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\n').trim_end_matches('\r');
        if let Some(log) = self.io.log {
            log.line(text);
        }
        if let Some(on_line) = self.io.on_line.as_mut() {
            on_line(stream, text);
        }
        if stream == Stream::Stderr {
            self.stderr.push(text.to_string());
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_string());
    }

    /// The deadline passed: the group is killed and the error says so.
    fn timed_out(&mut self) -> anyhow::Error {
        self.stop();
        let elapsed = self.started.elapsed();
        let log = match self.io.log {
            Some(log) => {
                log.line(&format!(
                    "# did not finish within {}: process group killed",
                    human(self.timeout)
                ));
                format!("\n(log: {})", log.path().display())
            }
            None => String::new(),
        };
        let tail: Vec<String> = self.tail.iter().cloned().collect();
        Error::infra(format!(
            "`{}` did not finish within {} and was stopped (its process group killed after {}); its last output:\n{}{log}",
            self.shown,
            human(self.timeout),
            human(elapsed),
            tail.join("\n")
        ))
        .into()
    }

    /// SIGTERM to the group, [`TERM_GRACE`] for the leader to exit, SIGKILL
    /// to the group, then the leader reaped.
    fn stop(&mut self) {
        if self.reaped {
            return;
        }
        // Nobody reads any more: a process blocked writing gets EPIPE
        // instead of sleeping through the grace period.
        self.readers.clear();
        self.signal_group(Signal::SIGTERM);
        let until = Instant::now() + TERM_GRACE;
        while Instant::now() < until && !self.leader_exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(Signal::SIGKILL);
        let _ = self.reap();
    }

    /// Only while the leader is unreaped: its pid, the group's id, cannot
    /// have been reused.
    fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }

    /// Whether the leader has exited, without reaping it.
    fn leader_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(Pid::from_raw(self.pid)), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    fn reap(&mut self) -> anyhow::Result<ExitStatus> {
        let out = self.handle.wait();
        self.reaped = true;
        Ok(out
            .with_context(|| format!("wait for `{}`", self.shown))?
            .status)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.reaped {
            if let Some(log) = self.io.log {
                log.line("# abandoned: process group killed");
            }
            self.stop();
        }
    }
}

/// One non-blocking read end.
struct Reader {
    stream: Stream,
    fd: OwnedFd,
    /// Bytes after the last newline.
    partial: Vec<u8>,
}

impl Reader {
    fn new(stream: Stream, fd: OwnedFd) -> Reader {
        Reader {
            stream,
            fd,
            partial: Vec::new(),
        }
    }

    /// Reads what is there; returns whether the pipe is still open and the
    /// complete lines read (each with its newline).
    fn drain(&mut self) -> anyhow::Result<(bool, Vec<Vec<u8>>)> {
        let mut buf = [0u8; 16384];
        let mut lines = Vec::new();
        let open = loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => break false,
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    while let Some(at) = self.partial.iter().position(|&b| b == b'\n') {
                        lines.push(self.partial.drain(..=at).collect());
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("read the command's output"),
            }
        };
        Ok((open, lines))
    }
}

/// A pipe whose read end does not block; both ends close on exec.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("make a pipe non-blocking")?;
    Ok((r, w))
}

/// "0.3 s", "95 s", "30 min".
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 600.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[cfg(test)]
mod tests;
