//! `deps`, `kernel` and `image`: the build stages on their own.

use std::time::Instant;

use harness::event::Reporter;
use harness::pipeline::{build_kernel, KernelRequest};
use harness::ExitCode;

use crate::flags;

impl flags::Deps {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        harness::deps::ensure(reporter)?;
        println!(
            "all host tools present ({:.2} s)",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::Pass)
    }
}

impl flags::Kernel {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        harness::deps::ensure(reporter)?;
        let run_dir = harness::cache::new_run_dir("kernel")?;
        let request = match self.kernel_tree {
            Some(path) => KernelRequest::Tree {
                path,
                as_variant: "tree".into(),
            },
            None => KernelRequest::Variant(self.variant),
        };
        let (build, input) = build_kernel(&request, self.series.as_deref(), reporter, &run_dir)?;
        println!(
            "kernel   {} ({}){}",
            input.label,
            build.release,
            if build.cached { ", cached" } else { "" }
        );
        println!("image    {}", build.image.display());
        println!("config   {}", build.config.display());
        println!("headers  {}", build.headers.display());
        println!(
            "sw_msi   {}",
            if input.has_sw_msi {
                "IOMMU_OPTION_SW_MSI_START/SIZE defined"
            } else {
                "no IOMMU_OPTION_SW_MSI_* in the uapi"
            }
        );
        Ok(ExitCode::Pass)
    }
}

impl flags::Image {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        harness::deps::ensure(reporter)?;
        let run_dir = harness::cache::new_run_dir("image")?;
        let image = harness::image::build(reporter, &run_dir)?;
        println!(
            "initramfs {}{}",
            image.initramfs.display(),
            if image.cached { " (cached)" } else { "" }
        );
        println!("ssh key   {}", image.ssh_private_key.display());
        Ok(ExitCode::Pass)
    }
}
