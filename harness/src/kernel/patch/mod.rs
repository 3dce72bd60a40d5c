//! Reading patches the way a reviewer gets them.
//!
//! A series is read from files that are plain unified diffs, `git
//! format-patch` output, or an mbox holding several such mails (what lore
//! hands out); [`series`] reads a directory of them, orders the mails by
//! their `[PATCH vN n/m]` tags, keeps the newest version and picks a subset.
//! Each mail becomes one [`Patch`] with its author, date, Message-ID and
//! trailers; a cover letter (`0/m`, or no diff) and a reply (`Re:`) are
//! skipped. Quoted-printable bodies are decoded.
//!
//! A mail that went through a client or web archive which stripped leading
//! whitespace is the common failure: its hunk bodies have lines that begin
//! with neither ' ', '+', '-' nor '\'. [`parse`] recognises it and reports
//! it once, as such, instead of a wall of failed hunks later;
//! [`parse_lenient`] reads it anyway, its hunks marked `mangled`, for
//! [`repair`] to restore against the tree.

use std::fmt;

pub mod closest;
mod diff;
mod mail;
pub mod repair;
pub mod series;
#[cfg(test)]
mod tests;

use diff::{parse_diff, Mangling};
pub use mail::decode_words;
use mail::{is_reply, read_mail, split_lines, split_mbox};

/// One patch (one mail, or one diff file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Where it came from, for messages: `0001-x.patch` or `s.mbox (patch 2/3)`.
    pub origin: String,
    /// The mail's subject, when it had one.
    pub subject: Option<String>,
    /// What the mail's headers and trailers say (empty for a plain diff).
    pub mail: MailInfo,
    pub files: Vec<FilePatch>,
}

impl Patch {
    /// Whether any hunk lost its whitespace on the way (see [`Hunk::mangled`]).
    pub fn is_mangled(&self) -> bool {
        self.files.iter().flat_map(|f| &f.hunks).any(|h| h.mangled)
    }
}

/// A patch mail's headers and trailers, as the reviewer sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailInfo {
    /// `From:` (or the in-body `From:` of `git send-email`), RFC 2047 decoded:
    /// `Nicolin Chen <nicolinc@nvidia.com>`.
    pub author: Option<String>,
    pub date: Option<String>,
    /// Without the angle brackets.
    pub message_id: Option<String>,
    /// The subject's `[PATCH vN n/m]`, when it has one.
    pub tag: Option<SubjectTag>,
    /// `Signed-off-by:`, `Reviewed-by:`, `Link:`, ... in order.
    pub trailers: Vec<Trailer>,
}

impl MailInfo {
    /// The author's name without the address (or the address when there is
    /// no name).
    pub fn author_name(&self) -> Option<String> {
        let author = self.author.as_deref()?.trim();
        let name = match author.find('<') {
            Some(0) | None => author.trim_matches(['<', '>']),
            Some(k) => author[..k].trim(),
        };
        Some(name.trim_matches('"').to_string())
    }
}

/// The bracketed tag of a patch subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTag {
    /// The bracket's text as written: `PATCH RFCv2 09/13`.
    pub prefix: String,
    /// What follows a `v` (`v2`, `RFCv2`, `PATCHv2`); 1 when none is given.
    pub version: u32,
    /// `RFC` appears in the tag.
    pub rfc: bool,
    /// `n` and `m` of `n/m`; `0/m` is a cover letter.
    pub number: Option<u32>,
    pub total: Option<u32>,
}

/// A `Key: value` line at the end of a commit message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub key: String,
    pub value: String,
}

/// A mail of a patch file that is not a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub origin: String,
    pub subject: Option<String>,
    pub why: SkipReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `[PATCH vN 0/m]`, or a mail with no diff.
    CoverLetter,
    /// `Re: ...`: a review, even when it quotes or suggests a diff.
    Reply,
}

/// What one patch file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFile {
    pub patches: Vec<Patch>,
    pub skipped: Vec<Skipped>,
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
    /// The body has lines without a marker: a mailer stripped leading
    /// whitespace, so none of the hunk's indentation can be trusted (its
    /// lines are as the mail has them; `repair` restores them).
    pub mangled: bool,
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

/// Parses a patch file (diff, format-patch mail or mbox) into patches; a
/// file without any is an error. `name` names the file in messages. A
/// whitespace-mangled mail is an error ([`ParseError::Mangled`], counting
/// every mangled hunk of the file).
pub fn parse(name: &str, data: &[u8]) -> Result<Vec<Patch>, ParseError> {
    non_empty(name, parse_file(name, data)?)
}

/// Like [`parse`], but a whitespace-mangled mail is read too: the hunks
/// that show mangling are marked ([`Hunk::mangled`]) and their extent comes
/// from the header counts; intact hunks are read exactly as by [`parse`].
pub fn parse_lenient(name: &str, data: &[u8]) -> Result<Vec<Patch>, ParseError> {
    non_empty(name, parse_file_lenient(name, data)?)
}

fn non_empty(name: &str, parsed: ParsedFile) -> Result<Vec<Patch>, ParseError> {
    if parsed.patches.is_empty() {
        return Err(ParseError::Empty {
            file: name.to_string(),
        });
    }
    Ok(parsed.patches)
}

/// Parses a patch file into its patches and the mails skipped (cover
/// letters, replies); a file with only those is no error here. A mangled
/// mail is an error.
pub fn parse_file(name: &str, data: &[u8]) -> Result<ParsedFile, ParseError> {
    let (parsed, mangling) = parse_all(name, data)?;
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
    Ok(parsed)
}

/// [`parse_file`] that reads mangled mails (their hunks marked) for the
/// repair.
pub fn parse_file_lenient(name: &str, data: &[u8]) -> Result<ParsedFile, ParseError> {
    parse_all(name, data).map(|(parsed, _)| parsed)
}

fn parse_all(name: &str, data: &[u8]) -> Result<(ParsedFile, Mangling), ParseError> {
    let lines: Vec<Line> = split_lines(data)
        .enumerate()
        .map(|(i, t)| Line {
            no: i + 1,
            text: std::borrow::Cow::Borrowed(t),
        })
        .collect();
    let messages = split_mbox(&lines);
    let mut patches = Vec::new();
    let mut skipped = Vec::new();
    // Every mangled hunk of the whole file, for one report.
    let mut mangling = Mangling {
        bad_hunks: 0,
        hunks: 0,
        first: None,
    };
    for msg in messages {
        let mail = read_mail(name, msg)?;
        let skip = |why| Skipped {
            origin: name.to_string(),
            subject: mail.subject.clone(),
            why,
        };
        let cover = mail.info.tag.as_ref().is_some_and(|t| t.number == Some(0));
        if mail.subject.as_deref().is_some_and(is_reply) {
            skipped.push(skip(SkipReason::Reply));
            continue;
        }
        // A cover letter may carry a diff (an interdiff or range-diff
        // against the last version); it is still no patch.
        if cover {
            skipped.push(skip(SkipReason::CoverLetter));
            continue;
        }
        let (files, seen) = parse_diff(name, &mail.body)?;
        mangling.bad_hunks += seen.bad_hunks;
        mangling.hunks += seen.hunks;
        mangling.first = mangling.first.or(seen.first);
        if files.is_empty() {
            skipped.push(skip(SkipReason::CoverLetter));
            continue;
        }
        patches.push(Patch {
            origin: name.to_string(),
            subject: mail.subject,
            mail: mail.info,
            files,
        });
    }
    // Numbered among the mails that carry a diff (a cover letter does not).
    let total = patches.len();
    if total > 1 {
        for (k, p) in patches.iter_mut().enumerate() {
            p.origin = format!("{name} (patch {}/{total})", k + 1);
        }
    }
    Ok((ParsedFile { patches, skipped }, mangling))
}
