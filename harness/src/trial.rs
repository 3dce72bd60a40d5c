//! One trial: a scenario on one kernel variant, from a fresh VM to its
//! result file. The scenario stage runs the steps and returns raw records;
//! the snapshot stage normalises and compares them; this module says how
//! the trial ended (an [`Outcome`]) and writes `<scenario>@<variant>.json`.
//! The `scenarios` test binary is a thin list of these.

use std::path::Path;
use std::time::Instant;

use crate::outcome::{failure_of, Outcome};
use crate::scenario::exec::{self, Completion};
use crate::scenario::{Inputs, Scenario};
use crate::snapshot::result::TrialResult;
use crate::snapshot::{self, SnapshotDoc};

/// Runs `file` on `variant`, writes its result file, and returns it.
pub fn run(file: &Path, variant: &str, inputs: &Inputs) -> TrialResult {
    let started = Instant::now();
    let name = crate::scenario::name_of(file);
    let mut result = TrialResult {
        scenario: name.clone(),
        variant: variant.to_string(),
        kernel_release: String::new(),
        outcome: Outcome::INFRASTRUCTURE,
        reason: None,
        interrupts_delivered: 0,
        msi_addresses: Vec::new(),
        duration_s: 0.0,
        restored: false,
        artifacts: Default::default(),
        reproducer: match inputs.kernels.get(variant) {
            Some(k) => k.reproducer(variant, &name),
            None => TrialResult::reproducer_for(&name, variant),
        },
    };
    let (outcome, reason) = match run_steps(file, variant, inputs, &mut result) {
        Ok(Ended::Passed) => (Outcome::Pass, None),
        Ok(Ended::Known(reasons)) => (Outcome::Known, Some(reasons)),
        Ok(Ended::Skipped(reason)) => (Outcome::Skip, Some(reason)),
        Err((outcome, reason)) => (outcome, Some(reason)),
    };
    result.outcome = outcome;
    result.reason = reason;
    result.duration_s = exec::seconds_since(started);
    if let Err(e) = result.write(&inputs.results_dir) {
        // The trial itself still reports its outcome; the summary will miss
        // it and the run's judgement treats the missing file as unexplained.
        eprintln!("warning: cannot write the result file: {e:#}");
    }
    result
}

/// The message a failed trial prints: why, where its artifacts are, and
/// the command that re-runs it.
pub fn failure_message(result: &TrialResult) -> String {
    let mut text = result.reason.clone().unwrap_or_default();
    if !result.artifacts.as_os_str().is_empty() {
        text.push_str(&format!("\nartifacts: {}", result.artifacts.display()));
    }
    text.push_str(&format!("\nreproduce: {}", result.reproducer));
    text
}

enum Ended {
    Passed,
    /// Every failure was a declared known finding (the reasons).
    Known(String),
    Skipped(String),
}

fn run_steps(
    file: &Path,
    variant: &str,
    inputs: &Inputs,
    result: &mut TrialResult,
) -> Result<Ended, (Outcome, String)> {
    let infra = |reason: String| (Outcome::INFRASTRUCTURE, reason);
    let scenario = Scenario::load(file).map_err(|e| infra(e.to_string()))?;
    let kernel = inputs
        .kernels
        .get(variant)
        .ok_or_else(|| infra(format!("variant {variant} is not in the inputs file")))?;
    let dir =
        exec::trial_dir(inputs, &scenario.name, variant).map_err(|e| infra(format!("{e:#}")))?;
    result.artifacts = dir.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| infra(format!("tokio runtime: {e}")))?;
    let completion = rt
        .block_on(exec::run(&scenario, variant, kernel, inputs, &dir))
        .map_err(|e| (Outcome::Fail(failure_of(&e)), format!("{e:#}")))?;
    let exec = match completion {
        Completion::Skipped { reason } => return Ok(Ended::Skipped(reason)),
        Completion::Ran(e) => e,
    };
    result.kernel_release = exec.kernel_release.clone();
    result.interrupts_delivered = exec.interrupts_delivered;
    result.restored = exec.restored;
    result.msi_addresses = exec.msi_addresses.clone();
    let doc = SnapshotDoc::new(&scenario, variant, &exec, kernel.report_scope.as_ref());
    // The observations as JSON, kept with the artifacts even when the
    // snapshot matched.
    let _ = std::fs::write(
        dir.join("observations.json"),
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    );

    write_kernel_reports(&dir, &exec, kernel.report_scope.as_ref());

    let known = crate::scenario::known::load(&crate::scenario::scenarios_dir(), variant)
        .map_err(|e| infra(e.to_string()))?;
    let judged = crate::scenario::known::judge(&scenario.name, &exec.expectation_failures, &known);
    let mut problems = Vec::new();
    if let Some(a) = &exec.aborted {
        problems.push(format!("scenario stopped: {a}"));
    }
    problems.extend(exec.attribution_problems.iter().cloned());
    problems.extend(judged.unexplained.iter().cloned());
    problems.extend(judged.gone.iter().cloned());
    if let Err(e) = snapshot::compare(&scenario, &doc) {
        problems.push(e);
    }
    if problems.is_empty() {
        if judged.known.is_empty() {
            return Ok(Ended::Passed);
        }
        return Ok(Ended::Known(judged.known.join("\n")));
    }
    // A scenario that could not run to its end, or whose kernel lines could
    // not be attributed to their steps, says nothing reliable about the
    // kernel: the harness failed.
    let outcome = if exec.aborted.is_some() || !exec.attribution_problems.is_empty() {
        Outcome::INFRASTRUCTURE
    } else {
        Outcome::FINDING
    };
    problems.extend(judged.known);
    Err((outcome, problems.join("\n")))
}

/// Every kernel report of the trial, whole, with its signature and whether
/// the snapshot records it: `kernel-reports.txt` beside the console log.
fn write_kernel_reports(
    dir: &Path,
    exec: &exec::Execution,
    scope: Option<&crate::kernel::ReportScope>,
) {
    use crate::snapshot::kernel_report::{admits, parse};
    let mut text = String::new();
    let sections = std::iter::once(("boot".to_string(), &exec.boot_console)).chain(
        exec.steps
            .iter()
            .map(|s| (format!("step {}", s.step), &s.console)),
    );
    for (name, lines) in sections {
        for r in parse(lines.iter().map(String::as_str)) {
            let recorded = match scope {
                None => "first line only in the snapshot (no flavour)",
                Some(s) if admits(s, &r.finding) => "in the snapshot",
                Some(_) => "outside the report scope: not in the snapshot",
            };
            text.push_str(&format!(
                "== {name}: {} ({recorded})\n{}\n\n",
                r.finding.signature(),
                r.text.join("\n")
            ));
        }
    }
    if !text.is_empty() {
        let _ = std::fs::write(dir.join("kernel-reports.txt"), text);
    }
}
