//! `results_dir/<scenario>@<variant>.json`: what one trial did, for the
//! aggregate report and for CI.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// Why a failed trial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The kernel misbehaved: snapshot mismatch, failed expectation, kernel report.
    Finding,
    /// The harness could not do its job: boot, agent, protocol.
    Infrastructure,
}

/// One trial's result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub scenario: String,
    pub variant: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Why it failed or was skipped (several lines possible).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub interrupts_delivered: u64,
    #[serde(default)]
    pub msi_addresses: Vec<String>,
    #[serde(default)]
    pub duration_s: f64,
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
