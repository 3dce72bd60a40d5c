//! The `scenarios` test target (libtest-mimic): one `parse:<scenario>` trial
//! per file in `scenarios/` (always runs), and one `<scenario>@<variant>`
//! trial per kernel variant of `MSI_HARNESS_INPUTS` that boots a fresh VM,
//! runs the steps and compares the snapshot. Without the inputs file the VM
//! trials are listed as ignored: `cargo xtask test` builds what they need.
//!
//! Files are discovered at run time, so a new scenario needs no rebuild,
//! and every trial is independent (nextest runs each in its own process).

use std::path::Path;
use std::sync::Arc;

use harness::outcome::Outcome;
use harness::scenario::{self, Inputs, Scenario};
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
                // it has no VM trials to fail again.
                if Scenario::load(file).is_err() {
                    continue;
                }
                for variant in inputs.kernels.keys() {
                    let (f, v, i) = (file.clone(), variant.clone(), Arc::clone(inputs));
                    trials.push(Trial::test(
                        format!("{}@{variant}", stem(file)),
                        move || vm_trial(&f, &v, &i),
                    ));
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
                    // Ignored, and failing if run anyway (`--include-ignored`):
                    // without inputs there is nothing to boot.
                    trials.push(
                        Trial::test(format!("{}@{variant}", stem(file)), || {
                            Err(Failed::from(format!(
                                "needs a built kernel and image: {} is not set (run `cargo xtask test`)",
                                scenario::inputs::INPUTS_ENV
                            )))
                        })
                        .with_ignored_flag(true),
                    );
                }
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn stem(path: &Path) -> String {
    scenario::name_of(path)
}

/// One (scenario, variant): `harness::trial` does the work and writes the
/// result file; a failure's message is its reason, artifacts and reproducer.
fn vm_trial(file: &Path, variant: &str, inputs: &Inputs) -> Result<(), Failed> {
    let result = harness::trial::run(file, variant, inputs);
    match result.outcome {
        Outcome::Pass => Ok(()),
        Outcome::Known => {
            eprintln!(
                "known findings in {}: {}",
                result.name(),
                result.reason.as_deref().unwrap_or("")
            );
            Ok(())
        }
        Outcome::Skip => {
            // libtest-mimic has no run-time skip: say so and pass (the result
            // file and the summary say "skip").
            eprintln!(
                "skipped {}: {}",
                result.name(),
                result.reason.as_deref().unwrap_or("")
            );
            Ok(())
        }
        Outcome::Fail(_) => Err(Failed::from(harness::trial::failure_message(&result))),
    }
}
