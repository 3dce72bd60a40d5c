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
use harness::outcome::{Failure, Outcome};
use harness::pipeline::{self, Inputs, KernelRequest};
use harness::process::{Io, Log};
use harness::ExitCode;
use serde::Serialize;

use crate::flags;
use crate::test::{nextest, Snapshots};

/// One nextest run of the scenarios on one kernel: minutes at most.
const TRIALS_TIMEOUT: Duration = Duration::from_secs(1800);

/// What became of a mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verdict {
    /// At least one scenario had a finding.
    Killed,
    /// Every scenario ended as accepted.
    Survived,
    /// Its object code is the baseline's.
    Equivalent,
    /// The build failed.
    NotCompiled,
    /// No finding, but a trial could not run: neither killed nor survived.
    Undecided,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Killed => "killed",
            Verdict::Survived => "survived",
            Verdict::Equivalent => "equivalent",
            Verdict::NotCompiled => "not compiled",
            Verdict::Undecided => "undecided",
        }
    }
}

/// One cell of the kill matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Cell {
    Killed,
    Held,
    Skipped,
    Infrastructure,
    /// The trial left no result.
    Missing,
}

impl Cell {
    fn of(outcome: Option<Outcome>) -> Cell {
        match outcome {
            Some(Outcome::Pass | Outcome::Known) => Cell::Held,
            Some(Outcome::Skip) => Cell::Skipped,
            Some(Outcome::Fail(Failure::Finding)) => Cell::Killed,
            Some(Outcome::Fail(Failure::Infrastructure)) => Cell::Infrastructure,
            None => Cell::Missing,
        }
    }

    fn mark(self) -> char {
        match self {
            Cell::Killed => 'K',
            Cell::Held => '.',
            Cell::Skipped => '-',
            Cell::Infrastructure => 'I',
            Cell::Missing => '?',
        }
    }
}

/// A mutant's record in `mutants.json`.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(flatten)]
    mutant: Mutant,
    verdict: Verdict,
    /// Scenario → how its trial ended (empty when no trial ran).
    scenarios: BTreeMap<String, Cell>,
    /// The build came from the cache.
    build_cached: bool,
    build_s: f64,
    trials_s: f64,
    /// The build error's last lines, for a mutant that did not compile.
    #[serde(skip_serializing_if = "Option::is_none")]
    build_error: Option<String>,
    diff: String,
}

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
        let mut inputs = pipeline::prepare(
            std::slice::from_ref(&request),
            baseline_options,
            reporter,
            &run_dir,
        )?;
        inputs.start = harness::guest::saved::StartMode::Cold;
        harness::scenario::preflight(&inputs, &run_dir, reporter)?;
        let baseline_objects = harness::kernel::build_with(
            KernelSource::Variant(variant),
            baseline_options,
            &harness::event::Quiet,
            &run_dir,
        )?
        .objects;
        let key = pipeline::compared_as(&request)?;
        let baseline_dir = run_dir.join("baseline");
        let (cells, trials_s) = trials(&inputs, &baseline_dir, jobs, self.scenario.as_deref())?;
        let bad: Vec<_> = cells
            .iter()
            .filter(|(_, c)| **c != Cell::Held && **c != Cell::Skipped)
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
                "[{:>2}/{}] {:<32} {:<12} build {:>5.1} s{}  trials {:>5.1} s{}",
                n + 1,
                mutants.len(),
                m.id,
                record.verdict.word(),
                record.build_s,
                if record.build_cached { " (cached)" } else { "" },
                record.trials_s,
                match record.verdict {
                    Verdict::Killed => format!(
                        "  by {} of {}",
                        record
                            .scenarios
                            .values()
                            .filter(|c| **c == Cell::Killed)
                            .count(),
                        record.scenarios.len()
                    ),
                    _ => String::new(),
                }
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
        let count = |v: Verdict| records.iter().filter(|r| r.verdict == v).count();
        Ok(if count(Verdict::Undecided) > 0 {
            ExitCode::Infrastructure
        } else if count(Verdict::Survived) > 0 {
            ExitCode::Finding
        } else {
            ExitCode::Pass
        })
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

/// `delete 12, negate 6, …`
fn by_operator(mutants: &[Mutant]) -> String {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for m in mutants {
        *n.entry(m.operator).or_default() += 1;
    }
    n.iter()
        .map(|(op, k)| format!("{op} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    record.verdict = if cells.values().any(|c| *c == Cell::Killed) {
        Verdict::Killed
    } else if cells
        .values()
        .all(|c| matches!(c, Cell::Held | Cell::Skipped))
        && !cells.is_empty()
    {
        Verdict::Survived
    } else {
        Verdict::Undecided
    };
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
        cells.insert(t.scenario.clone(), Cell::of(Some(t.outcome)));
    }
    Ok((cells, started.elapsed().as_secs_f64()))
}

/// The kill matrix, the counts and every survivor with its diff.
fn report(records: &[Record], scenarios: &[String], wall: Duration) -> String {
    let mut out = String::new();
    let count = |v: Verdict| records.iter().filter(|r| r.verdict == v).count();
    out.push_str("\nkill matrix (K killed, . held, - skipped, I infrastructure, ? no result; columns are scenarios):\n");
    let width = records
        .iter()
        .map(|r| r.mutant.id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    for (i, s) in scenarios.iter().enumerate() {
        out.push_str(&format!("  {:>2} {s}\n", i + 1));
    }
    let header: String = (1..=scenarios.len()).map(|i| format!("{:>3}", i)).collect();
    out.push_str(&format!("{:width$} {header}  verdict\n", "mutant"));
    for r in records {
        let row: String = scenarios
            .iter()
            .map(|s| match r.scenarios.get(s) {
                Some(c) => format!("{:>3}", c.mark()),
                None => "   ".to_string(),
            })
            .collect();
        out.push_str(&format!(
            "{:width$} {row}  {}\n",
            r.mutant.id,
            r.verdict.word()
        ));
    }
    let killed_by: Vec<usize> = scenarios
        .iter()
        .map(|s| {
            records
                .iter()
                .filter(|r| r.scenarios.get(s) == Some(&Cell::Killed))
                .count()
        })
        .collect();
    let row: String = killed_by.iter().map(|k| format!("{k:>3}")).collect();
    out.push_str(&format!("{:width$} {row}\n", "kills"));
    let decided = count(Verdict::Killed) + count(Verdict::Survived);
    out.push_str(&format!(
        "\n{} mutants: {} killed, {} survived, {} equivalent, {} not compiled, {} undecided; \
         mutation score {}; wall time {}\n",
        records.len(),
        count(Verdict::Killed),
        count(Verdict::Survived),
        count(Verdict::Equivalent),
        count(Verdict::NotCompiled),
        count(Verdict::Undecided),
        if decided > 0 {
            format!(
                "{:.0} % of killed + survived",
                100.0 * count(Verdict::Killed) as f64 / decided as f64
            )
        } else {
            "n/a".into()
        },
        minutes(wall),
    ));
    let built = records.iter().filter(|r| r.verdict != Verdict::NotCompiled);
    let (cached, fresh): (Vec<&Record>, Vec<&Record>) = built.partition(|r| r.build_cached);
    out.push_str(&format!(
        "builds: {} reused from the cache, {} built ({:.0} s in all)\n",
        cached.len(),
        fresh.len(),
        fresh.iter().map(|r| r.build_s).sum::<f64>()
    ));
    for r in records.iter().filter(|r| r.verdict == Verdict::Survived) {
        out.push_str(&format!("\nsurvived: {}\n{}", r.mutant.id, r.diff));
    }
    for r in records.iter().filter(|r| r.verdict == Verdict::Undecided) {
        let why: Vec<String> = r
            .scenarios
            .iter()
            .filter(|(_, c)| matches!(c, Cell::Infrastructure | Cell::Missing))
            .map(|(s, c)| format!("{s} ({c:?})"))
            .collect();
        out.push_str(&format!(
            "\nundecided: {}: {}\n",
            r.mutant.id,
            why.join(", ")
        ));
    }
    out
}

/// `12m05s`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}
