//! The pre-flight check: before the first VM test, QEMU is started once,
//! paused, for each distinct machine and device set the suite will use.
//!
//! A QEMU that cannot start (a missing ROM or firmware file, a device this
//! build lacks) would otherwise fail every VM test with the same message;
//! here it is one infrastructure error, with QEMU's own words and the Debian
//! package that provides what is missing.

use std::collections::BTreeSet;

use super::{qemu, Vm, VmConfig, VmFailure};
use crate::Error;

/// Starts each distinct configuration in `cfgs` paused and quits it again.
/// Returns how many distinct configurations were started.
pub async fn preflight(cfgs: Vec<VmConfig>) -> anyhow::Result<usize> {
    let mut seen = BTreeSet::new();
    for mut cfg in cfgs {
        let caps = super::caps_of(&cfg).await?;
        // Configs this QEMU cannot run are skipped by their tests, and
        // invalid ones are their tests' errors: neither is pre-flight's.
        let Ok(plan) = qemu::plan(&cfg, &caps) else {
            continue;
        };
        if !seen.insert(plan.args.clone()) {
            continue;
        }
        cfg.start_paused = true;
        let run_dir = cfg.run_dir.clone();
        match Vm::boot(cfg).await {
            Ok(vm) => vm.shutdown().await?,
            Err(e) => {
                let stderr = match e.downcast_ref::<VmFailure>() {
                    Some(VmFailure::QemuExited { stderr, .. }) => Some(stderr.trim().to_string()),
                    _ => None,
                };
                let Some(stderr) = stderr else {
                    return Err(e.context("pre-flight start of QEMU"));
                };
                let mut msg = format!(
                    "QEMU cannot start the machine the VM tests use (pre-flight, before any test ran):\n{stderr}\n"
                );
                if let Some(hint) = missing_file_hint(&stderr) {
                    msg.push_str(&hint);
                    msg.push('\n');
                }
                msg.push_str(&format!(
                    "command line: {}",
                    run_dir.join("qemu-cmdline.sh").display()
                ));
                return Err(Error::infra(msg).into());
            }
        }
    }
    Ok(seen.len())
}

/// Files QEMU loads at start, by the message it gives when one is missing,
/// and the Debian package that ships them.
const QEMU_FILES: &[(&str, &str, &str)] = &[
    (
        "failed to find romfile",
        "ipxe-qemu",
        "a NIC's option ROM (every NIC the harness places has `romfile=` empty; a device added by hand may not)",
    ),
    ("could not find firmware", "qemu-efi-aarch64", "UEFI firmware"),
    ("Could not open option rom", "ipxe-qemu", "an option ROM"),
];

/// What to install when QEMU's stderr says a file it loads is missing.
fn missing_file_hint(stderr: &str) -> Option<String> {
    QEMU_FILES
        .iter()
        .find(|(needle, _, _)| stderr.contains(needle))
        .map(|(_, package, what)| {
            format!("missing: {what}; it comes from the Debian package `{package}`")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_rom_names_its_package() {
        let stderr = "qemu-system-aarch64: -device virtio-net-pci,netdev=net0: failed to find romfile \"efi-virtio.rom\"";
        let hint = missing_file_hint(stderr).unwrap();
        assert!(hint.contains("`ipxe-qemu`"), "{hint}");
        assert_eq!(missing_file_hint("qemu-system-aarch64: -m 1G: bad"), None);
    }
}
