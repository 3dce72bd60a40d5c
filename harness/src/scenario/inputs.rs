//! `inputs.json`: what `cargo xtask test` built, handed to the `scenarios`
//! test target through `MSI_HARNESS_INPUTS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The environment variable that points at the inputs file.
pub const INPUTS_ENV: &str = "MSI_HARNESS_INPUTS";

/// One built kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInput {
    pub image: PathBuf,
    pub headers: PathBuf,
    pub config: PathBuf,
    pub release: String,
    /// The kernel has `IOMMU_OPTION_SW_MSI_START/SIZE`.
    pub has_sw_msi: bool,
    pub label: String,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// By variant name (`upstream-6.18`, `sw-msi-rfcv2`).
    pub kernels: BTreeMap<String, KernelInput>,
    pub initramfs: PathBuf,
    pub ssh_private_key: PathBuf,
    /// Where each trial writes `<scenario>@<variant>.json`.
    pub results_dir: PathBuf,
    /// Where each trial's run directory goes (`<scenario>@<variant>/`).
    pub artifacts_dir: PathBuf,
}

impl Inputs {
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
