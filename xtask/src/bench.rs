//! `cargo xtask bench`: the figures of `harness::bench`, and the scenario
//! suite timed as whole nextest runs (one VM at a time and several at once,
//! cold and from saved machines), all in one run; printed with their
//! ratios and written to `bench.json` in the run's artifacts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::bench::{self, Figure, Ratio, Report};
use harness::event::Reporter;
use harness::guest::saved::StartMode;
use harness::pipeline::{self, KernelRequest};
use harness::process::Io;
use harness::scenario::Inputs;
use harness::ExitCode;

use crate::flags;

/// One suite run; the suite takes minutes.
const SUITE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The scenario a typical trial is measured on.
const TYPICAL_SCENARIO: &str = "default-window";

impl flags::Bench {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        let run_dir = harness::cache::new_run_dir("bench")?;
        let mut variants = vec![self.variant.clone()];
        if !self.no_suite {
            for v in crate::test::DEFAULT_VARIANTS {
                if !variants.iter().any(|x| x == v) {
                    variants.push(v.to_string());
                }
            }
        }
        let requests: Vec<KernelRequest> =
            variants.into_iter().map(KernelRequest::Variant).collect();
        let inputs = pipeline::prepare(&requests, Default::default(), reporter, &run_dir)?;
        let jobs = self.jobs.unwrap_or_else(pipeline::default_jobs);
        let reps = self.reps as usize;
        let mut report = Report {
            variant: self.variant.clone(),
            repetitions: reps,
            jobs,
            ..Default::default()
        };
        let say = |f: &Figure| println!("{}", f.line());

        eprintln!("=> bench    floor: plain QEMU to /init ({reps}×)");
        let floor = bench::floor(&inputs, &self.variant, reps)?;
        say(&floor);

        let rt = crate::runtime()?;
        let cfg = bench::typical_guest(&inputs, &self.variant, &run_dir.join("starts"))?;
        eprintln!("=> bench    harness starts: cold boot and saved machine ({reps}× each)");
        let (cold_ssh, cold_agent) =
            rt.block_on(bench::starts(&cfg, StartMode::Cold, reps, "cold start"))?;
        say(&cold_ssh);
        say(&cold_agent);
        // The first saved start may save the machine; it is not a sample.
        let t = Instant::now();
        rt.block_on(bench::starts(&cfg, StartMode::Saved, 1, "saved warm-up"))?;
        let warm_up = t.elapsed();
        let (saved_ssh, saved_agent) =
            rt.block_on(bench::starts(&cfg, StartMode::Saved, reps, "saved start"))?;
        say(&saved_ssh);
        say(&saved_agent);
        report.notes.push(format!(
            "first saved start (saves the machine when the cache has none): {:.2} s",
            warm_up.as_secs_f64()
        ));

        let file = harness::scenario::scenarios_dir().join(format!("{TYPICAL_SCENARIO}.toml"));
        let trial_reps = reps.min(3);
        eprintln!("=> bench    one scenario trial, {TYPICAL_SCENARIO} ({trial_reps}× each way)");
        let trial_inputs = inputs_in(&inputs, &run_dir.join("trials"))?;
        let trial_cold = bench::trial(
            &file,
            &self.variant,
            &trial_inputs,
            StartMode::Cold,
            trial_reps,
        )?;
        say(&trial_cold);
        let trial_saved = bench::trial(
            &file,
            &self.variant,
            &trial_inputs,
            StartMode::Saved,
            trial_reps,
        )?;
        say(&trial_saved);

        report
            .ratios
            .push(Ratio::of("harness boot ÷ floor", &cold_agent, &floor));
        report.ratios.push(Ratio::of(
            "saved start ÷ cold boot",
            &saved_agent,
            &cold_agent,
        ));
        report.ratios.push(Ratio::of(
            "trial saved ÷ trial cold",
            &trial_saved,
            &trial_cold,
        ));
        report.figures.extend([
            floor,
            cold_ssh,
            cold_agent,
            saved_ssh,
            saved_agent,
            trial_cold,
            trial_saved,
        ]);

        let mut failed = false;
        if !self.no_suite {
            let modes = [
                ("suite cold ×1", StartMode::Cold, 1),
                ("suite saved ×1", StartMode::Saved, 1),
                ("suite saved ×N", StartMode::Saved, jobs),
            ];
            let mut suites = Vec::new();
            for (name, mode, n) in modes {
                eprintln!("=> bench    {name}: every scenario trial, {n} at once");
                let dir = run_dir.join(name.replace([' ', '×'], "-"));
                let suite_inputs = inputs_in(&inputs, &dir)?;
                let mut suite_inputs = suite_inputs;
                suite_inputs.start = mode;
                let (f, counts) = suite(name, n, &suite_inputs, &dir)?;
                say(&f);
                println!("    {counts}");
                failed |= !counts.all_passed();
                report.notes.push(format!("{name}: {counts}"));
                suites.push(f);
            }
            report.ratios.push(Ratio::of(
                "parallel ÷ serial (saved)",
                &suites[2],
                &suites[1],
            ));
            report.ratios.push(Ratio::of(
                "suite saved ×N ÷ cold ×1",
                &suites[2],
                &suites[0],
            ));
            report.figures.extend(suites);
        }
        println!();
        for r in &report.ratios {
            println!("{}", r.line());
        }
        for n in &report.notes {
            println!("note: {n}");
        }
        let json = run_dir.join("bench.json");
        report.write_json(&json)?;
        println!("written: {}", json.display());
        Ok(if failed {
            ExitCode::Finding
        } else {
            ExitCode::Pass
        })
    }
}

/// `inputs` with its results and artifacts under `dir`.
fn inputs_in(inputs: &Inputs, dir: &Path) -> anyhow::Result<Inputs> {
    let mut i = inputs.clone();
    i.results_dir = dir.join("results");
    i.artifacts_dir = dir.join("scenarios");
    std::fs::create_dir_all(&i.results_dir)?;
    std::fs::create_dir_all(&i.artifacts_dir)?;
    Ok(i)
}

/// How a suite's trials ended.
struct Counts {
    trials: usize,
    passed: usize,
    restored: usize,
    other: Vec<String>,
}

impl Counts {
    fn all_passed(&self) -> bool {
        self.other.is_empty()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} trials, {} as accepted (pass or known), {} started from a saved machine, {} cold-booted",
            self.trials,
            self.passed,
            self.restored,
            self.trials - self.restored
        )?;
        if !self.other.is_empty() {
            write!(f, "; not as accepted: {}", self.other.join(", "))?;
        }
        Ok(())
    }
}

/// Every scenario trial through nextest with `jobs` at once.
fn suite(name: &str, jobs: u32, inputs: &Inputs, dir: &Path) -> anyhow::Result<(Figure, Counts)> {
    let inputs_file = dir.join("inputs.json");
    inputs.write(&inputs_file)?;
    // Only the scenario trials (their names have `@`).
    let selection = ["-p", "harness", "--test", "scenarios", "-E", "test(/@/)"];
    let cmd = crate::test::nextest(
        &selection,
        jobs,
        &inputs_file,
        crate::test::Snapshots::Compare,
    )?;
    let t = Instant::now();
    // A failed trial is counted below, not an error of the bench.
    let _ = cmd
        .run(SUITE_TIMEOUT, Io::quiet())
        .with_context(|| format!("{name}: cargo nextest"))?;
    let took = t.elapsed();
    let summary = harness::snapshot::report::summarise(&inputs.results_dir)?;
    let mut counts = Counts {
        trials: 0,
        passed: 0,
        restored: 0,
        other: Vec::new(),
    };
    for r in &summary.trials {
        counts.trials += 1;
        if r.restored {
            counts.restored += 1;
        }
        match r.outcome {
            harness::outcome::Outcome::Pass
            | harness::outcome::Outcome::Known
            | harness::outcome::Outcome::Skip => counts.passed += 1,
            _ => counts.other.push(format!("{} ({})", r.name(), r.outcome)),
        }
    }
    let mut f = Figure::new(
        name,
        &format!(
            "every scenario trial of the default variants, {jobs} at once (nextest wall time)"
        ),
    );
    f.samples_s.push(took.as_secs_f64());
    Ok((f, counts))
}
