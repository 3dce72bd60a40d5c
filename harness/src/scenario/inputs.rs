//! `inputs.json`: what `cargo xtask test` built (kernels, image), handed to
//! the `scenarios` test target through `MSI_HARNESS_INPUTS`. The scenario
//! stage owns the type: it says what a scenario needs to run;
//! `crate::pipeline` fills it in and writes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
    /// How it speaks the SW_MSI options (the variant's declaration,
    /// checked against the headers); `None` when it has none.
    #[serde(default)]
    pub sw_msi: Option<crate::kernel::Dialect>,
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
    /// Which of its kernel reports the snapshots record with signatures
    /// (`kernel_reports`): a debug flavour's `report_scope` (empty: all).
    /// `None` for the default variants: their snapshots keep a report's
    /// first line only, as they were accepted.
    #[serde(default)]
    pub report_scope: Option<crate::kernel::ReportScope>,
    /// A mutant of the variant (`cargo xtask mutants`): its id, which the
    /// reproducer names instead of a `test` selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutant: Option<String>,
}

impl KernelInput {
    /// The `cargo xtask test` command that re-runs `scenario` on this kernel.
    pub fn reproducer(&self, variant: &str, scenario: &str) -> String {
        let q = crate::process::quote;
        if let Some(id) = &self.mutant {
            return format!(
                "cargo xtask mutants --variant {} --scenario {} {}",
                q(variant),
                q(scenario),
                q(id)
            );
        }
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
    /// Whether trials start from saved machines or boot (`--cold-boot`).
    #[serde(default)]
    pub start: crate::guest::saved::StartMode,
    /// The run's probe of the QEMU every guest uses (probed once per run).
    #[serde(default)]
    pub qemu: Option<crate::vm::QemuCaps>,
}

impl Inputs {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::cache::write_atomic(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> anyhow::Result<Inputs> {
        crate::cache::read_json(path, "inputs file")
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
                sw_msi: None,
                label: "sw-msi-rfcv2".into(),
                iommufd_selftest: None,
                selector: String::new(),
                mutant: None,
                report_scope: None,
            },
        );
        let inputs = Inputs {
            kernels,
            initramfs: "/c/initramfs.cpio.gz".into(),
            ssh_private_key: "/c/id_key".into(),
            results_dir: "/r/results".into(),
            artifacts_dir: "/r/scenarios".into(),
            start: Default::default(),
            qemu: None,
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
}
