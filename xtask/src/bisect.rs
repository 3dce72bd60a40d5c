//! `bisect`: the first bad commit of a kernel git tree for one scenario.
//! The search and the git work are `harness::bisect`; each commit's runs
//! are `cargo xtask test --kernel-tree CHECKOUT --as VARIANT SCENARIO@`.

use std::path::PathBuf;

use harness::bisect::{self, Commit, Next, Report, RunEnd, Search, Step, Verdict};
use harness::event::Reporter;
use harness::outcome::bisect_exit_code;
use harness::ExitCode;

use crate::flags;

/// The variant whose snapshots judge a bisect that names none.
const DEFAULT_VARIANT: &str = "sw-msi-rfcv2";

impl flags::Bisect {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        let (scenario, variant) = match self.trial.split_once('@') {
            Some((s, v)) => (s.to_string(), v.to_string()),
            None => (self.trial.clone(), DEFAULT_VARIANT.to_string()),
        };
        let snapshot = harness::snapshot::snapshot_dir().join(format!(
            "{}.snap",
            harness::snapshot::snapshot_name(&scenario, &variant)
        ));
        if !snapshot.is_file() {
            return Err(harness::Error::infra(format!(
                "no accepted snapshot {} to judge the commits by: name the scenario and a variant that has one (SCENARIO@VARIANT)",
                harness::scenario::display_path(&snapshot)
            ))
            .into());
        }
        let tree = std::fs::canonicalize(&self.kernel_tree).map_err(|e| {
            harness::Error::infra(format!("--kernel-tree {}: {e}", self.kernel_tree.display()))
        })?;
        let run_dir = harness::cache::new_run_dir("bisect")?;
        let log = harness::process::Log::create(&run_dir.join("git.log"))?;
        let good = bisect::resolve(&tree, &self.good, &log)?;
        let bad = bisect::resolve(&tree, &self.bad, &log)?;
        let commits = bisect::commits(&tree, &good, &bad, &log)?;
        let checkout = bisect::checkout_dir(&harness::cache::cache_root()?, &tree);
        println!(
            "== bisect {scenario}@{variant}: {} commit(s) after {} up to {}, {} run(s) each; checkout {}",
            commits.len(),
            &good[..12],
            &bad[..12],
            self.runs,
            checkout.display()
        );
        let mut report = Report {
            tree: tree.clone(),
            scenario: scenario.clone(),
            variant: variant.clone(),
            good,
            bad,
            runs_per_commit: self.runs,
            commits: commits.len(),
            steps: Vec::new(),
            first_bad: None,
            one_of: Vec::new(),
        };
        let tester = Tester {
            tree: &tree,
            checkout: &checkout,
            scenario: &scenario,
            variant: &variant,
            runs: self.runs,
            log: &log,
        };

        // --bad first: a bisect of a range whose end does not fail would
        // name a commit for nothing.
        let last = commits.len() - 1;
        let step = tester.test(&commits[last], reporter)?;
        println!(
            "== bisect: --bad {}: {:?}, {}",
            commits[last].describe(),
            step.verdict,
            step.why
        );
        let bad_verdict = step.verdict;
        report.steps.push(step);
        if bad_verdict != Verdict::Bad {
            write_report(&run_dir, &report)?;
            return Err(harness::Error::infra(format!(
                "--bad {} does not fail {scenario}@{variant} ({}): nothing to bisect; bisect.json in {}",
                commits[last].describe(),
                report.steps[0].why,
                run_dir.display()
            ))
            .into());
        }

        let mut search = Search::new(commits.len());
        let answer = loop {
            match search.next() {
                Next::Test(i) => {
                    let step = tester.test(&commits[i], reporter)?;
                    println!(
                        "== bisect: {} ({} of {}): {:?}, {}",
                        commits[i].describe(),
                        i + 1,
                        commits.len(),
                        step.verdict,
                        step.why
                    );
                    search.record(i, step.verdict);
                    report.steps.push(step);
                }
                answer => break answer,
            }
        };

        println!("\n== bisect {scenario}@{variant}: tested");
        for s in &report.steps {
            println!(
                "  {:<5} {}  {}",
                format!("{:?}", s.verdict).to_lowercase(),
                s.commit.describe(),
                s.why
            );
        }
        let code = match answer {
            Next::Found(i) => {
                let first = &commits[i];
                println!("\nfirst bad commit: {}", first.describe());
                if let Some(step) = report.steps.iter().find(|s| s.commit == *first) {
                    if let Some(dir) = step.run_dirs.last() {
                        print_evidence(dir, &scenario, &variant);
                    }
                }
                report.first_bad = Some(first.clone());
                bisect_exit_code(true)
            }
            Next::OneOf(is) => {
                let could: Vec<&Commit> = is.iter().map(|&i| &commits[i]).collect();
                println!("\nthe first bad commit is one of these (skipped commits leave it open):");
                for c in &could {
                    println!("  {}", c.describe());
                }
                report.one_of = could.into_iter().cloned().collect();
                bisect_exit_code(false)
            }
            Next::Test(_) => unreachable!("the loop ends on an answer"),
        };
        write_report(&run_dir, &report)?;
        println!("bisect.json in {}", run_dir.display());
        Ok(code)
    }
}

fn write_report(run_dir: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    harness::cache::write_atomic(
        &run_dir.join("bisect.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )
}

/// The bad commit's trial against the accepted snapshot, step by step, and
/// the trial's own reason.
fn print_evidence(run: &std::path::Path, scenario: &str, variant: &str) {
    let scenarios = [scenario.to_string()];
    let snapshots = harness::snapshot::snapshot_dir();
    let accepted = harness::compare::load::accepted(&snapshots, variant, &scenarios);
    let (observed, kernel) = harness::compare::load::from_run(run, variant, &scenarios);
    if let Ok(accepted) = accepted {
        let c = harness::compare::Comparison::new(
            harness::compare::Side::accepted(variant, &snapshots),
            harness::compare::Side {
                variant: format!("{variant} at the first bad commit"),
                source: format!("run {}", run.display()),
                kernel,
            },
            vec![(
                scenario.to_string(),
                accepted
                    .into_iter()
                    .next()
                    .unwrap_or(harness::compare::Observed::Missing),
                observed
                    .into_iter()
                    .next()
                    .unwrap_or(harness::compare::Observed::Missing),
            )],
        );
        println!("{}", harness::compare::render::text(&c));
    }
    let result = run.join("results").join(format!(
        "{}.json",
        harness::snapshot::snapshot_name(scenario, variant)
    ));
    if let Ok(r) =
        harness::cache::read_json::<harness::snapshot::result::TrialResult>(&result, "trial result")
    {
        if let Some(reason) = r.reason {
            println!("the trial said:\n  {}", reason.replace('\n', "\n  "));
        }
        println!("artifacts: {}", r.artifacts.display());
    }
}

/// Tests one commit `runs` times.
struct Tester<'a> {
    tree: &'a std::path::Path,
    checkout: &'a std::path::Path,
    scenario: &'a str,
    variant: &'a str,
    runs: u32,
    log: &'a harness::process::Log,
}

impl Tester<'_> {
    fn test(&self, commit: &Commit, reporter: &dyn Reporter) -> anyhow::Result<Step> {
        bisect::check_out(self.tree, self.checkout, &commit.hash, self.log)?;
        let mut runs = Vec::new();
        let mut run_dirs = Vec::new();
        for n in 1..=self.runs {
            println!("== bisect: {} run {n} of {}", commit.describe(), self.runs);
            let flags = flags::Test {
                variants: Vec::new(),
                kernel_tree: Some(self.checkout.to_path_buf()),
                as_variant: Some(self.variant.to_string()),
                series: None,
                fuzz: 0,
                jobs: None,
                cold_boot: false,
                partition: None,
                no_run: false,
                archive_file: None,
                origin: harness::nightly::kcidb::DEFAULT_ORIGIN.to_string(),
                filter: Some(format!("{}@", self.scenario)),
            };
            let end = match crate::test::run(flags, false, reporter) {
                Ok(suite) => {
                    run_dirs.push(suite.run_dir.clone());
                    match suite.code {
                        ExitCode::Pass => RunEnd::Pass,
                        ExitCode::Finding => RunEnd::Finding,
                        ExitCode::Infrastructure => RunEnd::Infrastructure(infra_reason(
                            &suite.run_dir,
                            self.scenario,
                            self.variant,
                        )),
                    }
                }
                // The kernel did not build, QEMU could not start: the
                // commit cannot be tested.
                Err(e) => RunEnd::Infrastructure(format!("{e:#}")),
            };
            let stop = matches!(end, RunEnd::Infrastructure(_));
            runs.push(end);
            if stop {
                break;
            }
        }
        let (verdict, why) = bisect::judge(&runs);
        Ok(Step {
            commit: commit.clone(),
            verdict,
            why,
            runs,
            run_dirs,
        })
    }
}

/// Why a run that ended with exit 2 did: its trial's reason, if it left one.
fn infra_reason(run: &std::path::Path, scenario: &str, variant: &str) -> String {
    let result: PathBuf = run.join("results").join(format!(
        "{}.json",
        harness::snapshot::snapshot_name(scenario, variant)
    ));
    harness::cache::read_json::<harness::snapshot::result::TrialResult>(&result, "trial result")
        .ok()
        .and_then(|r| r.reason)
        .unwrap_or_else(|| format!("the run ended with exit 2 (see {})", run.display()))
}
