//! What changed in behaviour between two kernels, scenario by scenario, for
//! `cargo xtask compare`.
//!
//! Both sides are [`SnapshotDoc`]s: the accepted snapshots
//! (`scenarios/snapshots/<scenario>@<variant>.snap`) or what a run's trials
//! observed (`<run>/results/<scenario>@<variant>.json`, whose artifact dir
//! holds `observations.json`). [`load`] reads them and finds the run to
//! reuse, [`diff`] aligns the steps by number and keeps what is observable
//! (results, MSI configuration, interrupts, SMMU translations and faults, ITS
//! writes, kernel reports; requests marked as such; expectations never), and
//! [`render`] prints it as aligned text or as Markdown for a mail reply.
//!
//! Differences are information, not findings: only a scenario that could not
//! be compared changes the exit code (`outcome::comparison_exit_code`).

pub mod diff;
pub mod load;
pub mod render;

use std::path::Path;

use crate::outcome::{comparison_exit_code, ExitCode};
use crate::snapshot::SnapshotDoc;
pub use diff::{Row, ScenarioComparison, StepDiff, Verdict};
pub use load::{Run, Runs};

/// One side's data for one scenario.
#[derive(Debug, Clone)]
pub enum Observed {
    /// What the scenario did: an accepted snapshot or a trial's observations.
    Doc(Box<SnapshotDoc>),
    /// There is nothing for this scenario on this side, and that is an
    /// answer (a variant whose snapshots do not cover every scenario).
    Missing,
    /// The trial did not apply to this kernel or QEMU: the reason.
    Skipped(String),
    /// The trial failed to run, or its data cannot be read: why.
    Failed(String),
}

/// The left (A) or the right (B) side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    A,
    B,
}

/// One side of a comparison: the variant and where its data came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub variant: String,
    /// Where the data came from, in words: `accepted snapshots
    /// (scenarios/snapshots)`, `run 1767…-test-4242 (25 min old)`.
    pub source: String,
    /// What the trials' result files say about the kernel: release and the
    /// options that selected it (`6.18.15, --variant upstream-6.18`).
    pub kernel: Option<String>,
}

impl Side {
    pub fn accepted(variant: &str, snapshot_dir: &Path) -> Side {
        Side {
            variant: variant.to_string(),
            source: format!(
                "accepted snapshots ({})",
                crate::scenario::display_path(snapshot_dir)
            ),
            kernel: None,
        }
    }
}

/// Every scenario asked for, compared.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub scenarios: Vec<ScenarioComparison>,
}

impl Comparison {
    /// Compares each `(scenario, a, b)`.
    pub fn new(a: Side, b: Side, scenarios: Vec<(String, Observed, Observed)>) -> Comparison {
        let scenarios = scenarios
            .into_iter()
            .map(|(name, oa, ob)| diff::scenario(&name, &oa, &ob))
            .collect();
        Comparison { a, b, scenarios }
    }

    /// How the two sides are named in verdicts and column heads: the
    /// variants, or `A` and `B` when both are the same variant (two runs).
    pub fn labels(&self) -> (String, String) {
        if self.a.variant == self.b.variant {
            (
                format!("A {}", self.a.variant),
                format!("B {}", self.b.variant),
            )
        } else {
            (self.a.variant.clone(), self.b.variant.clone())
        }
    }

    /// Scenarios that could not be compared (a failed trial, missing data).
    pub fn incomparable(&self) -> usize {
        self.scenarios
            .iter()
            .filter(|s| matches!(s.verdict, Verdict::NotCompared(_)))
            .count()
    }

    pub fn exit_code(&self) -> ExitCode {
        comparison_exit_code(self.incomparable())
    }
}

/// The scenarios whose name contains `filter` (all without one), by name.
pub fn asked_scenarios(scenarios_dir: &Path, filter: Option<&str>) -> anyhow::Result<Vec<String>> {
    let all: Vec<String> = crate::scenario::discover(scenarios_dir)?
        .iter()
        .map(|f| crate::scenario::name_of(f))
        .collect();
    if all.is_empty() {
        return Err(crate::Error::infra(format!(
            "no scenario files in {}",
            crate::scenario::display_path(scenarios_dir)
        ))
        .into());
    }
    let asked: Vec<String> = all
        .iter()
        .filter(|s| filter.is_none_or(|f| s.contains(f)))
        .cloned()
        .collect();
    if asked.is_empty() {
        return Err(crate::Error::infra(format!(
            "no scenario name contains `{}` (scenarios: {})",
            filter.unwrap_or_default(),
            all.join(", ")
        ))
        .into());
    }
    Ok(asked)
}

/// Fails unless every variant is one of `known` (kernels.toml's names).
pub fn check_variants(variants: &[&str], known: &[String]) -> anyhow::Result<()> {
    for v in variants {
        if !known.iter().any(|k| k == v) {
            return Err(crate::Error::infra(format!(
                "unknown variant `{v}`: kernel-configs/kernels.toml has {}",
                known.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// The accepted snapshots of `a` and `b` in `snapshot_dir`, compared.
pub fn accepted(
    snapshot_dir: &Path,
    a: &str,
    b: &str,
    scenarios: &[String],
) -> anyhow::Result<Comparison> {
    let da = load::accepted(snapshot_dir, a, scenarios)?;
    let db = load::accepted(snapshot_dir, b, scenarios)?;
    Ok(Comparison::new(
        Side::accepted(a, snapshot_dir),
        Side::accepted(b, snapshot_dir),
        zip(scenarios, da, db),
    ))
}

/// `a`'s trials in `run_a` and `b`'s in `run_b` (often the same run),
/// compared; `now` dates the runs.
pub fn runs(
    run_a: &Run,
    a: &str,
    run_b: &Run,
    b: &str,
    scenarios: &[String],
    now: std::time::SystemTime,
) -> Comparison {
    let (da, ka) = load::from_run(&run_a.dir, a, scenarios);
    let (db, kb) = load::from_run(&run_b.dir, b, scenarios);
    let side = |variant: &str, run: &Run, kernel| Side {
        variant: variant.to_string(),
        source: run.describe(now),
        kernel,
    };
    Comparison::new(
        side(a, run_a, ka),
        side(b, run_b, kb),
        zip(scenarios, da, db),
    )
}

fn zip(
    scenarios: &[String],
    a: Vec<Observed>,
    b: Vec<Observed>,
) -> Vec<(String, Observed, Observed)> {
    scenarios
        .iter()
        .cloned()
        .zip(a)
        .zip(b)
        .map(|((s, a), b)| (s, a, b))
        .collect()
}

#[cfg(test)]
mod tests;
