//! Applying a patch series strictly, in memory, patch by patch.
//!
//! Every line a hunk expects (context and removals) must be found exactly.
//! A hunk may sit at another line than its header says (as with `git
//! apply`, the nearest exact match wins) but context is ignored only when
//! asked: with fuzz N, as in patch(1), a hunk that does not match is tried
//! again without up to N context lines at each end. Hunks starting at line 1
//! must match at the start of the file and hunks without trailing context at
//! its end, as git does (unless fuzz dropped that end's context).
//!
//! [`apply_each`] says for every patch of a series whether it applies, is
//! already applied (it reverse-applies: its result is in the tree) and is
//! skipped, or is stale: then every hunk that does not apply is named with
//! the closest lines of the file ([`super::patch::closest`]) and why.
//! Patches after a stale one are still tried, so a reviewer sees the whole
//! series at once.
//!
//! Nothing is written here: the caller gets the final content of every
//! touched file and decides what to write, so a tree is never left half
//! patched and unchanged files keep their modification time.

use std::collections::BTreeMap;
use std::fmt;

use super::patch::closest::{self, Window};
use super::patch::{FilePatch, Hunk, HunkLine, Patch};

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

/// A hunk (or file) of a patch that does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The patch file (and which mail of it).
    pub patch: String,
    pub subject: Option<String>,
    /// The file the patch changes.
    pub file: String,
    /// The hunk header and its line in the patch file.
    pub hunk: Option<(String, usize)>,
    /// Which hunk of the file it is (1-based), as patch(1) counts them.
    pub hunk_number: Option<usize>,
    pub reason: String,
    /// The file's lines nearest to what the hunk expects.
    pub closest: Option<Window>,
    /// Earlier patches of the series changed the file: line numbers are
    /// those of the file as they left it.
    pub changed_by_series: bool,
    /// The hunk's change seems to be in the file already, in another form
    /// ([`landed`]).
    pub landed: bool,
}

impl ApplyError {
    /// What the error says without naming the patch: the file, the hunk,
    /// why, and the closest lines.
    pub fn detail(&self) -> String {
        let mut out = self.file.clone();
        if let Some((header, line)) = &self.hunk {
            match self.hunk_number {
                Some(n) => out.push_str(&format!(", hunk {n} `{header}` (patch line {line})")),
                None => out.push_str(&format!(", hunk `{header}` (patch line {line})")),
            }
        }
        out.push_str(&format!(": {}", self.reason));
        if let Some(window) = &self.closest {
            let (first, last) = window.lines().unwrap_or((0, 0));
            out.push_str(&format!(
                "\n  closest lines in {} ({first}-{last}{}; '!' differs, with the patch's line \
                 below it, '+' only in the tree, '-' only in the patch):\n{}",
                self.file,
                if self.changed_by_series {
                    ", as the patches before left it"
                } else {
                    ""
                },
                closest::render(window, "    ").trim_end()
            ));
        }
        out
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "patch {}", self.patch)?;
        if let Some(s) = &self.subject {
            write!(f, " ({s})")?;
        }
        write!(f, " does not apply to {}", self.detail())
    }
}

impl std::error::Error for ApplyError {}

/// What became of one patch of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Applied; `fuzzed` lists the hunks that needed fuzz.
    Applies { fuzzed: Vec<Fuzzed> },
    /// Its result is already in the tree (it reverse-applies): skipped.
    AlreadyApplied,
    /// Does not apply: every hunk (or file) that failed, at least one.
    /// `landed`: no hunk applies and each seems to be in the tree in
    /// another form (upstream took the change reworked); still stale, since
    /// that is a judgement, not a reverse application.
    Stale {
        failures: Vec<ApplyError>,
        landed: bool,
    },
}

/// A hunk that applied only with context ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fuzzed {
    pub file: String,
    /// 1-based, among the file's hunks.
    pub hunk: usize,
    pub header: String,
    pub fuzz: u32,
}

/// A series applied patch by patch.
#[derive(Debug, Clone, Default)]
pub struct SeriesApplied {
    /// One per patch, in order.
    pub outcomes: Vec<PatchOutcome>,
    /// What the patches that apply make of the tree.
    pub applied: Applied,
}

impl SeriesApplied {
    pub fn stale(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, PatchOutcome::Stale { .. }))
            .count()
    }
}

/// Reads a file of the tree the series applies to: `Ok(None)` if absent.
pub type ReadBase<'a> = dyn Fn(&str) -> std::io::Result<Option<Vec<u8>>> + 'a;

/// Applies `patches` in order on top of `base`, strictly (no fuzz); the
/// first hunk that does not apply is the error.
pub fn apply_series(patches: &[Patch], base: &ReadBase) -> Result<Applied, Box<ApplyError>> {
    let mut applied = Applied::default();
    for patch in patches {
        match try_patch(&applied, patch, base, 0, true) {
            Ok((next, _)) => applied = next,
            Err(mut failures) => return Err(Box::new(failures.remove(0))),
        }
    }
    Ok(applied)
}

/// Applies each patch on what the ones before left: applies, already
/// applied (skipped) or stale (skipped, with every failing hunk).
pub fn apply_each(patches: &[Patch], base: &ReadBase, fuzz: u32) -> SeriesApplied {
    let mut applied = Applied::default();
    let mut outcomes = Vec::new();
    for patch in patches {
        let outcome = match try_patch(&applied, patch, base, fuzz, true) {
            Ok((next, fuzzed)) => {
                applied = next;
                PatchOutcome::Applies { fuzzed }
            }
            Err(failures) => match try_patch(&applied, &reversed(patch), base, fuzz, false) {
                Ok(_) => PatchOutcome::AlreadyApplied,
                Err(_) => {
                    let hunks: usize = patch.files.iter().map(|f| f.hunks.len()).sum();
                    let landed = failures.len() == hunks && failures.iter().all(|f| f.landed);
                    PatchOutcome::Stale { failures, landed }
                }
            },
        };
        outcomes.push(outcome);
    }
    SeriesApplied { outcomes, applied }
}

/// The patch that undoes `patch`.
fn reversed(patch: &Patch) -> Patch {
    let mut r = patch.clone();
    for fp in &mut r.files {
        std::mem::swap(&mut fp.old_path, &mut fp.new_path);
        for h in &mut fp.hunks {
            std::mem::swap(&mut h.old_start, &mut h.new_start);
            std::mem::swap(&mut h.old_len, &mut h.new_len);
            std::mem::swap(&mut h.old_missing_newline, &mut h.new_missing_newline);
            for l in &mut h.lines {
                *l = match std::mem::replace(l, HunkLine::Context(Vec::new())) {
                    HunkLine::Add(t) => HunkLine::Remove(t),
                    HunkLine::Remove(t) => HunkLine::Add(t),
                    c => c,
                };
            }
        }
    }
    r
}

/// Applies one patch on a copy of `applied`; the copy, or every failure
/// (explained with the closest lines when `diagnose`; a probe needs not).
fn try_patch(
    applied: &Applied,
    patch: &Patch,
    base: &ReadBase,
    fuzz: u32,
    diagnose: bool,
) -> Result<(Applied, Vec<Fuzzed>), Vec<ApplyError>> {
    let mut next = applied.clone();
    let mut fuzzed = Vec::new();
    let mut failures = Vec::new();
    for fp in &patch.files {
        match apply_file(&mut next, patch, fp, base, fuzz, diagnose) {
            Ok(f) => fuzzed.extend(f),
            Err(e) => failures.extend(e),
        }
    }
    if failures.is_empty() {
        Ok((next, fuzzed))
    } else {
        Err(failures)
    }
}

fn apply_file(
    applied: &mut Applied,
    patch: &Patch,
    fp: &FilePatch,
    base: &ReadBase,
    fuzz: u32,
    diagnose: bool,
) -> Result<Vec<Fuzzed>, Vec<ApplyError>> {
    let changed_by_series = [&fp.old_path, &fp.new_path]
        .into_iter()
        .flatten()
        .any(|p| applied.files.contains_key(p));
    let error = |hunk: Option<(usize, &Hunk)>,
                 reason: String,
                 closest: Option<Window>,
                 landed: bool| ApplyError {
        patch: patch.origin.clone(),
        subject: patch.subject.clone(),
        file: fp.display_path().to_string(),
        hunk: hunk.map(|(_, h)| (h.header.clone(), h.line)),
        hunk_number: hunk.map(|(k, _)| k + 1),
        reason,
        closest,
        changed_by_series,
        landed,
    };
    let fail = |hunk: Option<&Hunk>, reason: String| {
        let numbered = hunk.and_then(|h| {
            fp.hunks
                .iter()
                .position(|x| std::ptr::eq(x, h))
                .map(|k| (k, h))
        });
        vec![error(numbered, reason, None, false)]
    };
    let hunk_errors = |failures: Vec<HunkFailure>| -> Vec<ApplyError> {
        failures
            .into_iter()
            .map(|f| error(Some((f.index, f.hunk)), f.reason, f.closest, f.landed))
            .collect()
    };
    let fuzzed = |list: Vec<(usize, u32)>| -> Vec<Fuzzed> {
        list.into_iter()
            .map(|(k, f)| Fuzzed {
                file: fp.display_path().to_string(),
                hunk: k + 1,
                header: fp.hunks[k].header.clone(),
                fuzz: f,
            })
            .collect()
    };
    // The current content of a path: what earlier patches made of it, else
    // the base tree.
    let current = |applied: &Applied, path: &str| -> Result<Option<FileState>, Vec<ApplyError>> {
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
            let done = apply_hunks(&mut text, &fp.hunks, fuzz, diagnose).map_err(hunk_errors)?;
            applied.files.insert(
                new.clone(),
                Some(FileState {
                    data: text.render(),
                    executable,
                }),
            );
            Ok(fuzzed(done))
        }
        (Some(old), None) => {
            let Some(state) = current(applied, old)? else {
                return Err(fail(
                    fp.hunks.first(),
                    "the patch deletes it, but it does not exist".into(),
                ));
            };
            let mut text = Text::parse(&state.data);
            let done = apply_hunks(&mut text, &fp.hunks, fuzz, diagnose).map_err(hunk_errors)?;
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
            Ok(fuzzed(done))
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
            let done = apply_hunks(&mut text, &fp.hunks, fuzz, diagnose).map_err(hunk_errors)?;
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
            Ok(fuzzed(done))
        }
        (None, None) => Err(fail(None, "the file header names no file".into())),
    }
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

/// A hunk that found no place.
struct HunkFailure<'h> {
    /// 0-based among the file's hunks.
    index: usize,
    hunk: &'h Hunk,
    reason: String,
    closest: Option<Window>,
    landed: bool,
}

/// Applies hunks in order. Ok: the hunks (0-based) that needed fuzz, and
/// how much. Err: every hunk that found no place (the others were tried on
/// the text without them, as patch(1) does).
fn apply_hunks<'h>(
    text: &mut Text,
    hunks: &'h [Hunk],
    fuzz: u32,
    diagnose: bool,
) -> Result<Vec<(usize, u32)>, Vec<HunkFailure<'h>>> {
    // Lines before `floor` belong to earlier hunks; `delta` is how far the
    // previous hunks moved the text relative to the headers' numbering.
    let mut floor = 0usize;
    let mut delta: isize = 0;
    let mut fuzzed = Vec::new();
    let mut failures = Vec::new();
    for (index, hunk) in hunks.iter().enumerate() {
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
        let mut placed = None;
        let mut tried = None;
        for level in 0..=fuzz {
            // patch(1)'s fuzz: ignore up to `level` context lines at each end.
            let cut = (lead.min(level as usize), trail.min(level as usize));
            if tried == Some(cut) {
                continue;
            }
            tried = Some(cut);
            let (skip_lead, skip_trail) = cut;
            let want = &old[skip_lead..old.len() - skip_trail];
            let must_begin =
                skip_lead == 0 && (hunk.old_start == 0 || (hunk.old_start == 1 && has_context));
            let must_end = skip_trail == 0 && has_context && trail == 0;
            let fits = |pos: usize| -> bool {
                let end = pos + want.len();
                if pos < floor || end > text.lines.len() {
                    return false;
                }
                if (must_begin && pos != 0) || (must_end && end != text.lines.len()) {
                    return false;
                }
                // The final newline matters only where the hunk's real end is.
                if skip_trail == 0 {
                    let at_end = end == text.lines.len();
                    if hunk.old_missing_newline {
                        if !at_end || text.newline_at_end {
                            return false;
                        }
                    } else if at_end && !text.newline_at_end && !text.lines.is_empty() {
                        return false;
                    }
                }
                text.lines[pos..end]
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.as_slice() == *b)
            };
            let from = expected + skip_lead;
            let span = text.lines.len() + 1;
            let found = (0..=span).find_map(|d| {
                let after = from + d;
                if fits(after) {
                    return Some(after);
                }
                let before = from.checked_sub(d).filter(|_| d > 0)?;
                fits(before).then_some(before)
            });
            if let Some(pos) = found {
                placed = Some((pos, cut, level));
                break;
            }
        }
        let Some((pos, (skip_lead, skip_trail), level)) = placed else {
            if !diagnose {
                failures.push(HunkFailure {
                    index,
                    hunk,
                    reason: "does not apply".into(),
                    closest: None,
                    landed: false,
                });
                continue;
            }
            let window = closest::closest(&text.lines, &old, expected);
            failures.push(HunkFailure {
                index,
                hunk,
                reason: explain_mismatch(text, hunk, &old, &new, expected, window.as_ref()),
                closest: window,
                landed: landed(text, hunk, &new, expected),
            });
            continue;
        };
        let want_len = old.len() - skip_lead - skip_trail;
        let replacement = &new[skip_lead..new.len() - skip_trail];
        let end = pos + want_len;
        let at_end = end == text.lines.len();
        text.lines
            .splice(pos..end, replacement.iter().map(|l| l.to_vec()));
        if at_end && skip_trail == 0 {
            text.newline_at_end = !hunk.new_missing_newline;
        }
        if level > 0 {
            fuzzed.push((index, level));
        }
        floor = pos + replacement.len();
        let start = pos - skip_lead;
        delta = start as isize - nominal as isize + new.len() as isize - old.len() as isize;
    }
    if failures.is_empty() {
        Ok(fuzzed)
    } else {
        Err(failures)
    }
}

/// Whether a hunk that does not apply seems to have its change in the text
/// already, reworked: the closest lines to its new side hold every line it
/// adds (unchanged) and at least half of its context, and no line it
/// removes sits among them. Lines that say nothing on their own (blank,
/// braces) do not count as additions.
fn landed(text: &Text, hunk: &Hunk, new: &[&[u8]], expected: usize) -> bool {
    let substantial = |l: &[u8]| l.iter().filter(|b| !b.is_ascii_whitespace()).count() >= 4;
    let adds: Vec<bool> = hunk
        .lines
        .iter()
        .filter_map(|l| match l {
            HunkLine::Context(_) => Some(false),
            HunkLine::Add(_) => Some(true),
            HunkLine::Remove(_) => None,
        })
        .collect();
    let removed: Vec<&[u8]> = hunk
        .lines
        .iter()
        .filter_map(|l| match l {
            HunkLine::Remove(t) => Some(t.as_slice()),
            _ => None,
        })
        .collect();
    let has_substance = hunk.lines.iter().any(|l| match l {
        HunkLine::Add(t) | HunkLine::Remove(t) => substantial(t),
        HunkLine::Context(_) => false,
    });
    if !has_substance {
        return false;
    }
    let Some(window) = closest::closest(&text.lines, new, expected) else {
        return false;
    };
    let mut j = 0;
    let (mut context, mut context_same) = (0, 0);
    for row in &window.rows {
        use closest::Row;
        let same = match row {
            Row::TreeOnly { tree, .. } => {
                if removed.contains(&tree.as_slice()) && substantial(tree) {
                    return false;
                }
                continue;
            }
            Row::Same { .. } => true,
            Row::Differs { .. } | Row::PatchOnly { .. } => false,
        };
        match adds.get(j) {
            Some(true) if !same => return false,
            Some(false) => {
                context += 1;
                context_same += usize::from(same);
            }
            _ => {}
        }
        j += 1;
    }
    context_same * 2 >= context
}

/// Says why a hunk found no place: where the closest lines are (or the
/// first differing line where it should be), and whether the change is
/// already there, only whitespace differs, or nothing like it is there.
fn explain_mismatch(
    text: &Text,
    hunk: &Hunk,
    old: &[&[u8]],
    new: &[&[u8]],
    expected: usize,
    window: Option<&Window>,
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
    let loose = |a: &[u8], b: &[u8]| {
        a.iter()
            .filter(|c| !c.is_ascii_whitespace())
            .eq(b.iter().filter(|c| !c.is_ascii_whitespace()))
    };
    let mut reason = String::new();
    let start = expected.min(lines.len());
    let first_difference =
        (0..old.len()).find(|&j| lines.get(start + j).map(Vec::as_slice) != Some(old[j]));
    match (window, first_difference) {
        (Some(w), Some(_)) => {
            let (first, last) = w.lines().unwrap_or((0, 0));
            reason.push_str(&format!(
                "its {} expected lines are not in the file; the closest are lines {first}-{last}, \
                 {} of them unchanged",
                old.len(),
                w.same()
            ));
        }
        (None, Some(j)) if start + j >= lines.len() => reason.push_str(&format!(
            "the file has only {} lines; the hunk expects `{}` at line {}",
            lines.len(),
            show(old[j]),
            start + j + 1
        )),
        (None, Some(j)) => reason.push_str(&format!(
            "context does not match: line {} is `{}`, the hunk expects `{}`",
            start + j + 1,
            show(&lines[start + j]),
            show(old[j])
        )),
        (_, None) if hunk.old_missing_newline || !text.newline_at_end => {
            reason.push_str("the file's last line and the hunk disagree about a final newline")
        }
        (_, None) => reason.push_str(
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
        } else if window.is_none() {
            reason.push_str("; the hunk's context is nowhere in the file (wrong base version?)");
        }
    }
    reason
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
    fn non_applying_patch_names_patch_file_hunk_and_closest_lines() {
        let patch = "--- a/f.c\n+++ b/f.c\n@@ -2,3 +2,3 @@ fn\n b\n-c\n+C\n d\n";
        let err = apply_text("a\nb\nx\nd\n", patch).unwrap_err();
        assert_eq!(err.file, "f.c");
        assert_eq!(err.hunk, Some(("@@ -2,3 +2,3 @@ fn".to_string(), 3)));
        assert_eq!(err.hunk_number, Some(1));
        let msg = err.to_string();
        assert_eq!(
            msg,
            "patch p.patch does not apply to f.c, hunk 1 `@@ -2,3 +2,3 @@ fn` (patch line 3): \
             its 3 expected lines are not in the file; the closest are lines 2-4, 2 of them \
             unchanged\n  closest lines in f.c (2-4; '!' differs, with the patch's line below it, \
             '+' only in the tree, '-' only in the patch):\n\
             \x20       2   b\n\
             \x20       3 ! x\n\
             \x20   patch   c\n\
             \x20           (the tree has `x` where the patch has `c`)\n\
             \x20       4   d"
        );
        // Nothing alike: the first difference where it should be, and that
        // its context is nowhere.
        let msg = apply_text("q\nw\ne\nr\n", patch).unwrap_err().to_string();
        assert!(
            msg.contains("context does not match: line 2 is `w`, the hunk expects `b`"),
            "{msg}"
        );
        assert!(msg.contains("nowhere in the file"), "{msg}");
        assert!(!msg.contains("closest lines"), "{msg}");
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

#[cfg(test)]
mod series_tests {
    use super::super::patch::closest::Row;
    use super::super::patch::parse;
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel")
    }

    fn one_file(base: &'static str) -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> {
        move |p: &str| Ok((p == "f.c").then(|| base.as_bytes().to_vec()))
    }

    #[test]
    fn a_patch_whose_result_is_there_is_already_applied_and_skipped() {
        let first = "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n";
        let second = "--- a/f.c\n+++ b/f.c\n@@ -2,3 +2,3 @@\n B\n-c\n+C\n d\n";
        let patches = [
            parse("1.patch", first.as_bytes()).unwrap(),
            parse("2.patch", second.as_bytes()).unwrap(),
            parse("2.patch", second.as_bytes()).unwrap(),
        ]
        .concat();
        let result = apply_each(&patches, &one_file("a\nb\nc\nd\n"), 0);
        assert_eq!(
            result.outcomes,
            [
                PatchOutcome::Applies { fuzzed: vec![] },
                PatchOutcome::Applies { fuzzed: vec![] },
                PatchOutcome::AlreadyApplied,
            ]
        );
        let f = result.applied.files["f.c"].as_ref().unwrap();
        assert_eq!(f.data, b"a\nB\nC\nd\n");
        // A created file that exists with the same content is there too.
        let create = "--- /dev/null\n+++ b/f.c\n@@ -0,0 +1,2 @@\n+x\n+y\n";
        let result = apply_each(
            &parse("c.patch", create.as_bytes()).unwrap(),
            &one_file("x\ny\n"),
            0,
        );
        assert_eq!(result.outcomes, [PatchOutcome::AlreadyApplied]);
    }

    #[test]
    fn fuzz_ignores_context_at_the_ends_as_patch_does() {
        // The first context line differs in the tree: fuzz 1 drops it.
        let patch = parse(
            "p.patch",
            b"--- a/f.c\n+++ b/f.c\n@@ -1,5 +1,5 @@\n one\n two\n-three\n+THREE\n four\n five\n",
        )
        .unwrap();
        let base = one_file("ONE\ntwo\nthree\nfour\nfive\n");
        let strict = apply_each(&patch, &base, 0);
        assert!(
            matches!(strict.outcomes[0], PatchOutcome::Stale { .. }),
            "{:?}",
            strict.outcomes
        );
        let fuzzy = apply_each(&patch, &base, 1);
        let PatchOutcome::Applies { fuzzed } = &fuzzy.outcomes[0] else {
            panic!("{:?}", fuzzy.outcomes);
        };
        assert_eq!(
            fuzzed,
            &[Fuzzed {
                file: "f.c".into(),
                hunk: 1,
                header: "@@ -1,5 +1,5 @@".into(),
                fuzz: 1
            }]
        );
        // The ignored line stays as the tree has it.
        assert_eq!(
            fuzzy.applied.files["f.c"].as_ref().unwrap().data,
            b"ONE\ntwo\nTHREE\nfour\nfive\n"
        );
        // Two differing lines at one end need fuzz 2.
        let base2 = one_file("ONE\nTWO\nthree\nfour\nfive\n");
        assert!(matches!(
            apply_each(&patch, &base2, 1).outcomes[0],
            PatchOutcome::Stale { .. }
        ));
        assert!(matches!(
            apply_each(&patch, &base2, 2).outcomes[0],
            PatchOutcome::Applies { .. }
        ));
        // A changed line is never fuzzed away.
        let base3 = one_file("one\ntwo\ntree\nfour\nfive\n");
        assert!(matches!(
            apply_each(&patch, &base3, 2).outcomes[0],
            PatchOutcome::Stale { .. }
        ));
    }

    #[test]
    fn rfcv2_09_on_6_18_is_stale_in_device_c_with_the_igroup_lines() {
        let patches = parse(
            "sw-msi-rfcv2-0009.eml",
            &std::fs::read(fixtures().join("series/sw-msi-rfcv2-0009.eml")).unwrap(),
        )
        .unwrap();
        let tree = fixtures().join("series/tree-6.18.15");
        let read = move |p: &str| match std::fs::read(tree.join(p)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let result = apply_each(&patches, &read, 0);
        let PatchOutcome::Stale { failures, landed } = &result.outcomes[0] else {
            panic!("{:?}", result.outcomes);
        };
        assert!(!landed);
        let device = failures
            .iter()
            .find(|f| f.file == "drivers/iommu/iommufd/device.c")
            .expect("device.c fails");
        assert_eq!(device.hunk_number, Some(1));
        assert_eq!(
            device.hunk.as_ref().map(|h| h.0.as_str()),
            Some("@@ -445,10 +445,14 @@ static int")
        );
        let window = device.closest.as_ref().expect("closest lines");
        // Lines 413-423 of 6.18.15's device.c (14-24 of the excerpt).
        assert_eq!(window.lines(), Some((14, 24)));
        assert!(window.rows.contains(&Row::TreeOnly {
            line: 17,
            tree: b"\tstruct iommufd_group *igroup = idev->igroup;".to_vec()
        }));
        assert!(window.rows.contains(&Row::Differs {
            line: 20,
            tree: b"\tlockdep_assert_held(&igroup->lock);".to_vec(),
            patch: b"\tlockdep_assert_held(&idev->igroup->lock);".to_vec(),
        }));
        let msg = device.to_string();
        assert!(
            msg.starts_with(
                "patch sw-msi-rfcv2-0009.eml ([PATCH RFCv2 09/13] iommufd: Add \
                 IOMMU_OPTION_SW_MSI_START/SIZE ioctls) does not apply to \
                 drivers/iommu/iommufd/device.c, hunk 1 `@@ -445,10 +445,14 @@ static int` \
                 (patch line 252): its 10 expected lines are not in the file; the closest are \
                 lines 14-24, 8 of them unchanged\n"
            ),
            "{msg}"
        );
        for shown in [
            "     17 +         struct iommufd_group *igroup = idev->igroup;\n",
            "     20 !         lockdep_assert_held(&igroup->lock);\n    patch           lockdep_assert_held(&idev->igroup->lock);\n",
            "(the tree has `igroup->lock` where the patch has `idev->igroup->lock`)",
            "(the tree has `igroup->sw_msi_start` where the patch has `idev->igroup->sw_msi_start`)",
        ] {
            assert!(msg.contains(shown), "{shown:?} not in\n{msg}");
        }
        // The files the excerpt does not hold are named as missing.
        assert!(failures
            .iter()
            .any(|f| f.file == "include/uapi/linux/iommufd.h"
                && f.reason == "no such file in the tree"));
    }
}
