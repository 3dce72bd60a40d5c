//! `deps`, `kernel` and `image`: the build stages on their own.

use std::time::Instant;

use harness::event::Reporter;
use harness::kernel::{BuildOptions, KernelSource};
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
        let options = BuildOptions {
            series: self.series.as_deref(),
            fuzz: self.fuzz,
            ..Default::default()
        };
        if self.check {
            let started = Instant::now();
            let checked = harness::kernel::check_series(
                KernelSource::Variant(&self.variant),
                options,
                reporter,
                &run_dir,
            )?;
            println!(
                "series   {}, none stale{}",
                harness::kernel::patches_n(checked.patches.len()),
                fuzz_note(checked.fuzz)
            );
            for p in &checked.patches {
                println!("  {}", p.line());
            }
            println!("source   {}", checked.pristine.display());
            println!(
                "files    {} changed ({:.2} s, nothing built)",
                checked.files.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::Pass);
        }
        let request = match self.kernel_tree {
            Some(path) => KernelRequest::Tree {
                path,
                as_variant: "tree".into(),
            },
            None => KernelRequest::Variant(self.variant),
        };
        let (build, input) = build_kernel(&request, options, reporter, &run_dir)?;
        println!(
            "kernel   {} ({}){}",
            input.label,
            build.release,
            if build.cached { ", cached" } else { "" }
        );
        if !build.patches.is_empty() {
            println!(
                "series   {}{}",
                harness::kernel::patches_n(build.patches.len()),
                fuzz_note(build.fuzz)
            );
            for p in &build.patches {
                println!("  {}", p.line());
            }
        }
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

fn fuzz_note(fuzz: u32) -> String {
    if fuzz > 0 {
        format!(", with fuzz {fuzz}")
    } else {
        String::new()
    }
}

impl flags::Matrix {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let file = harness::kernel::variants::load_file(&harness::kernel::variants::kernels_toml(
            &harness::cache::project_root(),
        ))?;
        let matrix = harness::nightly::matrix(&file, self.shards);
        println!("{}", serde_json::to_string(&matrix)?);
        Ok(ExitCode::Pass)
    }
}
