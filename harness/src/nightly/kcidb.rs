//! A run's results in KernelCI's KCIDB I/O schema v5 (`kcidb.json`): one
//! checkout per source and series, one build per kernel variant, one test
//! per trial. Submission needs a token and a network (README, "KernelCI
//! results"); the file is what `kcidb-submit` would be given.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::kernel::BuildFacts;
use crate::outcome::{Failure, Outcome};
use crate::scenario::inputs::KernelInput;
use crate::snapshot::report::Summary;

/// The origin when none is given: KCIDB origins are `[a-z0-9_]+`.
pub const DEFAULT_ORIGIN: &str = "msi_harness";

/// The schema version written (`{"major": 5, "minor": 0}`).
pub const SCHEMA_MAJOR: u32 = 5;
pub const SCHEMA_MINOR: u32 = 0;

/// Whether `origin` is one KCIDB accepts.
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What one kernel of the run was, as KCIDB sees it.
#[derive(Debug, Clone)]
pub struct KernelRecord {
    /// The variant's name (`sw-msi-rfcv2`), KCIDB's `config_name`.
    pub variant: String,
    pub facts: Option<BuildFacts>,
    /// `CONFIG_CC_VERSION_TEXT` of its `.config`.
    pub compiler: Option<String>,
    pub release: String,
}

impl KernelRecord {
    /// The record of `input` (a kernel of a run's inputs), read from the
    /// cache's metadata and `.config`.
    pub fn of(variant: &str, input: &KernelInput) -> KernelRecord {
        let compiler = std::fs::read_to_string(&input.config)
            .ok()
            .and_then(|c| config_string(&c, "CONFIG_CC_VERSION_TEXT"));
        KernelRecord {
            variant: variant.to_string(),
            facts: crate::kernel::build_facts(&input.image),
            compiler,
            release: input.release.clone(),
        }
    }
}

/// `NAME="value"` of a `.config`, unquoted.
fn config_string(config: &str, name: &str) -> Option<String> {
    config.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix('=')
            .map(|v| v.trim_matches('"').replace("\\\"", "\""))
    })
}

/// KCIDB's `patchset_hash`: sha256 over the newline-terminated sha256 of
/// each patch file in order of application; empty for no patches. A series
/// given as one mbox counts as one file (the hash is over the files as
/// mailed, which is what a reviewer holds). `None` when a file is unreadable.
pub fn patchset_hash(files: &[impl AsRef<Path>]) -> Option<String> {
    if files.is_empty() {
        return Some(String::new());
    }
    let mut outer = Sha256::new();
    for f in files {
        let bytes = std::fs::read(f.as_ref()).ok()?;
        outer.update(format!("{}\n", hex::encode(Sha256::digest(&bytes))));
    }
    Some(hex::encode(outer.finalize()))
}

/// KCIDB's status of a trial's outcome.
pub fn status(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass | Outcome::Known => "PASS",
        Outcome::Fail(Failure::Finding) => "FAIL",
        Outcome::Fail(Failure::Infrastructure) => "ERROR",
        Outcome::Skip => "SKIP",
    }
}

/// A scenario's test path: `msi_harness.custom_window_before_attach`.
pub fn test_path(scenario: &str) -> String {
    let leaf: String = scenario
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("msi_harness.{leaf}")
}

/// The KCIDB document of a run: `run_id` makes test ids unique per run.
pub fn document(summary: &Summary, kernels: &[KernelRecord], origin: &str, run_id: &str) -> Value {
    let id = |rest: &str| format!("{origin}:{rest}");
    let mut checkouts: BTreeMap<String, Value> = BTreeMap::new();
    let mut builds = Vec::new();
    let mut build_ids: BTreeMap<&str, String> = BTreeMap::new();
    for k in kernels {
        let facts = k.facts.as_ref();
        let hash = facts
            .and_then(|f| patchset_hash(&f.series))
            .unwrap_or_default();
        // One checkout per pristine source and series: the source's name
        // holds its tarball's sha256.
        let source = facts.map_or("unknown", |f| f.source.as_str());
        let source_hash = hex::encode(Sha256::digest(source.as_bytes()));
        let checkout_id = id(&format!("{}+{}", short(&source_hash), short(&hash)));
        checkouts.entry(checkout_id.clone()).or_insert_with(|| {
            let mut c = json!({
                "id": checkout_id,
                "origin": origin,
                "tree_name": facts.map_or("unknown", |f| tree_name(&f.source)),
                "patchset_hash": hash,
                "valid": true,
                "misc": {
                    "source": facts.map(|f| f.source.clone()),
                    "series": facts.map(|f| f.series.iter().map(|p| file_name(p)).collect::<Vec<_>>()),
                },
            });
            if let Some(mid) = facts
                .and_then(|f| f.patches.first())
                .and_then(|p| p.message_id.clone())
            {
                c["message_id"] = json!(mid.trim_matches(['<', '>']));
            }
            c
        });
        let build_id = id(&format!(
            "{}:{}",
            k.variant,
            short(facts.map_or("unknown", |f| f.key.as_str()))
        ));
        build_ids.insert(k.variant.as_str(), build_id.clone());
        let mut b = json!({
            "id": build_id,
            "checkout_id": checkout_id,
            "origin": origin,
            "architecture": "arm64",
            "config_name": k.variant,
            "status": "PASS",
            "misc": {
                "release": k.release,
                "fragments": facts.map(|f| f.fragments.iter().map(|p| file_name(Path::new(p))).collect::<Vec<_>>()),
            },
        });
        if let Some(c) = k.compiler.as_ref().or(facts.map(|f| &f.toolchain)) {
            b["compiler"] = json!(c);
        }
        builds.push(b);
    }
    let tests: Vec<Value> = summary
        .trials
        .iter()
        .filter_map(|t| {
            let build_id = build_ids.get(t.variant.as_str())?;
            let mut misc = json!({
                "variant": t.variant,
                "reproducer": t.reproducer,
                "interrupts_delivered": t.interrupts_delivered,
                "msi_addresses": t.msi_addresses,
            });
            if let Some(r) = &t.reason {
                misc["reason"] = json!(r);
            }
            let mut test = json!({
                "id": id(&format!("{run_id}:{}", t.name())),
                "build_id": build_id,
                "origin": origin,
                "path": test_path(&t.scenario),
                "status": status(t.outcome),
                "duration": t.duration_s,
                "misc": misc,
            });
            if let Some(r) = &t.reason {
                // The first line: the whole reason is in misc.
                test["comment"] = json!(r.lines().next().unwrap_or_default());
            }
            Some(test)
        })
        .collect();
    json!({
        "version": {"major": SCHEMA_MAJOR, "minor": SCHEMA_MINOR},
        "checkouts": checkouts.into_values().collect::<Vec<_>>(),
        "builds": builds,
        "tests": tests,
    })
}

/// Writes the run's `kcidb.json` into `run_dir`: its kernels as builds,
/// its trials as tests; test ids carry the run directory's name.
pub fn write(
    run_dir: &Path,
    summary: &Summary,
    kernels: &BTreeMap<String, KernelInput>,
    origin: &str,
) -> anyhow::Result<()> {
    let records: Vec<KernelRecord> = kernels
        .iter()
        .map(|(v, k)| KernelRecord::of(v, k))
        .collect();
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&document(summary, &records, origin, &run_id))?;
    text.push('\n');
    crate::cache::write_atomic(&run_dir.join("kcidb.json"), text.as_bytes())
}

/// The last component of a path as recorded (a checkout's absolute path
/// says nothing to a reader of another machine's results).
fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// `linux-6.18.15` of `linux-6.18.15 (…)`.
fn tree_name(source: &str) -> &str {
    source.split(" (").next().unwrap_or(source)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::result::TrialResult;

    fn trial(s: &str, v: &str, outcome: Outcome, reason: Option<&str>) -> TrialResult {
        TrialResult {
            scenario: s.into(),
            variant: v.into(),
            kernel_release: "6.18.15".into(),
            outcome,
            reason: reason.map(Into::into),
            interrupts_delivered: 1,
            msi_addresses: vec!["0x10000040".into()],
            duration_s: 2.5,
            restored: true,
            artifacts: "a".into(),
            reproducer: TrialResult::reproducer_for(s, v),
        }
    }

    #[test]
    fn a_failing_trial_is_a_fail_test_with_its_reason_under_its_build() {
        let dir = tempfile::tempdir().unwrap();
        let patch = dir.path().join("0001.patch");
        std::fs::write(&patch, "diff\n").unwrap();
        let facts = BuildFacts {
            key: "0123456789abcdef0123".into(),
            source: "linux-6.18.15 (fdf4c4d4)".into(),
            series: vec![patch.clone()],
            fragments: vec!["/x/kernel-configs/base.config".into()],
            toolchain: "aarch64-linux-gnu-gcc 12.2.0".into(),
            patches: vec![],
        };
        let kernels = [KernelRecord {
            variant: "sw-msi-rfcv2".into(),
            facts: Some(facts),
            compiler: Some("aarch64-linux-gnu-gcc (Debian 12.2.0-14+deb12u1) 12.2.0".into()),
            release: "6.18.15".into(),
        }];
        let summary = Summary::from_trials(vec![
            trial(
                "custom-window-before-attach",
                "sw-msi-rfcv2",
                Outcome::FINDING,
                Some("snapshot mismatch\nstep 4: ..."),
            ),
            trial("default-window", "sw-msi-rfcv2", Outcome::Pass, None),
            trial("default-window", "not-in-the-run", Outcome::Pass, None),
        ]);
        let doc = document(&summary, &kernels, DEFAULT_ORIGIN, "run1");
        assert_eq!(doc["version"]["major"], 5);
        assert_eq!(doc["checkouts"].as_array().unwrap().len(), 1);
        let inner = hex::encode(Sha256::digest(b"diff\n"));
        let want = hex::encode(Sha256::digest(format!("{inner}\n").as_bytes()));
        assert_eq!(doc["checkouts"][0]["patchset_hash"], want);
        assert_eq!(doc["checkouts"][0]["tree_name"], "linux-6.18.15");
        let build = &doc["builds"][0];
        assert_eq!(build["architecture"], "arm64");
        assert_eq!(build["config_name"], "sw-msi-rfcv2");
        assert_eq!(build["checkout_id"], doc["checkouts"][0]["id"]);
        assert_eq!(build["misc"]["fragments"], json!(["base.config"]));
        let tests = doc["tests"].as_array().unwrap();
        assert_eq!(
            tests.len(),
            2,
            "a trial of no kernel of the run has no build"
        );
        assert_eq!(tests[0]["path"], "msi_harness.custom_window_before_attach");
        assert_eq!(tests[0]["status"], "FAIL");
        assert_eq!(tests[0]["comment"], "snapshot mismatch");
        assert_eq!(tests[0]["misc"]["reason"], "snapshot mismatch\nstep 4: ...");
        assert_eq!(tests[0]["build_id"], build["id"]);
        assert_eq!(tests[1]["status"], "PASS");
        assert!(tests[1].get("comment").is_none());
        assert_eq!(
            tests[0]["id"],
            "msi_harness:run1:custom-window-before-attach@sw-msi-rfcv2"
        );
    }

    #[test]
    fn statuses_paths_origins_and_config_strings() {
        assert_eq!(status(Outcome::Known), "PASS");
        assert_eq!(status(Outcome::Fail(Failure::Infrastructure)), "ERROR");
        assert_eq!(status(Outcome::Skip), "SKIP");
        assert_eq!(test_path("many-windows"), "msi_harness.many_windows");
        assert!(valid_origin("msi_harness") && !valid_origin("MSI") && !valid_origin(""));
        assert_eq!(
            config_string(
                "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=\"gcc 12\"\n",
                "CONFIG_CC_VERSION_TEXT"
            ),
            Some("gcc 12".into())
        );
        assert_eq!(patchset_hash(&[] as &[&Path]), Some(String::new()));
    }
}
