//! `cargo xtask bisect`: the first commit of a kernel git tree whose trial
//! of one scenario no longer matches the accepted snapshot.
//!
//! The commits are the first-parent line from `--good` (exclusive) to
//! `--bad` (inclusive), oldest first. Each commit is checked out in one
//! checkout of its own (`kernel/work/bisect-<key>/src`, a `git clone
//! --shared` of the user's tree, which is never touched) and built in one
//! build directory beside it, so a step rebuilds only what the checkout
//! changed, and the layout is a variant's, so ccache hits on objects any
//! variant built from the same source (`kernel::plan::tree_work_name`).
//!
//! A commit is tested `--runs` times. It is good when every run passes
//! and bad when every run is a finding; a build that fails, any other
//! infrastructure failure, or runs that disagree (a flake is not a
//! verdict) skip it, as `git bisect run`'s exit 125 does. [`Search`] is
//! the binary search with skips; it names the first bad commit, or, when
//! skipped commits leave it open, every commit it could be.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cache::KeyBuilder;
use crate::process::{self, Io, Log};
use crate::Error;

const GIT_TIMEOUT: Duration = Duration::from_secs(1800);

/// One commit of the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    pub hash: String,
    pub subject: String,
}

impl Commit {
    /// `1a2b3c4d5e6f "subject"`.
    pub fn describe(&self) -> String {
        format!(
            "{} \"{}\"",
            &self.hash[..self.hash.len().min(12)],
            self.subject
        )
    }
}

/// How one run of a commit's trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    Pass,
    Finding,
    /// The run could not say (the kernel did not build, a VM did not
    /// start): what went wrong.
    Infrastructure(String),
}

/// A commit's verdict from its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Good,
    Bad,
    Skip,
}

/// The verdict of a commit's runs, and why in words.
pub fn judge(runs: &[RunEnd]) -> (Verdict, String) {
    if let Some(RunEnd::Infrastructure(why)) =
        runs.iter().find(|r| matches!(r, RunEnd::Infrastructure(_)))
    {
        // The first line says what failed; a compiler's says where.
        let first = why.lines().next().unwrap_or("").trim();
        let error = why
            .lines()
            .skip(1)
            .map(str::trim)
            .find(|l| l.contains("error:") || l.contains("#error"));
        return (
            Verdict::Skip,
            match error {
                Some(e) => format!("could not be tested: {first} {e}"),
                None => format!("could not be tested: {first}"),
            },
        );
    }
    let bad = runs.iter().filter(|r| **r == RunEnd::Finding).count();
    match (bad, runs.len()) {
        (_, 0) => (Verdict::Skip, "not run".into()),
        (0, n) => (Verdict::Good, format!("{n} of {n} runs pass")),
        (b, n) if b == n => (Verdict::Bad, format!("{n} of {n} runs fail")),
        (b, n) => (
            Verdict::Skip,
            format!(
                "flaky: {b} of {n} runs fail, {} pass (not a verdict)",
                n - b
            ),
        ),
    }
}

/// What the search wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Test the commit at this index.
    Test(usize),
    /// The first bad commit.
    Found(usize),
    /// Skipped commits leave it open: the first bad commit is one of these.
    OneOf(Vec<usize>),
}

/// Binary search over `commits` (oldest first; the last is `--bad`, known
/// bad; the one before the first is `--good`, known good) with skips.
#[derive(Debug, Clone)]
pub struct Search {
    len: usize,
    /// Every commit before `lo` is good.
    lo: usize,
    /// The oldest commit known to be bad.
    hi: usize,
    skipped: BTreeSet<usize>,
}

impl Search {
    pub fn new(len: usize) -> Search {
        assert!(len > 0, "a range holds at least the bad commit");
        Search {
            len,
            lo: 0,
            hi: len - 1,
            skipped: BTreeSet::new(),
        }
    }

    /// The untested commit nearest the middle of what is open, or the
    /// answer. Picking `lo + (open - 1) / 2` and then its neighbours
    /// (after, before, ...) is `git bisect`'s way round a skipped commit.
    pub fn next(&self) -> Next {
        if self.lo == self.hi {
            return Next::Found(self.hi);
        }
        let mid = self.lo + (self.hi - self.lo - 1) / 2;
        let open = self.lo..self.hi;
        for d in 0..self.len {
            for i in [mid.checked_add(d), mid.checked_sub(d)]
                .into_iter()
                .flatten()
            {
                if open.contains(&i) && !self.skipped.contains(&i) {
                    return Next::Test(i);
                }
            }
        }
        let mut could_be: Vec<usize> = self.skipped.range(open).copied().collect();
        could_be.push(self.hi);
        Next::OneOf(could_be)
    }

    pub fn record(&mut self, index: usize, verdict: Verdict) {
        match verdict {
            Verdict::Good => self.lo = self.lo.max(index + 1),
            Verdict::Bad => self.hi = self.hi.min(index),
            Verdict::Skip => {
                self.skipped.insert(index);
            }
        }
        // A good commit above a bad one means the range was not bisectable
        // as given; stay consistent.
        if self.lo > self.hi {
            self.lo = self.hi;
        }
    }
}

fn git(tree: &Path) -> process::Cmd {
    let mut cmd = process::cmd("git");
    cmd.arg("-C").arg(tree).env("LC_ALL", "C");
    cmd
}

fn git_out(tree: &Path, args: &[&str], log: &Log) -> anyhow::Result<String> {
    let mut cmd = git(tree);
    cmd.args(args);
    let done = cmd.run(GIT_TIMEOUT, Io::log(log))?;
    if !done.status.success() {
        return Err(Error::infra(format!(
            "git -C {} {}: {}",
            tree.display(),
            args.join(" "),
            done.stderr.join("\n").trim()
        ))
        .into());
    }
    Ok(done.stdout_text())
}

/// The full hash of `rev` in `tree`, or the user's mistake in words.
pub fn resolve(tree: &Path, rev: &str, log: &Log) -> anyhow::Result<String> {
    let spec = format!("{rev}^{{commit}}");
    git_out(tree, &["rev-parse", "--verify", "--quiet", &spec], log)
        .map(|s| s.trim().to_string())
        .map_err(|_| {
            Error::infra(format!(
                "{rev} is not a commit of the git tree {}",
                tree.display()
            ))
            .into()
        })
}

/// The first-parent commits after `good` up to `bad`, oldest first.
pub fn commits(tree: &Path, good: &str, bad: &str, log: &Log) -> anyhow::Result<Vec<Commit>> {
    let ancestor = git(tree)
        .args(["merge-base", "--is-ancestor", good, bad])
        .run(GIT_TIMEOUT, Io::log(log))?;
    if !ancestor.status.success() {
        return Err(Error::infra(format!(
            "--good {good} is not an ancestor of --bad {bad} in {}",
            tree.display()
        ))
        .into());
    }
    let range = format!("{good}..{bad}");
    let text = git_out(
        tree,
        &[
            "log",
            "--reverse",
            "--first-parent",
            "--ancestry-path",
            "--format=%H%x09%s",
            &range,
        ],
        log,
    )?;
    let commits: Vec<Commit> = text
        .lines()
        .filter_map(|l| {
            let (hash, subject) = l.split_once('\t')?;
            Some(Commit {
                hash: hash.to_string(),
                subject: subject.to_string(),
            })
        })
        .collect();
    if commits.is_empty() {
        return Err(
            Error::infra(format!("no commits between --good {good} and --bad {bad}")).into(),
        );
    }
    Ok(commits)
}

/// The bisect's own checkout of `tree`: `kernel/work/bisect-<key>/src`
/// under the cache, one per tree path.
pub fn checkout_dir(cache_root: &Path, tree: &Path) -> PathBuf {
    let key = KeyBuilder::new()
        .str("tree", &tree.to_string_lossy())
        .finish();
    cache_root
        .join("kernel/work")
        .join(format!("bisect-{}", &key.0[..12]))
        .join("src")
}

/// Checks `hash` out in `dir` (cloned from `tree` with `--shared` on first
/// use). Git rewrites only the files that differ, so make rebuilds only
/// what they touch.
pub fn check_out(tree: &Path, dir: &Path, hash: &str, log: &Log) -> anyhow::Result<()> {
    if !dir.join(".git").exists() {
        let parent = dir.parent().expect("a checkout dir has a parent");
        std::fs::create_dir_all(parent)?;
        let _ = std::fs::remove_dir_all(dir);
        let dir_s = dir.to_string_lossy();
        git_out(
            tree,
            &["clone", "--quiet", "--shared", "--no-checkout", ".", &dir_s],
            log,
        )?;
        // A --shared clone must never gc: it would drop objects it only
        // borrows from the tree (git-clone(1)).
        git_out(dir, &["config", "gc.auto", "0"], log)?;
        git_out(dir, &["config", "maintenance.auto", "false"], log)?;
    }
    git_out(
        dir,
        &["checkout", "--quiet", "--force", "--detach", hash],
        log,
    )?;
    // Nothing but the commit's files: a failed build leaves none here
    // (it builds out of tree), but a user may have.
    git_out(dir, &["clean", "--quiet", "-fdx"], log)?;
    Ok(())
}

/// One tested commit, for `bisect.json` and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub commit: Commit,
    pub verdict: Verdict,
    pub why: String,
    pub runs: Vec<RunEnd>,
    /// The runs' artifact directories.
    pub run_dirs: Vec<PathBuf>,
}

/// `bisect.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tree: PathBuf,
    pub scenario: String,
    pub variant: String,
    pub good: String,
    pub bad: String,
    pub runs_per_commit: u32,
    pub commits: usize,
    pub steps: Vec<Step>,
    /// The first bad commit, when the search named one.
    pub first_bad: Option<Commit>,
    /// When skipped commits left it open: every commit it could be.
    pub one_of: Vec<Commit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search over a history whose commits from `first_bad` on
    /// are bad, with `unbuildable` skipped; returns the answer and the
    /// tested indices in order.
    fn bisect(len: usize, first_bad: usize, unbuildable: &[usize]) -> (Next, Vec<usize>) {
        let mut s = Search::new(len);
        let mut tested = Vec::new();
        loop {
            match s.next() {
                Next::Test(i) => {
                    assert!(!tested.contains(&i), "{i} tested twice");
                    tested.push(i);
                    let v = if unbuildable.contains(&i) {
                        Verdict::Skip
                    } else if i >= first_bad {
                        Verdict::Bad
                    } else {
                        Verdict::Good
                    };
                    s.record(i, v);
                }
                answer => return (answer, tested),
            }
        }
    }

    #[test]
    fn the_first_bad_commit_is_found_wherever_it_is() {
        for len in 1..40 {
            for first_bad in 0..len {
                let (answer, tested) = bisect(len, first_bad, &[]);
                assert_eq!(answer, Next::Found(first_bad), "len {len}");
                // log2: a bisect, not a walk.
                assert!(
                    tested.len() <= (usize::BITS - len.leading_zeros()) as usize,
                    "{tested:?}"
                );
            }
        }
    }

    #[test]
    fn an_unbuildable_commit_is_skipped_not_blamed() {
        // The proof's history: A, U (does not build), F (fixes it), B (the
        // regression), C; --bad is C. U sits where the search looks first.
        let (answer, tested) = bisect(5, 3, &[1]);
        assert_eq!(answer, Next::Found(3));
        assert_eq!(tested, [1, 2, 3]);
        // Every commit skipped, or the bad one right after a skipped one:
        // the answer is the set, never a guess.
        assert_eq!(bisect(3, 2, &[0, 1]).0, Next::OneOf(vec![0, 1, 2]));
        assert_eq!(bisect(4, 2, &[1]).0, Next::OneOf(vec![1, 2]));
    }

    #[test]
    fn a_flake_is_not_a_verdict_and_a_build_failure_skips() {
        use RunEnd::*;
        assert_eq!(judge(&[Pass, Pass]).0, Verdict::Good);
        assert_eq!(judge(&[Finding, Finding]).0, Verdict::Bad);
        let (v, why) = judge(&[Finding, Pass]);
        assert_eq!(v, Verdict::Skip);
        assert!(why.starts_with("flaky: 1 of 2 runs fail"), "{why}");
        let (v, why) = judge(&[Infrastructure("make Image failed\nmain.c:1: error".into())]);
        assert_eq!(v, Verdict::Skip);
        assert_eq!(why, "could not be tested: make Image failed");
    }

    #[test]
    fn the_checkout_is_a_work_dir_the_tree_build_shares_with_variants() {
        let dir = checkout_dir(Path::new("/c"), Path::new("/home/r/linux"));
        assert!(dir.starts_with("/c/kernel/work"));
        assert_eq!(dir.file_name().unwrap(), "src");
        let name = crate::kernel::tree_work_name(&dir, Path::new("/c/kernel/work"));
        assert!(name.starts_with("bisect-"), "{name}");
        assert_eq!(
            crate::kernel::tree_work_name(Path::new("/home/r/linux"), Path::new("/c/kernel/work"))
                .split('-')
                .next(),
            Some("tree")
        );
    }
}
