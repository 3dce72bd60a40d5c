//! Repairing whitespace-mangled hunks against the tree they apply to.
//!
//! A mailer or web archive that strips leading whitespace leaves a hunk
//! whose lines still say what they are (`+`, `-`, or a context line without
//! its marker) and whose header counts are intact, but whose indentation is
//! gone. Context and removed lines are by definition in the tree, so each
//! mangled hunk is located there with all whitespace ignored, every one of
//! its old-side lines required to match, and those lines take their exact
//! text from the tree. Added lines are not in the tree: their indentation is
//! derived from the lines before them and the C structure, in kernel style
//! (`indent.rs`). A hunk whose old side is nowhere in the file, even with
//! whitespace ignored, is stale (the tree moved on), and is not guessed: it
//! is reported with the closest lines the file has ([`closest_lines`]).
//!
//! Whitespace inside an added line (alignment tabs, double spaces) cannot be
//! recovered, as the mail no longer has it; the report counts the added
//! lines re-indented per hunk and the repaired diff ([`Repaired::to_diff`])
//! shows them, for a reviewer to look at.

use std::fmt;

use super::{FilePatch, Hunk, HunkLine, Patch};

mod indent;

use indent::{indent, Lexer};

/// Reads a file of the tree: `Ok(None)` if absent. The same reader type as
/// `apply::ReadBase`; applying earlier patches first is the caller's
/// business.
pub type ReadTree<'a> = dyn Fn(&str) -> std::io::Result<Option<Vec<u8>>> + 'a;

/// A patch whose mangled hunks were all restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The patch with every repaired hunk restored and no longer marked
    /// mangled; intact hunks as they were; stale hunks left out.
    pub patch: Patch,
    /// One entry per hunk of the input patch, in order.
    pub hunks: Vec<HunkReport>,
}

/// Some mangled hunks are stale. `partial` holds what could be repaired and
/// the report of every hunk, stale ones with the closest lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub partial: Repaired,
}

/// What became of one hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HunkReport {
    /// The file the hunk changes.
    pub file: String,
    /// The hunk header as the mail has it, and its line in the patch file.
    pub header: String,
    pub patch_line: usize,
    pub outcome: HunkOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkOutcome {
    /// Not mangled: left as the mail has it.
    Intact,
    Repaired(HunkRepair),
    Stale(StaleReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HunkRepair {
    /// Line of the tree (1-based) where the hunk's old side was found, and
    /// the line its header named.
    pub found_at: usize,
    pub header_said: usize,
    /// The header of the repaired hunk (positions in the tree).
    pub new_header: String,
    /// Context and removed lines whose text now comes from the tree
    /// because the mail's differed (blank lines usually did not).
    pub context_restored: usize,
    pub removed_restored: usize,
    /// Added lines whose text the repair changed (the mail had their
    /// indentation wrong), of all added lines.
    pub added_reindented: usize,
    pub added: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    /// The old side matches nowhere, even with whitespace ignored.
    Nowhere { closest: Option<Closest> },
    /// The file is not in the tree.
    NoFile,
    /// The file could not be read.
    Unreadable(String),
}

/// The window of tree lines most like a hunk's old side, aligned with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closest {
    pub rows: Vec<Row>,
}

/// One row of a [`Closest`] window; `line` is 1-based in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Equal once whitespace is ignored.
    Same { line: usize, tree: Vec<u8> },
    /// The tree has `tree` where the patch has `patch`.
    Differs {
        line: usize,
        tree: Vec<u8>,
        patch: Vec<u8>,
    },
    /// A line the tree has and the patch does not.
    TreeOnly { line: usize, tree: Vec<u8> },
    /// A line the patch expects and the tree does not have.
    PatchOnly { patch: Vec<u8> },
}

/// Restores every mangled hunk of `patch` against the tree `read` gives.
/// Hunks that are not mangled are left alone. Every hunk is reported; if
/// any is stale the result is `Err`, with what could be repaired.
pub fn repair(patch: &Patch, read: &ReadTree) -> Result<Repaired, Box<Stale>> {
    let mut out = Patch {
        files: Vec::new(),
        ..patch.clone()
    };
    let mut hunks = Vec::new();
    for fp in &patch.files {
        let (fixed, reports) = repair_file(fp, read);
        hunks.extend(reports);
        if !fixed.hunks.is_empty() || fp.hunks.is_empty() {
            out.files.push(fixed);
        }
    }
    let repaired = Repaired { patch: out, hunks };
    if repaired.stale_count() > 0 {
        return Err(Box::new(Stale { partial: repaired }));
    }
    Ok(repaired)
}

fn repair_file(fp: &FilePatch, read: &ReadTree) -> (FilePatch, Vec<HunkReport>) {
    let report = |h: &Hunk, outcome| HunkReport {
        file: fp.display_path().to_string(),
        header: h.header.clone(),
        patch_line: h.line,
        outcome,
    };
    if !fp.hunks.iter().any(|h| h.mangled) {
        let reports = fp
            .hunks
            .iter()
            .map(|h| report(h, HunkOutcome::Intact))
            .collect();
        return (fp.clone(), reports);
    }
    // The hunks' old side is the file before this file patch.
    let tree = match &fp.old_path {
        None => Ok(Vec::new()),
        Some(path) => match read(path) {
            Ok(Some(data)) => Ok(split(&data)),
            Ok(None) => Err(StaleReason::NoFile),
            Err(e) => Err(StaleReason::Unreadable(format!("cannot read {path}: {e}"))),
        },
    };
    let mut fixed = FilePatch {
        hunks: Vec::new(),
        ..fp.clone()
    };
    let mut reports = Vec::new();
    let tree = match tree {
        Ok(t) => t,
        Err(reason) => {
            for h in &fp.hunks {
                if h.mangled {
                    reports.push(report(h, HunkOutcome::Stale(reason.clone())));
                } else {
                    reports.push(report(h, HunkOutcome::Intact));
                    fixed.hunks.push(h.clone());
                }
            }
            return (fixed, reports);
        }
    };
    let squashed: Vec<Vec<u8>> = tree.iter().map(|l| squash(l)).collect();
    // As the applier does: lines before `floor` belong to earlier hunks,
    // `delta` is how far the last hunk found sat from its header, and
    // `growth` how much the kept hunks so far lengthened the file.
    let mut floor = 0usize;
    let mut delta: isize = 0;
    let mut growth: isize = 0;
    for h in &fp.hunks {
        if !h.mangled {
            growth += h.new_len as isize - h.old_len as isize;
            reports.push(report(h, HunkOutcome::Intact));
            fixed.hunks.push(h.clone());
            continue;
        }
        let nominal = if h.old_len == 0 {
            h.old_start
        } else {
            h.old_start.saturating_sub(1)
        };
        let expected = (nominal as isize + delta).max(0) as usize;
        match locate(&squashed, h, floor, expected) {
            Some(pos) => {
                let (hunk, mut repair) = restore(h, &tree, pos, growth);
                repair.header_said = h.old_start;
                floor = pos + h.old_len;
                delta = pos as isize - nominal as isize;
                growth += h.new_len as isize - h.old_len as isize;
                reports.push(report(h, HunkOutcome::Repaired(repair)));
                fixed.hunks.push(hunk);
            }
            None => {
                let old: Vec<&[u8]> = h.old_lines();
                let closest = closest_lines(&tree, &old, expected);
                reports.push(report(
                    h,
                    HunkOutcome::Stale(StaleReason::Nowhere { closest }),
                ));
            }
        }
    }
    (fixed, reports)
}

/// Where the hunk's old side is in the tree with all whitespace ignored,
/// every line matching: the match nearest `expected` (after it on a tie),
/// not before `floor`, anchored at the start or end of the file as the
/// applier requires.
fn locate(squashed: &[Vec<u8>], h: &Hunk, floor: usize, expected: usize) -> Option<usize> {
    let old: Vec<Vec<u8>> = h.old_lines().iter().map(|l| squash(l)).collect();
    let (lead, trail) = h.context_around();
    let has_context = lead + trail > 0;
    let must_begin = h.old_start == 0 || (h.old_start == 1 && has_context);
    let must_end = has_context && trail == 0;
    let n = squashed.len();
    let fits = |pos: usize| -> bool {
        let end = pos + old.len();
        if pos < floor || end > n {
            return false;
        }
        if (must_begin && pos != 0) || (must_end && end != n) {
            return false;
        }
        squashed[pos..end].iter().zip(&old).all(|(a, b)| a == b)
    };
    // A header past the end of the file means "near its end".
    let expected = expected.min(n);
    (0..=n + 1).find_map(|d| {
        let after = expected + d;
        if fits(after) {
            return Some(after);
        }
        let before = expected.checked_sub(d).filter(|_| d > 0)?;
        fits(before).then_some(before)
    })
}

/// The hunk with its old side taken from `tree[pos..]` and its added lines
/// re-indented; `growth` renumbers its new side.
fn restore(h: &Hunk, tree: &[Vec<u8>], pos: usize, growth: isize) -> (Hunk, HunkRepair) {
    let mut lex = Lexer::default();
    for line in &tree[..pos] {
        lex.feed(line);
    }
    let mut repair = HunkRepair {
        found_at: pos + 1,
        header_said: h.old_start,
        new_header: String::new(),
        context_restored: 0,
        removed_restored: 0,
        added_reindented: 0,
        added: 0,
    };
    let mut lines = Vec::with_capacity(h.lines.len());
    let mut at = pos;
    // The removed lines just before a run of added lines, which an added
    // comment line may be a rewrite of (and then keeps its alignment).
    let mut removed_run: Vec<Vec<u8>> = Vec::new();
    let mut added_in_run = 0usize;
    let mut prev: Option<&HunkLine> = None;
    for line in &h.lines {
        match line {
            HunkLine::Context(mail) => {
                let text = tree[at].clone();
                at += 1;
                repair.context_restored += usize::from(&text != mail);
                lex.feed(&text);
                lines.push(HunkLine::Context(text));
            }
            HunkLine::Remove(mail) => {
                let text = tree[at].clone();
                at += 1;
                repair.removed_restored += usize::from(&text != mail);
                if !matches!(prev, Some(HunkLine::Remove(_))) {
                    removed_run.clear();
                    added_in_run = 0;
                }
                removed_run.push(text.clone());
                lines.push(HunkLine::Remove(text));
            }
            HunkLine::Add(mail) => {
                if !matches!(prev, Some(HunkLine::Remove(_) | HunkLine::Add(_))) {
                    removed_run.clear();
                    added_in_run = 0;
                }
                let counterpart = removed_run.get(added_in_run).map(Vec::as_slice);
                added_in_run += 1;
                let text = indent(trim_start(mail), &lex, counterpart);
                repair.added += 1;
                repair.added_reindented += usize::from(&text != mail);
                lex.feed(&text);
                lines.push(HunkLine::Add(text));
            }
        }
        prev = Some(line);
    }
    // Git's numbering: a hunk that adds nothing names the line before.
    let old_start = if h.old_len == 0 { pos } else { pos + 1 };
    let new_start = pos as isize + growth + isize::from(h.new_len > 0);
    let new_start = new_start.max(0) as usize;
    let hunk = Hunk {
        header: String::new(),
        old_start,
        new_start,
        lines,
        mangled: false,
        ..h.clone()
    };
    let header = render_header(&hunk, section(&h.header));
    repair.new_header = header.clone();
    (Hunk { header, ..hunk }, repair)
}

/// The text after a hunk header's second `@@` (git's function context),
/// with its leading space.
fn section(header: &str) -> &str {
    header
        .strip_prefix("@@ ")
        .and_then(|r| r.split_once(" @@"))
        .map(|(_, s)| s)
        .unwrap_or("")
}

fn render_header(h: &Hunk, section: &str) -> String {
    let range = |start: usize, len: usize| {
        if len == 1 {
            format!("{start}")
        } else {
            format!("{start},{len}")
        }
    };
    format!(
        "@@ -{} +{} @@{section}",
        range(h.old_start, h.old_len),
        range(h.new_start, h.new_len)
    )
}

// ---------------------------------------------------------------------------
// The closest lines for a stale hunk.

/// The window of `tree` most like `want` (a hunk's old side), compared line
/// by line with whitespace squashed, aligned so that lines the tree has in
/// addition, lines it lacks and lines that differ are told apart; the best
/// window nearest line `near` (0-based) on a tie. `None` when nothing in the
/// tree resembles any line of `want`.
pub fn closest_lines(tree: &[Vec<u8>], want: &[&[u8]], near: usize) -> Option<Closest> {
    let (n, m) = (want.len(), tree.len());
    if n == 0 || m == 0 {
        return None;
    }
    let tree_sq: Vec<Vec<u8>> = tree.iter().map(|l| squash(l)).collect();
    let want_sq: Vec<Vec<u8>> = want.iter().map(|l| squash(l)).collect();
    let tree_grams: Vec<Vec<[u8; 2]>> = tree_sq.iter().map(|l| bigrams(l)).collect();
    let want_grams: Vec<Vec<[u8; 2]>> = want_sq.iter().map(|l| bigrams(l)).collect();
    // Scores in tenths. Equal lines score most (blank ones less: they match
    // anywhere); similar ones less; a gap costs.
    const GAP: i32 = -10;
    let pair = |i: usize, j: usize| -> i32 {
        if want_sq[i] == tree_sq[j] {
            return if want_sq[i].is_empty() { 10 } else { 20 };
        }
        let sim = dice(&want_grams[i], &tree_grams[j]);
        if sim >= 0.5 {
            (20.0 * sim) as i32 - 10
        } else {
            -30
        }
    };
    // Semi-global alignment: the window may start and end anywhere in the
    // tree; every line of `want` is aligned or skipped.
    let width = m + 1;
    let mut score = vec![0i32; (n + 1) * width];
    let mut step = vec![0u8; (n + 1) * width]; // 1 diagonal, 2 want skipped, 3 tree skipped
    for i in 1..=n {
        score[i * width] = GAP * i as i32;
        step[i * width] = 2;
        for j in 1..=m {
            let diag = score[(i - 1) * width + j - 1] + pair(i - 1, j - 1);
            let up = score[(i - 1) * width + j] + GAP;
            let left = score[i * width + j - 1] + GAP;
            let (s, k) = if diag >= up && diag >= left {
                (diag, 1)
            } else if up >= left {
                (up, 2)
            } else {
                (left, 3)
            };
            score[i * width + j] = s;
            step[i * width + j] = k;
        }
    }
    let best_end = (1..=m).max_by_key(|&j| {
        let dist = (j as isize - (near + n) as isize).unsigned_abs();
        (score[n * width + j], std::cmp::Reverse(dist))
    })?;
    let mut rows = Vec::new();
    let (mut i, mut j) = (n, best_end);
    while i > 0 {
        match step[i * width + j] {
            1 => {
                let (w, t) = (i - 1, j - 1);
                if want_sq[w] == tree_sq[t] {
                    rows.push(Row::Same {
                        line: t + 1,
                        tree: tree[t].clone(),
                    });
                } else if pair(w, t) >= 0 {
                    rows.push(Row::Differs {
                        line: t + 1,
                        tree: tree[t].clone(),
                        patch: want[w].to_vec(),
                    });
                } else {
                    // Aligned only for want of better: shown apart (rows
                    // are collected backwards).
                    rows.push(Row::PatchOnly {
                        patch: want[w].to_vec(),
                    });
                    rows.push(Row::TreeOnly {
                        line: t + 1,
                        tree: tree[t].clone(),
                    });
                }
                i -= 1;
                j -= 1;
            }
            2 => {
                rows.push(Row::PatchOnly {
                    patch: want[i - 1].to_vec(),
                });
                i -= 1;
            }
            _ => {
                rows.push(Row::TreeOnly {
                    line: j,
                    tree: tree[j - 1].clone(),
                });
                j -= 1;
            }
        }
    }
    rows.reverse();
    let resembles = rows.iter().any(|r| match r {
        Row::Same { tree, .. } => !trim(tree).is_empty(),
        Row::Differs { .. } => true,
        _ => false,
    });
    resembles.then_some(Closest { rows })
}

fn bigrams(line: &[u8]) -> Vec<[u8; 2]> {
    let mut grams: Vec<[u8; 2]> = line.windows(2).map(|w| [w[0], w[1]]).collect();
    grams.sort_unstable();
    grams
}

/// Dice coefficient of two sorted bigram multisets.
fn dice(a: &[[u8; 2]], b: &[[u8; 2]]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    2.0 * common as f64 / (a.len() + b.len()) as f64
}

// ---------------------------------------------------------------------------
// Reports and the repaired diff.

impl Repaired {
    pub fn repaired_count(&self) -> usize {
        self.count(|o| matches!(o, HunkOutcome::Repaired(_)))
    }

    pub fn stale_count(&self) -> usize {
        self.count(|o| matches!(o, HunkOutcome::Stale(_)))
    }

    fn count(&self, f: impl Fn(&HunkOutcome) -> bool) -> usize {
        self.hunks.iter().filter(|h| f(&h.outcome)).count()
    }

    /// The repaired patch as a mail `git am`, `git apply` and the harness
    /// read: for the run's artifacts and for review.
    pub fn to_diff(&self) -> Vec<u8> {
        let p = &self.patch;
        let mut out = Vec::new();
        let subject = p.subject.clone().unwrap_or_else(|| p.origin.clone());
        out.extend_from_slice(
            b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n",
        );
        out.extend_from_slice(format!("Subject: {subject}\n\n").as_bytes());
        out.extend_from_slice(
            format!(
                "Whitespace restored by msi-harness from {}: {} hunks repaired against the tree \
                 (context and removed lines from the tree, added lines re-indented), {} intact, \
                 {} stale and left out.\n---\n",
                p.origin,
                self.repaired_count(),
                self.count(|o| matches!(o, HunkOutcome::Intact)),
                self.stale_count()
            )
            .as_bytes(),
        );
        for fp in &p.files {
            render_file(&mut out, fp);
        }
        out.extend_from_slice(b"-- \nmsi-harness\n");
        out
    }
}

fn render_file(out: &mut Vec<u8>, fp: &FilePatch) {
    let old = fp.old_path.as_deref();
    let new = fp.new_path.as_deref();
    let a = old.or(new).unwrap_or("?");
    let b = new.or(old).unwrap_or("?");
    out.extend_from_slice(format!("diff --git a/{a} b/{b}\n").as_bytes());
    match (old, new) {
        (None, _) => out.extend_from_slice(
            format!("new file mode {:o}\n", fp.new_mode.unwrap_or(0o100644)).as_bytes(),
        ),
        (_, None) => out.extend_from_slice(b"deleted file mode 100644\n"),
        (Some(o), Some(n)) => {
            if o != n {
                out.extend_from_slice(format!("rename from {o}\nrename to {n}\n").as_bytes());
            }
            if let Some(mode) = fp.new_mode {
                out.extend_from_slice(format!("new mode {mode:o}\n").as_bytes());
            }
        }
    }
    if fp.hunks.is_empty() {
        return;
    }
    let side = |p: Option<&str>, prefix: &str| match p {
        Some(p) => format!("{prefix}/{p}"),
        None => "/dev/null".to_string(),
    };
    out.extend_from_slice(format!("--- {}\n+++ {}\n", side(old, "a"), side(new, "b")).as_bytes());
    for h in &fp.hunks {
        out.extend_from_slice(h.header.as_bytes());
        out.push(b'\n');
        let last_old = h.lines.iter().rposition(|l| !matches!(l, HunkLine::Add(_)));
        let last_new = h
            .lines
            .iter()
            .rposition(|l| !matches!(l, HunkLine::Remove(_)));
        for (k, l) in h.lines.iter().enumerate() {
            let (marker, text) = match l {
                HunkLine::Context(t) => (b' ', t),
                HunkLine::Remove(t) => (b'-', t),
                HunkLine::Add(t) => (b'+', t),
            };
            out.push(marker);
            out.extend_from_slice(text);
            out.push(b'\n');
            if (h.old_missing_newline && last_old == Some(k))
                || (h.new_missing_newline && last_new == Some(k))
            {
                out.extend_from_slice(b"\\ No newline at end of file\n");
            }
        }
    }
}

impl fmt::Display for Repaired {
    /// The report, hunk by hunk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.patch;
        write!(f, "repair of {}", p.origin)?;
        if let Some(s) = &p.subject {
            write!(f, " ({s})")?;
        }
        writeln!(
            f,
            ": {} of {} hunks repaired, {} stale, {} intact",
            self.repaired_count(),
            self.hunks.len(),
            self.stale_count(),
            self.count(|o| matches!(o, HunkOutcome::Intact))
        )?;
        for h in &self.hunks {
            write!(
                f,
                "- {}, hunk `{}` (patch line {}): ",
                h.file, h.header, h.patch_line
            )?;
            match &h.outcome {
                HunkOutcome::Intact => writeln!(f, "intact, kept as it is")?,
                HunkOutcome::Repaired(r) => {
                    write!(f, "repaired, found at line {}", r.found_at)?;
                    if r.found_at != r.header_said {
                        write!(f, " (the header says {})", r.header_said)?;
                    }
                    writeln!(
                        f,
                        "; {} context and {} removed lines restored from the tree, {} of {} \
                         added lines re-indented; now `{}`",
                        r.context_restored,
                        r.removed_restored,
                        r.added_reindented,
                        r.added,
                        r.new_header
                    )?;
                }
                HunkOutcome::Stale(reason) => write_stale(f, reason)?,
            }
        }
        Ok(())
    }
}

fn write_stale(f: &mut fmt::Formatter<'_>, reason: &StaleReason) -> fmt::Result {
    match reason {
        StaleReason::NoFile => writeln!(f, "STALE: the file is not in the tree"),
        StaleReason::Unreadable(e) => writeln!(f, "STALE: {e}"),
        StaleReason::Nowhere { closest: None } => writeln!(
            f,
            "STALE: its old side is nowhere in the file, even with whitespace ignored, and \
             nothing there resembles it (wrong file or base version?)"
        ),
        StaleReason::Nowhere {
            closest: Some(closest),
        } => {
            writeln!(
                f,
                "STALE: its old side is nowhere in the file, even with whitespace ignored \
                 (the code changed since the patch was written); not guessed. Closest lines \
                 in the tree, with the patch's line under each that differs:"
            )?;
            write!(f, "{closest}")
        }
    }
}

impl fmt::Display for Closest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for row in &self.rows {
            match row {
                Row::Same { line, tree } => writeln!(f, "    {line:>6}   {}", show(tree))?,
                Row::Differs { line, tree, patch } => {
                    writeln!(f, "    {line:>6} ! {}", show(tree))?;
                    writeln!(f, "     patch > {}", show(trim(patch)))?;
                }
                Row::TreeOnly { line, tree } => {
                    writeln!(f, "    {line:>6} + {}   (only in the tree)", show(tree))?
                }
                Row::PatchOnly { patch } => {
                    writeln!(f, "     patch > {}   (not in the tree)", show(trim(patch)))?
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.partial;
        write!(f, "patch {}", r.patch.origin)?;
        if let Some(s) = &r.patch.subject {
            write!(f, " ({s})")?;
        }
        writeln!(
            f,
            " is whitespace-mangled and {} of its {} hunks are stale against the tree, so it \
             cannot be repaired ({} hunks could be):",
            r.stale_count(),
            r.hunks.len(),
            r.repaired_count()
        )?;
        write!(f, "{r}")
    }
}

impl std::error::Error for Stale {}

// ---------------------------------------------------------------------------
// Bytes.

/// A file as lines without their newlines, as the applier splits it.
fn split(data: &[u8]) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return Vec::new();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn squash(line: &[u8]) -> Vec<u8> {
    line.iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect()
}

fn leading_ws(line: &[u8]) -> usize {
    line.iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(line.len())
}

fn trim_start(line: &[u8]) -> &[u8] {
    &line[leading_ws(line)..]
}

fn trim(line: &[u8]) -> &[u8] {
    let line = trim_start(line);
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &line[..end]
}

/// Visual width of leading whitespace, tabs to multiples of 8.
fn columns(ws: &[u8]) -> usize {
    ws.iter().fold(0, |col, &b| {
        if b == b'\t' {
            (col / 8 + 1) * 8
        } else {
            col + 1
        }
    })
}

/// Kernel-style whitespace reaching column `col`: tabs, then spaces.
fn to_ws(col: usize) -> Vec<u8> {
    let mut ws = vec![b'\t'; col / 8];
    ws.extend(std::iter::repeat_n(b' ', col % 8));
    ws
}

fn tabs(n: usize) -> Vec<u8> {
    vec![b'\t'; n]
}

/// A line for a report: lossy UTF-8, tabs expanded, long lines cut.
fn show(line: &[u8]) -> String {
    let mut out = String::new();
    let mut col = 0;
    for c in String::from_utf8_lossy(line).chars() {
        if c == '\t' {
            let next = (col / 8 + 1) * 8;
            out.extend(std::iter::repeat_n(' ', next - col));
            col = next;
        } else {
            out.push(c);
            col += 1;
        }
        if col > 120 {
            out.push_str("...");
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests;
