//! Applying a patch series strictly, in memory.
//!
//! Every line a hunk expects (context and removals) must be found exactly.
//! A hunk may sit at another line than its header says (as with `git
//! apply`, the nearest exact match wins) but context is never ignored: no
//! fuzz, no whitespace leniency. Hunks starting at line 1 must match at the
//! start of the file and hunks without trailing context at its end, as git
//! does. A failure names the patch, the target file, the hunk and why, and
//! says so when the change is already there or when only whitespace differs.
//!
//! Nothing is written here: the caller gets the final content of every
//! touched file and decides what to write, so a tree is never left half
//! patched and unchanged files keep their modification time.

use std::collections::BTreeMap;
use std::fmt;

use super::patch::{FilePatch, Hunk, Patch};

/// A file's content after the series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub data: Vec<u8>,
    /// `Some` when the patch sets the mode (new file or mode change).
    pub executable: Option<bool>,
}

/// Every file the series touches and what it becomes (`None`: deleted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub files: BTreeMap<String, Option<FileState>>,
}

/// A patch that does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The patch file (and which mail of it).
    pub patch: String,
    pub subject: Option<String>,
    /// The file the patch changes.
    pub file: String,
    /// The hunk header and its line in the patch file.
    pub hunk: Option<(String, usize)>,
    pub reason: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "patch {}", self.patch)?;
        if let Some(s) = &self.subject {
            write!(f, " ({s})")?;
        }
        write!(f, " does not apply to {}", self.file)?;
        if let Some((header, line)) = &self.hunk {
            write!(f, ", hunk `{header}` (patch line {line})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ApplyError {}

/// Reads a file of the tree the series applies to: `Ok(None)` if absent.
pub type ReadBase<'a> = dyn Fn(&str) -> std::io::Result<Option<Vec<u8>>> + 'a;

/// Applies `patches` in order on top of `base`.
pub fn apply_series(patches: &[Patch], base: &ReadBase) -> Result<Applied, Box<ApplyError>> {
    let mut applied = Applied::default();
    for patch in patches {
        for fp in &patch.files {
            apply_file(&mut applied, patch, fp, base)?;
        }
    }
    Ok(applied)
}

fn apply_file(
    applied: &mut Applied,
    patch: &Patch,
    fp: &FilePatch,
    base: &ReadBase,
) -> Result<(), Box<ApplyError>> {
    let fail = |hunk: Option<&Hunk>, reason: String| {
        Box::new(ApplyError {
            patch: patch.origin.clone(),
            subject: patch.subject.clone(),
            file: fp.display_path().to_string(),
            hunk: hunk.map(|h| (h.header.clone(), h.line)),
            reason,
        })
    };
    // The current content of a path: what earlier patches made of it, else
    // the base tree.
    let current = |applied: &Applied, path: &str| -> Result<Option<FileState>, Box<ApplyError>> {
        if let Some(state) = applied.files.get(path) {
            return Ok(state.clone());
        }
        base(path)
            .map(|d| {
                d.map(|data| FileState {
                    data,
                    executable: None,
                })
            })
            .map_err(|e| fail(None, format!("cannot read {path}: {e}")))
    };
    let executable = fp.new_mode.map(|m| m & 0o111 != 0);
    match (&fp.old_path, &fp.new_path) {
        (None, Some(new)) => {
            if current(applied, new)?.is_some() {
                return Err(fail(
                    fp.hunks.first(),
                    "the patch creates it, but it already exists".into(),
                ));
            }
            let mut text = Text::parse(b"");
            apply_hunks(&mut text, &fp.hunks).map_err(|(h, r)| fail(Some(h), r))?;
            applied.files.insert(
                new.clone(),
                Some(FileState {
                    data: text.render(),
                    executable,
                }),
            );
        }
        (Some(old), None) => {
            let Some(state) = current(applied, old)? else {
                return Err(fail(
                    fp.hunks.first(),
                    "the patch deletes it, but it does not exist".into(),
                ));
            };
            let mut text = Text::parse(&state.data);
            apply_hunks(&mut text, &fp.hunks).map_err(|(h, r)| fail(Some(h), r))?;
            if !text.lines.is_empty() {
                return Err(fail(
                    fp.hunks.last(),
                    format!(
                        "the patch deletes it, but {} lines the patch does not remove would be lost",
                        text.lines.len()
                    ),
                ));
            }
            applied.files.insert(old.clone(), None);
        }
        (Some(old), Some(new)) => {
            let Some(state) = current(applied, old)? else {
                return Err(fail(fp.hunks.first(), "no such file in the tree".into()));
            };
            if old != new && current(applied, new)?.is_some() {
                return Err(fail(
                    None,
                    format!("the patch renames {old} to {new}, which already exists"),
                ));
            }
            let mut text = Text::parse(&state.data);
            apply_hunks(&mut text, &fp.hunks).map_err(|(h, r)| fail(Some(h), r))?;
            if old != new {
                applied.files.insert(old.clone(), None);
            }
            applied.files.insert(
                new.clone(),
                Some(FileState {
                    data: text.render(),
                    executable: executable.or(state.executable),
                }),
            );
        }
        (None, None) => return Err(fail(None, "the file header names no file".into())),
    }
    Ok(())
}

/// A file as lines, and whether its last line ends with a newline.
struct Text {
    lines: Vec<Vec<u8>>,
    newline_at_end: bool,
}

impl Text {
    fn parse(data: &[u8]) -> Text {
        if data.is_empty() {
            return Text {
                lines: Vec::new(),
                newline_at_end: true,
            };
        }
        let newline_at_end = data.ends_with(b"\n");
        let body = if newline_at_end {
            &data[..data.len() - 1]
        } else {
            data
        };
        Text {
            lines: body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect(),
            newline_at_end,
        }
    }

    fn render(&self) -> Vec<u8> {
        let mut out = self.lines.join(&b'\n');
        if !self.lines.is_empty() && self.newline_at_end {
            out.push(b'\n');
        }
        out
    }
}

/// Applies hunks in order; on failure returns the hunk and why.
fn apply_hunks<'h>(text: &mut Text, hunks: &'h [Hunk]) -> Result<(), (&'h Hunk, String)> {
    // Lines before `floor` belong to earlier hunks; `delta` is how far the
    // previous hunks moved the text relative to the headers' numbering.
    let mut floor = 0usize;
    let mut delta: isize = 0;
    for hunk in hunks {
        let old = hunk.old_lines();
        let new = hunk.new_lines();
        let nominal = if hunk.old_len == 0 {
            hunk.old_start
        } else {
            hunk.old_start.saturating_sub(1)
        };
        let expected = (nominal as isize + delta).max(0) as usize;
        let (lead, trail) = hunk.context_around();
        let has_context = lead + trail > 0;
        let must_begin = hunk.old_start == 0 || (hunk.old_start == 1 && has_context);
        let must_end = has_context && trail == 0;
        let fits = |pos: usize| -> bool {
            let end = pos + old.len();
            if pos < floor || end > text.lines.len() {
                return false;
            }
            if (must_begin && pos != 0) || (must_end && end != text.lines.len()) {
                return false;
            }
            let at_end = end == text.lines.len();
            if hunk.old_missing_newline {
                if !at_end || text.newline_at_end {
                    return false;
                }
            } else if at_end && !text.newline_at_end && !text.lines.is_empty() {
                return false;
            }
            text.lines[pos..end]
                .iter()
                .zip(&old)
                .all(|(a, b)| a.as_slice() == *b)
        };
        let span = text.lines.len() + 1;
        let found = (0..=span).find_map(|d| {
            let after = expected + d;
            if fits(after) {
                return Some(after);
            }
            let before = expected.checked_sub(d).filter(|_| d > 0)?;
            fits(before).then_some(before)
        });
        let Some(pos) = found else {
            return Err((hunk, explain_mismatch(text, hunk, &old, &new, expected)));
        };
        let end = pos + old.len();
        let at_end = end == text.lines.len();
        text.lines.splice(pos..end, new.iter().map(|l| l.to_vec()));
        if at_end {
            text.newline_at_end = !hunk.new_missing_newline;
        }
        floor = pos + new.len();
        delta = pos as isize - nominal as isize + new.len() as isize - old.len() as isize;
    }
    Ok(())
}

/// Says why a hunk found no place: the first differing line where it should
/// be, and whether the change is already there or only whitespace differs.
fn explain_mismatch(
    text: &Text,
    hunk: &Hunk,
    old: &[&[u8]],
    new: &[&[u8]],
    expected: usize,
) -> String {
    let lines = &text.lines;
    let find = |want: &[&[u8]], eq: &dyn Fn(&[u8], &[u8]) -> bool| -> Option<usize> {
        if want.is_empty() || want.len() > lines.len() {
            return None;
        }
        (0..=lines.len() - want.len()).find(|&p| {
            lines[p..p + want.len()]
                .iter()
                .zip(want)
                .all(|(a, b)| eq(a, b))
        })
    };
    let exact = |a: &[u8], b: &[u8]| a == b;
    let loose = |a: &[u8], b: &[u8]| squash(a) == squash(b);
    let mut reason = String::new();
    let start = expected.min(lines.len());
    match (0..old.len()).find(|&j| lines.get(start + j).map(Vec::as_slice) != Some(old[j])) {
        Some(j) if start + j >= lines.len() => reason.push_str(&format!(
            "the file has only {} lines; the hunk expects `{}` at line {}",
            lines.len(),
            show(old[j]),
            start + j + 1
        )),
        Some(j) => reason.push_str(&format!(
            "context does not match: line {} is `{}`, the hunk expects `{}`",
            start + j + 1,
            show(&lines[start + j]),
            show(old[j])
        )),
        None if hunk.old_missing_newline || !text.newline_at_end => {
            reason.push_str("the file's last line and the hunk disagree about a final newline")
        }
        None => reason.push_str(
            "the hunk's lines are there but not where it must match (start or end of the file)",
        ),
    }
    if new != old {
        if let Some(p) = find(new, &exact) {
            reason.push_str(&format!(
                "; the change seems to be applied already (its result is at line {})",
                p + 1
            ));
            return reason;
        }
    }
    if find(old, &exact).is_none() {
        if let Some(p) = find(old, &loose) {
            reason.push_str(&format!(
                "; the hunk matches at line {} only when whitespace is ignored: its whitespace \
                 was probably changed by a mail client",
                p + 1
            ));
        } else {
            reason.push_str("; the hunk's context is nowhere in the file (wrong base version?)");
        }
    }
    reason
}

fn squash(line: &[u8]) -> Vec<u8> {
    line.iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect()
}

/// A line for a message: lossy UTF-8, tabs visible, long lines cut.
fn show(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line).replace('\t', "\\t");
    if text.chars().count() > 100 {
        let cut: String = text.chars().take(100).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::patch::parse;
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel")
    }

    fn tree_reader(root: PathBuf) -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> {
        move |p: &str| match std::fs::read(root.join(p)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn apply_text(base: &str, patch: &str) -> Result<Applied, Box<ApplyError>> {
        let base = base.to_string();
        let patches = parse("p.patch", patch.as_bytes()).unwrap();
        apply_series(&patches, &move |p: &str| {
            Ok((p == "f.c").then(|| base.clone().into_bytes()))
        })
    }

    fn content(applied: &Applied, path: &str) -> String {
        let state = applied.files[path].as_ref().expect("file exists");
        String::from_utf8(state.data.clone()).unwrap()
    }

    #[test]
    fn format_patch_applies_with_new_file_and_missing_newline() {
        let patches = parse(
            "two.patch",
            &std::fs::read(fixtures().join("two-files.patch")).unwrap(),
        )
        .unwrap();
        let applied = apply_series(&patches, &tree_reader(fixtures().join("tree"))).unwrap();
        let a = content(&applied, "drivers/demo/a.c");
        assert!(a.contains("#include <linux/module.h>\n#include \"new.h\"\n\n"));
        assert!(a.contains("\tdemo_teardown(DEMO_ALL);\n"));
        assert!(a.ends_with("module_exit(demo_remove);\n"));
        assert_eq!(
            content(&applied, "drivers/demo/tail.c"),
            "int a;\nint b;\nint c;\nint d;\n"
        );
        let new = applied.files["drivers/demo/new.h"].as_ref().unwrap();
        assert_eq!(new.executable, Some(false));
        assert_eq!(
            new.data,
            b"/* SPDX-License-Identifier: GPL-2.0 */\n#define DEMO_ALL 1\n"
        );
    }

    #[test]
    fn mbox_series_applies_in_order() {
        let patches = parse(
            "s.mbox",
            &std::fs::read(fixtures().join("series.mbox")).unwrap(),
        )
        .unwrap();
        let applied = apply_series(&patches, &tree_reader(fixtures().join("tree"))).unwrap();
        let a = content(&applied, "drivers/demo/a.c");
        assert!(
            a.contains("\tint rc;\n\tint x = 2;\n\t/* first */\n\trc = demo_setup();\n"),
            "{a}"
        );
    }

    #[test]
    fn non_applying_patch_names_patch_file_and_hunk() {
        let patch = "--- a/f.c\n+++ b/f.c\n@@ -2,3 +2,3 @@ fn\n b\n-c\n+C\n d\n";
        let err = apply_text("a\nb\nx\nd\n", patch).unwrap_err();
        assert_eq!(err.file, "f.c");
        assert_eq!(err.hunk, Some(("@@ -2,3 +2,3 @@ fn".to_string(), 3)));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "patch p.patch does not apply to f.c, hunk `@@ -2,3 +2,3 @@ fn` (patch line 3): \
                 context does not match: line 3 is `x`, the hunk expects `c`"
            ),
            "{msg}"
        );
        assert!(msg.contains("nowhere in the file"), "{msg}");
    }

    #[test]
    fn offsets_are_fine_fuzz_is_not() {
        let patch = "--- a/f.c\n+++ b/f.c\n@@ -2,3 +2,3 @@\n b\n-c\n+C\n d\n";
        // Two extra lines on top: found two lines further down.
        let applied = apply_text("new1\nnew2\na\nb\nc\nd\ne\n", patch).unwrap();
        assert_eq!(content(&applied, "f.c"), "new1\nnew2\na\nb\nC\nd\ne\n");
        // One context line differs: no fuzz, so no.
        assert!(apply_text("a\nb\nc\nD\ne\n", patch).is_err());
    }

    #[test]
    fn whitespace_only_difference_and_already_applied_are_named() {
        let patch = "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n a\n-\tb;\n+\tB;\n c\n";
        let msg = apply_text("a\n    b;\nc\n", patch).unwrap_err().to_string();
        assert!(
            msg.contains("matches at line 1 only when whitespace is ignored"),
            "{msg}"
        );
        let msg = apply_text("a\n\tB;\nc\n", patch).unwrap_err().to_string();
        assert!(
            msg.contains("applied already (its result is at line 1)"),
            "{msg}"
        );
    }

    #[test]
    fn creation_deletion_and_anchoring() {
        let create = "--- /dev/null\n+++ b/f.c\n@@ -0,0 +1 @@\n+x\n";
        let err = apply_text("a\n", create).unwrap_err();
        assert!(err.reason.contains("already exists"), "{err}");
        let delete = "--- a/f.c\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n";
        assert_eq!(apply_text("a\nb\n", delete).unwrap().files["f.c"], None);
        assert!(apply_text("a\nb\nc\n", delete)
            .unwrap_err()
            .reason
            .contains("would be lost"));
        // No trailing context: must match at the end of the file.
        let tail = "--- a/f.c\n+++ b/f.c\n@@ -2,2 +2,2 @@\n b\n-c\n+C\n";
        assert!(apply_text("a\nb\nc\nb\nc\nz\n", tail).is_err());
        assert_eq!(
            content(&apply_text("a\nb\nc\n", tail).unwrap(), "f.c"),
            "a\nb\nC\n"
        );
        // A missing final newline must be declared by the hunk.
        assert!(apply_text("a\nb\nc", tail).is_err());
    }
}
