//! The kernel cache's finished entries: the metadata stored next to a
//! build, looking a build up by key, exclusive locks on work directories,
//! and publishing a finished directory by atomic rename.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::ContentKey;
use crate::event::{Reporter, Stage};

use super::check::PatchRecord;
use super::plan::Plan;
use super::{KernelBuild, UapiReport, MAKE_TIMEOUT, TARGET};

/// What is stored next to a finished build.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Metadata {
    pub(super) name: String,
    pub(super) key: String,
    pub(super) source_key: String,
    pub(super) release: String,
    pub(super) source: String,
    pub(super) series: Vec<String>,
    pub(super) fragments: Vec<String>,
    pub(super) toolchain: String,
    pub(super) step_version: u32,
    /// Each patch: subject, author, date, Message-ID and what became of it
    /// (entries written before this was kept have none).
    #[serde(default)]
    pub(super) patches: Vec<PatchRecord>,
    /// The fuzz the series was applied with (0: strict).
    #[serde(default)]
    pub(super) fuzz: u32,
    /// Builds in a mutants tree: each series `.c` file's object hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) objects: BTreeMap<String, String>,
}

/// What a finished build records of itself, for reports made after the
/// fact (KCIDB): read from the `metadata.json` beside its `Image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFacts {
    /// The build's content key.
    pub key: String,
    /// The source's name and key (`linux-6.18.15 (…)`).
    pub source: String,
    /// The series files as given, in order.
    pub series: Vec<std::path::PathBuf>,
    pub fragments: Vec<String>,
    /// The cross compiler's version line.
    pub toolchain: String,
    pub patches: Vec<PatchRecord>,
}

/// The facts of the build whose `Image` is `image`, `None` when its
/// metadata is missing or unreadable (a `--kernel-tree` image outside the
/// cache, say).
pub fn build_facts(image: &Path) -> Option<BuildFacts> {
    let meta = metadata(image.parent()?)?;
    Some(BuildFacts {
        key: meta.key,
        source: meta.source,
        series: meta.series.into_iter().map(Into::into).collect(),
        fragments: meta.fragments,
        toolchain: meta.toolchain,
        patches: meta.patches,
    })
}

/// The `metadata.json` of the build directory `out_dir`, if readable.
fn metadata(out_dir: &Path) -> Option<Metadata> {
    serde_json::from_slice(&std::fs::read(out_dir.join("metadata.json")).ok()?).ok()
}

/// The finished build for `key`, if the cache has all of it.
pub(super) fn cached(
    plan: &Plan,
    key: &ContentKey,
    out_dir: &Path,
    headers_dir: &Path,
    source_tree: &Path,
) -> Option<KernelBuild> {
    let meta = metadata(out_dir)?;
    let complete = meta.key == key.0
        && out_dir.join(TARGET).is_file()
        && out_dir.join("config").is_file()
        && headers_dir.join("include").is_dir();
    complete.then(|| KernelBuild {
        name: plan.name.clone(),
        image: out_dir.join(TARGET),
        config: out_dir.join("config"),
        headers: headers_dir.join("include"),
        source_tree: source_tree.to_path_buf(),
        key: key.clone(),
        cached: true,
        release: meta.release,
        log: None,
        uapi: UapiReport::default(),
        patches: meta.patches,
        fuzz: meta.fuzz,
        objects: meta.objects,
    })
}

/// Moves a finished `tmp` directory to `dest`. When another process got
/// there first (`done` exists) its copy is kept: both hold the same content.
pub(super) fn publish(tmp: &Path, dest: &Path, done: &Path) -> anyhow::Result<()> {
    if done.exists() {
        let _ = std::fs::remove_dir_all(tmp);
        return Ok(());
    }
    // An incomplete leftover of a killed run.
    let _ = std::fs::remove_dir_all(dest);
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if done.exists() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("move {} to {}", tmp.display(), dest.display())),
    }
}

/// An exclusive lock on a work directory; waits (with a deadline) while
/// another build of the same variant runs.
pub(crate) fn lock(path: &Path, reporter: &dyn Reporter) -> anyhow::Result<std::fs::File> {
    crate::cache::lock_exclusive(
        path,
        MAKE_TIMEOUT,
        Duration::from_secs(1),
        "another build",
        &mut || {
            reporter.line(
                Stage::Kernel,
                format!("waiting for another build holding {}", path.display()),
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_without_patches_still_reads_and_with_them_round_trips() {
        // An entry written before the patches were kept.
        let old = r#"{"name":"upstream-6.18","key":"k","source_key":"s","release":"6.18.15",
            "source":"linux-6.18.15 (fdf4)","series":[],"fragments":[],"toolchain":"gcc",
            "step_version":2}"#;
        let meta: Metadata = serde_json::from_str(old).unwrap();
        assert!(meta.patches.is_empty());
        assert_eq!(meta.fuzz, 0);
        let record = PatchRecord {
            number: "1/7".into(),
            subject: Some("[PATCH v2 1/7] x".into()),
            author: Some("Nicolin Chen <nicolinc@nvidia.com>".into()),
            date: None,
            message_id: Some("id@x".into()),
            outcome: super::super::check::PatchState::Applies,
            detail: Some("with fuzz (a.c hunk 2 fuzz 1)".into()),
        };
        let meta = Metadata {
            patches: vec![record.clone()],
            fuzz: 1,
            ..meta
        };
        let text = serde_json::to_string(&meta).unwrap();
        assert!(text.contains(r#""fuzz":1"#), "{text}");
        let back: Metadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.patches, [record]);
        assert_eq!(
            back.patches[0].line(),
            "1/7 [PATCH v2 1/7] x  (Nicolin Chen)  applies with fuzz (a.c hunk 2 fuzz 1)"
        );
    }
}
