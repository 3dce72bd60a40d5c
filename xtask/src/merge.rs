//! `merge`: the shards of a partitioned run joined into one run's results.

use std::path::{Path, PathBuf};

use harness::outcome::{TestRun, TestsEnd};
use harness::snapshot::report::Summary;
use harness::ExitCode;

use crate::flags;

impl flags::Merge {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let summaries = self
            .shards
            .iter()
            .map(|p| Summary::read_json(&results_file(p)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let merged = harness::nightly::merge(&summaries).map_err(harness::Error::infra)?;
        let run_dir = harness::cache::new_run_dir("merge")?;
        merged.write_json(&run_dir.join("results.json"))?;
        let junits: Vec<String> = self
            .shards
            .iter()
            .filter_map(|p| std::fs::read_to_string(run_of(p).join("junit.xml")).ok())
            .collect();
        if !junits.is_empty() {
            harness::cache::write_atomic(
                &run_dir.join("junit.xml"),
                harness::nightly::merge_junit(&junits).as_bytes(),
            )?;
        }
        // The shards' kernels: each shard wrote its inputs beside its results.
        let mut kernels = std::collections::BTreeMap::new();
        for p in &self.shards {
            let inputs = run_of(p).join("inputs.json");
            if inputs.is_file() {
                kernels.extend(harness::scenario::inputs::Inputs::load(&inputs)?.kernels);
            }
        }
        harness::nightly::kcidb::write(&run_dir, &merged, &kernels, &self.origin)?;
        println!("{}", merged.table());
        println!(
            "{} shard(s) merged: {} trial(s); results in {}",
            summaries.len(),
            merged.trials.len(),
            run_dir.display()
        );
        if let Some(expect) = &self.expect {
            let single = Summary::read_json(&results_file(expect))?;
            let differences = harness::nightly::differences(&merged, &single);
            if !differences.is_empty() {
                return Err(harness::Error::infra(format!(
                    "the merged shards differ from {}:\n  {}",
                    expect.display(),
                    differences.join("\n  ")
                ))
                .into());
            }
            println!(
                "merged shards = the single run {}: the same {} trial(s), outcomes, interrupts and MSI addresses",
                expect.display(),
                single.trials.len()
            );
        }
        // Each shard's own exit code covers its tests outside the trials;
        // the merge judges the trials.
        Ok(TestRun {
            trials: merged.trials.iter().map(|t| t.outcome).collect(),
            tests: TestsEnd::Passed,
            malformed_scenarios: 0,
        }
        .exit_code())
    }
}

/// A run directory, or the directory of a `results.json` given itself.
fn run_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
}

fn results_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    }
}
