//! Command-line flags: one struct per verb; its doc comment is the `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// msi-harness: build a kernel, boot it under QEMU with an emulated SMMUv3,
/// run the SW_MSI scenarios and compare what the kernel did with snapshots.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, and install when missing, every host tool the harness needs.
    Deps(Deps),
    /// Build a kernel variant (or a local tree) and print where the Image and headers are.
    Kernel(Kernel),
    /// Build the guest initramfs (busybox, dropbear, the agent) and print where it is.
    Image(Image),
    /// Boot a guest, print the boot phases with timings, power it off.
    Boot(Boot),
    /// Boot a guest and open a shell in it (prints the ssh command for other terminals).
    Shell(Shell),
    /// Everything: set-up, kernels, image, VM tests and scenarios, summary and reports.
    Test(Test),
    /// Like `test`, but accept the new snapshots (review them with `git diff`).
    Bless(Test),
    /// What changed in behaviour between two kernel variants, scenario by scenario.
    Compare(Compare),
    /// Measure boots, starts, a trial and the suite; print figures and ratios.
    Bench(Bench),
    /// Mutation testing of the variant's series: which scenarios kill which mutant.
    Mutants(Mutants),
    /// Print the nightly matrix (kernels, test shards) from kernels.toml as JSON.
    Matrix(Matrix),
    /// Join the results of shards (`test --partition`) into one run's.
    Merge(Merge),
    /// Pack one trial of a run (a failing one, named as in the summary) as
    /// a .tar.gz that replays with only QEMU and ssh (`replay.sh`).
    Bundle(Bundle),
    /// Find the first commit of a kernel git tree whose trial of a
    /// scenario no longer matches its accepted snapshot.
    Bisect(Bisect),
}

#[derive(Debug, Args)]
pub struct Deps {}

#[derive(Debug, Args)]
pub struct Kernel {
    /// The variant from kernel-configs/kernels.toml.
    #[arg(long, default_value = "sw-msi-rfcv2", conflicts_with = "kernel_tree")]
    pub variant: String,
    /// Build this local kernel tree as it is (never modified; built out of tree).
    #[arg(long, value_name = "PATH")]
    pub kernel_tree: Option<PathBuf>,
    /// A mail, mbox or directory of mails/patches replacing the variant's
    /// series, as downloaded; `PATH:9`, `PATH:9-10` or `PATH:4,8-9` picks
    /// patches by their n of [PATCH n/m].
    #[arg(long, value_name = "PATH[:N]", conflicts_with = "kernel_tree")]
    pub series: Option<PathBuf>,
    /// Let hunks apply with up to N context lines ignored at each end, as
    /// patch(1)'s --fuzz (default: strict, no fuzz).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "kernel_tree"
    )]
    pub fuzz: u32,
    /// Only apply the series in memory on the pristine source and report
    /// each patch (applies / already applied / stale); build nothing.
    #[arg(long, conflicts_with = "kernel_tree")]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct Image {}

#[derive(Debug, Args)]
pub struct Boot {
    /// The kernel variant to boot.
    #[arg(long, default_value = "sw-msi-rfcv2")]
    pub variant: String,
    /// How many edu devices to attach (bound to vfio-pci by /init).
    #[arg(long, default_value_t = 1)]
    pub edu: u32,
}

#[derive(Debug, Args)]
pub struct Shell {
    /// The kernel variant to boot.
    #[arg(long, default_value = "sw-msi-rfcv2")]
    pub variant: String,
    /// How many edu devices to attach (bound to vfio-pci by /init).
    #[arg(long, default_value_t = 1)]
    pub edu: u32,
}

#[derive(Debug, Args)]
pub struct Test {
    /// Kernel variants to run the scenarios on (repeatable).
    /// Default: upstream-6.18, sw-msi-rfcv2 and sw-msi-v2.
    #[arg(long = "variant", value_name = "NAME")]
    pub variants: Vec<String>,
    /// Build this local kernel tree and judge it against the snapshots of `--as`.
    #[arg(long, value_name = "PATH", requires = "as_variant")]
    pub kernel_tree: Option<PathBuf>,
    /// The variant whose snapshots a `--kernel-tree` is compared with.
    #[arg(long = "as", value_name = "VARIANT", requires = "kernel_tree")]
    pub as_variant: Option<String>,
    /// A mail, mbox or directory of mails/patches replacing the variants'
    /// series (e.g. a reviewer's respin, judged against the variant's
    /// snapshots); `PATH:9-10` picks patches by number.
    #[arg(long, value_name = "PATH[:N]", conflicts_with = "kernel_tree")]
    pub series: Option<PathBuf>,
    /// Let the variants' hunks apply with up to N context lines ignored at
    /// each end, as patch(1)'s --fuzz (default: strict, no fuzz).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "kernel_tree"
    )]
    pub fuzz: u32,
    /// How many tests (and so VMs) run at once. Default: two per core, as
    /// far as memory allows (`harness::pipeline::default_jobs`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Boot every trial's guest instead of starting it from its saved
    /// machine (what the saved starts are checked against).
    #[arg(long)]
    pub cold_boot: bool,
    /// Run one shard of the tests, as nextest's `--partition` takes it
    /// (`count:2/3`); `cargo xtask merge` joins the shards' results.
    #[arg(long, value_name = "count:K/N", value_parser = parse_partition)]
    pub partition: Option<String>,
    /// Build and check everything the tests need (kernels, selftests,
    /// initramfs, saved machines) and write the run's inputs.json; run no
    /// test (a CI build job, before `cargo nextest archive`).
    #[arg(long, conflicts_with_all = ["partition", "archive_file"])]
    pub no_run: bool,
    /// Run the test binaries of this `cargo nextest archive` instead of
    /// building them (a CI test job).
    #[arg(long, value_name = "PATH")]
    pub archive_file: Option<PathBuf>,
    /// The KCIDB origin of the run's `kcidb.json` (`[a-z0-9_]+`).
    #[arg(long, default_value = harness::nightly::kcidb::DEFAULT_ORIGIN, value_parser = parse_origin)]
    pub origin: String,
    /// Only tests whose name contains this (e.g. a scenario name).
    pub filter: Option<String>,
}

/// A KCIDB origin: lowercase letters, digits and '_'.
fn parse_origin(s: &str) -> Result<String, String> {
    if harness::nightly::kcidb::valid_origin(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}`: a KCIDB origin is lowercase letters, digits and '_'"
        ))
    }
}

/// `count:K/N` with 1 <= K <= N (nextest's own syntax; `hash:` is left out
/// because its shards are not balanced by count).
fn parse_partition(s: &str) -> Result<String, String> {
    let bad = || format!("`{s}`: expected count:K/N with 1 <= K <= N (e.g. count:2/3)");
    let (k, n) = s
        .strip_prefix("count:")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(bad)?;
    let (k, n): (u32, u32) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// Prints, per scenario, only the steps whose observable behaviour differs
/// between A and B (result or errno, MSI address, interrupts, SMMU
/// translations and faults, ITS writes, kernel reports; requests marked as
/// such), side by side, with a one-line verdict.
///
/// Without `--accepted` it reuses the newest run (`target/msi-harness/runs/`)
/// that has results of both for the scenarios asked, and otherwise runs
/// `cargo xtask test --variant …` for the side that has none. Exit code 0 when
/// every scenario could be compared (differences are information), 2 when
/// one could not (a trial that failed to run, missing data, bad input).
#[derive(Debug, Args)]
pub struct Compare {
    /// The variant on the left (A), from kernel-configs/kernels.toml.
    pub a: String,
    /// The variant on the right (B).
    pub b: String,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    /// Markdown to paste into a mail reply: a table per scenario that differs.
    #[arg(long)]
    pub markdown: bool,
    /// Compare the accepted snapshots (scenarios/snapshots) instead: no VM.
    #[arg(long, conflicts_with_all = ["run_a", "run_b"])]
    pub accepted: bool,
    /// Take A's trials from this run directory (e.g. a `--kernel-tree … --as A` run).
    #[arg(long, value_name = "DIR")]
    pub run_a: Option<PathBuf>,
    /// Take B's trials from this run directory.
    #[arg(long, value_name = "DIR")]
    pub run_b: Option<PathBuf>,
}

/// Measures, in one run: the floor (plain QEMU to the first line of
/// `/init`), the harness's cold start and the start from a saved machine
/// (each to the agent answering), one typical scenario both ways, and the
/// scenario suite one VM at a time (cold and saved) and N at once. Prints
/// min/median/max and the ratios; writes `bench.json` to the run's
/// artifacts. Nothing is asserted: exit 1 only if a trial did not end as
/// accepted.
#[derive(Debug, Args)]
pub struct Bench {
    /// The kernel variant of the boot, start and trial figures.
    #[arg(long, default_value = "upstream-6.18")]
    pub variant: String,
    /// Repetitions of each boot and start figure (trials: up to 3).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Guests at once in the parallel suite run (default: as `test`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Leave out the three suite runs (minutes each).
    #[arg(long)]
    pub no_suite: bool,
}

/// Mutation testing of the patch under test: mutants of the `.c` lines the
/// variant's series adds (delete a statement, negate a condition, `&&`/`||`,
/// `==`/`!=`, a constant ±1 or ± a page, a returned errno → 0, an
/// assignment's source swapped with a sibling's), each built incrementally
/// in one tree (`kernel/work/<variant>.mutants`, every build kept, so a
/// second run builds nothing) and run through the scenarios on cold-booted
/// guests against the variant's snapshots. Prints the kill matrix (mutant ×
/// scenario), the counts and each survivor with its diff; writes
/// `mutants.json` and `mutants.txt` to the run's artifacts.
///
/// The unmutated series must pass every scenario first. Exit code 0 when
/// every mutant that compiled and differs from the baseline's object code
/// was killed, 1 when one survived, 2 when a trial could not run (or the
/// baseline did not pass).
#[derive(Debug, Args)]
pub struct Mutants {
    /// The kernel variant whose series is mutated.
    #[arg(long, default_value = "sw-msi-rfcv2")]
    pub variant: String,
    /// Only scenarios whose name contains this (a column of the matrix).
    #[arg(long, value_name = "NAME")]
    pub scenario: Option<String>,
    /// How many trials (and so VMs) run at once (default: as `test`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Print the mutants and their diffs; build and run nothing.
    #[arg(long)]
    pub list: bool,
    /// Only mutants whose id contains this (`ioas.c:85`, `negate`).
    pub filter: Option<String>,
}

/// Prints the nightly matrix as one line of JSON, `{"kernels": [...],
/// "shards": [{"kernel": ..., "partition": "count:1/2"}, ...]}`: every
/// variant of kernel-configs/kernels.toml not marked `nightly = false`, then
/// the flavours' `nightly` lists. The workflow reads it with `fromJSON`.
#[derive(Debug, Args)]
pub struct Matrix {
    /// Test jobs per kernel (nextest partitions).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
}

/// Joins the results of `cargo xtask test --partition count:K/N` runs (one
/// per shard, each a run directory or its `results.json`) into one:
/// `results.json`, `junit.xml` (the shards' test suites side by side),
/// `kcidb.json` and the summary table, in a new run directory. A trial in two shards is an
/// error. With `--expect RUN`, the merged trials must equal that run's
/// (one unsharded run of the same suite): same trials, outcomes, reasons,
/// interrupts and MSI addresses. Exit code: as the merged trials' outcomes
/// say (0, 1 a finding, 2 infrastructure); 2 when the shards overlap or
/// differ from `--expect`.
#[derive(Debug, Args)]
pub struct Merge {
    /// A run directory of an unsharded run to compare the merge with.
    #[arg(long, value_name = "RUN")]
    pub expect: Option<PathBuf>,
    /// The KCIDB origin of the merged `kcidb.json`.
    #[arg(long, default_value = harness::nightly::kcidb::DEFAULT_ORIGIN, value_parser = parse_origin)]
    pub origin: String,
    /// The shards' run directories (or results.json files).
    #[arg(required = true, value_name = "RUN")]
    pub shards: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Bundle {
    /// The run directory (default: the newest run with this trial).
    #[arg(long, value_name = "RUN")]
    pub run: Option<PathBuf>,
    /// Where to write `<TRIAL>.tar.gz` (default: `target/msi-harness/bundles`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// `SCENARIO@VARIANT`, as the summary names it.
    pub trial: String,
}

/// Each step checks a commit out in the bisect's own checkout of the tree
/// (a shared clone in the cache: the tree is not touched) and builds it
/// incrementally in one build dir. Exit code: 1 when the first bad commit
/// is named (a finding), 2 when skipped commits leave it open or `--bad`
/// does not fail.
#[derive(Debug, Args)]
pub struct Bisect {
    /// A kernel git tree.
    #[arg(long, value_name = "PATH")]
    pub kernel_tree: PathBuf,
    /// A commit where the trial passes.
    #[arg(long, value_name = "REV")]
    pub good: String,
    /// A commit where it fails (tested first).
    #[arg(long, value_name = "REV")]
    pub bad: String,
    /// Runs per commit: good only when all pass, bad only when all fail.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// `SCENARIO@VARIANT`: the scenario, judged against VARIANT's accepted
    /// snapshots (default `sw-msi-rfcv2`).
    pub trial: String,
}
