//! `boot` and `shell`: one guest, by hand.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use harness::event::Reporter;
use harness::pipeline::{build_kernel, KernelRequest};
use harness::vm::{Device, Vm};
use harness::ExitCode;

use crate::flags;

/// Builds (or finds cached) kernel and image, and boots them.
async fn boot_guest(
    variant: &str,
    edu: u32,
    label: &str,
    reporter: &dyn Reporter,
) -> anyhow::Result<Vm> {
    harness::deps::ensure(reporter)?;
    let run_dir = harness::cache::new_run_dir(label)?;
    let (build, _) = build_kernel(
        &KernelRequest::Variant(variant.into()),
        Default::default(),
        reporter,
        &run_dir,
    )?;
    let image = harness::image::build(reporter, &run_dir)?;
    let devices = (0..edu)
        .map(|i| Device::Edu {
            id: format!("edu{i}"),
            dma_mask: None,
        })
        .collect();
    let cfg = harness::guest::with_devices(
        &build.image,
        &image.initramfs,
        &image.ssh_private_key,
        devices,
        &run_dir.join("vm"),
    )?;
    println!("artifacts {}", run_dir.display());
    Vm::boot(cfg).await
}

impl flags::Boot {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        crate::runtime()?.block_on(async {
            let vm = boot_guest(&self.variant, self.edu, "boot", reporter).await?;
            println!("{}", vm.boot_timings());
            for d in vm.devices().iter().filter(|d| !d.infrastructure) {
                println!(
                    "device {} ({}) at {} requester id {:#06x}",
                    d.id, d.driver, d.bdf, d.requester_id
                );
            }
            let out = vm
                .exec_ok("uname -r; ls /dev/vfio/devices", Duration::from_secs(10))
                .await?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            vm.shutdown().await?;
            Ok(ExitCode::Pass)
        })
    }
}

impl flags::Shell {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        crate::runtime()?.block_on(async {
            let vm = boot_guest(&self.variant, self.edu, "shell", reporter).await?;
            let ssh = vm
                .ssh_command_line()
                .context("the guest has no SSH forward")?;
            println!("{}", vm.boot_timings());
            println!("from another terminal: {ssh}");
            println!("the guest powers off when this shell exits");
            // The interactive shell is the host's own ssh client: a terminal
            // needs a real pty, which ssh handles better than we would.
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("exec {ssh} -t"))
                .status()
                .context("run ssh (Debian package openssh-client)")?;
            vm.shutdown().await?;
            Ok(if status.success() {
                ExitCode::Pass
            } else {
                ExitCode::Infrastructure
            })
        })
    }
}
