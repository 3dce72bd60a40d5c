//! The aggregate of a test run: every trial's result file read back,
//! written as one `results.json`, shown as a table, turned into an exit code.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::result::{FailureKind, Status, TrialResult};
use crate::ExitCode;

/// All trials of a run.
#[derive(Debug, Clone, Default, Serialize)]
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
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let t: TrialResult = serde_json::from_str(&text).map_err(|e| {
            crate::Error::infra(format!(
                "{}:{}:{}: invalid trial result: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        trials.push(t);
    }
    Ok(Summary::from_trials(trials))
}

impl Summary {
    pub fn from_trials(mut trials: Vec<TrialResult>) -> Summary {
        trials.sort_by(|a, b| (&a.scenario, &a.variant).cmp(&(&b.scenario, &b.variant)));
        let count = |s| trials.iter().filter(|t| t.status == s).count();
        Summary {
            passed: count(Status::Pass),
            failed: count(Status::Fail),
            skipped: count(Status::Skip),
            trials,
        }
    }

    /// Writes the aggregate as JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::cache::write_atomic(path, text.as_bytes())
    }

    /// 0 when everything passed or was skipped, 1 when a trial found a
    /// kernel problem, 2 when the harness itself failed somewhere (that
    /// wins: the findings of a broken run are not trustworthy).
    pub fn exit_code(&self) -> ExitCode {
        let failed = self.trials.iter().filter(|t| t.status == Status::Fail);
        let mut code = ExitCode::Pass;
        for t in failed {
            match t.failure {
                Some(FailureKind::Finding) => {
                    if code == ExitCode::Pass {
                        code = ExitCode::Finding;
                    }
                }
                _ => code = ExitCode::Infrastructure,
            }
        }
        code
    }

    /// One line per failed trial: the command that re-runs it.
    pub fn reproducers(&self) -> Vec<String> {
        self.trials
            .iter()
            .filter(|t| t.status == Status::Fail)
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
                Some(t) => match t.status {
                    Status::Skip => "skip".into(),
                    st => {
                        let word = if st == Status::Pass { "pass" } else { "FAIL" };
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
        for t in self.trials.iter().filter(|t| t.status != Status::Pass) {
            let what = match (t.status, t.failure) {
                (Status::Skip, _) => "skipped",
                (_, Some(FailureKind::Finding)) => "FAILED (finding)",
                _ => "FAILED (infrastructure)",
            };
            let _ = writeln!(out, "\n{} {what}", t.name());
            if let Some(r) = &t.reason {
                for l in r.lines() {
                    let _ = writeln!(out, "  {l}");
                }
            }
            if t.status == Status::Fail {
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

    fn trial(s: &str, v: &str, status: Status, failure: Option<FailureKind>) -> TrialResult {
        TrialResult {
            scenario: s.into(),
            variant: v.into(),
            status,
            failure,
            reason: (status != Status::Pass).then(|| "because".to_string()),
            interrupts_delivered: 2,
            msi_addresses: vec!["0x8000040".into()],
            duration_s: 3.2,
            artifacts: PathBuf::from("target/msi-harness/artifacts/x"),
            reproducer: TrialResult::reproducer_for(s, v),
        }
    }

    #[test]
    fn results_round_trip_and_summarise() {
        let dir = tempfile::tempdir().unwrap();
        trial(
            "b",
            "upstream-6.18",
            Status::Fail,
            Some(FailureKind::Finding),
        )
        .write(dir.path())
        .unwrap();
        trial("a", "sw-msi-rfcv2", Status::Pass, None)
            .write(dir.path())
            .unwrap();
        trial("a", "upstream-6.18", Status::Skip, None)
            .write(dir.path())
            .unwrap();
        std::fs::write(dir.path().join("results.json"), "{}").unwrap();
        let s = summarise(dir.path()).unwrap();
        assert_eq!((s.passed, s.failed, s.skipped), (1, 1, 1));
        assert_eq!(s.exit_code(), ExitCode::Finding);
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
        s2.trials[0].failure = Some(FailureKind::Infrastructure);
        s2.trials[0].status = Status::Fail;
        assert_eq!(s2.exit_code(), ExitCode::Infrastructure);
    }
}
