//! The floor a harness boot is measured against: plain QEMU (`virt`, the
//! same CPU, cores and memory, no SMMU, no devices, no QMP, no SSH) booting
//! the kernel and initramfs directly, up to the first line `/init` prints.
//! Whatever a harness start takes beyond this is the harness's own cost.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::process::QemuProcess;
use crate::Error;

/// QEMU's start to the first console line containing `marker`.
pub fn boot_to_line(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    marker: &str,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let args: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1024",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
        "-nic",
        "none",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        append,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sp = QemuProcess::spawn(qemu.as_os_str().to_owned(), args)?;
    let process = sp.process;
    let started = sp.started;
    let mut stdout = sp.stdout;
    // The reader ends when QEMU does; killing the group at the deadline
    // ends it in time.
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        let marker = wanted;
        let mut buf = [0u8; 8192];
        let mut seen = Vec::new();
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                        let _ = tx.send(Some(started.elapsed()));
                        return;
                    }
                    // Only the tail can still hold a split marker.
                    if seen.len() > 64 * 1024 {
                        seen.drain(..seen.len() - marker.len());
                    }
                }
            }
        }
    });
    let got = rx.recv_timeout(deadline);
    let _ = process.kill_and_reap(Duration::from_secs(5));
    match got {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(Error::infra(format!(
            "plain QEMU exited before `{marker}` was printed ({:.1} s)",
            started.elapsed().as_secs_f64()
        ))
        .into()),
        Err(_) => Err(Error::infra(format!(
            "plain QEMU did not print `{marker}` within {:.0} s",
            deadline.as_secs_f64()
        ))
        .into()),
    }
}
