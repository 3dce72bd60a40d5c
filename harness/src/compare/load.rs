//! One side's data: accepted snapshots, or the result files of a run and
//! the observations their trials kept; and which run to reuse.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::anyhow;

use super::Observed;
use crate::outcome::{Failure, Outcome};
use crate::snapshot::result::TrialResult;
use crate::snapshot::{snapshot_name, SnapshotDoc};

/// An accepted snapshot: insta's header (`---`, source, description,
/// input file, `---`), then the document as YAML.
pub fn read_snapshot(path: &Path) -> anyhow::Result<SnapshotDoc> {
    let shown = crate::scenario::display_path(path);
    // insta reads its own header, so a header insta writes is always read.
    let snap = insta::Snapshot::from_file(path).map_err(|e| anyhow!("read {shown}: {e}"))?;
    let body = snap
        .as_text()
        .ok_or_else(|| anyhow!("{shown} is a binary snapshot, not a scenario's YAML"))?
        .to_string();
    serde_norway::from_str(&body)
        .map_err(|e| anyhow!("{shown}: the document after the header is not a snapshot: {e}"))
}

/// `variant`'s accepted snapshot of each scenario in `dir`; an error when
/// `dir` has none of that variant at all (a typo, or a variant never blessed).
pub fn accepted(dir: &Path, variant: &str, scenarios: &[String]) -> anyhow::Result<Vec<Observed>> {
    let with_snapshots = snapshot_variants(dir)?;
    if !with_snapshots.contains(variant) {
        return Err(crate::Error::infra(format!(
            "no accepted snapshots of variant `{variant}` in {} (variants with snapshots: {}); \
             `cargo xtask bless --variant {variant}` makes them",
            crate::scenario::display_path(dir),
            with_snapshots.into_iter().collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    Ok(scenarios
        .iter()
        .map(|s| {
            let path = dir.join(format!("{}.snap", snapshot_name(s, variant)));
            if !path.is_file() {
                return Observed::Missing;
            }
            match read_snapshot(&path) {
                Ok(doc) => checked(doc, s, variant, &path),
                Err(e) => Observed::Failed(format!("has a snapshot that cannot be read: {e:#}")),
            }
        })
        .collect())
}

/// The variants that have at least one snapshot in `dir`.
fn snapshot_variants(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        crate::Error::infra(format!(
            "read the accepted snapshots in {}: {e}",
            crate::scenario::display_path(dir)
        ))
    })?;
    let mut variants = BTreeSet::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some((_, v)) = name.strip_suffix(".snap").and_then(|n| n.rsplit_once('@')) {
            variants.insert(v.to_string());
        }
    }
    Ok(variants)
}

/// A document read from `path` must be the one its name says.
fn checked(doc: SnapshotDoc, scenario: &str, variant: &str, path: &Path) -> Observed {
    if doc.scenario == scenario && doc.variant == variant {
        Observed::Doc(Box::new(doc))
    } else {
        Observed::Failed(format!(
            "has {} holding {}, not {}",
            crate::scenario::display_path(path),
            snapshot_name(&doc.scenario, &doc.variant),
            snapshot_name(scenario, variant)
        ))
    }
}

/// `variant`'s trial of each scenario in the run at `run_dir`, and what
/// the result files say about the kernel (release and how it was selected).
pub fn from_run(
    run_dir: &Path,
    variant: &str,
    scenarios: &[String],
) -> (Vec<Observed>, Option<String>) {
    let mut kernels = BTreeSet::new();
    let observed = scenarios
        .iter()
        .map(|s| {
            let path = result_file(run_dir, s, variant);
            if !path.is_file() {
                return Observed::Failed(format!(
                    "has no result file {} (the trial did not run, or died before writing it)",
                    crate::scenario::display_path(&path)
                ));
            }
            let result = match std::fs::read_to_string(&path)
                .map_err(anyhow::Error::new)
                .and_then(|t| Ok(serde_json::from_str::<TrialResult>(&t)?))
            {
                Ok(r) => r,
                Err(e) => {
                    return Observed::Failed(format!(
                        "has a result file that cannot be read: {}: {e:#}",
                        crate::scenario::display_path(&path)
                    ))
                }
            };
            if !result.kernel_release.is_empty() {
                kernels.insert(kernel_of(&result));
            }
            trial_observed(&result, s, variant)
        })
        .collect();
    let kernel = (!kernels.is_empty()).then(|| kernels.into_iter().collect::<Vec<_>>().join("; "));
    (observed, kernel)
}

/// `<run>/results/<scenario>@<variant>.json`.
fn result_file(run_dir: &Path, scenario: &str, variant: &str) -> PathBuf {
    run_dir
        .join("results")
        .join(format!("{}.json", snapshot_name(scenario, variant)))
}

/// `6.18.15, --variant upstream-6.18`: the release and the reproducer's
/// kernel selection (which says when it was a tree or another series).
fn kernel_of(result: &TrialResult) -> String {
    let selector = result
        .reproducer
        .strip_prefix("cargo xtask test ")
        .and_then(|r| r.rsplit_once(' '))
        .map(|(selector, _scenario)| selector);
    match selector {
        Some(s) => format!("{}, {s}", result.kernel_release),
        None => result.kernel_release.clone(),
    }
}

/// What a trial's result file and its observations say.
fn trial_observed(result: &TrialResult, scenario: &str, variant: &str) -> Observed {
    let first_line = || {
        result
            .reason
            .as_deref()
            .and_then(|r| r.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("no reason recorded")
            .to_string()
    };
    match result.outcome {
        Outcome::Skip => Observed::Skipped(first_line()),
        Outcome::Fail(Failure::Infrastructure) => {
            Observed::Failed(format!("failed to run: {}", first_line()))
        }
        // A finding is the kernel's behaviour, which is what is compared.
        Outcome::Pass | Outcome::Known | Outcome::Fail(Failure::Finding) => {
            let path = result.artifacts.join("observations.json");
            let doc = std::fs::read_to_string(&path)
                .map_err(anyhow::Error::new)
                .and_then(|t| Ok(serde_json::from_str::<SnapshotDoc>(&t)?));
            match doc {
                Ok(doc) => checked(doc, scenario, variant, &path),
                Err(e) => Observed::Failed(format!(
                    "kept no readable observations (`{}` trial): {}: {e:#}",
                    result.outcome,
                    path.display()
                )),
            }
        }
    }
}

/// A run's artifact directory (`cache::new_run_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub dir: PathBuf,
    /// From the directory's name; its modification time for other names.
    pub started: Option<SystemTime>,
}

impl Run {
    pub fn at(dir: &Path) -> Run {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let started = name
            .as_deref()
            .and_then(crate::cache::run_stamp)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .or_else(|| std::fs::metadata(dir).and_then(|m| m.modified()).ok());
        Run {
            dir: dir.to_path_buf(),
            started,
        }
    }

    /// Whether the run has a result file for every scenario on `variant`.
    pub fn covers(&self, variant: &str, scenarios: &[String]) -> bool {
        scenarios
            .iter()
            .all(|s| result_file(&self.dir, s, variant).is_file())
    }

    /// `run target/msi-harness/runs/…-test-4242 (25 min old)`.
    pub fn describe(&self, now: SystemTime) -> String {
        let dir = crate::scenario::display_path(&self.dir);
        match self.started {
            Some(t) => format!("run {dir} ({})", age(now, t)),
            None => format!("run {dir}"),
        }
    }
}

/// How long ago `then` was, roughly.
fn age(now: SystemTime, then: SystemTime) -> String {
    let Ok(d) = now.duration_since(then) else {
        return "started after now: check the clock".into();
    };
    let s = d.as_secs();
    match s {
        0..90 => format!("{s} s old"),
        90..5400 => format!("{} min old", (s + 30) / 60),
        5400..172_800 => format!("{} h old", (s + 1800) / 3600),
        _ => format!("{} days old", (s + 43_200) / 86_400),
    }
}

/// The runs below `root`, newest first.
pub fn list(root: &Path) -> anyhow::Result<Vec<Run>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("read {}: {e}", root.display())),
    };
    let mut runs = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.join("results").is_dir() {
            runs.push(Run::at(&path));
        }
    }
    runs.sort_by(|x, y| y.started.cmp(&x.started).then_with(|| y.dir.cmp(&x.dir)));
    Ok(runs)
}

/// The runs to take each side from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs {
    pub a: Option<Run>,
    pub b: Option<Run>,
}

/// The newest run below `root` with results of both `a` and `b` for every
/// scenario; without one, for each side the newest run that has that
/// side's (`None`: no run has them, the suite must run).
pub fn find(root: &Path, a: &str, b: &str, scenarios: &[String]) -> anyhow::Result<Runs> {
    let runs = list(root)?;
    if let Some(both) = runs
        .iter()
        .find(|r| r.covers(a, scenarios) && r.covers(b, scenarios))
    {
        return Ok(Runs {
            a: Some(both.clone()),
            b: Some(both.clone()),
        });
    }
    let newest = |v: &str| runs.iter().find(|r| r.covers(v, scenarios)).cloned();
    Ok(Runs {
        a: newest(a),
        b: newest(b),
    })
}
