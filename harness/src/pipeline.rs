//! The stages wired together: what `cargo xtask test`, `boot` and `shell`
//! need before a guest can run.
//!
//! [`prepare`] runs the host check, builds every requested kernel and the
//! image, and returns [`Inputs`]: the hand-off to the scenario test target,
//! written as `inputs.json` and passed to it as `MSI_HARNESS_INPUTS`, so the
//! test binary (run by nextest, possibly sharded) needs no build logic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::event::Reporter;
use crate::kernel::{self, BuildOptions, KernelBuild, KernelSource};
use crate::{deps, image, vm};

/// The environment variable naming the inputs file.
pub const INPUTS_ENV: &str = "MSI_HARNESS_INPUTS";

/// One kernel the scenarios run against, under the name of the variant whose
/// snapshots it is compared with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInput {
    pub image: PathBuf,
    /// The exported uapi `include` directory.
    pub headers: PathBuf,
    pub config: PathBuf,
    pub release: String,
    /// Whether the uapi headers define `IOMMU_OPTION_SW_MSI_START`.
    pub has_sw_msi: bool,
    /// What was built: the variant name, or `NAME (tree PATH)`.
    pub label: String,
    /// The kernel's iommufd kselftest, cross-built from the same tree.
    #[serde(default)]
    pub iommufd_selftest: Option<PathBuf>,
    /// The `cargo xtask test` flags that select this kernel again
    /// (`--variant V`, `--variant V --series F`, `--kernel-tree P --as V`),
    /// for reproducer lines.
    #[serde(default)]
    pub selector: String,
}

impl KernelInput {
    /// The `cargo xtask test` command that re-runs `scenario` on this kernel.
    pub fn reproducer(&self, variant: &str, scenario: &str) -> String {
        let selector = if self.selector.is_empty() {
            format!("--variant {}", crate::process::quote(variant))
        } else {
            self.selector.clone()
        };
        format!(
            "cargo xtask test {selector} {}",
            crate::process::quote(scenario)
        )
    }
}

/// Everything the scenario trials need, built beforehand.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    pub kernels: BTreeMap<String, KernelInput>,
    pub initramfs: PathBuf,
    pub ssh_private_key: PathBuf,
    /// Where each trial writes `<scenario>@<variant>.json`.
    pub results_dir: PathBuf,
    /// Where each trial keeps its artifacts (`<scenario>@<variant>/`).
    pub artifacts_dir: PathBuf,
}

impl Inputs {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::cache::write_atomic(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> anyhow::Result<Inputs> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::Error::infra(format!("cannot read inputs file {}: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            crate::Error::infra(format!(
                "{}:{}:{}: invalid inputs file: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
            .into()
        })
    }

    /// The inputs named by `MSI_HARNESS_INPUTS`, `None` when it is unset.
    pub fn from_env() -> anyhow::Result<Option<Inputs>> {
        match std::env::var_os(INPUTS_ENV) {
            Some(p) if !p.is_empty() => Inputs::load(Path::new(&p))
                .with_context(|| format!("{INPUTS_ENV}={}", Path::new(&p).display()))
                .map(Some),
            _ => Ok(None),
        }
    }
}

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

/// Builds one kernel and describes it for the scenario trials.
pub fn build_kernel(
    request: &KernelRequest,
    series: Option<&Path>,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<(KernelBuild, KernelInput)> {
    let q = |p: &Path| crate::process::quote(&p.display().to_string());
    let (source, label, selector) = match request {
        KernelRequest::Variant(v) => {
            let mut selector = format!("--variant {}", crate::process::quote(v));
            if let Some(series) = series {
                let series = std::fs::canonicalize(series).unwrap_or_else(|_| series.to_path_buf());
                selector.push_str(&format!(" --series {}", q(&series)));
            }
            (KernelSource::Variant(v), v.clone(), selector)
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
    };
    let build = kernel::build_with(source, BuildOptions { series }, reporter, run_dir)?;
    let has_sw_msi = headers_define(&build.headers, "IOMMU_OPTION_SW_MSI_START")?;
    let selftest = kernel::selftest::build_iommufd_selftest(&build, reporter, run_dir)?;
    let input = KernelInput {
        image: build.image.clone(),
        headers: build.headers.clone(),
        config: build.config.clone(),
        release: build.release.clone(),
        has_sw_msi,
        label,
        iommufd_selftest: Some(selftest),
        selector,
    };
    Ok((build, input))
}

/// Whether the exported `linux/iommufd.h` mentions `symbol`.
pub fn headers_define(include_dir: &Path, symbol: &str) -> anyhow::Result<bool> {
    let header = include_dir.join("linux/iommufd.h");
    let text = std::fs::read_to_string(&header)
        .with_context(|| format!("read exported header {}", header.display()))?;
    Ok(text.contains(symbol))
}

/// Host check, kernels, image: everything before the first VM. `series`,
/// when given, replaces the patch series of every variant built.
pub fn prepare(
    kernels: &[KernelRequest],
    series: Option<&Path>,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<Inputs> {
    deps::ensure(reporter)?;
    let mut built = BTreeMap::new();
    for request in kernels {
        // A replacement series applies to variants; a local tree is built as it is.
        let series = match request {
            KernelRequest::Variant(_) => series,
            KernelRequest::Tree { .. } => None,
        };
        let (_, input) = build_kernel(request, series, reporter, run_dir)?;
        built.insert(request.variant().to_string(), input);
    }
    let image = image::build(reporter, run_dir)?;
    let results_dir = run_dir.join("results");
    let artifacts_dir = run_dir.join("scenarios");
    std::fs::create_dir_all(&results_dir)?;
    std::fs::create_dir_all(&artifacts_dir)?;
    Ok(Inputs {
        kernels: built,
        initramfs: image.initramfs,
        ssh_private_key: image.ssh_private_key,
        results_dir,
        artifacts_dir,
    })
}

/// A guest of the harness's image with `devices`, every `edu` among them
/// bound to vfio-pci, reachable over SSH; traces of the SMMU and ITS on.
pub fn guest_config(
    kernel_image: &Path,
    initramfs: &Path,
    ssh_private_key: &Path,
    devices: Vec<vm::Device>,
    run_dir: &Path,
) -> anyhow::Result<vm::VmConfig> {
    let mut cfg = vm::VmConfig::new(
        kernel_image.to_path_buf(),
        initramfs.to_path_buf(),
        run_dir.to_path_buf(),
    );
    cfg.ssh = Some(vm::SshConfig {
        private_key: ssh_private_key.to_path_buf(),
        user: "root".into(),
    });
    cfg.devices = devices;
    cfg.trace_events = TRACE_EVENTS.iter().map(|s| s.to_string()).collect();
    let caps = vm::probe(&cfg.qemu)?;
    let plan = vm::qemu::plan(&cfg, &caps)?;
    let vfio = plan
        .devices
        .iter()
        .filter(|d| !d.infrastructure && d.driver == "edu")
        .map(|d| d.bdf.to_string())
        .collect();
    cfg.append = image::kernel_cmdline(&image::CmdlineOptions {
        vfio,
        hugepages: None,
        extra: Vec::new(),
    });
    Ok(cfg)
}

/// The QEMU trace events every guest records: the SMMU's translations and
/// faults, and the ITS's doorbell writes.
pub const TRACE_EVENTS: &[&str] = &[
    "smmuv3_translate_*",
    "smmuv3_record_event",
    "gicv3_its_translation_write",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_and_reject_unknown_fields() {
        let mut kernels = BTreeMap::new();
        kernels.insert(
            "sw-msi-rfcv2".to_string(),
            KernelInput {
                image: "/c/Image".into(),
                headers: "/c/include".into(),
                config: "/c/config".into(),
                release: "6.18.15".into(),
                has_sw_msi: true,
                label: "sw-msi-rfcv2".into(),
                iommufd_selftest: None,
                selector: String::new(),
            },
        );
        let inputs = Inputs {
            kernels,
            initramfs: "/c/initramfs.cpio.gz".into(),
            ssh_private_key: "/c/id_key".into(),
            results_dir: "/r/results".into(),
            artifacts_dir: "/r/scenarios".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.json");
        inputs.write(&path).unwrap();
        let back = Inputs::load(&path).unwrap();
        assert_eq!(back.kernels["sw-msi-rfcv2"].release, "6.18.15");
        let bad =
            std::fs::read_to_string(&path)
                .unwrap()
                .replacen("\"initramfs\"", "\"initrd\"", 1);
        std::fs::write(&path, bad).unwrap();
        let err = format!("{:#}", Inputs::load(&path).unwrap_err());
        assert!(err.contains("initrd"), "{err}");
    }

    #[test]
    fn sw_msi_is_read_from_the_exported_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("linux")).unwrap();
        std::fs::write(
            dir.path().join("linux/iommufd.h"),
            "IOMMU_OPTION_HUGE_PAGES = 1,\n",
        )
        .unwrap();
        assert!(!headers_define(dir.path(), "IOMMU_OPTION_SW_MSI_START").unwrap());
        std::fs::write(
            dir.path().join("linux/iommufd.h"),
            "IOMMU_OPTION_SW_MSI_START = 2,\n",
        )
        .unwrap();
        assert!(headers_define(dir.path(), "IOMMU_OPTION_SW_MSI_START").unwrap());
    }
}
