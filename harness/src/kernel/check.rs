//! The series check that comes before any build: every patch applied in
//! memory on the pristine source, one line per patch (applies, already
//! applied, stale at file:hunk), and, when any is stale, an error naming
//! each stale patch's file, hunk and closest lines: exit 2 in seconds, with
//! nothing built.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::Log;

use super::apply::{self, Applied, PatchOutcome, SeriesApplied};
use super::patch::Patch;

/// One patch of a build's series, as `metadata.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    /// `09/13`, or `#2` for a patch without `n/m`.
    pub number: String,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub date: Option<String>,
    pub message_id: Option<String>,
    pub outcome: PatchState,
    /// Which hunks needed fuzz, or where it is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchState {
    Applies,
    /// It reverse-applies: the tree has it already; skipped.
    AlreadyApplied,
    Stale,
}

impl PatchRecord {
    /// The report line: `09/13 [PATCH RFCv2 09/13] iommufd: ...  (Nicolin
    /// Chen)  stale: drivers/iommu/iommufd/device.c hunk 1 `@@ ... @@``.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} {}",
            self.number,
            self.subject.as_deref().unwrap_or("(no subject)")
        );
        if let Some(author) = &self.author {
            line.push_str(&format!("  ({})", author_name(author)));
        }
        let state = match self.outcome {
            PatchState::Applies => "applies",
            PatchState::AlreadyApplied => "already applied: skipped",
            PatchState::Stale => "stale",
        };
        line.push_str("  ");
        line.push_str(state);
        if let Some(d) = &self.detail {
            line.push_str(if self.outcome == PatchState::Stale {
                ": "
            } else {
                " "
            });
            line.push_str(d);
        }
        line
    }
}

fn author_name(author: &str) -> String {
    let info = super::patch::MailInfo {
        author: Some(author.to_string()),
        ..Default::default()
    };
    info.author_name().unwrap_or_default()
}

/// `1 patch`, `2 patches`.
pub fn patches_n(n: usize) -> String {
    format!("{n} patch{}", if n == 1 { "" } else { "es" })
}

/// A series that applies: what it makes of the tree and its records.
#[derive(Debug, Clone)]
pub(super) struct Checked {
    pub(super) applied: Applied,
    pub(super) records: Vec<PatchRecord>,
}

/// The records of a series applied patch by patch.
pub fn records(patches: &[Patch], labels: &[String], result: &SeriesApplied) -> Vec<PatchRecord> {
    patches
        .iter()
        .zip(&result.outcomes)
        .enumerate()
        .map(|(k, (p, outcome))| {
            let (state, detail) = match outcome {
                PatchOutcome::Applies { fuzzed } if fuzzed.is_empty() => {
                    (PatchState::Applies, None)
                }
                PatchOutcome::Applies { fuzzed } => {
                    let hunks: Vec<String> = fuzzed
                        .iter()
                        .map(|f| format!("{} hunk {} fuzz {}", f.file, f.hunk, f.fuzz))
                        .collect();
                    (
                        PatchState::Applies,
                        Some(format!("with fuzz ({})", hunks.join(", "))),
                    )
                }
                PatchOutcome::AlreadyApplied => (
                    PatchState::AlreadyApplied,
                    Some("(it reverse-applies)".into()),
                ),
                PatchOutcome::Stale { failures, landed } => {
                    let first = &failures[0];
                    let mut d = first.file.clone();
                    if let (Some(n), Some((header, _))) = (first.hunk_number, &first.hunk) {
                        d.push_str(&format!(" hunk {n} `{header}`"));
                    }
                    if failures.len() > 1 {
                        d.push_str(&format!(" (+{} more)", failures.len() - 1));
                    }
                    if *landed {
                        d.push_str(
                            "; its changes seem to be in the tree in another form (merged reworked?)",
                        );
                    }
                    (PatchState::Stale, Some(d))
                }
            };
            PatchRecord {
                number: labels
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", k + 1)),
                subject: p.subject.clone(),
                author: p.mail.author.clone(),
                date: p.mail.date.clone(),
                message_id: p.mail.message_id.clone(),
                outcome: state,
                detail,
            }
        })
        .collect()
}

/// Reads a file of an extracted source: `Ok(None)` when absent.
fn reader(pristine: &Path) -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> + '_ {
    move |rel: &str| match std::fs::read(pristine.join(rel)) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Repairs the whitespace-mangled patches of a series against `pristine`
/// (`patch::repair`): every repair is reported hunk by hunk and the
/// repaired patch written next to the log, so what was applied can be read
/// and reused. A mangled hunk whose context differs beyond whitespace is
/// stale: nothing is guessed, the error names the patch, file, hunk and the
/// closest lines. Intact patches pass through untouched. A mangled patch is
/// repaired against the pristine tree, not against the earlier patches of
/// its series (mangled mails come one at a time from web archives).
fn repair_mangled(
    patches: &[Patch],
    pristine: &Path,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<Vec<Patch>> {
    let dir = log
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(patches.len());
    for (k, p) in patches.iter().enumerate() {
        if !p.is_mangled() {
            out.push(p.clone());
            continue;
        }
        let written = dir.join(format!("repaired-{}.patch", k + 1));
        match super::patch::repair::repair(p, &reader(pristine)) {
            Ok(r) => {
                let report = r.to_string();
                for line in report.lines() {
                    reporter.line(Stage::Kernel, format!("  {line}"));
                    log.line(line);
                }
                std::fs::write(&written, r.to_diff())?;
                reporter.line(
                    Stage::Kernel,
                    format!("  repaired patch written to {}", written.display()),
                );
                out.push(r.patch);
            }
            Err(stale) => {
                let _ = std::fs::write(&written, stale.partial.to_diff());
                let report = stale.to_string();
                for line in report.lines() {
                    log.line(line);
                }
                return Err(Error::infra(format!(
                    "{report}\n(the hunks that could be repaired: {}; nothing was built)",
                    written.display()
                ))
                .into());
            }
        }
    }
    Ok(out)
}

/// Applies the series patch by patch on `pristine` and reports each patch;
/// `source` names the tree in messages. Any stale patch makes the error,
/// after every patch was reported.
pub(super) fn check(
    patches: &[Patch],
    labels: &[String],
    fuzz: u32,
    pristine: &Path,
    source: &str,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<Checked> {
    let repaired = repair_mangled(patches, pristine, reporter, log)?;
    let patches = repaired.as_slice();
    let result = apply::apply_each(patches, &reader(pristine), fuzz);
    let records = records(patches, labels, &result);
    for r in &records {
        reporter.line(Stage::Kernel, format!("  {}", r.line()));
        log.line(&r.line());
    }
    let count = |s: PatchState| records.iter().filter(|r| r.outcome == s).count();
    let (applies, already, stale) = (
        count(PatchState::Applies),
        count(PatchState::AlreadyApplied),
        count(PatchState::Stale),
    );
    let mut summary = format!(
        "{} on {source}: {applies} appl{}",
        patches_n(records.len()),
        if applies == 1 { "ies" } else { "y" }
    );
    if already > 0 {
        summary.push_str(&format!(", {already} already applied (skipped)"));
    }
    if stale > 0 {
        summary.push_str(&format!(", {stale} stale"));
    }
    if fuzz > 0 {
        summary.push_str(&format!("; with fuzz {fuzz} (patch(1)'s -F{fuzz})"));
    } else {
        summary.push_str("; strict (no fuzz)");
    }
    if stale == 0 {
        summary.push_str(&format!(" ({} files)", result.applied.files.len()));
    }
    reporter.line(Stage::Kernel, format!("series: {summary}"));
    log.line(&summary);
    if stale > 0 {
        log.line(&stale_details(&records, &result, usize::MAX));
        return Err(Error::infra(format!(
            "the series does not apply: {summary}; nothing was built\n{}\n(every failing hunk \
             with its closest lines: {})",
            stale_details(&records, &result, 1),
            log.path().display()
        ))
        .into());
    }
    Ok(Checked {
        applied: result.applied,
        records,
    })
}

/// Each stale patch with its failing hunks: the first `full` of them with
/// why and the closest lines, the others one line each.
fn stale_details(records: &[PatchRecord], result: &SeriesApplied, full: usize) -> String {
    let mut out = String::new();
    for (r, outcome) in records.iter().zip(&result.outcomes) {
        let PatchOutcome::Stale { failures, .. } = outcome else {
            continue;
        };
        out.push_str(&format!(
            "\n{} {} ({}):\n",
            r.number,
            r.subject.as_deref().unwrap_or("(no subject)"),
            failures[0].patch
        ));
        for (k, f) in failures.iter().enumerate() {
            if k < full {
                out.push_str(&format!("- {}\n", f.detail()));
            } else {
                let mut line = format!("- also {}", f.file);
                if let (Some(n), Some((header, _))) = (f.hunk_number, &f.hunk) {
                    line.push_str(&format!(" hunk {n} `{header}`"));
                }
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::event::Event;
    use crate::kernel::patch::series::{self, SeriesSpec};

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Reporter for Lines {
        fn event(&self, event: Event) {
            if let Event::Line { text, .. } = event {
                self.0.lock().unwrap().push(text);
            }
        }
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel")
    }

    /// The demo tree with 1/3 of the demo series already in it and
    /// `demo_teardown` changed under 3/3.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::read_to_string(fixtures().join("tree/drivers/demo/a.c")).unwrap();
        let a = a
            .replacen("\tint rc;\n\n", "\tint rc;\n\t/* first */\n", 1)
            .replace("\tdemo_teardown();", "\tdemo_teardown(0);");
        std::fs::create_dir_all(dir.path().join("drivers/demo")).unwrap();
        std::fs::write(dir.path().join("drivers/demo/a.c"), a).unwrap();
        dir
    }

    /// The seed mail (whitespace-mangled) on the six 6.18.15 files it
    /// touches: the check repairs 8 hunks, stops at device.c's stale one
    /// with the closest lines, and keeps the partial repair next to the log;
    /// the mail repaired by hand (one hunk rebased) goes through unrepaired.
    #[test]
    fn a_mangled_mail_is_repaired_before_the_check_and_a_stale_hunk_stops_it() {
        let tree = fixtures().join("sw-msi-6.18.15");
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("check.log")).unwrap();
        let read = |path: &str| {
            series::read(
                &SeriesSpec::parse(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap(),
            )
            .unwrap()
        };
        let seed = read("../kernel-configs/patches/sw-msi-rfcv2/original-mail.eml");
        assert!(seed.patches[0].is_mangled());
        let lines = Lines::default();
        let err = check(
            &seed.patches,
            &seed.labels,
            0,
            &tree,
            "6.18.15",
            &lines,
            &log,
        )
        .map(|_| ())
        .expect_err("device.c's hunk is stale")
        .to_string();
        assert!(err.contains("8 of 9 hunks repaired, 1 stale"), "{err}");
        assert!(
            err.contains("lockdep_assert_held(&idev->igroup->lock);"),
            "{err}"
        );
        assert!(dir.path().join("repaired-1.patch").is_file());
        let fixed = read("../kernel-configs/patches/sw-msi-rfcv2");
        assert!(!fixed.patches[0].is_mangled());
        let lines = Lines::default();
        let checked = check(
            &fixed.patches,
            &fixed.labels,
            0,
            &tree,
            "6.18.15",
            &lines,
            &log,
        )
        .unwrap();
        assert_eq!(checked.records[0].outcome, PatchState::Applies);
        assert!(!lines.0.lock().unwrap().iter().any(|l| l.contains("repair")));
    }

    #[test]
    fn each_patch_gets_a_line_and_a_stale_one_fails_with_its_closest_lines() {
        let s = series::read(&SeriesSpec {
            path: fixtures().join("series/demo-v2"),
            pick: None,
        })
        .unwrap();
        let tree = tree();
        let run = tempfile::tempdir().unwrap();
        let log = Log::create(&run.path().join("check.log")).unwrap();
        let lines = Lines::default();
        let err = check(&s.patches, &s.labels, 0, tree.path(), "demo", &lines, &log)
            .unwrap_err()
            .to_string();
        assert_eq!(
            *lines.0.lock().unwrap(),
            [
                "  1/3 [PATCH v2 1/3] demo: a comment instead of a blank line  (André Dév)  \
                 already applied: skipped (it reverse-applies)",
                "  2/3 [PATCH v2 2/3] demo: add a variable  (Dev)  applies",
                "  3/3 [PATCH v2 3/3] demo: say goodbye  (Dev)  stale: drivers/demo/a.c hunk 1 \
                 `@@ -14,4 +14,5 @@ static int demo_probe(void)`",
                "series: 3 patches on demo: 1 applies, 1 already applied (skipped), 1 stale; \
                 strict (no fuzz)",
            ]
        );
        assert!(
            err.starts_with(
                "the series does not apply: 3 patches on demo: 1 applies, 1 already applied \
                 (skipped), 1 stale; strict (no fuzz); nothing was built\n\n\
                 3/3 [PATCH v2 3/3] demo: say goodbye (c.eml):\n\
                 - drivers/demo/a.c, hunk 1 `@@ -14,4 +14,5 @@ static int demo_probe(void)` \
                 (patch line 11): its 4 expected lines are not in the file; the closest are \
                 lines 15-18, 3 of them unchanged\n"
            ),
            "{err}"
        );
        assert!(
            err.contains("       17 !         demo_teardown(0);\n    patch           demo_teardown();\n            (the tree adds `0`)"),
            "{err}"
        );
        let logged = std::fs::read_to_string(log.path()).unwrap();
        assert!(
            logged.contains("closest lines in drivers/demo/a.c"),
            "{logged}"
        );
        // With fuzz nothing changes here: the differing line is no context
        // line at an end.
        let lines = Lines::default();
        let err = check(&s.patches, &s.labels, 2, tree.path(), "demo", &lines, &log).unwrap_err();
        assert!(
            err.to_string().contains("with fuzz 2 (patch(1)'s -F2)"),
            "{err}"
        );
    }

    #[test]
    fn records_keep_mail_and_outcome_for_the_metadata() {
        let s = series::read(&SeriesSpec {
            path: fixtures().join("series/demo-v2"),
            pick: Some(series::Pick::parse("1-2").unwrap()),
        })
        .unwrap();
        let tree = fixtures().join("tree");
        let run = tempfile::tempdir().unwrap();
        let log = Log::create(&run.path().join("check.log")).unwrap();
        let checked = check(
            &s.patches,
            &s.labels,
            0,
            &tree,
            "demo",
            &crate::event::Quiet,
            &log,
        )
        .unwrap();
        let json = serde_json::to_value(&checked.records).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({
                "number": "1/3",
                "subject": "[PATCH v2 1/3] demo: a comment instead of a blank line",
                "author": "André Dév <andre@example.invalid>",
                "date": "Mon, 13 Jan 2025 10:00:01 +0000",
                "message_id": "v2-1.demo@example.invalid",
                "outcome": "applies",
            })
        );
        assert_eq!(json[1]["outcome"], "applies");
        assert_eq!(checked.applied.files.len(), 1);
    }
}
