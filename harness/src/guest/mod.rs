//! The harness's guest: the one VM configuration that `cargo xtask boot`,
//! `shell`, the VM tests, the pre-flight check and every scenario start
//! from, so that a guest booted by hand is the guest the scenarios see.
//!
//! [`config`] is the guest without its devices' bindings: the image's
//! kernel and initramfs, SSH as root with the image's key, the SMMU and ITS
//! trace events, the boot deadline. [`bind_vfio`] writes the kernel command
//! line once the devices are placed (the vm stage's placement plan says
//! which BDF each got); [`with_devices`] does both for the usual "these
//! devices, every `edu` bound to vfio-pci".

pub mod saved;

use std::path::Path;
use std::time::Duration;

use crate::image::{kernel_cmdline, CmdlineOptions};
use crate::vm::{self, qemu::QemuPlan, VmConfig};

/// The QEMU trace events a guest records: the SMMU's translations, aborts
/// and queued events, and the ITS's doorbell writes.
pub const TRACE_EVENTS: [&str; 4] = [
    "smmuv3_translate_success",
    "smmuv3_translate_abort",
    "smmuv3_record_event",
    "gicv3_its_translation_write",
];

/// From QEMU's start to the agent being reachable over SSH. A TCG boot
/// takes a few seconds; the margin is for a loaded 2-core host.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// The guest of `kernel_image` and the image (`initramfs`, its SSH key),
/// artifacts in `run_dir`; no devices yet and no vfio bindings.
pub fn config(
    kernel_image: &Path,
    initramfs: &Path,
    ssh_private_key: &Path,
    run_dir: &Path,
) -> VmConfig {
    let mut cfg = VmConfig::new(
        kernel_image.to_path_buf(),
        initramfs.to_path_buf(),
        run_dir.to_path_buf(),
    );
    cfg.ssh = Some(vm::SshConfig {
        private_key: ssh_private_key.to_path_buf(),
        user: "root".into(),
    });
    cfg.trace_events = TRACE_EVENTS.iter().map(|s| s.to_string()).collect();
    cfg.boot_timeout = BOOT_DEADLINE;
    cfg
}

/// Sets the kernel command line: `/init` binds `vfio` (BDFs from a
/// placement plan) to vfio-pci and reserves `hugepages`.
pub fn bind_vfio(cfg: &mut VmConfig, vfio: Vec<String>, hugepages: Option<u32>) {
    cfg.append = kernel_cmdline(&CmdlineOptions {
        vfio,
        hugepages,
        extra: Vec::new(),
    });
}

/// The BDFs of every `edu` in `plan`.
pub fn edu_bdfs(plan: &QemuPlan) -> Vec<String> {
    plan.devices
        .iter()
        .filter(|d| !d.infrastructure && d.driver == "edu")
        .map(|d| d.bdf.to_string())
        .collect()
}

/// [`config`] with `devices`, every `edu` among them bound to vfio-pci.
pub fn with_devices(
    kernel_image: &Path,
    initramfs: &Path,
    ssh_private_key: &Path,
    devices: Vec<vm::Device>,
    run_dir: &Path,
) -> anyhow::Result<VmConfig> {
    let mut cfg = config(kernel_image, initramfs, ssh_private_key, run_dir);
    cfg.devices = devices;
    let caps = vm::probe(&cfg.qemu)?;
    let plan = vm::qemu::plan(&cfg, &caps)?;
    bind_vfio(&mut cfg, edu_bdfs(&plan), None);
    Ok(cfg)
}
