//! The nightly matrix: which kernels a CI engine builds and tests every
//! night, and how their test jobs are sharded.
//!
//! The kernels come from `kernel-configs/kernels.toml`
//! ([`KernelsFile::nightly`]), so adding a variant there adds it to the
//! matrix with no workflow edit; `cargo xtask matrix` prints this as the
//! JSON `.github/workflows/nightly.yml` reads with `fromJSON`.

pub mod kcidb;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kernel::variants::KernelsFile;
use crate::snapshot::report::Summary;
use crate::snapshot::result::TrialResult;

/// The matrix as the workflow reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// One build job each.
    pub kernels: Vec<String>,
    /// One test job each: every kernel × every partition.
    pub shards: Vec<Shard>,
}

/// One test job: a kernel's suite, one nextest partition of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub kernel: String,
    /// As nextest's `--partition` takes it: `count:2/3`.
    pub partition: String,
}

/// The matrix of `file`, each kernel's tests split into `partitions`.
pub fn matrix(file: &KernelsFile, partitions: u32) -> Matrix {
    let kernels = file.nightly();
    let shards = kernels
        .iter()
        .flat_map(|k| {
            (1..=partitions.max(1)).map(move |n| Shard {
                kernel: k.clone(),
                partition: format!("count:{n}/{}", partitions.max(1)),
            })
        })
        .collect();
    Matrix { kernels, shards }
}

/// The shards' summaries as one: every trial of each, none twice (a trial
/// in two shards means the partitions overlap, which is the harness's
/// defect, not a finding).
pub fn merge(shards: &[Summary]) -> Result<Summary, String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut trials = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        for t in &shard.trials {
            if let Some(first) = seen.insert(t.name(), i + 1) {
                return Err(format!(
                    "trial {} is in shard {first} and in shard {}: the partitions overlap",
                    t.name(),
                    i + 1
                ));
            }
            trials.push(t.clone());
        }
    }
    Ok(Summary::from_trials(trials))
}

/// How `got` (merged shards) differs from `want` (one run of the whole
/// suite), a line per difference: a trial missing from either side, or one
/// whose outcome, reason, interrupts, MSI addresses or kernel release
/// differ. Durations and artifact paths belong to the run, not the trial.
pub fn differences(got: &Summary, want: &Summary) -> Vec<String> {
    let by_name = |s: &Summary| -> BTreeMap<String, TrialResult> {
        s.trials.iter().map(|t| (t.name(), t.clone())).collect()
    };
    let (got, want) = (by_name(got), by_name(want));
    let mut out = Vec::new();
    for name in want.keys().filter(|n| !got.contains_key(*n)) {
        out.push(format!("{name}: in the single run, in no shard"));
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        out.push(format!("{name}: in a shard, not in the single run"));
    }
    for (name, g) in &got {
        let Some(w) = want.get(name) else { continue };
        let facts = |t: &TrialResult| {
            (
                t.outcome,
                t.reason.clone(),
                t.interrupts_delivered,
                t.msi_addresses.clone(),
                t.kernel_release.clone(),
            )
        };
        if facts(g) != facts(w) {
            out.push(format!(
                "{name}: shards say {:?} irq={} msi={:?}, the single run {:?} irq={} msi={:?}",
                g.outcome,
                g.interrupts_delivered,
                g.msi_addresses,
                w.outcome,
                w.interrupts_delivered,
                w.msi_addresses
            ));
        }
    }
    out
}

/// nextest's JUnit reports of the shards as one: their `<testsuite>`
/// elements side by side under one `<testsuites>` (a report without that
/// root is taken whole).
pub fn merge_junit(reports: &[String]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"msi-harness (merged shards)\">\n");
    for r in reports {
        let body = r
            .find("<testsuites")
            .and_then(|i| r[i..].find('>').map(|j| i + j + 1))
            .and_then(|start| {
                r.rfind("</testsuites>")
                    .map(|end| &r[start..end.max(start)])
            })
            .unwrap_or_else(|| r.trim_start_matches(|c| c != '<'));
        out.push_str(body.trim());
        out.push('\n');
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, Outcome};

    fn trial(s: &str, outcome: Outcome, duration_s: f64) -> TrialResult {
        TrialResult {
            scenario: s.into(),
            variant: "sw-msi-rfcv2".into(),
            kernel_release: "6.18.15".into(),
            outcome,
            reason: None,
            interrupts_delivered: 1,
            msi_addresses: vec!["0x8000040".into()],
            duration_s,
            restored: true,
            artifacts: format!("runs/{duration_s}/{s}").into(),
            reproducer: TrialResult::reproducer_for(s, "sw-msi-rfcv2"),
        }
    }

    fn summary(trials: &[TrialResult]) -> Summary {
        Summary::from_trials(trials.to_vec())
    }

    #[test]
    fn merged_shards_equal_the_single_run_whatever_their_timings() {
        let single = summary(&[
            trial("a", Outcome::Pass, 1.0),
            trial("b", Outcome::FINDING, 1.0),
            trial("c", Outcome::Pass, 1.0),
        ]);
        let shards = [
            summary(&[trial("c", Outcome::Pass, 2.0)]),
            summary(&[
                trial("a", Outcome::Pass, 3.0),
                trial("b", Outcome::FINDING, 3.0),
            ]),
            summary(&[]),
        ];
        let merged = merge(&shards).unwrap();
        assert_eq!(differences(&merged, &single), Vec::<String>::new());
        assert_eq!(
            (merged.passed, merged.failed, merged.skipped),
            (single.passed, single.failed, single.skipped)
        );
        let names: Vec<String> = merged.trials.iter().map(TrialResult::name).collect();
        assert_eq!(
            names,
            ["a@sw-msi-rfcv2", "b@sw-msi-rfcv2", "c@sw-msi-rfcv2"]
        );
    }

    #[test]
    fn junit_reports_merge_under_one_root_and_parse_back() {
        let shard = |name: &str| {
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"nextest-run\" tests=\"1\" failures=\"1\">\n<testsuite name=\"harness::scenarios\" tests=\"1\"><testcase name=\"{name}\" classname=\"harness::scenarios\"><failure/></testcase></testsuite>\n</testsuites>\n")
        };
        let merged = merge_junit(&[shard("a@v"), shard("b@v")]);
        assert_eq!(merged.matches("<testsuites").count(), 1, "{merged}");
        let report = crate::snapshot::junit::parse(&merged);
        assert_eq!(report.tests, 2, "{merged}");
        let failed: Vec<String> = report.failed.iter().map(|f| f.name.clone()).collect();
        assert_eq!(failed, ["a@v", "b@v"]);
    }

    #[test]
    fn an_overlap_a_gap_or_another_outcome_is_reported() {
        let a = || trial("a", Outcome::Pass, 1.0);
        let err = merge(&[summary(&[a()]), summary(&[a()])]).unwrap_err();
        assert!(
            err.contains("a@sw-msi-rfcv2 is in shard 1 and in shard 2"),
            "{err}"
        );

        let single = summary(&[a(), trial("b", Outcome::Pass, 1.0)]);
        let got = summary(&[trial("a", Outcome::Fail(Failure::Infrastructure), 1.0)]);
        let d = differences(&got, &single);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("b@sw-msi-rfcv2: in the single run, in no shard"));
        assert!(
            d[1].starts_with("a@sw-msi-rfcv2: shards say Fail(Infrastructure)"),
            "{d:?}"
        );
    }

    #[test]
    fn every_kernel_gets_every_partition_once() {
        let file = crate::kernel::variants::load_file(&crate::kernel::variants::kernels_toml(
            &crate::cache::project_root(),
        ))
        .unwrap();
        let m = matrix(&file, 3);
        assert!(!m.kernels.is_empty());
        assert_eq!(m.shards.len(), m.kernels.len() * 3);
        let first = &m.kernels[0];
        let of_first: Vec<&str> = m
            .shards
            .iter()
            .filter(|s| &s.kernel == first)
            .map(|s| s.partition.as_str())
            .collect();
        assert_eq!(of_first, ["count:1/3", "count:2/3", "count:3/3"]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["shards"][0]["partition"], "count:1/3");
        assert_eq!(json["kernels"][0], first.as_str());
    }
}
