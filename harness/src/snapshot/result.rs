//! `results_dir/<scenario>@<variant>.json`: what one trial did, for the
//! aggregate report and for CI.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use crate::outcome::{Failure, Outcome};

/// One trial's result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub scenario: String,
    pub variant: String,
    /// `uname -r` of the guest. Kept here, not in the snapshot: a
    /// reviewer's tree of another release must compare by behaviour.
    #[serde(default)]
    pub kernel_release: String,
    /// How it ended (`crate::outcome` decides what that means for the run).
    pub outcome: Outcome,
    /// Why it failed or was skipped (several lines possible).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub interrupts_delivered: u64,
    #[serde(default)]
    pub msi_addresses: Vec<String>,
    #[serde(default)]
    pub duration_s: f64,
    /// The guest started from its saved machine (`guest::saved`), not a boot.
    #[serde(default)]
    pub restored: bool,
    pub artifacts: PathBuf,
    pub reproducer: String,
}

impl TrialResult {
    /// `<scenario>@<variant>`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.scenario, self.variant)
    }

    /// The command that re-runs this trial.
    pub fn reproducer_for(scenario: &str, variant: &str) -> String {
        format!("cargo xtask test --variant {variant} {scenario}")
    }

    pub fn write(&self, results_dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(results_dir)
            .with_context(|| format!("create {}", results_dir.display()))?;
        let path = results_dir.join(format!("{}.json", self.name()));
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::cache::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}
