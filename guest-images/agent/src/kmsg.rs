//! The kernel log, read from `/dev/kmsg` without blocking.
//!
//! The descriptor stays open for the session: each `dmesg` step returns the
//! records that arrived since the previous one (the first returns the whole
//! buffer, since a fresh open starts at the oldest record).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

use msi_protocol::STEP_END_MARKER;

use crate::sys::{Failure, Outcome};

/// Whether a `/dev/kmsg` record is the agent's own step marker.
fn is_step_end(record: &str) -> bool {
    record
        .lines()
        .next()
        .and_then(|l| l.split_once(';'))
        .is_some_and(|(_, message)| message == STEP_END_MARKER)
}

#[derive(Debug, Default)]
pub struct Kmsg {
    file: Option<File>,
    writer: Option<File>,
}

impl Kmsg {
    /// Writes [`STEP_END_MARKER`] to the kernel log (level 5, so the console
    /// prints it). Best effort: without `/dev/kmsg` (a build host) the host
    /// side's wait for the marker ends at its deadline and says so.
    pub fn mark_step_end(&mut self) {
        use std::io::Write;
        if self.writer.is_none() {
            self.writer = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        }
        if let Some(w) = &mut self.writer {
            let _ = w.write_all(format!("<5>{STEP_END_MARKER}\n").as_bytes());
        }
    }

    /// Records new since the last call, formatted like `dmesg`.
    pub fn read_new(&mut self) -> Outcome<Vec<String>> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open("/dev/kmsg")
                    .map_err(|e| Failure::io(&e, "open /dev/kmsg"))?,
            ),
        };
        let mut lines = Vec::new();
        // One read returns one record; a record is at most 1 KB of text plus
        // its dictionary, well under this buffer.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if is_step_end(&record) {
                        continue;
                    }
                    // Keep a record we cannot parse rather than hide it.
                    lines.push(
                        format_record(&record).unwrap_or_else(|| record.trim_end().to_owned()),
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EPIPE: the ring overwrote records we had not read yet; the
                // next read continues with the oldest one still there.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    lines.push(
                        "[msi-agent: kernel log records were lost (ring buffer wrapped)]".into(),
                    );
                }
                Err(e) => return Err(Failure::io(&e, "read /dev/kmsg")),
            }
        }
        Ok(lines)
    }
}

/// `"6,339,5140900,-;text\n SUBSYSTEM=pci\n"` → `"[    5.140900] text"`.
/// The dictionary lines (leading space) are dropped, like `dmesg` does.
pub fn format_record(record: &str) -> Option<String> {
    let first = record.lines().next()?;
    let (prefix, message) = first.split_once(';')?;
    let mut fields = prefix.split(',');
    let _level = fields.next()?;
    let _seq = fields.next()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    Some(format!(
        "[{:5}.{:06}] {}",
        usec / 1_000_000,
        usec % 1_000_000,
        unescape(message)
    ))
}

/// The kernel writes bytes outside printable ASCII (tabs included) as
/// `\xNN` in `/dev/kmsg`; `dmesg` shows them decoded, and so do we for
/// ASCII. Anything else stays escaped, so the text remains valid UTF-8.
fn unescape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("\\x") {
        out.push_str(&rest[..pos]);
        let byte = rest
            .get(pos + 2..pos + 4)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match byte {
            Some(b) if b.is_ascii() => {
                out.push(char::from(b));
                rest = &rest[pos + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[pos + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_records_like_dmesg() {
        assert_eq!(
            format_record(
                "6,339,5140900,-;vfio-pci 0000:00:02.0: enabling device\n SUBSYSTEM=pci\n"
            )
            .as_deref(),
            Some("[    5.140900] vfio-pci 0000:00:02.0: enabling device")
        );
        assert_eq!(
            format_record("4,1000,123456789012,c;WARNING: CPU: 1 PID: 70 at x.c:1\n").as_deref(),
            Some("[123456.789012] WARNING: CPU: 1 PID: 70 at x.c:1")
        );
        assert_eq!(
            format_record("6,1,0,-;").as_deref(),
            Some("[    0.000000] ")
        );
        assert_eq!(format_record("garbage"), None);
    }

    #[test]
    fn only_the_exact_marker_record_is_the_marker() {
        assert!(is_step_end("5,900,123,-;msi-agent: step end\n"));
        assert!(!is_step_end(
            "5,900,123,-;msi-agent: step end of something\n"
        ));
        assert!(!is_step_end(
            "6,901,124,-;vfio-pci 0000:00:02.0: msi-agent: step end\n"
        ));
    }

    #[test]
    fn decodes_ascii_escapes_and_keeps_the_rest() {
        assert_eq!(
            format_record("6,2,45720,-;rcu: \\x09Max\\xe2\\x1\\x\n").as_deref(),
            Some("[    0.045720] rcu: \tMax\\xe2\\x1\\x")
        );
    }
}
