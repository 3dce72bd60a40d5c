//! snapshot stage: what a scenario run observed, as one readable YAML
//! snapshot per (scenario, variant) under `scenarios/snapshots/`, compared
//! with insta; per-trial result JSON; the aggregate report.
//!
//! Snapshots hold nothing that changes from run to run: no timestamps,
//! ports, PIDs or temporary paths. Addresses stay: they are the point.
//! Trace events are aggregated with counts (see [`observe`]).

pub mod observe;
pub mod report;
pub mod result;

use std::path::PathBuf;

use serde::Serialize;

use crate::scenario::exec::{Execution, PlacedSummary, StepRecord};
use crate::scenario::Scenario;

/// The snapshot document of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDoc {
    pub scenario: String,
    pub variant: String,
    pub kernel_release: String,
    pub machine: String,
    pub devices: Vec<PlacedSummary>,
    /// Kernel reports printed while booting (normally none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub boot_kernel_reports: Vec<String>,
    pub steps: Vec<StepRecord>,
    /// Set when the scenario could not run to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

impl SnapshotDoc {
    pub fn new(scenario: &Scenario, variant: &str, exec: &Execution) -> SnapshotDoc {
        SnapshotDoc {
            scenario: scenario.name.clone(),
            variant: variant.to_string(),
            kernel_release: exec.kernel_release.clone(),
            machine: exec.machine.clone(),
            devices: exec.devices.clone(),
            boot_kernel_reports: exec.boot_reports.clone(),
            steps: exec.steps.clone(),
            aborted: exec.aborted.clone(),
        }
    }
}

/// `<project>/scenarios/snapshots`.
pub fn snapshot_dir() -> PathBuf {
    crate::scenario::scenarios_dir().join("snapshots")
}

/// The snapshot's name: `<scenario>@<variant>`.
pub fn snapshot_name(scenario: &str, variant: &str) -> String {
    format!("{scenario}@{variant}")
}

/// Compares `doc` with the accepted snapshot (insta prints the diff).
/// `INSTA_UPDATE=always` accepts it; `CI=true` never writes.
pub fn compare(scenario: &Scenario, doc: &SnapshotDoc) -> Result<(), String> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir());
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(&scenario.display_path);
    settings.set_description(scenario.description.trim_end());
    settings.set_omit_expression(true);
    let name = snapshot_name(&doc.scenario, &doc.variant);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name.as_str(), doc));
    }));
    // insta printed the diff; its panic message only repeats the line.
    r.map_err(|_| {
        format!(
            "snapshot {name} does not match {} (diff above; accept with `cargo xtask bless` or INSTA_UPDATE=always)",
            crate::scenario::display_path(&snapshot_dir().join(format!("{name}.snap"))),
        )
    })
}
