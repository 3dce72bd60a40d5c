//! `mutants`: mutation testing of the patch under test.
//!
//! The mutants come from `harness::kernel::mutate` (the `.c` lines the
//! variant's series adds). All are built one after another in one tree,
//! `kernel/work/<variant>.mutants`, so each build recompiles one or two
//! files (a mutant's file, and the previous mutant's file put back); each
//! finished build is kept under its own key, so a second run builds nothing.
//! First the unmutated series is built in that tree and every scenario must
//! pass on it (else a kill would mean nothing: exit 2). Then per mutant:
//! build; a build error means "not compiled"; object code identical to the
//! baseline's means "equivalent" (no scenario can tell them apart, so none
//! is run); else every scenario runs on a cold-booted guest, judged against
//! the variant's snapshots. A scenario kills a mutant with a finding (exit
//! 1 of that trial); an infrastructure failure decides nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::event::{Reporter, Stage};
use harness::kernel::mutate::{self, Mutant};
use harness::kernel::{BuildOptions, KernelSource, Mutation};
use harness::mutants::{by_operator, exit_code, report, Cell, Record, Verdict};
use harness::pipeline::{self, Inputs, KernelRequest};
use harness::process::{Io, Log};
use harness::ExitCode;

use crate::flags;
use crate::test::{nextest, Snapshots};

/// One nextest run of the scenarios on one kernel: minutes at most.
const TRIALS_TIMEOUT: Duration = Duration::from_secs(1800);

impl flags::Mutants {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        harness::deps::ensure(reporter)?;
        let run_dir = harness::cache::new_run_dir("mutants")?;
        let variant = self.variant.as_str();
        let all = generate(variant, reporter, &run_dir)?;
        let mutants: Vec<Mutant> = all
            .iter()
            .filter(|m| self.filter.as_deref().is_none_or(|f| m.id.contains(f)))
            .cloned()
            .collect();
        println!(
            "{} mutants of {variant}'s series{} ({})",
            mutants.len(),
            match &self.filter {
                Some(f) => format!(" matching {f:?}, of {}", all.len()),
                None => String::new(),
            },
            by_operator(&mutants)
        );
        if self.list {
            for m in &mutants {
                println!("{}\n{}", m.id, m.diff());
            }
            return Ok(ExitCode::Pass);
        }
        if mutants.is_empty() {
            return Err(harness::Error::infra(match &self.filter {
                Some(f) => format!("no mutant of {variant} matches {f:?} (see `--list`)"),
                None => format!("{variant}'s series adds no .c line to mutate"),
            })
            .into());
        }
        let jobs = self.jobs.unwrap_or_else(pipeline::default_jobs);
        let request = KernelRequest::Variant(variant.to_string());

        // The baseline: the unmutated series, in the mutants tree.
        let baseline_options = BuildOptions {
            mutation: Mutation::Baseline,
            ..Default::default()
        };
        let (mut inputs, builds) = pipeline::prepare_with_builds(
            std::slice::from_ref(&request),
            baseline_options,
            reporter,
            &run_dir,
        )?;
        inputs.start = harness::guest::saved::StartMode::Cold;
        harness::scenario::preflight(&inputs, &run_dir, reporter)?;
        let baseline_objects = builds
            .into_iter()
            .next()
            .map(|b| b.objects)
            .unwrap_or_default();
        let key = pipeline::compared_as(&request)?;
        let baseline_dir = run_dir.join("baseline");
        let (cells, trials_s) = trials(&inputs, &baseline_dir, jobs, self.scenario.as_deref())?;
        let bad: Vec<_> = cells
            .iter()
            .filter(|(_, c)| !c.held())
            .map(|(s, c)| format!("{s}: {c:?}"))
            .collect();
        if cells.is_empty() || !bad.is_empty() {
            return Err(harness::Error::infra(format!(
                "the unmutated {variant} does not pass its scenarios ({}; results in {}): \
                 fix that first, a kill would mean nothing",
                if cells.is_empty() {
                    "no trial ran".to_string()
                } else {
                    bad.join(", ")
                },
                baseline_dir.display()
            ))
            .into());
        }
        println!(
            "baseline: {} scenarios pass on the unmutated series ({trials_s:.0} s)",
            cells.len()
        );
        let scenarios: Vec<String> = cells.keys().cloned().collect();

        let mut records = Vec::new();
        for (n, m) in mutants.iter().enumerate() {
            let record = one(
                m,
                &request,
                &key,
                &inputs,
                &baseline_objects,
                &run_dir,
                jobs,
                self.scenario.as_deref(),
                reporter,
            )?;
            println!(
                "[{:>2}/{}] {:<28} build {:>5.1} s{:<9} trials {:>5.1} s  {}",
                n + 1,
                mutants.len(),
                m.id,
                record.build_s,
                if record.build_cached { " (cached)" } else { "" },
                record.trials_s,
                record.line()
            );
            records.push(record);
        }

        let report = report(&records, &scenarios, started.elapsed());
        println!("{report}");
        std::fs::write(run_dir.join("mutants.txt"), &report)?;
        std::fs::write(
            run_dir.join("mutants.json"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "variant": variant,
                "scenarios": scenarios,
                "wall_time_s": started.elapsed().as_secs_f64(),
                "mutants": records,
            }))?,
        )?;
        println!("artifacts {}", run_dir.display());
        Ok(exit_code(&records))
    }
}

/// The mutants of the variant's series, from its files before and after.
fn generate(variant: &str, reporter: &dyn Reporter, run_dir: &Path) -> anyhow::Result<Vec<Mutant>> {
    let checked = harness::kernel::check_series(
        KernelSource::Variant(variant),
        BuildOptions::default(),
        reporter,
        run_dir,
    )?;
    let pristine = checked
        .applied
        .files
        .keys()
        .map(|f| {
            (
                f.clone(),
                std::fs::read_to_string(checked.pristine.join(f)).ok(),
            )
        })
        .collect();
    Ok(mutate::generate(&checked.applied, &pristine))
}

/// Builds one mutant and, unless it did not compile or is equivalent,
/// runs the scenarios on it.
#[allow(clippy::too_many_arguments)]
fn one(
    m: &Mutant,
    request: &KernelRequest,
    key: &str,
    baseline: &Inputs,
    baseline_objects: &BTreeMap<String, String>,
    run_dir: &Path,
    jobs: u32,
    scenario: Option<&str>,
    reporter: &dyn Reporter,
) -> anyhow::Result<Record> {
    let options = BuildOptions {
        mutation: Mutation::Mutant(m),
        ..Default::default()
    };
    let dir = run_dir.join("mutants").join(m.id.replace([':', '/'], "_"));
    std::fs::create_dir_all(&dir)?;
    let built = Instant::now();
    let quiet = harness::event::Quiet;
    let built_kernel = pipeline::build_kernel(request, options, &quiet, &dir);
    let build_s = built.elapsed().as_secs_f64();
    let mut record = Record {
        mutant: m.clone(),
        verdict: Verdict::NotCompiled,
        scenarios: BTreeMap::new(),
        build_cached: false,
        build_s,
        trials_s: 0.0,
        build_error: None,
        diff: m.diff(),
    };
    let (build, input) = match built_kernel {
        Ok(b) => b,
        Err(e) => {
            let text = format!("{e:#}");
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            record.build_error = Some(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            reporter.line(
                Stage::Kernel,
                format!(
                    "{}: not compiled: {}",
                    m.id,
                    text.lines().next().unwrap_or("")
                ),
            );
            return Ok(record);
        }
    };
    record.build_cached = build.cached;
    let object = build.objects.get(&m.file);
    if object.is_some() && object == baseline_objects.get(&m.file) {
        record.verdict = Verdict::Equivalent;
        return Ok(record);
    }
    let mut inputs = baseline.clone();
    inputs.kernels = BTreeMap::from([(key.to_string(), input)]);
    let (cells, trials_s) = trials(&inputs, &dir, jobs, scenario)?;
    record.trials_s = trials_s;
    record.verdict = Verdict::of_trials(&cells);
    record.scenarios = cells;
    Ok(record)
}

/// Runs every scenario (or those whose name contains `scenario`) on the
/// one kernel of `inputs`, results and artifacts under `dir`: how each
/// ended, and the wall time.
fn trials(
    inputs: &Inputs,
    dir: &Path,
    jobs: u32,
    scenario: Option<&str>,
) -> anyhow::Result<(BTreeMap<String, Cell>, f64)> {
    let started = Instant::now();
    let mut inputs = inputs.clone();
    inputs.results_dir = dir.join("results");
    inputs.artifacts_dir = dir.join("scenarios");
    std::fs::create_dir_all(&inputs.results_dir)?;
    std::fs::create_dir_all(&inputs.artifacts_dir)?;
    let inputs_file = dir.join("inputs.json");
    inputs.write(&inputs_file)?;
    let expected: Vec<String> = harness::scenario::discover(&harness::scenario::scenarios_dir())?
        .iter()
        .map(|f| harness::scenario::name_of(f))
        .filter(|n| scenario.is_none_or(|s| n.contains(s)))
        .collect();
    let filter = format!("{}@", scenario.unwrap_or(""));
    let mut cmd = nextest(
        &["-p", "harness", "--test", "scenarios"],
        jobs,
        &inputs_file,
        Snapshots::Compare,
    )?;
    cmd.arg(&filter);
    let log = Log::create(&dir.join("nextest.log"))?;
    // Failing trials are what is measured: nextest's status says nothing
    // the result files do not.
    let _ = cmd.run(TRIALS_TIMEOUT, Io::log(&log))?;
    let summary = harness::snapshot::report::summarise(&inputs.results_dir)?;
    let mut cells: BTreeMap<String, Cell> = expected
        .iter()
        .map(|s| (s.clone(), Cell::Missing))
        .collect();
    for t in &summary.trials {
        cells.insert(t.scenario.clone(), Cell::of(t.outcome));
    }
    Ok((cells, started.elapsed().as_secs_f64()))
}
