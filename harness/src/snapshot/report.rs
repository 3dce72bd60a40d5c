//! The aggregate of a test run: every trial's result file read back,
//! written as one `results.json`, shown as a table, and judged together
//! with nextest's report into a [`TestRun`] (whose exit code
//! `crate::outcome` decides).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::result::TrialResult;
use crate::outcome::{Failure, Outcome, TestRun, TestsEnd};

/// nextest's id of the scenario test binary (`harness/tests/scenarios.rs`).
pub const SCENARIO_BINARY: &str = "harness::scenarios";

/// All trials of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Sorted by scenario, then variant.
    pub trials: Vec<TrialResult>,
}

/// Reads every `<scenario>@<variant>.json` in `results_dir` (not
/// `results.json`, the aggregate itself).
pub fn summarise(results_dir: &Path) -> anyhow::Result<Summary> {
    let mut trials = Vec::new();
    let entries = std::fs::read_dir(results_dir)
        .with_context(|| format!("read results dir {}", results_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".json") || !name.contains('@') {
            continue;
        }
        trials.push(crate::cache::read_json::<TrialResult>(
            &path,
            "trial result",
        )?);
    }
    Ok(Summary::from_trials(trials))
}

impl Summary {
    pub fn from_trials(mut trials: Vec<TrialResult>) -> Summary {
        trials.sort_by(|a, b| (&a.scenario, &a.variant).cmp(&(&b.scenario, &b.variant)));
        let count = |f: fn(Outcome) -> bool| trials.iter().filter(|t| f(t.outcome)).count();
        Summary {
            passed: count(|o| o == Outcome::Pass || o == Outcome::Known),
            failed: count(Outcome::failed),
            skipped: count(|o| o == Outcome::Skip),
            trials,
        }
    }

    /// Reads a `results.json` that [`Summary::write_json`] wrote.
    pub fn read_json(path: &Path) -> anyhow::Result<Summary> {
        crate::cache::read_json(path, "results file")
    }

    /// Writes the aggregate as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::cache::write_atomic(path, text.as_bytes())
    }

    /// The run as a whole: these trials, and what nextest reported.
    /// `junit` is nextest's JUnit report (`None` when it wrote none);
    /// `nextest_succeeded` its exit status; `malformed_scenarios` the number
    /// of scenario files that do not parse.
    pub fn judge(
        &self,
        junit: Option<&str>,
        nextest_succeeded: bool,
        malformed_scenarios: usize,
    ) -> TestRun {
        let report = junit.map(super::junit::parse);
        let tests = match report {
            _ if nextest_succeeded => TestsEnd::Passed,
            None => TestsEnd::DidNotRun {
                why: "cargo nextest failed and wrote no JUnit report (did a test binary fail to build?)".into(),
            },
            Some(r) if r.tests == 0 => TestsEnd::DidNotRun {
                why: "cargo nextest failed before running any test (did a test binary fail to build?)".into(),
            },
            Some(r) => TestsEnd::Failed {
                unexplained: r
                    .failed
                    .iter()
                    // A failed scenario trial with a result file is explained
                    // by that file's outcome.
                    .filter(|f| {
                        !(f.binary == SCENARIO_BINARY
                            && self
                                .trials
                                .iter()
                                .any(|t| t.outcome.failed() && t.name() == f.name))
                    })
                    .map(|f| f.display())
                    .collect(),
            },
        };
        TestRun {
            trials: self.trials.iter().map(|t| t.outcome).collect(),
            tests,
            malformed_scenarios,
        }
    }

    /// One line per failed trial: the command that re-runs it.
    pub fn reproducers(&self) -> Vec<String> {
        self.trials
            .iter()
            .filter(|t| t.outcome.failed())
            .map(|t| t.reproducer.clone())
            .collect()
    }

    /// Scenario × variant: status, interrupts delivered, MSI address; then
    /// every failure with its reason, artifacts and reproducer.
    pub fn table(&self) -> String {
        let variants: BTreeSet<&str> = self.trials.iter().map(|t| t.variant.as_str()).collect();
        let scenarios: BTreeSet<&str> = self.trials.iter().map(|t| t.scenario.as_str()).collect();
        let cell = |s: &str, v: &str| -> String {
            match self
                .trials
                .iter()
                .find(|t| t.scenario == s && t.variant == v)
            {
                None => "-".into(),
                Some(t) => match t.outcome {
                    Outcome::Skip => "skip".into(),
                    o => {
                        let word = match o {
                            Outcome::Pass => "pass",
                            Outcome::Known => "known",
                            _ => "FAIL",
                        };
                        let addr = if t.msi_addresses.is_empty() {
                            "-".to_string()
                        } else {
                            t.msi_addresses.join(",")
                        };
                        format!("{word} irq={} msi={addr}", t.interrupts_delivered)
                    }
                },
            }
        };
        let mut rows: Vec<Vec<String>> = vec![std::iter::once("scenario".to_string())
            .chain(variants.iter().map(|v| v.to_string()))
            .collect()];
        for s in &scenarios {
            rows.push(
                std::iter::once(s.to_string())
                    .chain(variants.iter().map(|v| cell(s, v)))
                    .collect(),
            );
        }
        let cols = rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "{}", rule.join("  "));
            }
        }
        let _ = writeln!(
            out,
            "\n{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        for t in self.trials.iter().filter(|t| t.outcome != Outcome::Pass) {
            let what = match t.outcome {
                Outcome::Pass => continue,
                Outcome::Known => "passed with known findings",
                Outcome::Skip => "skipped",
                Outcome::Fail(Failure::Finding) => "FAILED (finding)",
                Outcome::Fail(Failure::Infrastructure) => "FAILED (infrastructure)",
            };
            let _ = writeln!(out, "\n{} {what}", t.name());
            if let Some(r) = &t.reason {
                for l in r.lines() {
                    let _ = writeln!(out, "  {l}");
                }
            }
            if t.outcome.failed() {
                if !t.artifacts.as_os_str().is_empty() {
                    let _ = writeln!(out, "  artifacts: {}", t.artifacts.display());
                }
                let _ = writeln!(out, "  reproduce: {}", t.reproducer);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn trial(s: &str, v: &str, outcome: Outcome) -> TrialResult {
        TrialResult {
            scenario: s.into(),
            variant: v.into(),
            kernel_release: "6.18.15".into(),
            outcome,
            reason: (outcome != Outcome::Pass).then(|| "because".to_string()),
            interrupts_delivered: 2,
            msi_addresses: vec!["0x8000040".into()],
            duration_s: 3.2,
            restored: false,
            artifacts: PathBuf::from("target/msi-harness/artifacts/x"),
            reproducer: TrialResult::reproducer_for(s, v),
        }
    }

    #[test]
    fn results_round_trip_and_summarise() {
        let dir = tempfile::tempdir().unwrap();
        trial("b", "upstream-6.18", Outcome::FINDING)
            .write(dir.path())
            .unwrap();
        trial("a", "sw-msi-rfcv2", Outcome::Pass)
            .write(dir.path())
            .unwrap();
        trial("a", "upstream-6.18", Outcome::Skip)
            .write(dir.path())
            .unwrap();
        std::fs::write(dir.path().join("results.json"), "{}").unwrap();
        let s = summarise(dir.path()).unwrap();
        assert_eq!((s.passed, s.failed, s.skipped), (1, 1, 1));
        let junit = |failed: &[&str]| {
            let cases: String = failed
                .iter()
                .map(|n| format!("<testcase name=\"{n}\"><failure/></testcase>"))
                .collect();
            format!("<testsuite name=\"{SCENARIO_BINARY}\"><testcase name=\"parse:a\"/>{cases}</testsuite>")
        };
        use crate::ExitCode;
        let code = |junit: Option<&str>, ok: bool, malformed: usize| {
            s.judge(junit, ok, malformed).exit_code()
        };
        assert_eq!(
            code(Some(&junit(&["b@upstream-6.18"])), false, 0),
            ExitCode::Finding
        );
        // A trial that failed in nextest but left no result file (killed on
        // its deadline) is not explained by a finding.
        assert_eq!(
            code(
                Some(&junit(&["b@upstream-6.18", "c@upstream-6.18"])),
                false,
                0
            ),
            ExitCode::Infrastructure
        );
        assert_eq!(code(None, false, 0), ExitCode::Infrastructure);
        assert_eq!(code(Some(""), false, 0), ExitCode::Infrastructure);
        assert_eq!(
            code(Some(&junit(&["b@upstream-6.18"])), false, 1),
            ExitCode::Infrastructure
        );
        assert_eq!(
            s.reproducers(),
            vec!["cargo xtask test --variant upstream-6.18 b".to_string()]
        );
        let table = s.table();
        assert!(
            table.starts_with("scenario  sw-msi-rfcv2              upstream-6.18\n"),
            "{table}"
        );
        assert!(
            table.contains("a         pass irq=2 msi=0x8000040  skip"),
            "{table}"
        );
        assert!(
            table.contains("b         -                         FAIL irq=2 msi=0x8000040\n"),
            "{table}"
        );
        assert!(
            table.contains("b@upstream-6.18 FAILED (finding)\n  because\n"),
            "{table}"
        );
        s.write_json(&dir.path().join("results.json")).unwrap();
        let mut s2 = s.clone();
        s2.trials[1].outcome = Outcome::INFRASTRUCTURE;
        assert_eq!(
            s2.judge(Some(&junit(&["b@upstream-6.18"])), false, 0)
                .exit_code(),
            ExitCode::Infrastructure
        );
    }
}
