//! The guest's serial console: captured with host timestamps, kept in
//! memory for cursors, and watched for the readiness marker and kernel
//! reports (panic, oops, BUG, WARNING).
//!
//! QEMU's stdout *is* the console (`-serial chardev:console` on stdio, and
//! nothing else writes there). A dedicated thread reads it, so a quiet or
//! chatty guest never blocks QEMU and no async task has to poll a pipe; it
//! publishes progress through a `watch` channel that waiters select on.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Printed by the guest's `/init` once dropbear listens (the contract is
/// the image's: `crate::image::cmdline`).
pub use crate::image::READY_MARKER;

/// One console line, with the host time since QEMU started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    pub t: Duration,
    pub text: String,
}

/// What kind of kernel report a line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `Kernel panic - not syncing`: the guest is gone.
    Panic,
    /// `Internal error: Oops` or a bare `Oops`.
    Oops,
    /// `Unable to handle kernel ...` (precedes an oops on arm64).
    UnableToHandle,
    /// `BUG: ...` (also KASAN/KCSAN reports, sleeping in atomic, ...).
    Bug,
    /// `WARNING: CPU: ...` from WARN().
    Warning,
}

/// A kernel report seen on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelReport {
    pub kind: ReportKind,
    /// Index of the line in the console (see [`ConsoleCursor`]).
    pub line: usize,
    pub t: Duration,
    pub text: String,
}

/// A position in the console: the number of lines already seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsoleCursor(pub usize);

/// Classifies one console line.
pub fn classify(text: &str) -> Option<ReportKind> {
    // Strip the printk timestamp so that patterns anchor on the message.
    let msg = match text.trim_start().strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(text, |(_, m)| m),
        None => text,
    };
    if msg.contains("Kernel panic - not syncing") {
        Some(ReportKind::Panic)
    } else if msg.contains("Unable to handle kernel") {
        Some(ReportKind::UnableToHandle)
    } else if msg.contains("Internal error: Oops") || msg.starts_with("Oops") {
        Some(ReportKind::Oops)
    } else if msg.starts_with("BUG: ") || msg.contains("] BUG: ") {
        Some(ReportKind::Bug)
    } else if msg.starts_with("WARNING: ") {
        Some(ReportKind::Warning)
    } else {
        None
    }
}

#[derive(Debug, Default)]
pub(crate) struct ConsoleState {
    pub lines: Vec<ConsoleLine>,
    pub reports: Vec<KernelReport>,
    pub first_line: Option<Duration>,
    pub init_started: Option<Duration>,
    pub ready: Option<Duration>,
    /// Index of the first `Kernel panic` line.
    pub panic_line: Option<usize>,
    /// The panic's closing `---[ end Kernel panic` line has been seen.
    pub panic_complete: bool,
    /// QEMU closed its stdout (it exited).
    pub eof: bool,
}

/// Shared view of the console.
#[derive(Clone)]
pub(crate) struct Console {
    state: Arc<Mutex<ConsoleState>>,
    changed: watch::Receiver<u64>,
}

impl Console {
    /// Starts the reader thread on QEMU's stdout; lines go to `log_path`
    /// as `[  secs.micros] text`.
    #[cfg(test)]
    pub fn spawn(
        input: impl Read + Send + 'static,
        log_path: &Path,
        started: Instant,
    ) -> std::io::Result<Console> {
        Console::spawn_after(input, log_path, started, &[])
    }

    /// [`Console::spawn`] for a guest started from a saved machine: the
    /// saving boot's lines (`replayed`, at time zero) come first, read as
    /// if this guest had printed them, and the log marks where they end.
    pub fn spawn_after(
        mut input: impl Read + Send + 'static,
        log_path: &Path,
        started: Instant,
        replayed: &[String],
    ) -> std::io::Result<Console> {
        let mut log = BufWriter::new(File::create(log_path)?);
        let state = Arc::new(Mutex::new(ConsoleState::default()));
        if !replayed.is_empty() {
            for line in replayed {
                push_line(&state, &mut log, Duration::ZERO, line.as_bytes());
            }
            let _ = writeln!(
                log,
                "# msi-harness: the {} lines above are the saved machine's boot; this guest was restored from it here",
                replayed.len()
            );
            log.flush()?;
        }
        let (tx, rx) = watch::channel(0u64);
        let st = Arc::clone(&state);
        std::thread::Builder::new()
            .name("qemu-console".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                let mut partial: Vec<u8> = Vec::new();
                let mut generation = 0u64;
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) => 0,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    let t = started.elapsed();
                    if n == 0 {
                        if !partial.is_empty() {
                            let line = std::mem::take(&mut partial);
                            push_line(&st, &mut log, t, &line);
                        }
                        let _ = log.flush();
                        st.lock().unwrap_or_else(|p| p.into_inner()).eof = true;
                        let _ = tx.send(generation + 1);
                        return;
                    }
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=i).collect();
                        push_line(&st, &mut log, t, &line[..line.len() - 1]);
                    }
                    // Flush per read so the file is current when a run fails.
                    let _ = log.flush();
                    generation += 1;
                    let _ = tx.send(generation);
                }
            })?;
        Ok(Console { state, changed: rx })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Lines since `cursor`, advancing it.
    pub fn since(&self, cursor: &mut ConsoleCursor) -> Vec<ConsoleLine> {
        let st = self.lock();
        let from = cursor.0.min(st.lines.len());
        cursor.0 = st.lines.len();
        st.lines[from..].to_vec()
    }

    /// Kernel reports on lines at or after `cursor` (not advancing it).
    pub fn reports_since(&self, cursor: ConsoleCursor) -> Vec<KernelReport> {
        self.lock()
            .reports
            .iter()
            .filter(|r| r.line >= cursor.0)
            .cloned()
            .collect()
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let st = self.lock();
        let from = st.lines.len().saturating_sub(n);
        st.lines[from..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text of a panic: from the report that led to it (oops, sysrq,
    /// BUG) up to the end marker or the last line seen.
    pub fn panic_excerpt(&self) -> Option<String> {
        let st = self.lock();
        let at = st.panic_line?;
        Some(excerpt(&st.lines, &st.reports, at))
    }
}

/// Lines around a panic at `at`: back to the nearest preceding report (or
/// sysrq trigger) within 60 lines, forward to `---[ end Kernel panic`.
fn excerpt(lines: &[ConsoleLine], reports: &[KernelReport], at: usize) -> String {
    let floor = at.saturating_sub(60);
    let mut start = at;
    for r in reports
        .iter()
        .rev()
        .filter(|r| r.line < at && r.line >= floor)
    {
        start = start.min(r.line);
    }
    if let Some(i) = (floor..at)
        .rev()
        .find(|&i| lines[i].text.contains("sysrq: Trigger a crash"))
    {
        start = start.min(i);
    }
    let end = (at..lines.len())
        .find(|&i| lines[i].text.contains("---[ end Kernel panic"))
        .map_or(lines.len(), |i| i + 1)
        .min(at + 80);
    lines[start..end]
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn push_line(st: &Mutex<ConsoleState>, log: &mut impl Write, t: Duration, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r').to_string();
    let _ = writeln!(log, "[{:>5}.{:06}] {text}", t.as_secs(), t.subsec_micros());
    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
    let idx = st.lines.len();
    st.first_line.get_or_insert(t);
    if st.init_started.is_none() && text.contains("Run /init as init process") {
        st.init_started = Some(t);
    }
    if st.ready.is_none() && text.contains(READY_MARKER) {
        st.ready = Some(t);
    }
    if let Some(kind) = classify(&text) {
        if kind == ReportKind::Panic && st.panic_line.is_none() {
            st.panic_line = Some(idx);
        }
        st.reports.push(KernelReport {
            kind,
            line: idx,
            t,
            text: text.clone(),
        });
    }
    if st.panic_line.is_some() && text.contains("---[ end Kernel panic") {
        st.panic_complete = true;
    }
    st.lines.push(ConsoleLine { t, text });
}

/// Captures QEMU's stderr to a file and keeps its text for error messages.
#[derive(Clone)]
pub(crate) struct Stderr {
    text: Arc<Mutex<String>>,
    done: watch::Receiver<bool>,
}

/// Kept in memory for messages; the file has everything.
const STDERR_KEEP: usize = 64 * 1024;

impl Stderr {
    pub fn spawn(
        mut input: impl Read + Send + 'static,
        log_path: &Path,
    ) -> std::io::Result<Stderr> {
        let mut log = File::create(log_path)?;
        let text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = watch::channel(false);
        let t2 = Arc::clone(&text);
        std::thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let _ = log.write_all(&buf[..n]);
                            let mut t = t2.lock().unwrap_or_else(|p| p.into_inner());
                            t.push_str(&String::from_utf8_lossy(&buf[..n]));
                            if t.len() > STDERR_KEEP {
                                let cut = t.len() - STDERR_KEEP;
                                let cut =
                                    (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                                t.drain(..cut);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                let _ = tx.send(true);
            })?;
        Ok(Stderr { text, done: rx })
    }

    /// Everything kept so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) for QEMU to close stderr, so that a dying QEMU's last
    /// words are in the message.
    pub async fn text_after_close(&self, timeout: Duration) -> String {
        let mut rx = self.done.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|d| *d)).await;
        self.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reports_are_classified_by_their_first_line() {
        let cases = [
            ("[    5.123456] Kernel panic - not syncing: sysrq triggered crash", Some(ReportKind::Panic)),
            ("[    5.1] Unable to handle kernel NULL pointer dereference at virtual address 0", Some(ReportKind::UnableToHandle)),
            ("[    5.1] Internal error: Oops: 0000000096000044 [#1]  SMP", Some(ReportKind::Oops)),
            ("[    5.1] BUG: sleeping function called from invalid context at mm/slab.c:1", Some(ReportKind::Bug)),
            ("[    5.1] WARNING: CPU: 0 PID: 1 at drivers/iommu/io-pgtable-arm.c:400 __arm_lpae_map+0x1/0x2", Some(ReportKind::Warning)),
            ("WARNING: CPU: 1 PID: 7 at x.c:1", Some(ReportKind::Warning)),
            ("[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]", None),
            ("[    1.0] printk: a message mentioning WARNING: later on", None),
            ("MSI-HARNESS-READY", None),
        ];
        for (line, want) in cases {
            assert_eq!(classify(line), want, "{line}");
        }
    }

    #[test]
    fn lines_are_split_timed_and_watched() {
        let input = b"[    0.0] Booting Linux\r\n[    0.9] Run /init as init process\nMSI-HARNESS-READY\n[ 3.0] WARNING: CPU: 0 PID: 1 at a.c:1 f\npartial";
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let c = Console::spawn(&input[..], &log, Instant::now()).unwrap();
        let mut rx = c.watch();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                while !c.lock().eof {
                    let _ = rx.changed().await;
                }
            })
            .await
            .unwrap();
        });
        let st = c.lock();
        assert_eq!(st.lines.len(), 5);
        assert_eq!(st.lines[0].text, "[    0.0] Booting Linux");
        assert_eq!(st.lines[4].text, "partial");
        assert!(st.first_line.is_some() && st.init_started.is_some() && st.ready.is_some());
        assert_eq!(st.reports.len(), 1);
        assert_eq!(st.reports[0].line, 3);
        drop(st);
        let mut cur = ConsoleCursor(3);
        assert_eq!(c.since(&mut cur).len(), 2);
        assert_eq!(cur, ConsoleCursor(5));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .ends_with("] MSI-HARNESS-READY"),
            "{text}"
        );
    }

    #[test]
    fn the_panic_excerpt_starts_at_the_trigger_and_ends_at_the_marker() {
        let texts = [
            "[ 1.0] unrelated",
            "[ 2.0] sysrq: Trigger a crash",
            "[ 2.0] Kernel panic - not syncing: sysrq triggered crash",
            "[ 2.0] Call trace:",
            "[ 2.0] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---",
            "after",
        ];
        let lines: Vec<ConsoleLine> = texts
            .iter()
            .map(|t| ConsoleLine {
                t: Duration::ZERO,
                text: t.to_string(),
            })
            .collect();
        let ex = excerpt(&lines, &[], 2);
        assert!(ex.starts_with("[ 2.0] sysrq: Trigger a crash"));
        assert!(ex.ends_with("crash ]---"));
    }
}
