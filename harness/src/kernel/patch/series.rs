//! A series as it was mailed: one mail, an mbox, or a directory of them,
//! put in order, with one version kept and, if asked, a subset picked.
//!
//! - A directory holds `*.patch`, `*.eml`, `*.mbox` and `*.mbx` files (b4
//!   writes `.mbx`), read in name order.
//! - A reply (`Re: ...`) and a cover letter (`[PATCH vN 0/m]`, or a mail
//!   without a diff) are skipped, and said so.
//! - The same mail twice (same Message-ID) is read once; two different mails
//!   for the same `n/m` of one version keep the first, said so.
//! - When several versions are present the newest wins: the number after a
//!   `v` (`v2`, `RFCv2`, `PATCHv2`; none is v1); at the same number a PATCH
//!   posting beats an RFC one (it comes after the RFC in practice).
//! - Patches are ordered by `n` of `n/m` in the places numbered patches
//!   take in the input; a patch without a number (a plain diff, `[PATCH]`)
//!   keeps its place.
//! - `series.mbox:9`, `:9-10`, `:4,8-9` picks patches by number (`n`, or the
//!   position when some patch has none); a number not there is an error
//!   listing those that are.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{parse_file, ParseError, Patch, SkipReason, Skipped};

/// A `--series` argument: a path and the patches picked from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSpec {
    pub path: PathBuf,
    pub pick: Option<Pick>,
}

/// Patch numbers: inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick(Vec<(u32, u32)>);

impl Pick {
    /// Reads `9`, `9-10`, `4,8-9`.
    pub fn parse(text: &str) -> Result<Pick, String> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let number = |t: &str| -> Result<u32, String> {
                t.trim().parse::<u32>().map_err(|_| {
                    format!("`{text}`: `{t}` is not a patch number (write e.g. `:9`, `:9-10` or `:4,8-9`)")
                })
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if a > b {
                return Err(format!("`{text}`: the range {a}-{b} is backwards"));
            }
            ranges.push((a, b));
        }
        Ok(Pick(ranges))
    }

    pub fn contains(&self, n: u32) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&n))
    }

    fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl SeriesSpec {
    /// Splits `PATH[:NUMBERS]`. A path that exists is taken whole, so a
    /// file whose name has a colon still works.
    pub fn parse(arg: &Path) -> Result<SeriesSpec, String> {
        if arg.exists() {
            return Ok(SeriesSpec {
                path: arg.to_path_buf(),
                pick: None,
            });
        }
        let text = arg.to_string_lossy();
        if let Some((path, numbers)) = text.rsplit_once(':') {
            let looks_like_pick = !numbers.is_empty()
                && numbers
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '-' || c == ' ');
            if looks_like_pick && Path::new(path).exists() {
                return Ok(SeriesSpec {
                    path: PathBuf::from(path),
                    pick: Some(Pick::parse(numbers)?),
                });
            }
        }
        Err(format!(
            "series {}: no such file or directory",
            arg.display()
        ))
    }
}

impl fmt::Display for SeriesSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(p) = &self.pick {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A series read, ordered and picked.
#[derive(Debug, Clone)]
pub struct Series {
    pub patches: Vec<Patch>,
    /// How each patch is numbered in reports and picks (`09/13`, or `#3`
    /// by position), parallel to `patches`.
    pub labels: Vec<String>,
    /// The files read, in name order, and their bytes (the cache key).
    pub files: Vec<PathBuf>,
    pub bytes: Vec<Vec<u8>>,
    /// What was skipped, dropped or noticed, for the report.
    pub notes: Vec<String>,
}

/// Why a series could not be read.
#[derive(Debug)]
pub enum SeriesError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    Parse(ParseError),
    /// Anything else, said for a person.
    Other(String),
}

impl fmt::Display for SeriesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeriesError::Io { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            SeriesError::Parse(e) => e.fmt(f),
            SeriesError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SeriesError {}

/// The series files of a directory, in name order: its `*.patch` files
/// when it has any, else its `*.eml`, `*.mbox` and `*.mbx` files.
///
/// Why `*.patch` alone when present: a `.patch` is what someone prepared
/// to be applied, and a mail kept beside it is the record of where it came
/// from. The variants' directories do exactly that
/// (`kernel-configs/patches/sw-msi-rfcv2/` keeps the whitespace-mangled
/// `original-mail.eml` next to the repaired patch); reading both would apply
/// the same change twice. A directory of mails as downloaded has no
/// `.patch` files and is read whole.
pub fn files_of(dir: &Path) -> Result<Vec<PathBuf>, SeriesError> {
    let entries = std::fs::read_dir(dir).map_err(|error| SeriesError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let ext = |p: &Path| {
        p.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let patches: Vec<PathBuf> = files
        .iter()
        .filter(|p| ext(p) == "patch")
        .cloned()
        .collect();
    if !patches.is_empty() {
        return Ok(patches);
    }
    Ok(files
        .into_iter()
        .filter(|p| ["eml", "mbox", "mbx"].contains(&ext(p).as_str()))
        .collect())
}

/// Reads a series: a file (mail, mbox, diff) or a directory ([`files_of`]),
/// then [`arrange`]s it.
pub fn read(spec: &SeriesSpec) -> Result<Series, SeriesError> {
    let is_dir = spec.path.is_dir();
    let files = if is_dir {
        files_of(&spec.path)?
    } else {
        vec![spec.path.clone()]
    };
    if files.is_empty() {
        return Err(SeriesError::Other(format!(
            "{}: no *.patch, *.eml, *.mbox or *.mbx file in it",
            spec.path.display()
        )));
    }
    let mut patches = Vec::new();
    let mut skipped = Vec::new();
    let mut bytes = Vec::new();
    for f in &files {
        let data = std::fs::read(f).map_err(|error| SeriesError::Io {
            path: f.clone(),
            error,
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = parse_file(&name, &data).map_err(SeriesError::Parse)?;
        patches.extend(parsed.patches);
        skipped.extend(parsed.skipped);
        bytes.push(data);
    }
    if patches.is_empty() {
        let name = spec.path.display().to_string();
        return Err(if is_dir {
            SeriesError::Other(format!(
                "{name}: no patch in its {} files ({} mails, all cover letters or replies)",
                files.len(),
                skipped.len()
            ))
        } else {
            SeriesError::Parse(ParseError::Empty { file: name })
        });
    }
    let what = spec.path.display().to_string();
    let arranged = arrange(patches, &skipped, spec.pick.as_ref(), &what)?;
    Ok(Series {
        patches: arranged.patches,
        labels: arranged.labels,
        files,
        bytes,
        notes: arranged.notes,
    })
}

/// [`arrange`]'s result.
#[derive(Debug, Clone)]
pub struct Arranged {
    pub patches: Vec<Patch>,
    pub labels: Vec<String>,
    pub notes: Vec<String>,
}

/// Orders patches read in file order, keeps one version and one mail per
/// number, and applies `pick`; `what` names the input in messages.
pub fn arrange(
    patches: Vec<Patch>,
    skipped: &[Skipped],
    pick: Option<&Pick>,
    what: &str,
) -> Result<Arranged, SeriesError> {
    let mut notes: Vec<String> = skipped
        .iter()
        .map(|s| {
            let why = match s.why {
                SkipReason::CoverLetter => "cover letter",
                SkipReason::Reply => "a reply, not a patch",
            };
            format!(
                "skipped {} `{}`: {why}",
                s.origin,
                s.subject.as_deref().unwrap_or("(no subject)")
            )
        })
        .collect();

    // The same mail twice.
    let mut kept: Vec<Patch> = Vec::new();
    for p in patches {
        let twin = p
            .mail
            .message_id
            .as_ref()
            .and_then(|id| kept.iter().find(|k| k.mail.message_id.as_ref() == Some(id)));
        match twin {
            Some(k) => notes.push(format!(
                "{} is the same mail as {} (Message-ID <{}>): read once",
                p.origin,
                k.origin,
                p.mail.message_id.as_deref().unwrap_or("")
            )),
            None => kept.push(p),
        }
    }

    // The newest version.
    let rank = |p: &Patch| p.mail.tag.as_ref().map(|t| (t.version, !t.rfc));
    if let Some(newest) = kept.iter().filter_map(rank).max() {
        let (old, new): (Vec<Patch>, Vec<Patch>) = kept
            .into_iter()
            .partition(|p| rank(p).is_some_and(|r| r != newest));
        let mut versions: Vec<String> = old.iter().filter_map(version_name).collect();
        versions.sort();
        versions.dedup();
        if !old.is_empty() {
            notes.push(format!(
                "dropped {} patches of an older version ({}): {} is here",
                old.len(),
                versions.join(", "),
                new.iter()
                    .find_map(version_name)
                    .unwrap_or_else(|| "a newer one".into())
            ));
        }
        kept = new;
    }

    // One mail per number.
    let mut unique: Vec<Patch> = Vec::new();
    for p in kept {
        let number = p.mail.tag.as_ref().and_then(|t| t.number);
        let first = number.and_then(|n| {
            unique
                .iter()
                .find(|u| u.mail.tag.as_ref().and_then(|t| t.number) == Some(n))
        });
        match first {
            Some(u) => notes.push(format!(
                "patch {} is there twice ({} and {}), {}: kept {}",
                number.unwrap_or(0),
                u.origin,
                p.origin,
                if same_diff(u, &p) {
                    "with the same diff"
                } else {
                    "with different diffs"
                },
                u.origin
            )),
            None => unique.push(p),
        }
    }

    // Numbered patches in number order, in the places numbered ones take.
    let number = |p: &Patch| p.mail.tag.as_ref().and_then(|t| t.number);
    let slots: Vec<usize> = (0..unique.len())
        .filter(|&i| number(&unique[i]).is_some())
        .collect();
    let mut numbered: Vec<Patch> = slots.iter().map(|&i| unique[i].clone()).collect();
    numbered.sort_by_key(|p| number(p));
    for (slot, p) in slots.iter().zip(numbered) {
        unique[*slot] = p;
    }

    // Gaps in the numbering.
    let total = unique
        .iter()
        .filter_map(|p| p.mail.tag.as_ref().and_then(|t| t.total))
        .max();
    if let Some(total) = total {
        let present: Vec<u32> = unique.iter().filter_map(number).collect();
        let missing: Vec<String> = (1..=total)
            .filter(|n| !present.contains(n))
            .map(|n| format!("{n}/{total}"))
            .collect();
        if !missing.is_empty() && pick.is_none() {
            notes.push(format!("missing from {what}: {}", missing.join(", ")));
        }
    }

    // Numbers for picks and labels: `n` when every patch has one, else the
    // position.
    let all_numbered = unique.iter().all(|p| number(p).is_some());
    let width = total.map_or(1, |t| t.to_string().len());
    let numbers: Vec<u32> = unique
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if all_numbered {
                number(p).unwrap_or(0)
            } else {
                i as u32 + 1
            }
        })
        .collect();
    let labels: Vec<String> = unique
        .iter()
        .zip(&numbers)
        .map(|(p, n)| match p.mail.tag.as_ref().and_then(|t| t.total) {
            Some(m) if all_numbered => format!("{n:0width$}/{m}"),
            _ => format!("#{n}"),
        })
        .collect();

    let Some(pick) = pick else {
        return Ok(Arranged {
            patches: unique,
            labels,
            notes,
        });
    };
    let absent: Vec<u32> = pick.numbers().filter(|n| !numbers.contains(n)).collect();
    if !absent.is_empty() {
        let mut present = numbers.clone();
        present.sort_unstable();
        return Err(SeriesError::Other(format!(
            "{what}:{pick}: no patch {} in it; its patches are {}{}",
            absent
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            ranges(&present),
            if all_numbered {
                " (by n of [PATCH n/m])"
            } else {
                " (by position: not every patch has an n/m)"
            }
        )));
    }
    let mut patches = Vec::new();
    let mut picked_labels = Vec::new();
    for ((p, n), l) in unique.into_iter().zip(&numbers).zip(labels) {
        if pick.contains(*n) {
            patches.push(p);
            picked_labels.push(l);
        }
    }
    notes.push(format!(
        "picked {pick}: {} of {} patches",
        patches.len(),
        numbers.len()
    ));
    Ok(Arranged {
        patches,
        labels: picked_labels,
        notes,
    })
}

/// `v2`, `RFCv2`, for notes.
fn version_name(p: &Patch) -> Option<String> {
    let t = p.mail.tag.as_ref()?;
    Some(format!("{}v{}", if t.rfc { "RFC " } else { "" }, t.version))
}

/// Whether two patches change the same files in the same way (where in
/// their patch files they were written does not count).
fn same_diff(a: &Patch, b: &Patch) -> bool {
    a.files.len() == b.files.len()
        && a.files.iter().zip(&b.files).all(|(x, y)| {
            x.old_path == y.old_path
                && x.new_path == y.new_path
                && x.new_mode == y.new_mode
                && x.hunks.len() == y.hunks.len()
                && x.hunks.iter().zip(&y.hunks).all(|(h, k)| {
                    (h.old_start, h.old_len, h.new_start, h.new_len)
                        == (k.old_start, k.old_len, k.new_start, k.new_len)
                        && h.lines == k.lines
                })
        })
}

/// `1-3, 5` for sorted numbers.
fn ranges(numbers: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut k = 0;
    while k < numbers.len() {
        let start = numbers[k];
        let mut end = start;
        while k + 1 < numbers.len() && numbers[k + 1] == end + 1 {
            k += 1;
            end = numbers[k];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        k += 1;
    }
    parts.join(", ")
}
