//! Running the kernel stage's external commands: output streamed line by
//! line to the run's log (and to a callback for progress), a deadline on
//! every command, and the command line recorded before it runs.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::error::Error;

/// The stage's log file in the run's artifact directory.
pub struct Log {
    path: PathBuf,
    file: Mutex<File>,
}

impl Log {
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

/// How a command ended, with the lines it printed on stderr (kept for
/// error messages).
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// A shell-like rendering of a command, for logs and messages.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={}",
                k.to_string_lossy(),
                quote(&v?.to_string_lossy())
            ))
        })
        .collect();
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs `cmd` to completion or until `timeout`, logging its output and
/// handing each line to `on_line`; `on_tick` is called about every 200 ms
/// (download progress). Keeps all output in memory only when `keep` is set.
pub fn run(
    cmd: &mut Command,
    log: &Log,
    timeout: Duration,
    keep: bool,
    on_line: &mut dyn FnMut(Stream, &str),
    on_tick: &mut dyn FnMut(),
) -> anyhow::Result<Finished> {
    let shown = display(cmd);
    log.line(&format!("$ {shown}"));
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| crate::deps::spawn_error(&program, &e))?;
    let (tx, rx) = mpsc::channel::<(Stream, String)>();
    let mut readers = Vec::new();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for chunk in BufReader::new(pipe).split(b'\n') {
                let Ok(chunk) = chunk else { break };
                let text = String::from_utf8_lossy(&chunk)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send((stream, text)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let started = Instant::now();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut status = None;
    let mut killed_at: Option<Instant> = None;
    let mut exited_at: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((stream, text)) => {
                log.line(&text);
                on_line(stream, &text);
                match stream {
                    Stream::Stderr => stderr.push(text),
                    Stream::Stdout if keep => stdout.push(text),
                    Stream::Stdout => {}
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = Some(wait_with_deadline(&mut child, started, timeout)?);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        on_tick();
        if status.is_none() {
            status = child.try_wait()?;
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        // Grandchildren can keep the pipes open after the command exited;
        // do not wait for them for long.
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            break;
        }
        if status.is_none() && started.elapsed() > timeout {
            match killed_at {
                None => {
                    terminate(&child, nix::sys::signal::Signal::SIGTERM);
                    killed_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(10) => {
                    terminate(&child, nix::sys::signal::Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        if killed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            break;
        }
    }
    if killed_at.is_some() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::infra(format!(
            "`{shown}` did not finish within {} minutes and was stopped (log: {})",
            timeout.as_secs() / 60,
            log.path().display()
        ))
        .into());
    }
    let status = match status {
        Some(s) => s,
        None => child.wait()?,
    };
    // Readers still blocked on a pipe a grandchild holds are left behind.
    if readers.iter().all(|r| r.is_finished()) {
        for r in readers {
            let _ = r.join();
        }
    }
    log.line(&format!(
        "# exit: {status}, {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if started.elapsed() > timeout {
            terminate(child, nix::sys::signal::Signal::SIGKILL);
            return Ok(child.wait()?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Signals the command itself; make passes a fatal signal on to its jobs.
fn terminate(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, signal);
}

/// Runs a short command and returns its stdout; failure is an error that
/// quotes stderr.
pub fn output(cmd: &mut Command, log: &Log, timeout: Duration) -> anyhow::Result<String> {
    let shown = display(cmd);
    let done = run(cmd, log, timeout, true, &mut |_, _| {}, &mut || {})?;
    if !done.status.success() {
        return Err(Error::infra(format!(
            "`{shown}` failed ({}): {}",
            done.status,
            tail(&done.stderr, 10)
        ))
        .into());
    }
    Ok(done.stdout.join("\n"))
}

/// The last `n` lines, joined.
pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command and returns its raw stdout, which is not logged (it can
/// be large: a whole `git diff`); fails on a non-zero exit or the deadline.
pub fn capture(cmd: &mut Command, log: &Log, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let shown = display(cmd);
    log.line(&format!("$ {shown}  # output not logged"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| crate::deps::spawn_error(&cmd.get_program().to_string_lossy(), &e))?;
    let mut pipes: Vec<std::thread::JoinHandle<Vec<u8>>> = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        pipes.push(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut pipe = pipe;
            let _ = std::io::Read::read_to_end(&mut pipe, &mut buf);
            buf
        }));
    }
    let status = wait_with_deadline(&mut child, Instant::now(), timeout)?;
    let mut outputs = pipes.into_iter().map(|h| h.join().unwrap_or_default());
    let stdout = outputs.next().unwrap_or_default();
    let stderr = outputs.next().unwrap_or_default();
    if !status.success() {
        return Err(Error::infra(format!(
            "`{shown}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
        .into());
    }
    Ok(stdout)
}
