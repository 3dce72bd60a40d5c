//! snapshot stage: what a scenario run observed, as one readable YAML
//! snapshot per (scenario, variant) under `scenarios/snapshots/`, compared
//! with insta; per-trial result JSON; the aggregate report.
//!
//! Snapshots hold nothing that changes from run to run: no timestamps,
//! ports, PIDs or temporary paths. Addresses stay: they are the point.
//! Trace events are aggregated with counts (see [`observe`]).

pub mod junit;
pub mod kernel_report;
pub mod observe;
pub mod report;
pub mod result;

use std::path::PathBuf;

use msi_protocol::{StepResult, StepValue};
use serde::{Deserialize, Serialize};

use crate::scenario::exec::{Execution, StepOutput, StepRecord};
use crate::scenario::Scenario;
use observe::Observations;

/// The snapshot document of one run. Read back (`Deserialize`) from a run's
/// `observations.json` or an accepted snapshot's body by `crate::compare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotDoc {
    pub scenario: String,
    pub variant: String,
    /// Not part of the snapshot (a tree of another release, or one that
    /// `setlocalversion` marks `6.18.15+`, must compare by behaviour): the
    /// trial's result file records it.
    #[serde(skip)]
    pub kernel_release: String,
    pub machine: String,
    pub devices: Vec<PlacedDevice>,
    /// Kernel reports printed while booting (normally none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_kernel_reports: Vec<String>,
    /// Those reports with their signatures (see `kernel_report`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_reports: Vec<kernel_report::KernelFinding>,
    pub steps: Vec<SnapshotStep>,
    /// Set when the scenario could not run to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

/// Device placement as the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacedDevice {
    pub id: String,
    pub bdf: String,
    pub requester_id: String,
}

/// One step as the snapshot records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotStep {
    pub step: usize,
    /// The step as sent (defaults filled in), `op` first.
    pub request: OpFirst,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<serde_json::Value>,
    /// The agent's result (or the host step's).
    pub result: serde_json::Value,
    #[serde(flatten)]
    pub observed: Observations,
}

impl SnapshotDoc {
    /// The normalised view of `exec`: trace events aggregated, kernel lines
    /// without timestamps and PIDs, keys in reading order.
    /// `scope`: which kernel reports the snapshot records with signatures
    /// (the kernel's flavour says; see [`kernel_report::ReportScope`]);
    /// `None`: none (a default variant's snapshot keeps first lines only).
    pub fn new(
        scenario: &Scenario,
        variant: &str,
        exec: &Execution,
        scope: Option<&kernel_report::ReportScope>,
    ) -> SnapshotDoc {
        SnapshotDoc {
            scenario: scenario.name.clone(),
            variant: variant.to_string(),
            kernel_release: exec.kernel_release.clone(),
            machine: exec.machine.clone(),
            devices: exec
                .devices
                .iter()
                .map(|d| PlacedDevice {
                    id: d.id.clone(),
                    bdf: d.bdf.clone(),
                    requester_id: format!("{:#x}", d.requester_id),
                })
                .collect(),
            boot_kernel_reports: observe::first_lines(
                exec.boot_console.iter().map(String::as_str),
                scope,
            ),
            boot_reports: kernel_report::findings(
                exec.boot_console.iter().map(String::as_str),
                scope,
            ),
            steps: exec.steps.iter().map(|r| snapshot_step(r, scope)).collect(),
            aborted: exec.aborted.clone(),
        }
    }
}

fn snapshot_step(r: &StepRecord, scope: Option<&kernel_report::ReportScope>) -> SnapshotStep {
    SnapshotStep {
        step: r.step,
        request: OpFirst(r.request.clone()),
        expect: r.expect.clone(),
        result: snapshot_result(&r.result, &r.request),
        observed: observe::aggregate(
            &r.trace,
            &r.devices_by_rid,
            r.console.iter().map(String::as_str),
            scope,
        ),
    }
}

/// A step's answer as the snapshot shows it: kernel log lines lose their
/// timestamps and PIDs (the transcript keeps them raw).
fn snapshot_result(output: &StepOutput, request: &serde_json::Value) -> serde_json::Value {
    let value = match output {
        StepOutput::Agent(StepResult::Ok(StepValue::Dmesg(lines))) => {
            let lines = lines
                .iter()
                .map(|l| observe::normalise_kernel_line(l))
                .collect();
            serde_json::to_value(StepResult::Ok(StepValue::Dmesg(lines)))
        }
        StepOutput::Agent(StepResult::Ok(StepValue::Concurrent(branches))) => {
            let timed = request.get("duration_ms").is_some();
            Ok(concurrent_view(branches, timed))
        }
        StepOutput::Agent(r) => serde_json::to_value(r),
        StepOutput::Host(v) => Ok(v.clone()),
        StepOutput::ProtocolError(message) => Ok(serde_json::json!({ "protocol_error": message })),
    };
    // A StepResult is plain data; serialising it cannot fail.
    value.unwrap_or(serde_json::Value::Null)
}

/// A `concurrent` step's answer as the snapshot shows it: which outcomes
/// each branch step had, `all` of its iterations or `some`. The counts
/// depend on the interleaving (v2 answers EBUSY only while attached), so
/// they stay in the agent transcript.
/// A timed run (`duration_ms`) does as many iterations as fit, so their
/// number is left out too.
fn concurrent_view(branches: &[msi_protocol::BranchOutcome], timed: bool) -> serde_json::Value {
    let view: Vec<serde_json::Value> = branches
        .iter()
        .map(|b| {
            let steps: Vec<serde_json::Value> = b
                .steps
                .iter()
                .map(|counts| {
                    counts
                        .iter()
                        .map(|(outcome, n)| {
                            let how = if *n == b.iterations { "all" } else { "some" };
                            (outcome.clone(), serde_json::Value::from(how))
                        })
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                })
                .collect();
            if timed {
                serde_json::json!({ "branch": b.branch, "outcomes": steps })
            } else {
                serde_json::json!({ "branch": b.branch, "iterations": b.iterations, "outcomes": steps })
            }
        })
        .collect();
    serde_json::json!({ "ok": { "concurrent": view } })
}

/// A step's JSON object, serialized with `op` first and the other keys in
/// name order, so a snapshot reads "what, then with what".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct OpFirst(pub serde_json::Value);

impl Serialize for OpFirst {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(obj) = self.0.as_object() else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(obj.len()))?;
        if let Some(op) = obj.get("op") {
            map.serialize_entry("op", op)?;
        }
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "op") {
            map.serialize_entry(k, v)?;
        }
        map.end()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reviewer's tree of another release (a git checkout reads
    /// `6.18.15+` unless built with `LOCALVERSION=`) compares by behaviour:
    /// the release is not part of the snapshot.
    #[test]
    fn the_kernel_release_is_not_in_the_snapshot() {
        let doc = |release: &str| SnapshotDoc {
            scenario: "s".into(),
            variant: "sw-msi-rfcv2".into(),
            kernel_release: release.into(),
            machine: "virt".into(),
            devices: Vec::new(),
            boot_kernel_reports: Vec::new(),
            boot_reports: Vec::new(),
            steps: Vec::new(),
            aborted: None,
        };
        let a = serde_json::to_string(&doc("6.18.15")).unwrap();
        assert_eq!(a, serde_json::to_string(&doc("6.18.15+")).unwrap());
        assert!(!a.contains("6.18"), "{a}");
    }
}
