//! The stages wired together: what `cargo xtask test`, `boot` and `shell`
//! need before a guest can run.
//!
//! [`prepare`] runs the host check, builds every requested kernel and the
//! image, and returns the scenario stage's [`Inputs`]: the hand-off to the
//! scenario test target, written as `inputs.json` and passed to it as
//! `MSI_HARNESS_INPUTS`, so the test binary (run by nextest, possibly
//! sharded) needs no build logic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::event::Reporter;
use crate::kernel::{self, BuildOptions, KernelBuild, KernelSource};
pub use crate::scenario::inputs::{Inputs, KernelInput, INPUTS_ENV};
use crate::{deps, image};

/// A kernel to build: a variant, or a local tree judged against a variant's
/// snapshots.
#[derive(Debug, Clone)]
pub enum KernelRequest {
    Variant(String),
    Tree { path: PathBuf, as_variant: String },
}

impl KernelRequest {
    /// The variant whose snapshots this kernel is compared with.
    pub fn variant(&self) -> &str {
        match self {
            KernelRequest::Variant(v) => v,
            KernelRequest::Tree { as_variant, .. } => as_variant,
        }
    }
}

/// Builds one kernel and describes it for the scenario trials; `options`
/// (`--series`, `--fuzz`) apply to a variant.
pub fn build_kernel(
    request: &KernelRequest,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<(KernelBuild, KernelInput)> {
    let (source, label, selector) = describe(request, options);
    let options = match request {
        KernelRequest::Variant(_) => options,
        // A local tree is built as it is.
        KernelRequest::Tree { .. } => BuildOptions::default(),
    };
    let build = kernel::build_with(source, options, reporter, run_dir)?;
    let has_sw_msi = build.uapi.defines("IOMMU_OPTION_SW_MSI_START");
    let declared = declared(request.variant())?;
    let sw_msi = declared.as_ref().and_then(|v| v.sw_msi.clone());
    if let Some(dialect) = &sw_msi {
        let work_dir = run_dir.join(format!("uapi-check-{}", build.name));
        kernel::uapi_check::check_dialect(&build.headers, &work_dir, dialect)?;
        reporter.line(
            crate::event::Stage::Kernel,
            format!("SW_MSI dialect {}", dialect.summary()),
        );
    }
    let selftest = kernel::selftest::build_iommufd_selftest(&build, reporter, run_dir)?;
    let input = KernelInput {
        image: build.image.clone(),
        headers: build.headers.clone(),
        config: build.config.clone(),
        release: build.release.clone(),
        has_sw_msi,
        sw_msi,
        label,
        iommufd_selftest: Some(selftest),
        selector,
        report_scope: declared.and_then(|v| v.report_scope),
        mutant: match options.mutation {
            kernel::Mutation::Mutant(m) => Some(m.id.clone()),
            _ => None,
        },
    };
    Ok((build, input))
}

/// The variant `kernels.toml` declares as `name` (flavoured names too);
/// `None` for a name that is not a variant, such as `xtask kernel`'s `tree`.
fn declared(name: &str) -> anyhow::Result<Option<kernel::Variant>> {
    let file = kernel::variants::load_file(&kernel::variants::kernels_toml(
        &crate::cache::project_root(),
    ))?;
    Ok(file.variant(name).ok())
}

/// The variant whose snapshots a requested kernel is compared with: a
/// tree's `--as`, a variant's `compare_as` (flavoured alike), else itself.
pub fn compared_as(request: &KernelRequest) -> anyhow::Result<String> {
    Ok(match request {
        KernelRequest::Variant(v) => match declared(v)? {
            Some(d) => d.snapshots().to_string(),
            None => v.clone(),
        },
        KernelRequest::Tree { as_variant, .. } => as_variant.clone(),
    })
}

/// Whether a kernel's headers and its variant's declaration agree that it
/// has the SW_MSI options: scenarios translate through the dialect, so a
/// kernel with the options but no dialect (or the reverse) cannot be run.
fn check_declared(variant: &str, input: &KernelInput) -> anyhow::Result<()> {
    match (&input.sw_msi, input.has_sw_msi) {
        (Some(d), false) => Err(crate::error::Error::infra(format!(
            "{}: kernel-configs/kernels.toml says variant {variant} speaks SW_MSI dialect {}, \
             but the kernel's <linux/iommufd.h> has no IOMMU_OPTION_SW_MSI_START",
            input.label, d.name
        ))
        .into()),
        (None, true) => Err(crate::error::Error::infra(format!(
            "{}: the kernel's <linux/iommufd.h> defines IOMMU_OPTION_SW_MSI_START, but variant \
             {variant} declares no `sw_msi` dialect in kernel-configs/kernels.toml: compare it \
             as a variant that does (`--kernel-tree PATH --as sw-msi-rfcv2`, or \
             `--variant sw-msi-rfcv2 --series FILE`), or declare one",
            input.label
        ))
        .into()),
        _ => Ok(()),
    }
}

/// What to build, its label, and the kernel selection a reproducer
/// repeats (`--variant v --series /abs/s.mbox:9 --fuzz 1`).
fn describe<'a>(
    request: &'a KernelRequest,
    options: BuildOptions,
) -> (KernelSource<'a>, String, String) {
    let q = |p: &Path| crate::process::quote(&p.display().to_string());
    match request {
        KernelRequest::Variant(v) => {
            let mut selector = format!("--variant {}", crate::process::quote(v));
            if let Some(series) = options.series {
                selector.push_str(&format!(" --series {}", q(&absolute_series(series))));
            }
            if options.fuzz > 0 {
                selector.push_str(&format!(" --fuzz {}", options.fuzz));
            }
            let label = match options.mutation {
                kernel::Mutation::Mutant(m) => format!("{v} mutant {}", m.id),
                _ => v.clone(),
            };
            (KernelSource::Variant(v), label, selector)
        }
        KernelRequest::Tree { path, as_variant } => (
            KernelSource::Tree { path },
            format!("{as_variant} (tree {})", path.display()),
            format!(
                "--kernel-tree {} --as {}",
                q(path),
                crate::process::quote(as_variant)
            ),
        ),
    }
}

/// `--series PATH[:NUMBERS]` with PATH made absolute, for a reproducer run
/// from anywhere.
fn absolute_series(series: &Path) -> PathBuf {
    match kernel::patch::series::SeriesSpec::parse(series) {
        Ok(mut spec) => {
            if let Ok(abs) = std::fs::canonicalize(&spec.path) {
                spec.path = abs;
            }
            PathBuf::from(spec.to_string())
        }
        Err(_) => series.to_path_buf(),
    }
}

/// Host check, kernels, image: everything before the first VM. `options`
/// (a replacement series, fuzz) apply to every variant built; a local tree
/// is built as it is.
pub fn prepare(
    kernels: &[KernelRequest],
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<Inputs> {
    Ok(prepare_with_builds(kernels, options, reporter, run_dir)?.0)
}

/// [`prepare`], and each kernel's [`KernelBuild`] in the order asked (for
/// what the inputs do not carry, such as a mutants-tree build's objects).
pub fn prepare_with_builds(
    kernels: &[KernelRequest],
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<(Inputs, Vec<KernelBuild>)> {
    deps::ensure(reporter)?;
    let mut built = BTreeMap::new();
    let mut builds = Vec::with_capacity(kernels.len());
    for request in kernels {
        let (build, input) = build_kernel(request, options, reporter, run_dir)?;
        builds.push(build);
        check_declared(request.variant(), &input)?;
        let key = compared_as(request)?;
        if built.contains_key(&key) {
            return Err(crate::error::Error::infra(format!(
                "two kernels of this run are compared with the snapshots of {key}: run them one at a time"
            ))
            .into());
        }
        built.insert(key, input);
    }
    let image = image::build(reporter, run_dir)?;
    let results_dir = run_dir.join("results");
    let artifacts_dir = run_dir.join("scenarios");
    std::fs::create_dir_all(&results_dir)?;
    std::fs::create_dir_all(&artifacts_dir)?;
    // Probed once here; every trial of the run reads it from the inputs.
    let qemu = crate::vm::probe(Path::new(crate::vm::QEMU))?;
    let inputs = Inputs {
        kernels: built,
        initramfs: image.initramfs,
        ssh_private_key: image.ssh_private_key,
        results_dir,
        artifacts_dir,
        start: Default::default(),
        qemu: Some(qemu),
    };
    Ok((inputs, builds))
}

/// Guest RAM the largest scenario asks for, plus QEMU's own: what one
/// more test running at once may need.
const MEMORY_PER_JOB_MB: u64 = 1536 + 512;

/// How many tests (so guests) run at once by default: two per core, as
/// long as memory holds that many of the largest guest. A trial keeps its
/// guest's vCPUs busy only part of the time (SSH round trips, the host's
/// own work, waits for the kernel's reports), so one per core leaves cores
/// idle. Measured on 2 cores, warm suite: 2 at once 94 s, 3 79 s, 4 72 s,
/// 6 88 s (the kselftest guests then starve); `cargo xtask bench` measures
/// one at a time against this.
pub fn default_jobs() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = available_memory_mb().unwrap_or(MEMORY_PER_JOB_MB);
    (2 * cores).min(memory / MEMORY_PER_JOB_MB).max(1) as u32
}

/// `MemAvailable` of /proc/meminfo, in MiB.
fn available_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reproducer_names_the_series_by_absolute_path_with_its_pick() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("s.mbox");
        std::fs::write(&mbox, "x").unwrap();
        let abs = std::fs::canonicalize(&mbox).unwrap();
        let picked = PathBuf::from(format!("{}:4,8-9", mbox.display()));
        assert_eq!(
            absolute_series(&picked),
            PathBuf::from(format!("{}:4,8-9", abs.display()))
        );
        assert_eq!(absolute_series(&mbox), abs);
        // What does not exist is passed on as given (the build says why).
        let gone = Path::new("gone.mbox:2");
        assert_eq!(absolute_series(gone), gone);
        let request = KernelRequest::Variant("upstream-6.18".into());
        let options = BuildOptions {
            series: Some(&picked),
            fuzz: 1,
            ..Default::default()
        };
        let (_, label, selector) = describe(&request, options);
        assert_eq!(label, "upstream-6.18");
        assert_eq!(
            selector,
            format!(
                "--variant upstream-6.18 --series '{}:4,8-9' --fuzz 1",
                abs.display()
            )
        );
        let (_, _, strict) = describe(&request, BuildOptions::default());
        assert_eq!(strict, "--variant upstream-6.18");
    }
}
