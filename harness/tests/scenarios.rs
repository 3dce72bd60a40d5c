//! The `scenarios` test target (libtest-mimic): one `parse:<scenario>` trial
//! per file in `scenarios/` (always runs), and one `<scenario>@<variant>`
//! trial per kernel variant of `MSI_HARNESS_INPUTS` that boots a fresh VM,
//! runs the steps and compares the snapshot. Without the inputs file the VM
//! trials are listed as ignored: `cargo xtask test` builds what they need.
//!
//! Files are discovered at run time, so a new scenario needs no rebuild,
//! and every trial is independent (nextest runs each in its own process).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use harness::scenario::exec::{self, Outcome};
use harness::scenario::{self, Inputs, Scenario};
use harness::snapshot::result::{FailureKind, Status, TrialResult};
use harness::snapshot::{self, SnapshotDoc};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let mut args = Arguments::from_args();
    let dir = scenario::scenarios_dir();
    let files = match scenario::discover(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let inputs = match Inputs::from_env() {
        Ok(i) => i.map(Arc::new),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let mut trials = Vec::new();
    for file in &files {
        let name = stem(file);
        let f = file.clone();
        trials.push(Trial::test(format!("parse:{name}"), move || {
            Scenario::load(&f)
                .map(|_| ())
                .map_err(|e| Failed::from(e.to_string()))
        }));
    }
    match &inputs {
        Some(inputs) => {
            // VM trials in one process fight over 2 cores: one at a time
            // unless told otherwise (nextest runs one process per trial).
            args.test_threads.get_or_insert(1);
            for file in &files {
                // A file that does not parse fails its `parse:` trial only;
                // its VM trials are listed as ignored, not failed again.
                let parses = Scenario::load(file).is_ok();
                for variant in inputs.kernels.keys() {
                    let (f, v, i) = (file.clone(), variant.clone(), Arc::clone(inputs));
                    trials.push(
                        Trial::test(format!("{}@{variant}", stem(file)), move || {
                            vm_trial(&f, &v, &i)
                        })
                        .with_ignored_flag(!parses),
                    );
                }
            }
        }
        None => {
            let variants = harness::kernel::load_variants(&harness::cache::project_root())
                .map(|vs| vs.into_iter().map(|v| v.name).collect::<Vec<_>>())
                .unwrap_or_default();
            if !args.list {
                eprintln!(
                    "note: {} is not set: the VM trials are ignored (run `cargo xtask test`)",
                    scenario::inputs::INPUTS_ENV
                );
            }
            for file in &files {
                for variant in &variants {
                    trials.push(
                        Trial::test(format!("{}@{variant}", stem(file)), || Ok(()))
                            .with_ignored_flag(true),
                    );
                }
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("?")
        .to_string()
}

/// One (scenario, variant): boot, run, compare, write the result file.
fn vm_trial(file: &Path, variant: &str, inputs: &Inputs) -> Result<(), Failed> {
    let started = Instant::now();
    let name = stem(file);
    let mut result = TrialResult {
        scenario: name.clone(),
        variant: variant.to_string(),
        status: Status::Fail,
        failure: Some(FailureKind::Infrastructure),
        reason: None,
        interrupts_delivered: 0,
        msi_addresses: Vec::new(),
        duration_s: 0.0,
        artifacts: PathBuf::new(),
        reproducer: match inputs.kernels.get(variant) {
            Some(k) => k.reproducer(variant, &name),
            None => TrialResult::reproducer_for(&name, variant),
        },
    };
    let outcome = run_trial(file, variant, inputs, &mut result);
    result.duration_s = exec::seconds_since(started);
    match &outcome {
        Ok(()) => {
            result.failure = None;
            if result.status != Status::Skip {
                result.status = Status::Pass;
            }
        }
        Err(reason) => {
            result.status = Status::Fail;
            result.reason = Some(reason.clone());
        }
    }
    if let Err(e) = result.write(&inputs.results_dir) {
        eprintln!("warning: cannot write the result file: {e:#}");
    }
    outcome.map_err(|mut reason| {
        if !result.artifacts.as_os_str().is_empty() && result.status != Status::Skip {
            reason.push_str(&format!("\nartifacts: {}", result.artifacts.display()));
        }
        reason.push_str(&format!("\nreproduce: {}", result.reproducer));
        Failed::from(reason)
    })
}

fn run_trial(
    file: &Path,
    variant: &str,
    inputs: &Inputs,
    result: &mut TrialResult,
) -> Result<(), String> {
    let scenario = Scenario::load(file).map_err(|e| e.to_string())?;
    let kernel = inputs
        .kernels
        .get(variant)
        .ok_or_else(|| format!("variant {variant} is not in the inputs file"))?;
    let dir = exec::trial_dir(inputs, &scenario.name, variant).map_err(|e| format!("{e:#}"))?;
    result.artifacts = dir.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let outcome = rt
        .block_on(exec::run(&scenario, variant, kernel, inputs, &dir))
        .map_err(|e| {
            result.failure = Some(match harness::error::exit_code_of(&e) {
                harness::ExitCode::Finding => FailureKind::Finding,
                _ => FailureKind::Infrastructure,
            });
            format!("{e:#}")
        })?;
    let exec = match outcome {
        Outcome::Skipped { reason } => {
            result.status = Status::Skip;
            result.reason = Some(reason.clone());
            // libtest-mimic has no run-time skip: say so and pass.
            eprintln!("skipped {}@{variant}: {reason}", scenario.name);
            return Ok(());
        }
        Outcome::Ran(e) => e,
    };
    result.interrupts_delivered = exec.interrupts_delivered;
    result.msi_addresses = exec.msi_addresses.clone();
    let doc = SnapshotDoc::new(&scenario, variant, &exec);
    let transcript = serde_yaml_like(&doc);
    let _ = std::fs::write(dir.join("observations.json"), transcript);

    let mut problems = Vec::new();
    let snapshot = snapshot::compare(&scenario, &doc);
    if let Some(a) = &exec.aborted {
        problems.push(format!("scenario stopped: {a}"));
    }
    let infra = exec.aborted.is_some();
    problems.extend(exec.expectation_failures.iter().cloned());
    if let Err(e) = snapshot {
        problems.push(e);
    }
    if problems.is_empty() {
        return Ok(());
    }
    result.failure = Some(if infra {
        FailureKind::Infrastructure
    } else {
        FailureKind::Finding
    });
    Err(problems.join("\n"))
}

/// The observations as JSON, kept with the artifacts even when the
/// snapshot matched.
fn serde_yaml_like(doc: &SnapshotDoc) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_default()
}
