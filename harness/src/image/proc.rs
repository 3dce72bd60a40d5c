//! Running the image stage's host tools (apt, dpkg, cargo, ssh-keygen) with
//! a deadline, their output kept for the run's log.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::error::Error;

/// What a finished tool printed.
pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    /// The last `n` lines of stderr, for error messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs `cmd` to completion or until `timeout`, when it is killed and an
/// infrastructure error names `what`. Each stderr line is also handed to
/// `on_line` as it arrives (progress for long builds). The command line,
/// stderr and (if `log_stdout`: not for machine-readable output) stdout are
/// appended to `log`.
pub fn run(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
    log: &Path,
    log_stdout: bool,
    on_line: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Output> {
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| crate::deps::spawn_error(&cmd.get_program().to_string_lossy(), &e))?;
    let mut stdout_pipe = child.stdout.take().context("stdout pipe")?;
    let stderr_pipe = child.stderr.take().context("stderr pipe")?;
    let started = Instant::now();
    let (status, stdout, stderr) = std::thread::scope(|s| -> anyhow::Result<_> {
        let out = s.spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout_pipe.read_to_end(&mut buf);
            buf
        });
        let err = s.spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::infra(format!(
                    "{what} did not finish within {}s and was killed ({program})",
                    timeout.as_secs()
                ))
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // A grandchild that inherited the pipes could keep them open after
        // the tool exits; the tools used here do not daemonise.
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok((status, stdout, stderr))
    })?;
    let shown = if log_stdout {
        String::from_utf8_lossy(&stdout).into_owned()
    } else {
        format!("({} bytes, not logged)", stdout.len())
    };
    let text = format!(
        "$ {program}\n[{status} in {:.2}s]\n--- stdout ---\n{shown}\n--- stderr ---\n{stderr}\n\n",
        started.elapsed().as_secs_f64(),
    );
    append(log, &text);
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Best effort: a log that cannot be written must not fail the build.
fn append(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}
