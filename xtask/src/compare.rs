//! `compare`: what changed in behaviour between two kernels.

use std::path::PathBuf;
use std::time::SystemTime;

use harness::compare::{self, load, render, Comparison, Run};
use harness::event::Reporter;
use harness::ExitCode;

use crate::flags;

impl flags::Compare {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        let known: Vec<String> =
            harness::kernel::variants::load_variants(&harness::cache::project_root())?
                .into_iter()
                .map(|v| v.name)
                .collect();
        compare::check_variants(&[&self.a, &self.b], &known)?;
        let scenarios =
            compare::asked_scenarios(&harness::scenario::scenarios_dir(), self.filter.as_deref())?;
        let comparison = if self.accepted {
            if self.a == self.b {
                return Err(harness::Error::infra(format!(
                    "A and B are both `{}`: its accepted snapshots are the same on both sides",
                    self.a
                ))
                .into());
            }
            compare::accepted(
                &harness::snapshot::snapshot_dir(),
                &self.a,
                &self.b,
                &scenarios,
            )?
        } else {
            self.observed(&scenarios, reporter)?
        };
        print!(
            "{}",
            if self.markdown {
                render::markdown(&comparison)
            } else {
                render::text(&comparison)
            }
        );
        Ok(comparison.exit_code())
    }

    /// Each side from the run named for it, else the newest run that has
    /// its results (one run with both preferred), else a run of the suite
    /// for the sides that have none.
    fn observed(
        &self,
        scenarios: &[String],
        reporter: &dyn Reporter,
    ) -> anyhow::Result<Comparison> {
        if self.a == self.b && (self.run_a.is_none() || self.run_b.is_none()) {
            return Err(harness::Error::infra(format!(
                "A and B are both `{}`: name the two runs to compare with --run-a and --run-b",
                self.a
            ))
            .into());
        }
        let mut a = named_run(&self.run_a)?;
        let mut b = named_run(&self.run_b)?;
        if a.is_none() || b.is_none() {
            let found = load::find(&harness::cache::runs_root(), &self.a, &self.b, scenarios)?;
            a = a.or(found.a);
            b = b.or(found.b);
        }
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                let missing: Vec<String> = [(&a, &self.a), (&b, &self.b)]
                    .into_iter()
                    .filter(|(run, _)| run.is_none())
                    .map(|(_, v)| v.clone())
                    .collect();
                eprintln!(
                    "=> compare  no run has results of {} for the {} scenario(s) asked: running them",
                    missing.join(" and "),
                    scenarios.len()
                );
                let test = flags::Test {
                    jobs: None,
                    cold_boot: false,
                    variants: missing,
                    kernel_tree: None,
                    as_variant: None,
                    series: None,
                    fuzz: 0,
                    partition: None,
                    no_run: false,
                    archive_file: None,
                    origin: harness::nightly::kcidb::DEFAULT_ORIGIN.into(),
                    filter: self.filter.clone(),
                };
                // The run's findings are behaviour, which is what is
                // compared; a trial that failed to run shows in its
                // scenario's verdict.
                let run = Run::at(&crate::test::run(test, false, reporter)?.run_dir);
                (a.unwrap_or_else(|| run.clone()), b.unwrap_or(run))
            }
        };
        Ok(compare::runs(
            &a,
            &self.a,
            &b,
            &self.b,
            scenarios,
            SystemTime::now(),
        ))
    }
}

/// The run directory given on the command line, checked.
fn named_run(dir: &Option<PathBuf>) -> anyhow::Result<Option<Run>> {
    let Some(dir) = dir else { return Ok(None) };
    if !dir.join("results").is_dir() {
        return Err(harness::Error::infra(format!(
            "{} is not a run directory: it has no results/ (runs are under {})",
            dir.display(),
            harness::cache::runs_root().display()
        ))
        .into());
    }
    Ok(Some(Run::at(&std::fs::canonicalize(dir)?)))
}
