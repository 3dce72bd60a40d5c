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

use super::{parse_file_lenient, ParseError, Patch, SkipReason, Skipped};

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
                    format!("{text}: `{t}` is not a patch number (write e.g. `:9`, `:9-10` or `:4,8-9`)")
                })
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if a > b {
                return Err(format!("{text}: the range {a}-{b} is backwards"));
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
            if Path::new(path).exists() {
                return Ok(SeriesSpec {
                    path: PathBuf::from(path),
                    pick: Some(Pick::parse(numbers).map_err(|e| format!("series {path}:{e}"))?),
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
        // Mangled mails are read too: the kernel stage repairs them against
        // the tree before applying (`patch::repair`).
        let parsed = parse_file_lenient(&name, &data).map_err(SeriesError::Parse)?;
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
        let mut present: Vec<u32> = unique.iter().filter_map(number).collect();
        present.sort_unstable();
        let missing: Vec<u32> = (1..=total).filter(|n| !present.contains(n)).collect();
        if !missing.is_empty() && pick.is_none() {
            notes.push(format!(
                "{what} has patches {} of {total} (not {})",
                ranges(&present),
                ranges(&missing)
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel/series")
    }

    fn subjects(series: &Series) -> Vec<&str> {
        series
            .patches
            .iter()
            .map(|p| p.subject.as_deref().unwrap_or(""))
            .collect()
    }

    fn read_demo(pick: Option<&str>) -> Result<Series, SeriesError> {
        read(&SeriesSpec {
            path: fixtures().join("demo-v2"),
            pick: pick.map(|p| Pick::parse(p).unwrap()),
        })
    }

    #[test]
    fn a_download_directory_is_ordered_by_number_with_the_newest_version() {
        let s = read_demo(None).unwrap();
        assert_eq!(
            subjects(&s),
            [
                "[PATCH v2 1/3] demo: a comment instead of a blank line",
                "[PATCH v2 2/3] demo: add a variable",
                "[PATCH v2 3/3] demo: say goodbye",
            ]
        );
        assert_eq!(s.labels, ["1/3", "2/3", "3/3"]);
        // Every file was read (and is in the key), the older version too.
        let names: Vec<_> = s
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["a.eml", "b.eml", "c.eml", "d.eml", "e.mbox", "f.eml", "g.eml"]
        );
        assert_eq!(
            s.notes,
            [
                "skipped b.eml `[PATCH v2 0/3] demo: three small changes`: cover letter",
                "skipped d.eml `Re: [PATCH v2 2/3] demo: add a variable`: a reply, not a patch",
                "g.eml is the same mail as c.eml (Message-ID <v2-3.demo@example.invalid>): read once",
                "dropped 2 patches of an older version (v1): v2 is here",
            ]
        );
        // In this order the series applies (2/3 needs 1/3's line).
        let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel/tree");
        let read = |p: &str| std::fs::read(tree.join(p)).map(Some);
        let applied = crate::kernel::apply::apply_series(&s.patches, &read).unwrap();
        let a = String::from_utf8(applied.files["drivers/demo/a.c"].clone().unwrap().data).unwrap();
        assert!(
            a.contains("\tint rc;\n\tint x = 2;\n\t/* first */\n"),
            "{a}"
        );
        assert!(
            a.contains("\tdemo_teardown();\n\t/* goodbye */\n}\n"),
            "{a}"
        );
    }

    #[test]
    fn picks_select_by_number_and_name_what_is_there() {
        let s = read_demo(Some("1,3")).unwrap();
        assert_eq!(s.labels, ["1/3", "3/3"]);
        assert_eq!(s.notes.last().unwrap(), "picked 1,3: 2 of 3 patches");
        let s = read_demo(Some("2-3")).unwrap();
        assert_eq!(s.labels, ["2/3", "3/3"]);
        let err = read_demo(Some("2,4-5")).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "demo-v2:2,4-5: no patch 4, 5 in it; its patches are 1-3 (by n of [PATCH n/m])"
            ),
            "{err}"
        );
        assert_eq!(Pick::parse("4,8-9").unwrap().to_string(), "4,8-9");
        assert!(Pick::parse("9-4").unwrap_err().contains("backwards"));
        assert!(Pick::parse("x")
            .unwrap_err()
            .contains("`x` is not a patch number"));
    }

    #[test]
    fn a_series_argument_splits_off_its_pick_only_when_the_path_exists() {
        let mbox = fixtures().join("demo-v2/e.mbox");
        let spec = SeriesSpec::parse(Path::new(&format!("{}:2", mbox.display()))).unwrap();
        assert_eq!(spec.path, mbox);
        assert_eq!(spec.pick, Some(Pick(vec![(2, 2)])));
        assert_eq!(spec.to_string(), format!("{}:2", mbox.display()));
        assert_eq!(SeriesSpec::parse(&mbox).unwrap().pick, None);
        let err = SeriesSpec::parse(Path::new("/nonexistent/s.mbox:2")).unwrap_err();
        assert_eq!(
            err,
            "series /nonexistent/s.mbox:2: no such file or directory"
        );
        // One file of the directory, by its own numbering.
        let s =
            read(&SeriesSpec::parse(Path::new(&format!("{}:1", mbox.display()))).unwrap()).unwrap();
        assert_eq!(subjects(&s), ["[PATCH 1/2] demo: first"]);
    }

    #[test]
    fn prepared_patches_win_over_mails_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0002-b.patch",
            "0001-a.patch",
            "original-mail.eml",
            "README.md",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(files_of(dir.path()).unwrap()),
            ["0001-a.patch", "0002-b.patch"]
        );
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.mbox", "a.eml", "c.mbx", "notes.txt"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        assert_eq!(
            names(files_of(dir.path()).unwrap()),
            ["a.eml", "b.mbox", "c.mbx"]
        );
        // The variant's own directory: the repaired patch, not the mangled mail.
        let variant =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-configs/patches/sw-msi-rfcv2");
        let files = names(files_of(&variant).unwrap());
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with(".patch"), "{files:?}");
    }

    #[test]
    fn only_cover_letters_and_replies_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixtures().join("sw-msi-v2-0000.eml"),
            dir.path().join("0000.eml"),
        )
        .unwrap();
        std::fs::copy(fixtures().join("demo-v2/d.eml"), dir.path().join("d.eml")).unwrap();
        let err = read(&SeriesSpec {
            path: dir.path().to_path_buf(),
            pick: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with(": no patch in its 2 files (2 mails, all cover letters or replies)"),
            "{err}"
        );
        let err = read(&SeriesSpec {
            path: fixtures().join("sw-msi-v2-0000.eml"),
            pick: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.ends_with("no diff found (not a patch or mbox?)"),
            "{err}"
        );
    }

    fn mail(subject: &str, id: &str, line: &str) -> Vec<Patch> {
        let text = format!(
            "From: A <a@example.invalid>\nSubject: {subject}\nMessage-ID: <{id}>\n\n---\n\
             --- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-a\n+{line}\n"
        );
        super::super::parse("m.eml", text.as_bytes()).unwrap()
    }

    #[test]
    fn versions_rfc_duplicates_and_unnumbered_patches() {
        // RFCv2 is version 2: newer than a v1; at v2, PATCH beats RFC.
        let all = [
            mail("[RFC PATCH 1/1] x", "r1", "r1"),
            mail("[PATCH RFCv2 1/1] x", "r2", "r2"),
            mail("[PATCH v1 1/1] x", "p1", "p1"),
        ]
        .concat();
        let a = arrange(all.clone(), &[], None, "s").unwrap();
        assert_eq!(a.patches.len(), 1);
        assert_eq!(a.patches[0].mail.message_id.as_deref(), Some("r2"));
        let with_v2 = [all, mail("[PATCH v2 1/1] x", "p2", "p2")].concat();
        let a = arrange(with_v2, &[], None, "s").unwrap();
        assert_eq!(a.patches[0].mail.message_id.as_deref(), Some("p2"));
        assert_eq!(
            a.notes,
            ["dropped 3 patches of an older version (RFC v1, RFC v2, v1): v2 is here"]
        );
        // Two different mails for the same number: the first stays.
        let twice = [
            mail("[PATCH 2/2] x", "a", "one"),
            mail("[PATCH 1/2] x", "b", "b"),
            mail("[PATCH 2/2] x", "c", "two"),
        ]
        .concat();
        let a = arrange(twice, &[], None, "s").unwrap();
        let ids: Vec<_> = a
            .patches
            .iter()
            .map(|p| p.mail.message_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(
            a.notes,
            ["patch 2 is there twice (m.eml and m.eml), with different diffs: kept m.eml"]
        );
        // Plain diffs keep their place; numbered ones are sorted around them.
        let plain = |l: &str| {
            super::super::parse(
                "d.diff",
                format!("--- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-a\n+{l}\n").as_bytes(),
            )
            .unwrap()
        };
        let mixed = [
            mail("[PATCH 3/3] x", "3", "3"),
            plain("first plain"),
            mail("[PATCH 1/3] x", "1", "1"),
        ]
        .concat();
        let a = arrange(mixed, &[], Some(&Pick::parse("2").unwrap()), "s").unwrap();
        assert_eq!(a.labels, ["#2"]);
        assert_eq!(a.patches[0].mail.message_id, None);
        let a = arrange(
            [
                mail("[PATCH 3/3] x", "3", "3"),
                plain("p"),
                mail("[PATCH 1/3] x", "1", "1"),
            ]
            .concat(),
            &[],
            None,
            "s",
        )
        .unwrap();
        let ids: Vec<_> = a
            .patches
            .iter()
            .map(|p| p.mail.message_id.clone())
            .collect();
        assert_eq!(ids, [Some("1".into()), None, Some("3".into())]);
        assert_eq!(a.notes, ["s has patches 1, 3 of 3 (not 2)"]);
    }
}
