//! `test` and `bless`: the whole pipeline, then the tests through nextest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::event::Reporter;
use harness::outcome::TestsEnd;
use harness::pipeline::{self, KernelRequest};
use harness::process::{self, Cmd, Io, Stdout};
use harness::ExitCode;

use crate::flags;

/// The whole nextest run: the suite takes minutes (README), nextest ends a
/// hung test itself after ten; hours mean nextest itself is stuck.
const NEXTEST_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// The variants `cargo xtask test` runs when none is named.
pub(crate) const DEFAULT_VARIANTS: &[&str] = &["upstream-6.18", "sw-msi-rfcv2", "sw-msi-v2"];

impl flags::Test {
    pub fn run(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        Ok(run(self, false, reporter)?.code)
    }
}

/// How a `test` or `bless` run ended, and where its artifacts are.
pub(crate) struct Suite {
    pub code: ExitCode,
    pub run_dir: PathBuf,
}

/// `cargo xtask test` (or `bless`): also how `compare` runs what it lacks.
pub(crate) fn run(
    flags: flags::Test,
    bless: bool,
    reporter: &dyn Reporter,
) -> anyhow::Result<Suite> {
    let started = Instant::now();
    let mut variants = flags.variants.clone();
    if variants.is_empty() && flags.kernel_tree.is_none() {
        variants = DEFAULT_VARIANTS.iter().map(|v| v.to_string()).collect();
    }
    let mut requests: Vec<KernelRequest> = variants
        .iter()
        .filter(|v| Some(*v) != flags.as_variant.as_ref())
        .cloned()
        .map(KernelRequest::Variant)
        .collect();
    if let (Some(path), Some(as_variant)) = (&flags.kernel_tree, &flags.as_variant) {
        let path = std::fs::canonicalize(path)
            .map_err(|e| harness::Error::infra(format!("--kernel-tree {}: {e}", path.display())))?;
        requests.push(KernelRequest::Tree {
            path,
            as_variant: as_variant.clone(),
        });
    }
    let run_dir = harness::cache::new_run_dir(if bless { "bless" } else { "test" })?;
    let options = harness::kernel::BuildOptions {
        series: flags.series.as_deref(),
        fuzz: flags.fuzz,
        ..Default::default()
    };
    let mut inputs = pipeline::prepare(&requests, options, reporter, &run_dir)?;
    if flags.cold_boot {
        inputs.start = harness::guest::saved::StartMode::Cold;
    }
    let inputs_file = run_dir.join("inputs.json");
    inputs.write(&inputs_file)?;
    harness::scenario::preflight(&inputs, &run_dir, reporter)?;
    if flags.no_run {
        println!(
            "inputs ready, no test run (--no-run): {}",
            inputs_file.display()
        );
        return Ok(Suite {
            code: ExitCode::Pass,
            run_dir,
        });
    }

    let junit = harness::cache::project_root().join("target/nextest/ci/junit.xml");
    // A report left by an earlier run must not stand for this one.
    let _ = std::fs::remove_file(&junit);
    let nextest = nextest_command(&flags, bless, &inputs_file)?;
    eprintln!("=> tests    {}", describe(&nextest));
    let io = Io {
        stdout: Stdout::Inherit,
        ..Io::quiet()
    };
    let status = nextest
        .run(NEXTEST_TIMEOUT, io)
        .context("run cargo nextest")?
        .status;

    if junit.exists() {
        std::fs::copy(&junit, run_dir.join("junit.xml")).context("copy junit.xml")?;
    }
    let summary = harness::snapshot::report::summarise(&inputs.results_dir)?;
    summary.write_json(&run_dir.join("results.json"))?;
    harness::nightly::kcidb::write(&run_dir, &summary, &inputs.kernels, &flags.origin)?;
    println!("{}", summary.table());
    println!(
        "suite wall time {:.1} s; artifacts {}",
        started.elapsed().as_secs_f64(),
        run_dir.display()
    );
    if bless {
        let out = process::cmd("git")
            .args(["status", "--short", "--", "scenarios/snapshots"])
            .current_dir(harness::cache::project_root())
            .run(Duration::from_secs(60), Io::quiet());
        if let Ok(out) = out {
            let changed = out.stdout_text();
            if changed.trim().is_empty() {
                println!("no snapshot changed");
            } else {
                println!(
                    "snapshots written (review with `git diff scenarios/snapshots`):\n{changed}"
                );
            }
        }
    }
    // A scenario file that does not parse is bad input; its own `parse:`
    // test failed above and the other scenarios still ran.
    let malformed = malformed_scenarios()?;
    for e in &malformed {
        eprintln!("error: {e}");
    }
    let junit = std::fs::read_to_string(&junit).ok();
    let judged = summary.judge(junit.as_deref(), status.success(), malformed.len());
    match &judged.tests {
        TestsEnd::Failed { unexplained } if !unexplained.is_empty() => {
            eprintln!(
                "error: {} test(s) outside the scenario trials failed (not a finding; nextest printed why):",
                unexplained.len()
            );
            for t in unexplained {
                eprintln!("  {t}");
            }
        }
        TestsEnd::DidNotRun { why } => eprintln!("error: {why}"),
        _ => {}
    }
    Ok(Suite {
        code: judged.exit_code(),
        run_dir,
    })
}

impl flags::Test {
    pub fn bless(self, reporter: &dyn Reporter) -> anyhow::Result<ExitCode> {
        Ok(run(self, true, reporter)?.code)
    }
}

/// `cargo nextest run` over the whole workspace, ignored (VM-gated) tests
/// included, with the inputs file in its environment.
fn nextest_command(flags: &flags::Test, bless: bool, inputs_file: &Path) -> anyhow::Result<Cmd> {
    let jobs = flags.jobs.unwrap_or_else(pipeline::default_jobs);
    let update = if bless {
        Snapshots::Write
    } else {
        Snapshots::Compare
    };
    let mut cmd = match &flags.archive_file {
        // An archive holds the workspace's test binaries already: cargo's
        // own selection flags do not apply to it.
        Some(archive) => {
            let archive = std::fs::canonicalize(archive).map_err(|e| {
                harness::Error::infra(format!("--archive-file {}: {e}", archive.display()))
            })?;
            let root = harness::cache::project_root();
            let mut cmd = nextest(&[], jobs, inputs_file, update)?;
            cmd.arg("--archive-file").arg(archive);
            cmd.arg("--workspace-remap").arg(root);
            cmd
        }
        None => nextest(&["--workspace"], jobs, inputs_file, update)?,
    };
    if let Some(partition) = &flags.partition {
        cmd.args(["--partition", partition]);
    }
    if let Some(filter) = &flags.filter {
        cmd.arg(filter);
    }
    Ok(cmd)
}

/// Whether a run writes the snapshots it takes (`bless`) or only compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshots {
    Compare,
    Write,
}

/// How the suite's tests run, for `test`, `bless` and `bench` alike: the
/// `ci` profile, the `selection` of tests, ignored (VM-gated) ones
/// included, `jobs` at once, the inputs file in the environment, snapshots
/// compared, or written for `bless`. (The environment is set once, here:
/// an outer `env` on the command would not override an inner one.)
pub(crate) fn nextest(
    selection: &[&str],
    jobs: u32,
    inputs_file: &Path,
    snapshots: Snapshots,
) -> anyhow::Result<Cmd> {
    if harness::deps::which("cargo-nextest").is_none() {
        return Err(harness::Error::infra(
            "cargo-nextest is not installed: run `cargo install --locked cargo-nextest`",
        )
        .into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = process::cmd(cargo);
    cmd.current_dir(harness::cache::project_root());
    cmd.args(["nextest", "run"]);
    cmd.args(selection);
    cmd.args([
        "--profile",
        "ci",
        "--no-fail-fast",
        // The VM-gated tests are `#[ignore]`d under plain `cargo test`;
        // here their inputs exist, so they run.
        "--run-ignored",
        "all",
        "--test-threads",
        &jobs.to_string(),
    ]);
    cmd.env(harness::scenario::inputs::INPUTS_ENV, inputs_file);
    cmd.env_remove("INSTA_FORCE_PASS");
    // A snapshot mismatch is a finding, not a crash: its diff is the
    // message, a backtrace would only bury it.
    cmd.env("RUST_BACKTRACE", "0");
    match snapshots {
        Snapshots::Compare => {
            cmd.env("INSTA_UPDATE", "no");
        }
        Snapshots::Write => {
            cmd.env("INSTA_UPDATE", "always");
            cmd.env_remove("CI");
        }
    }
    Ok(cmd)
}

/// The positioned error of every scenario file that does not parse.
fn malformed_scenarios() -> anyhow::Result<Vec<String>> {
    let files = harness::scenario::discover(&harness::scenario::scenarios_dir())?;
    Ok(files
        .iter()
        .filter_map(|f| harness::scenario::Scenario::load(f).err())
        .map(|e| e.to_string())
        .collect())
}

fn describe(cmd: &Cmd) -> String {
    format!("cargo {}", process::display(cmd.get_args()))
}
