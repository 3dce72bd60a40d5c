//! Reading patches the way a reviewer gets them.
//!
//! A series is read from files that are plain unified diffs, `git
//! format-patch` output, or an mbox holding several such mails (what lore
//! hands out). Each mail becomes one [`Patch`]; a cover letter without a
//! diff is skipped. Quoted-printable bodies are decoded.
//!
//! A mail that went through a client or web archive which stripped leading
//! whitespace is the common failure: its hunk bodies have lines that begin
//! with neither ' ', '+', '-' nor '\'. It is recognised here and reported
//! once, as such, instead of surfacing later as a wall of failed hunks.

use std::fmt;

/// One patch (one mail, or one diff file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Where it came from, for messages: `0001-x.patch` or `s.mbox (patch 2/3)`.
    pub origin: String,
    /// The mail's subject, when it had one.
    pub subject: Option<String>,
    pub files: Vec<FilePatch>,
}

/// The changes to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// The path before, without the `a/` prefix; `None` when the file is created.
    pub old_path: Option<String>,
    /// The path after; `None` when the file is deleted.
    pub new_path: Option<String>,
    /// The mode git gave the new file (`0o100755`), if any.
    pub new_mode: Option<u32>,
    pub hunks: Vec<Hunk>,
    /// Line of the file header in the patch file (1-based).
    pub line: usize,
}

impl FilePatch {
    /// The path this file patch is about, for messages.
    pub fn display_path(&self) -> &str {
        self.new_path
            .as_deref()
            .or(self.old_path.as_deref())
            .unwrap_or("?")
    }
}

/// One `@@ -a,b +c,d @@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The header line as written, for messages.
    pub header: String,
    /// Line of the header in the patch file (1-based).
    pub line: usize,
    pub old_start: usize,
    pub old_len: usize,
    pub new_start: usize,
    pub new_len: usize,
    pub lines: Vec<HunkLine>,
    /// The old side's last line has no newline (`\ No newline at end of file`).
    pub old_missing_newline: bool,
    /// The new side's last line has no newline.
    pub new_missing_newline: bool,
}

/// A line of a hunk body, without its marker and newline. Bytes, not
/// strings: kernel sources are not all UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    Context(Vec<u8>),
    Remove(Vec<u8>),
    Add(Vec<u8>),
}

impl Hunk {
    /// The lines the hunk expects to find.
    pub fn old_lines(&self) -> Vec<&[u8]> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(t) | HunkLine::Remove(t) => Some(t.as_slice()),
                HunkLine::Add(_) => None,
            })
            .collect()
    }

    /// The lines the hunk leaves behind.
    pub fn new_lines(&self) -> Vec<&[u8]> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(t) | HunkLine::Add(t) => Some(t.as_slice()),
                HunkLine::Remove(_) => None,
            })
            .collect()
    }

    /// Context lines before the first change and after the last one.
    pub fn context_around(&self) -> (usize, usize) {
        let is_ctx = |l: &HunkLine| matches!(l, HunkLine::Context(_));
        let leading = self.lines.iter().take_while(|l| is_ctx(l)).count();
        if leading == self.lines.len() {
            return (leading, 0);
        }
        let trailing = self.lines.iter().rev().take_while(|l| is_ctx(l)).count();
        (leading, trailing)
    }
}

/// Why a patch file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Hunk bodies lost their leading whitespace on the way through a mail
    /// client or archive.
    Mangled {
        file: String,
        /// Hunks affected, of all hunks seen.
        bad_hunks: usize,
        hunks: usize,
        /// The first offending line: patch line number, text, the hunk header
        /// and the path it belongs to.
        first_line: usize,
        first_text: String,
        first_hunk: String,
        first_path: String,
    },
    /// Anything else, with the patch file and line.
    Malformed {
        file: String,
        line: usize,
        message: String,
    },
    /// The file holds no diff at all.
    Empty { file: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Mangled {
                file,
                bad_hunks,
                hunks,
                first_line,
                first_text,
                first_hunk,
                first_path,
            } => write!(
                f,
                "whitespace-mangled mail: {file}: {bad_hunks} of {hunks} hunks have body lines \
                 that start with neither ' ', '+', '-' nor '\\' (context lines lost their leading \
                 space / tabs); first at line {first_line}, in {first_path} hunk `{first_hunk}`: \
                 `{first_text}`; fetch the raw mail (lore's /raw link, or `b4 am`) instead of \
                 a rendered page, or re-create the patch from the source"
            ),
            ParseError::Malformed {
                file,
                line,
                message,
            } => write!(f, "{file}:{line}: {message}"),
            ParseError::Empty { file } => write!(f, "{file}: no diff found (not a patch or mbox?)"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A line of input with its 1-based number in the file.
#[derive(Clone)]
struct Line<'a> {
    no: usize,
    text: std::borrow::Cow<'a, [u8]>,
}

/// Parses a patch file (diff, format-patch mail or mbox) into patches.
/// `name` names the file in messages.
pub fn parse(name: &str, data: &[u8]) -> Result<Vec<Patch>, ParseError> {
    let lines: Vec<Line> = split_lines(data)
        .enumerate()
        .map(|(i, t)| Line {
            no: i + 1,
            text: std::borrow::Cow::Borrowed(t),
        })
        .collect();
    let messages = split_mbox(&lines);
    let mut patches = Vec::new();
    let mut mangled: Option<ParseError> = None;
    for msg in messages {
        let (subject, body) = read_mail(name, msg)?;
        match parse_diff(name, &body) {
            Ok(files) if files.is_empty() => continue,
            Ok(files) => patches.push(Patch {
                origin: name.to_string(),
                subject,
                files,
            }),
            Err(e @ ParseError::Mangled { .. }) => {
                // Count every mangled hunk of the whole file before reporting.
                mangled = Some(match (mangled.take(), e) {
                    (
                        Some(ParseError::Mangled {
                            file,
                            bad_hunks,
                            hunks,
                            first_line,
                            first_text,
                            first_hunk,
                            first_path,
                        }),
                        ParseError::Mangled {
                            bad_hunks: b2,
                            hunks: h2,
                            ..
                        },
                    ) => ParseError::Mangled {
                        file,
                        bad_hunks: bad_hunks + b2,
                        hunks: hunks + h2,
                        first_line,
                        first_text,
                        first_hunk,
                        first_path,
                    },
                    (_, e) => e,
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = mangled {
        return Err(e);
    }
    if patches.is_empty() {
        return Err(ParseError::Empty {
            file: name.to_string(),
        });
    }
    // Numbered among the mails that carry a diff (a cover letter does not).
    let total = patches.len();
    if total > 1 {
        for (k, p) in patches.iter_mut().enumerate() {
            p.origin = format!("{name} (patch {}/{total})", k + 1);
        }
    }
    Ok(patches)
}

/// Lines without their `\n`; a final line without newline is kept.
fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = data.strip_suffix(b"\n").unwrap_or(data);
    let empty = data.is_empty();
    trimmed.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// Splits an mbox into messages at `From ` separator lines that are
/// followed by a mail header; anything else is one message.
fn split_mbox<'a>(lines: &'a [Line<'a>]) -> Vec<&'a [Line<'a>]> {
    let is_separator = |i: usize| {
        lines[i].text.starts_with(b"From ")
            && lines
                .get(i + 1)
                .is_some_and(|next| is_header_line(&next.text))
    };
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| is_separator(i)).collect();
    if starts.is_empty() {
        return vec![lines];
    }
    let mut out = Vec::new();
    // Text before the first separator (rare) is kept as its own message so a
    // diff there is not lost.
    if starts[0] > 0 {
        out.push(&lines[..starts[0]]);
    }
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        out.push(&lines[s..end]);
    }
    out
}

fn is_header_line(text: &[u8]) -> bool {
    let Some(colon) = text.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && text[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        && text[0].is_ascii_alphabetic()
}

/// Separates a mail's headers from its body and decodes the body; text that
/// is not a mail is returned as is.
fn read_mail<'a>(
    name: &str,
    msg: &'a [Line<'a>],
) -> Result<(Option<String>, Vec<Line<'a>>), ParseError> {
    let mut i = 0;
    if msg.first().is_some_and(|l| l.text.starts_with(b"From ")) {
        i = 1;
    }
    if !msg.get(i).is_some_and(|l| is_header_line(&l.text)) {
        return Ok((None, msg.to_vec()));
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Some(line) = msg.get(i) {
        i += 1;
        if line.text.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line.text).into_owned();
        if text.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
        } else if let Some((k, v)) = text.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    let subject = header("subject");
    let body = &msg[i.min(msg.len())..];
    match header("content-transfer-encoding").map(|v| v.to_ascii_lowercase()) {
        Some(enc) if enc == "quoted-printable" => Ok((subject, decode_quoted_printable(body))),
        Some(enc) if enc == "base64" => Err(ParseError::Malformed {
            file: name.to_string(),
            line: msg.first().map(|l| l.no).unwrap_or(1),
            message: "the mail body is base64-encoded; save it decoded (e.g. with `b4 am`)"
                .to_string(),
        }),
        _ => Ok((subject, body.to_vec())),
    }
}

/// Decodes quoted-printable lines; a decoded line keeps the number of the
/// raw line it started on.
fn decode_quoted_printable<'a>(body: &[Line<'a>]) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<u8>)> = None;
    for line in body {
        let (_, buf) = current.get_or_insert_with(|| (line.no, Vec::new()));
        let text: &[u8] = &line.text;
        let (text, soft) = match text.strip_suffix(b"=") {
            Some(t) => (t, true),
            None => (text, false),
        };
        let mut k = 0;
        while k < text.len() {
            if text[k] == b'=' {
                let hex = text
                    .get(k + 1..k + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    buf.push(v);
                    k += 3;
                    continue;
                }
            }
            buf.push(text[k]);
            k += 1;
        }
        if !soft {
            if let Some((no, buf)) = current.take() {
                out.push(Line {
                    no,
                    text: std::borrow::Cow::Owned(buf),
                });
            }
        }
    }
    if let Some((no, buf)) = current.take() {
        out.push(Line {
            no,
            text: std::borrow::Cow::Owned(buf),
        });
    }
    out
}

/// State of the mangled-mail detector for one message.
struct Mangling {
    bad_hunks: usize,
    hunks: usize,
    first: Option<(usize, String, String, String)>,
}

/// Parses the diff part of one message: every file patch in it.
fn parse_diff(name: &str, lines: &[Line]) -> Result<Vec<FilePatch>, ParseError> {
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
    if let Some((first_line, first_text, first_hunk, first_path)) = mangling.first {
        return Err(ParseError::Mangled {
            file: name.to_string(),
            bad_hunks: mangling.bad_hunks,
            hunks: mangling.hunks,
            first_line,
            first_text,
            first_hunk,
            first_path,
        });
    }
    Ok(files)
}

/// Reads the `---`/`+++` pair at `i`, stripping `strip` leading components.
fn read_file_header(
    lines: &[Line],
    i: usize,
    strip: usize,
) -> Option<(Option<String>, Option<String>)> {
    let old = lines.get(i)?.text.strip_prefix(b"--- ")?;
    let new = lines.get(i + 1)?.text.strip_prefix(b"+++ ")?;
    Some((header_path(old, strip), header_path(new, strip)))
}

/// A `---`/`+++` path: `/dev/null` is none; a timestamp after a tab is cut.
fn header_path(raw: &[u8], strip: usize) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = text.split('\t').next().unwrap_or("").trim_end();
    let path = unquote(text);
    if path == "/dev/null" {
        return None;
    }
    Some(strip_components(&path, strip))
}

fn strip_components(path: &str, n: usize) -> String {
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
fn git_header_paths(rest: &[u8]) -> Option<(String, String)> {
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
fn unquote(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('"') {
        if let Some((s, _)) = split_quoted(text) {
            return s;
        }
    }
    text.to_string()
}

/// Reads one quoted string at the start of `text`: (value, rest).
fn split_quoted(text: &str) -> Option<(String, &str)> {
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
fn parse_hunk_header(text: &str) -> Option<(usize, usize, usize, usize)> {
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
fn parse_hunk(
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
                    "hunk `{header}` of {} ends early: {old_left} old and {new_left} new lines missing (truncated patch?)",
                    fp.display_path()
                ),
            ));
        };
        let text: &[u8] = &l.text;
        let (kind, body) = match text.first() {
            // An empty line is an empty context line whose space a mailer
            // trimmed; git and patch accept it too.
            None => (b' ', text),
            Some(&c) => (c, &text[1..]),
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
            b' ' | b'-' | b'+' => {
                return Err(malformed(
                    l.no,
                    format!(
                        "hunk `{header}` of {} has more lines than its header says",
                        fp.display_path()
                    ),
                ));
            }
            _ => {
                // Mangled: note it, then skip to what looks like the next
                // hunk or file so every bad hunk is counted.
                mangling.bad_hunks += 1;
                if mangling.first.is_none() {
                    mangling.first = Some((
                        l.no,
                        String::from_utf8_lossy(text).into_owned(),
                        header.clone(),
                        fp.display_path().to_string(),
                    ));
                }
                while let Some(l) = lines.get(i) {
                    if l.text.starts_with(b"@@ ") || l.text.starts_with(b"diff --git ") {
                        break;
                    }
                    i += 1;
                }
                fp.hunks.push(hunk);
                return Ok(i);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kernel")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn format_patch_with_several_files_and_no_newline() {
        let patches = parse("two.patch", &fixture("two-files.patch")).unwrap();
        assert_eq!(patches.len(), 1);
        let p = &patches[0];
        assert_eq!(p.subject.as_deref(), Some("[PATCH] demo: touch two files"));
        assert_eq!(p.files.len(), 3);
        assert_eq!(p.files[0].old_path.as_deref(), Some("drivers/demo/a.c"));
        assert_eq!(p.files[0].hunks.len(), 2);
        let h = &p.files[0].hunks[0];
        assert_eq!(
            (h.old_start, h.old_len, h.new_start, h.new_len),
            (1, 5, 1, 6)
        );
        assert_eq!(h.context_around(), (2, 3));
        // A new file and a file whose last line has no newline.
        assert_eq!(p.files[1].old_path, None);
        assert_eq!(p.files[1].new_path.as_deref(), Some("drivers/demo/new.h"));
        assert_eq!(p.files[1].new_mode, Some(0o100644));
        assert!(p.files[2].hunks[0].old_missing_newline);
        assert!(!p.files[2].hunks[0].new_missing_newline);
    }

    #[test]
    fn mbox_is_split_into_patches_and_cover_letter_skipped() {
        let patches = parse("s.mbox", &fixture("series.mbox")).unwrap();
        assert_eq!(patches.len(), 2);
        assert_eq!(patches[0].origin, "s.mbox (patch 1/2)");
        assert_eq!(
            patches[0].subject.as_deref(),
            Some("[PATCH 1/2] demo: first")
        );
        assert_eq!(
            patches[1].subject.as_deref(),
            Some("[PATCH 2/2] demo: second")
        );
        // Quoted-printable body decoded: `=3D` is `=`.
        let added = patches[1].files[0].hunks[0].new_lines();
        assert!(added.iter().any(|l| *l == b"\tint x = 2;"), "{added:?}");
    }

    #[test]
    fn whitespace_mangled_mail_is_recognised_once() {
        let err = parse("original-mail.eml", &fixture("mangled-mail.eml")).unwrap_err();
        let ParseError::Mangled {
            bad_hunks,
            hunks,
            first_line,
            ref first_path,
            ..
        } = err
        else {
            panic!("expected a mangled-mail error, got {err}");
        };
        assert_eq!((bad_hunks, hunks), (2, 3));
        assert_eq!(first_path, "drivers/demo/a.c");
        assert_eq!(first_line, 22);
        let msg = err.to_string();
        assert!(
            msg.starts_with("whitespace-mangled mail: original-mail.eml:"),
            "{msg}"
        );
        assert!(
            msg.contains("context lines lost their leading space / tabs"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_and_empty_inputs_are_errors_with_lines() {
        let text = b"--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n-b\n";
        let err = parse("t.patch", text).unwrap_err().to_string();
        assert!(
            err.starts_with("t.patch:3: hunk `@@ -1,3 +1,3 @@` of x.c ends early"),
            "{err}"
        );
        let err = parse("n.txt", b"hello\n").unwrap_err().to_string();
        assert_eq!(err, "n.txt: no diff found (not a patch or mbox?)");
    }

    #[test]
    fn paths_are_unquoted_and_checked() {
        assert_eq!(
            git_header_paths(b"\"a/sp ace\\303\\251\" \"b/sp ace\\303\\251\""),
            Some(("sp ace\u{e9}".into(), "sp ace\u{e9}".into()))
        );
        assert_eq!(git_header_paths(b"a/x b/x"), Some(("x".into(), "x".into())));
        let text = b"--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-a\n+b\n";
        let err = parse("u.patch", text).unwrap_err().to_string();
        assert!(err.contains("unsafe path"), "{err}");
    }
}
