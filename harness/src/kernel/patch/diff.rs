//! Unified diffs: file headers (plain and git), hunks, and the recognition
//! of whitespace-mangled hunk bodies.
//!
//! A mangled hunk is still read, leniently, so that it can be repaired
//! against the tree (`repair.rs`): its extent comes from the header's
//! counts, which survive mangling; a body line with no marker is a context
//! line that lost its leading space and indentation; the hunk is marked
//! `mangled` because none of its whitespace can be trusted.

use super::{FilePatch, Hunk, HunkLine, Line, ParseError};

/// What the mangled-mail detector saw in one message.
pub(super) struct Mangling {
    pub(super) bad_hunks: usize,
    pub(super) hunks: usize,
    /// The first offending line: patch line number, text, hunk header, path.
    pub(super) first: Option<(usize, String, String, String)>,
}

/// Parses the diff part of one message: every file patch in it, mangled
/// hunks included (marked), and what the detector saw.
pub(super) fn parse_diff(
    name: &str,
    lines: &[Line],
) -> Result<(Vec<FilePatch>, Mangling), ParseError> {
    let malformed = |line: usize, message: String| ParseError::Malformed {
        file: name.to_string(),
        line,
        message,
    };
    let mut files = Vec::new();
    let mut mangling = Mangling {
        bad_hunks: 0,
        hunks: 0,
        first: None,
    };
    let mut i = 0;
    while i < lines.len() {
        let text: &[u8] = &lines[i].text;
        let start = lines[i].no;
        let mut fp = if let Some(rest) = text.strip_prefix(b"diff --git ") {
            i += 1;
            let mut fp = git_header_paths(rest)
                .map(|(a, b)| FilePatch {
                    old_path: Some(a),
                    new_path: Some(b),
                    new_mode: None,
                    hunks: Vec::new(),
                    line: start,
                })
                .ok_or_else(|| malformed(start, "cannot read the paths of `diff --git`".into()))?;
            // Extended header lines, up to the ---/+++ pair or the next diff.
            while let Some(l) = lines.get(i) {
                let t = String::from_utf8_lossy(&l.text);
                if t.starts_with("--- ") || t.starts_with("diff --git ") || t.starts_with("@@ ") {
                    break;
                }
                if let Some(mode) = t.strip_prefix("new file mode ") {
                    fp.old_path = None;
                    fp.new_mode = u32::from_str_radix(mode.trim(), 8).ok();
                } else if t.starts_with("deleted file mode ") {
                    fp.new_path = None;
                } else if let Some(mode) = t.strip_prefix("new mode ") {
                    fp.new_mode = u32::from_str_radix(mode.trim(), 8).ok();
                } else if let Some(p) = t.strip_prefix("rename from ") {
                    fp.old_path = Some(unquote(p));
                } else if let Some(p) = t.strip_prefix("rename to ") {
                    fp.new_path = Some(unquote(p));
                } else if t.starts_with("copy from ") || t.starts_with("copy to ") {
                    return Err(malformed(l.no, "git copy patches are not supported".into()));
                } else if t.starts_with("GIT binary patch") || t.starts_with("Binary files ") {
                    return Err(malformed(
                        l.no,
                        format!("binary patch for {} is not supported", fp.display_path()),
                    ));
                } else if !(t.starts_with("index ")
                    || t.starts_with("old mode ")
                    || t.starts_with("similarity index ")
                    || t.starts_with("dissimilarity index "))
                {
                    break;
                }
                i += 1;
            }
            if lines.get(i).is_some_and(|l| l.text.starts_with(b"--- ")) {
                let (old, new) = read_file_header(lines, i, 1).ok_or_else(|| {
                    malformed(lines[i].no, "`---` line without `+++` line".into())
                })?;
                if fp.old_path.is_some() {
                    fp.old_path = old;
                }
                if fp.new_path.is_some() {
                    fp.new_path = new;
                }
                i += 2;
            }
            fp
        } else if text.starts_with(b"--- ")
            && lines
                .get(i + 1)
                .is_some_and(|l| l.text.starts_with(b"+++ "))
            && lines.get(i + 2).is_some_and(|l| l.text.starts_with(b"@@ "))
        {
            // A plain unified diff: strip one leading path component, as
            // `patch -p1` and `git apply` do.
            let (old, new) = read_file_header(lines, i, 1)
                .ok_or_else(|| malformed(start, "cannot read the `---`/`+++` paths".into()))?;
            i += 2;
            FilePatch {
                old_path: old,
                new_path: new,
                new_mode: None,
                hunks: Vec::new(),
                line: start,
            }
        } else {
            i += 1;
            continue;
        };
        for p in [&fp.old_path, &fp.new_path].into_iter().flatten() {
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(malformed(start, format!("unsafe path in patch: `{p}`")));
            }
        }
        // Hunks.
        while let Some(l) = lines.get(i) {
            if !l.text.starts_with(b"@@ ") {
                break;
            }
            i = parse_hunk(name, lines, i, &mut fp, &mut mangling)?;
        }
        if fp.hunks.is_empty()
            && fp.old_path.is_some()
            && fp.new_path.is_some()
            && fp.old_path == fp.new_path
            && fp.new_mode.is_none()
        {
            return Err(malformed(
                start,
                format!("no hunks for {}", fp.display_path()),
            ));
        }
        files.push(fp);
    }
    Ok((files, mangling))
}

/// Reads the `---`/`+++` pair at `i`, stripping `strip` leading components.
pub(super) fn read_file_header(
    lines: &[Line],
    i: usize,
    strip: usize,
) -> Option<(Option<String>, Option<String>)> {
    let old = lines.get(i)?.text.strip_prefix(b"--- ")?;
    let new = lines.get(i + 1)?.text.strip_prefix(b"+++ ")?;
    Some((header_path(old, strip), header_path(new, strip)))
}

/// A `---`/`+++` path: `/dev/null` is none; a timestamp after a tab is cut.
pub(super) fn header_path(raw: &[u8], strip: usize) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = text.split('\t').next().unwrap_or("").trim_end();
    let path = unquote(text);
    if path == "/dev/null" {
        return None;
    }
    Some(strip_components(&path, strip))
}

pub(super) fn strip_components(path: &str, n: usize) -> String {
    let mut rest = path;
    for _ in 0..n {
        match rest.split_once('/') {
            Some((_, r)) => rest = r,
            None => break,
        }
    }
    rest.to_string()
}

/// The two paths of `diff --git a/X b/Y` (without prefixes). Quoted paths
/// are unquoted; unquoted ones are split where both halves name the same
/// file, which is right for every patch but renames with spaces.
pub(super) fn git_header_paths(rest: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(rest).into_owned();
    if text.starts_with('"') {
        let (a, tail) = split_quoted(&text)?;
        let b = tail.trim_start();
        let b = if b.starts_with('"') {
            split_quoted(b)?.0
        } else {
            b.to_string()
        };
        return Some((strip_components(&a, 1), strip_components(&b, 1)));
    }
    // "a/X b/X": try the middle split first, then any " b/".
    let half = text.len() / 2;
    if text.len() % 2 == 1 && text.as_bytes()[half] == b' ' {
        let (a, b) = (&text[..half], &text[half + 1..]);
        if strip_components(a, 1) == strip_components(b, 1) {
            return Some((strip_components(a, 1), strip_components(b, 1)));
        }
    }
    let pos = text.find(" b/")?;
    Some((
        strip_components(&text[..pos], 1),
        strip_components(&text[pos + 1..], 1),
    ))
}

/// Undoes git's C-style quoting of a path; unquoted paths pass through.
pub(super) fn unquote(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('"') {
        if let Some((s, _)) = split_quoted(text) {
            return s;
        }
    }
    text.to_string()
}

/// Reads one quoted string at the start of `text`: (value, rest).
pub(super) fn split_quoted(text: &str) -> Option<(String, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut k = 1;
    while k < bytes.len() {
        match bytes[k] {
            b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), &text[k + 1..])),
            b'\\' => {
                let c = *bytes.get(k + 1)?;
                match c {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'0'..=b'7' => {
                        let oct = std::str::from_utf8(bytes.get(k + 1..k + 4)?).ok()?;
                        out.push(u8::from_str_radix(oct, 8).ok()?);
                        k += 2;
                    }
                    other => out.push(other),
                }
                k += 2;
            }
            b => {
                out.push(b);
                k += 1;
            }
        }
    }
    None
}

/// Reads `@@ -a[,b] +c[,d] @@`.
pub(super) fn parse_hunk_header(text: &str) -> Option<(usize, usize, usize, usize)> {
    let rest = text.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |r: &str| -> Option<(usize, usize)> {
        match r.split_once(',') {
            Some((s, l)) => Some((s.parse().ok()?, l.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (a, b) = range(old)?;
    let (c, d) = range(new)?;
    Some((a, b, c, d))
}

/// Parses the hunk whose header is at `i`; returns the index after it.
pub(super) fn parse_hunk(
    name: &str,
    lines: &[Line],
    mut i: usize,
    fp: &mut FilePatch,
    mangling: &mut Mangling,
) -> Result<usize, ParseError> {
    let header = String::from_utf8_lossy(&lines[i].text).into_owned();
    let header_no = lines[i].no;
    let malformed = |line: usize, message: String| ParseError::Malformed {
        file: name.to_string(),
        line,
        message,
    };
    let (old_start, old_len, new_start, new_len) = parse_hunk_header(&header)
        .ok_or_else(|| malformed(header_no, format!("cannot read hunk header `{header}`")))?;
    i += 1;
    mangling.hunks += 1;
    let mut hunk = Hunk {
        header: header.clone(),
        line: header_no,
        old_start,
        old_len,
        new_start,
        new_len,
        lines: Vec::new(),
        old_missing_newline: false,
        new_missing_newline: false,
        mangled: false,
    };
    // Counts that do not add up in a mangled hunk have a likely cause.
    let mangled_note = |hunk: &Hunk| {
        if hunk.mangled {
            "; the hunk is whitespace-mangled, and a context line that starts with '-' or '+' \
             once its indentation is gone reads as a change: fetch the raw mail"
        } else {
            ""
        }
    };
    let (mut old_left, mut new_left) = (old_len, new_len);
    let mark_no_newline = |hunk: &mut Hunk| match hunk.lines.last() {
        Some(HunkLine::Remove(_)) => hunk.old_missing_newline = true,
        Some(HunkLine::Add(_)) => hunk.new_missing_newline = true,
        Some(HunkLine::Context(_)) => {
            hunk.old_missing_newline = true;
            hunk.new_missing_newline = true;
        }
        None => {}
    };
    while old_left > 0 || new_left > 0 {
        let Some(l) = lines.get(i) else {
            return Err(malformed(
                header_no,
                format!(
                    "hunk `{header}` of {} ends early: {old_left} old and {new_left} new lines missing (truncated patch?){}",
                    fp.display_path(),
                    mangled_note(&hunk)
                ),
            ));
        };
        let text: &[u8] = &l.text;
        if text.starts_with(b"@@ ") || text.starts_with(b"diff --git ") {
            return Err(malformed(
                header_no,
                format!(
                    "hunk `{header}` of {} ends early, at line {}: {old_left} old and {new_left} new lines missing (wrong counts in the header?){}",
                    fp.display_path(),
                    l.no,
                    mangled_note(&hunk)
                ),
            ));
        }
        let (kind, body) = match text.first() {
            // An empty line is an empty context line whose space a mailer
            // trimmed; git and patch accept it too.
            None => (b' ', text),
            Some(&c @ (b' ' | b'-' | b'+' | b'\\')) => (c, &text[1..]),
            // No marker at all: a context line that lost its leading space
            // (and, with it, its indentation) on the way through a mailer.
            Some(_) => {
                if !hunk.mangled {
                    hunk.mangled = true;
                    mangling.bad_hunks += 1;
                }
                if mangling.first.is_none() {
                    mangling.first = Some((
                        l.no,
                        String::from_utf8_lossy(text).into_owned(),
                        header.clone(),
                        fp.display_path().to_string(),
                    ));
                }
                (b' ', text)
            }
        };
        let counts_ok = match kind {
            b' ' => old_left > 0 && new_left > 0,
            b'-' => old_left > 0,
            b'+' => new_left > 0,
            _ => true,
        };
        match kind {
            b'\\' => {
                mark_no_newline(&mut hunk);
                i += 1;
                continue;
            }
            b' ' | b'-' | b'+' if counts_ok => {
                let body = body.to_vec();
                hunk.lines.push(match kind {
                    b' ' => HunkLine::Context(body),
                    b'-' => HunkLine::Remove(body),
                    _ => HunkLine::Add(body),
                });
                if kind != b'+' {
                    old_left -= 1;
                }
                if kind != b'-' {
                    new_left -= 1;
                }
                i += 1;
            }
            _ => {
                return Err(malformed(
                    l.no,
                    format!(
                        "hunk `{header}` of {} has more lines than its header says{}",
                        fp.display_path(),
                        mangled_note(&hunk)
                    ),
                ));
            }
        }
    }
    while lines.get(i).is_some_and(|l| l.text.starts_with(b"\\")) {
        mark_no_newline(&mut hunk);
        i += 1;
    }
    fp.hunks.push(hunk);
    Ok(i)
}
