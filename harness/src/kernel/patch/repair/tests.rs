use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::{parse, parse_lenient, ParseError};

use super::*;
use crate::kernel::apply::{apply_series, ReadBase};

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tree_reader(root: PathBuf) -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> {
    move |p: &str| match std::fs::read(root.join(p)) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A reader of one in-memory file `f.c`.
fn one_file(text: &str) -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> {
    let text = text.to_string();
    move |p: &str| Ok((p == "f.c").then(|| text.clone().into_bytes()))
}

fn only_patch(name: &str, data: &[u8]) -> Patch {
    let mut patches = parse_lenient(name, data).unwrap();
    assert_eq!(patches.len(), 1);
    patches.remove(0)
}

/// Every file a series leaves, by path (deleted ones absent).
fn applied_files(patch: &Patch, base: &ReadBase) -> BTreeMap<String, Vec<u8>> {
    apply_series(std::slice::from_ref(patch), base)
        .unwrap_or_else(|e| panic!("{e}"))
        .files
        .into_iter()
        .filter_map(|(p, s)| s.map(|s| (p, s.data)))
        .collect()
}

fn added_lines(patch: &Patch, file: &str) -> Vec<Vec<u8>> {
    patch
        .files
        .iter()
        .filter(|f| f.display_path() == file)
        .flat_map(|f| &f.hunks)
        .flat_map(|h| &h.lines)
        .filter_map(|l| match l {
            HunkLine::Add(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

const SEED: &str = "kernel-configs/patches/sw-msi-rfcv2/original-mail.eml";
const HAND: &str =
    "kernel-configs/patches/sw-msi-rfcv2/0001-iommufd-Add-IOMMU_OPTION_SW_MSI_START-SIZE-ioctls.patch";
const DEVICE_C: &str = "drivers/iommu/iommufd/device.c";

fn seed_tree() -> impl Fn(&str) -> std::io::Result<Option<Vec<u8>>> {
    tree_reader(fixtures().join("sw-msi-6.18.15"))
}

#[test]
fn seed_mail_is_repaired_but_for_the_stale_device_c_hunk() {
    let seed = only_patch("original-mail.eml", &read(&project().join(SEED)));
    assert!(seed.is_mangled());
    let stale = *repair(&seed, &seed_tree()).expect_err("device.c's hunk is stale on 6.18.15");
    let partial = &stale.partial;
    assert_eq!((partial.repaired_count(), partial.stale_count()), (8, 1));
    let stale_hunks: Vec<&HunkReport> = partial
        .hunks
        .iter()
        .filter(|h| matches!(h.outcome, HunkOutcome::Stale(_)))
        .collect();
    assert_eq!(stale_hunks[0].file, DEVICE_C);
    assert_eq!(stale_hunks[0].header, "@@ -445,10 +445,14 @@ static int");
    assert!(partial
        .patch
        .files
        .iter()
        .all(|f| f.display_path() != DEVICE_C));
    assert!(!partial.patch.is_mangled());

    // Applied to the same files, the repair and the hand repair give the
    // same bytes for every file but device.c.
    let hand = only_patch("hand.patch", &read(&project().join(HAND)));
    assert!(!hand.is_mangled());
    let ours = applied_files(&partial.patch, &seed_tree());
    let theirs = applied_files(&hand, &seed_tree());
    let mut compared = 0;
    for (path, data) in &theirs {
        if path == DEVICE_C {
            continue;
        }
        let mine = ours
            .get(path)
            .unwrap_or_else(|| panic!("{path} not repaired"));
        assert!(
            mine == data,
            "{path} differs from the hand repair:\n{}",
            first_difference(mine, data)
        );
        compared += 1;
    }
    assert_eq!(compared, 5);
    assert_eq!(ours.len(), 5);
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (la, lb): (Vec<&[u8]>, Vec<&[u8]>) = (
        a.split(|&c| c == b'\n').collect(),
        b.split(|&c| c == b'\n').collect(),
    );
    for (k, (x, y)) in la.iter().zip(&lb).enumerate() {
        if x != y {
            return format!(
                "line {}: repaired {:?}, expected {:?}",
                k + 1,
                String::from_utf8_lossy(x),
                String::from_utf8_lossy(y)
            );
        }
    }
    format!("lengths {} and {} lines", la.len(), lb.len())
}

#[test]
fn seed_repair_adds_what_the_intact_mail_adds() {
    // The archive's intact copy is the author's own indentation.
    let seed = only_patch("original-mail.eml", &read(&project().join(SEED)));
    let intact = only_patch(
        "intact.eml",
        &read(&fixtures().join("sw-msi-rfcv2-09/intact.eml")),
    );
    let stale = repair(&seed, &seed_tree()).unwrap_err();
    for fp in &stale.partial.patch.files {
        let file = fp.display_path();
        assert_eq!(
            added_lines(&stale.partial.patch, file),
            added_lines(&intact, file),
            "{file}"
        );
    }
}

#[test]
fn seed_stale_hunk_names_the_closest_lines_and_how_they_differ() {
    let seed = only_patch("original-mail.eml", &read(&project().join(SEED)));
    let stale = repair(&seed, &seed_tree()).unwrap_err();
    let report = stale
        .partial
        .hunks
        .iter()
        .find(|h| h.file == DEVICE_C)
        .unwrap();
    let HunkOutcome::Stale(StaleReason::Nowhere {
        closest: Some(closest),
    }) = &report.outcome
    else {
        panic!("{:?}", report.outcome);
    };
    let b = |s: &str| s.as_bytes().to_vec();
    assert_eq!(closest.rows.len(), 11, "{closest}");
    assert_eq!(
        closest.rows[0],
        Row::Same {
            line: 413,
            tree: b("iommufd_device_attach_reserved_iova(struct iommufd_device *idev,")
        }
    );
    assert_eq!(
        closest.rows[3],
        Row::TreeOnly {
            line: 416,
            tree: b("\tstruct iommufd_group *igroup = idev->igroup;")
        }
    );
    assert_eq!(
        closest.rows[6],
        Row::Differs {
            line: 419,
            tree: b("\tlockdep_assert_held(&igroup->lock);"),
            patch: b("lockdep_assert_held(&idev->igroup->lock);")
        }
    );
    assert_eq!(
        closest.rows[10],
        Row::Differs {
            line: 423,
            tree: b("\t\t\t\t\t\t &igroup->sw_msi_start);"),
            patch: b("&idev->igroup->sw_msi_start);")
        }
    );
    let same = closest
        .rows
        .iter()
        .filter(|r| matches!(r, Row::Same { .. }))
        .count();
    assert_eq!(same, 8);
    let msg = stale.to_string();
    assert!(
        msg.starts_with(
            "patch original-mail.eml is whitespace-mangled and 1 of its 9 hunks are stale"
        ),
        "{msg}"
    );
    assert!(msg.contains("drivers/iommu/iommufd/device.c, hunk `@@ -445,10 +445,14 @@ static int` (patch line 101): STALE"), "{msg}");
    assert!(
        msg.contains(
            "   419 ! \tlockdep_assert_held(&igroup->lock);"
                .replace('\t', "        ")
                .as_str()
        ),
        "{msg}"
    );
    assert!(
        msg.contains("patch > lockdep_assert_held(&idev->igroup->lock);"),
        "{msg}"
    );
}

#[test]
fn repaired_diff_reads_back_strictly_and_applies_the_same() {
    let seed = only_patch("original-mail.eml", &read(&project().join(SEED)));
    let partial = repair(&seed, &seed_tree()).unwrap_err().partial;
    let text = partial.to_diff();
    // Strict parse: nothing mangled is left.
    let back = parse("repaired.patch", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.len(), 1);
    let lines = |p: &Patch| -> Vec<(String, Vec<Vec<HunkLine>>)> {
        p.files
            .iter()
            .map(|f| {
                (
                    f.display_path().to_string(),
                    f.hunks.iter().map(|h| h.lines.clone()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(lines(&back[0]), lines(&partial.patch));
    assert_eq!(
        applied_files(&back[0], &seed_tree()),
        applied_files(&partial.patch, &seed_tree())
    );
    // Headers name the 6.18.15 positions, as the hand repair's do.
    let hand = only_patch("hand.patch", &read(&project().join(HAND)));
    let headers = |p: &Patch, file: &str| -> Vec<String> {
        p.files
            .iter()
            .filter(|f| f.display_path() == file)
            .flat_map(|f| f.hunks.iter().map(|h| h.header.clone()))
            .collect()
    };
    for file in [
        "drivers/iommu/iommufd/iommufd_private.h",
        "include/uapi/linux/iommufd.h",
    ] {
        assert_eq!(headers(&back[0], file), headers(&hand, file));
    }
}

#[test]
fn intact_archive_copy_needs_no_repair_and_fails_strictly_at_device_c() {
    let data = read(&fixtures().join("sw-msi-rfcv2-09/intact.eml"));
    let patches = parse("0009.eml", &data).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patches.len(), 1);
    assert!(!patches[0].is_mangled());
    assert_eq!(
        patches[0].subject.as_deref(),
        Some("[PATCH RFCv2 09/13] iommufd: Add IOMMU_OPTION_SW_MSI_START/SIZE ioctls")
    );
    let repaired = repair(&patches[0], &seed_tree()).unwrap();
    assert_eq!(repaired.patch, patches[0]);
    assert_eq!(repaired.repaired_count(), 0);
    let err = apply_series(&patches, &seed_tree()).unwrap_err();
    assert_eq!(err.file, DEVICE_C);
    assert_eq!(
        err.hunk.as_ref().map(|h| h.0.as_str()),
        Some("@@ -445,10 +445,14 @@ static int")
    );
}

/// Re-derives every line the hand repair leaves in place (context and
/// added lines) from the lines before it, as if each were an added line.
/// The rule reproduces all of them but one context line: the first
/// description of a bare `@name:` tag in iommufd.h, whose 4-space alignment
/// nothing before it shows (a repair takes context lines from the tree, so
/// it never needs this one).
#[test]
fn indentation_rule_reproduces_the_hand_repairs_lines() {
    let hand = only_patch("hand.patch", &read(&project().join(HAND)));
    let read_tree = seed_tree();
    let mut missed = Vec::new();
    let (mut added, mut context) = (0, 0);
    for fp in &hand.files {
        let tree = split(&read_tree(fp.display_path()).unwrap().unwrap());
        for h in &fp.hunks {
            let mut lex = Lexer::default();
            for l in &tree[..h.old_start - 1] {
                lex.feed(l);
            }
            let mut removed_run: Vec<&[u8]> = Vec::new();
            let mut k = 0;
            let mut prev_removed = false;
            for line in &h.lines {
                let (HunkLine::Context(t) | HunkLine::Add(t)) = line else {
                    if let HunkLine::Remove(t) = line {
                        if !prev_removed {
                            removed_run.clear();
                            k = 0;
                        }
                        removed_run.push(t);
                    }
                    prev_removed = true;
                    continue;
                };
                let is_added = matches!(line, HunkLine::Add(_));
                let counterpart = if is_added {
                    k += 1;
                    removed_run.get(k - 1).copied()
                } else {
                    removed_run.clear();
                    None
                };
                prev_removed = prev_removed && is_added;
                let derived = indent(trim_start(t), &lex, counterpart);
                if is_added {
                    added += 1;
                } else {
                    context += 1;
                }
                if &derived != t {
                    missed.push(format!(
                        "{} {}: {:?}, the rule says {:?}",
                        fp.display_path(),
                        if is_added { "added" } else { "context" },
                        String::from_utf8_lossy(t),
                        String::from_utf8_lossy(&derived)
                    ));
                }
                lex.feed(t);
            }
        }
    }
    assert_eq!((added, context), (68, 62));
    assert_eq!(
        missed,
        [
            "include/uapi/linux/iommufd.h context: \" *    Change how RLIMIT_MEMLOCK accounting works. \
             The caller must have privilege\", the rule says \" * Change how RLIMIT_MEMLOCK \
             accounting works. The caller must have privilege\""
        ],
        "{}",
        missed.join("\n")
    );
}

/// Every line of the six 6.18.15 files re-derived from the lines before
/// it: the rule reproduces all 6645 but these, each a choice nothing
/// before it shows.
#[test]
fn indentation_rule_reproduces_kernel_sources() {
    let root = fixtures().join("sw-msi-6.18.15");
    let files = [
        "drivers/iommu/iommufd/device.c",
        "drivers/iommu/iommufd/io_pagetable.c",
        "drivers/iommu/iommufd/ioas.c",
        "drivers/iommu/iommufd/iommufd_private.h",
        "drivers/iommu/iommufd/main.c",
        "include/uapi/linux/iommufd.h",
    ];
    let mut total = 0;
    let mut missed: Vec<String> = Vec::new();
    for f in files {
        let tree = split(&read(&root.join(f)));
        let mut lex = Lexer::default();
        for (no, t) in tree.iter().enumerate() {
            total += 1;
            if indent(trim_start(t), &lex, None) != *t {
                missed.push(format!("{}:{}", f.rsplit('/').next().unwrap(), no + 1));
            }
            lex.feed(t);
        }
    }
    assert_eq!(total, 6645);
    let expected = [
        // Continuations aligned by hand: under a `->` chain, one column
        // past the `(`, and under nothing in particular in macro bodies.
        "device.c:315",
        "ioas.c:214",
        "iommufd_private.h:280",
        "iommufd_private.h:281",
        "iommufd_private.h:282",
        "iommufd_private.h:284",
        "iommufd_private.h:300",
        "iommufd_private.h:301",
        "iommufd_private.h:302",
        "iommufd_private.h:304",
        // `|=` continued two tabs in, where the rule says one.
        "device.c:1650",
        "device.c:1653",
        // Comments: code samples and lists indented inside the text, the
        // first bare `@name:` description, a `/*` (not `/**`) first line
        // continued under its ` - `, a short description continued
        // anywhere.
        "device.c:1030",
        "iommufd.h:23",
        "iommufd.h:131",
        "iommufd.h:301",
        "iommufd.h:596",
        "iommufd.h:640",
        "iommufd.h:721",
        "iommufd.h:773",
        "iommufd.h:841",
        "iommufd.h:846",
        "iommufd.h:1279",
    ];
    let mut missed_sorted = missed.clone();
    missed_sorted.sort();
    let mut expected_sorted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected_sorted.sort();
    assert_eq!(missed_sorted, expected_sorted);
}

// Small synthetic inputs.

/// A mangled one-file patch for `f.c`: `body` lines as a web archive
/// leaves them (context without marker or indentation, `+ text`), the
/// header counted from them.
fn mangled_patch(old_start: usize, body: &[&str]) -> String {
    let old = body.iter().filter(|l| !l.starts_with('+')).count();
    let new = body.iter().filter(|l| !l.starts_with('-')).count();
    let mut text = format!("--- a/f.c\n+++ b/f.c\n@@ -{old_start},{old} +{old_start},{new} @@\n");
    for l in body {
        text.push_str(l);
        text.push('\n');
    }
    text
}

fn repaired_file(base: &str, patch: &str) -> (Repaired, String) {
    let patch = only_patch("p.patch", patch.as_bytes());
    assert!(patch.is_mangled());
    let reader = one_file(base);
    let repaired = repair(&patch, &reader).unwrap_or_else(|e| panic!("{e}"));
    let files = applied_files(&repaired.patch, &reader);
    let text = String::from_utf8(files["f.c"].clone()).unwrap();
    (repaired, text)
}

fn repair_of(r: &Repaired, k: usize) -> &HunkRepair {
    match &r.hunks[k].outcome {
        HunkOutcome::Repaired(x) => x,
        other => panic!("hunk {k}: {other:?}"),
    }
}

#[test]
fn a_mangled_hunk_is_found_with_all_whitespace_ignored() {
    let base = "int f(void)\n{\n\tint a;\n\n\ta = 1;\n\treturn a;\n}\n";
    // Inner whitespace differs too (`a  =  1;`), as archives squeeze or
    // add it; the blank line is an empty context line.
    let patch = mangled_patch(3, &["int a;", "", "+ int b = 2;", "a  =  1;", "return a;"]);
    let (r, text) = repaired_file(base, &patch);
    assert_eq!(
        text,
        "int f(void)\n{\n\tint a;\n\n\tint b = 2;\n\ta = 1;\n\treturn a;\n}\n"
    );
    let h = repair_of(&r, 0);
    assert_eq!((h.found_at, h.header_said), (3, 3));
    assert_eq!((h.context_restored, h.added_reindented, h.added), (3, 1, 1));
    assert_eq!(h.new_header, "@@ -3,4 +3,5 @@");
    assert_eq!(
        r.patch.files[0].hunks[0].lines[2],
        HunkLine::Add(b"\tint b = 2;".to_vec())
    );
}

#[test]
fn among_equal_matches_the_one_nearest_the_header_wins() {
    let base = "void a(void)\n{\n\tx();\n}\n\nvoid b(void)\n{\n\tx();\n}\n";
    let body = ["{", "x();", "+ y();", "}"];
    for (said, found) in [(2, 2), (7, 7), (6, 7), (3, 2), (4, 2), (5, 7), (30, 7)] {
        let (r, _) = repaired_file(base, &mangled_patch(said, &body));
        assert_eq!(repair_of(&r, 0).found_at, found, "header says {said}");
    }
    // Two hunks with the same old side: each takes its own place.
    let two = format!(
        "{}@@ -7,3 +8,4 @@\n{{\nx();\n+ z();\n}}\n",
        mangled_patch(2, &body)
    );
    let (r, text) = repaired_file(base, &two);
    assert_eq!(
        (repair_of(&r, 0).found_at, repair_of(&r, 1).found_at),
        (2, 7)
    );
    assert_eq!(repair_of(&r, 1).new_header, "@@ -7,3 +8,4 @@");
    assert_eq!(
        text,
        "void a(void)\n{\n\tx();\n\ty();\n}\n\nvoid b(void)\n{\n\tx();\n\tz();\n}\n"
    );
}

#[test]
fn added_lines_are_indented_in_kernel_style() {
    let base = "#include <linux/x.h>\n\nstatic int g(int a)\n{\n\treturn a;\n}\n";
    let added = [
        "",
        "/**",
        " * h() - does things",
        " * @a: the thing",
        " *",
        " * Returns 0.",
        " */",
        "static int h(int a, int b)",
        "{",
        "\tint rc;",
        "",
        "\tif (a)",
        "\t\treturn -EINVAL;",
        "\tif (b) {",
        "\t\trc = g(a +",
        "\t\t       b);",
        "\t} else {",
        "\t\trc = g(a,",
        "\t\t       b);",
        "\t}",
        "\tswitch (rc) {",
        "\tcase 0:",
        "\t\tbreak;",
        "\tdefault:",
        "\t\tgoto out;",
        "\t}",
        "\tfor (;;)",
        "\t\tif (rc)",
        "\t\t\trc--;",
        "#ifdef CONFIG_X",
        "\trc = 1;",
        "#endif",
        "out:",
        "\treturn rc ||",
        "\t       a;",
        "}",
        "",
        "#define H(x) \\",
        "\tdo { \\",
        "\t\tg(x); \\",
        "\t} while (0)",
        "static int k = H(",
        "\t1);",
    ];
    // What the archive leaves: `+`, one space for any indentation.
    let mangled: Vec<String> = added
        .iter()
        .map(|l| {
            let t = l.trim_start();
            if t.len() == l.len() || t.is_empty() {
                format!("+{t}")
            } else {
                format!("+ {t}")
            }
        })
        .collect();
    let mut body = vec!["return a;", "}"];
    body.extend(mangled.iter().map(String::as_str));
    let (r, text) = repaired_file(base, &mangled_patch(5, &body));
    let expected = format!(
        "#include <linux/x.h>\n\nstatic int g(int a)\n{{\n\treturn a;\n}}\n{}\n",
        added.join("\n")
    );
    assert_eq!(text, expected);
    let h = repair_of(&r, 0);
    assert_eq!(h.added, added.len());
    // Lines the mail had right (`/**`, `{`, ` * text`) are not counted.
    let right = mangled
        .iter()
        .zip(&added)
        .filter(|(m, a)| &m[1..] == **a)
        .count();
    assert_eq!(right, 17);
    assert_eq!(h.added_reindented, added.len() - right);
}

#[test]
fn a_rewritten_comment_line_keeps_the_alignment_of_the_line_it_replaces() {
    let base = "/**\n * f() - first and\n *       second\n */\n";
    let patch = mangled_patch(
        1,
        &[
            "/**",
            "* f() - first and",
            "- * second",
            "+ * second and",
            "+ * third",
            "*/",
        ],
    );
    let (_, text) = repaired_file(base, &patch);
    assert_eq!(
        text,
        "/**\n * f() - first and\n *       second and\n *       third\n */\n"
    );
}

#[test]
fn a_stale_hunk_is_not_guessed_and_names_the_closest_lines() {
    let base = "int f(void)\n{\n\tint a = 0;\n\ta += 2;\n\treturn a;\n}\n\nint g;\n";
    let stale = mangled_patch(
        2,
        &["{", "int a = 0;", "a += 1;", "+ a++;", "return a;", "}"],
    );
    let fine = "@@ -8 +8,2 @@\nint g;\n+int h;\n";
    let patch = only_patch("p.patch", format!("{stale}{fine}").as_bytes());
    let err = repair(&patch, &one_file(base)).unwrap_err();
    let r = &err.partial;
    assert_eq!((r.repaired_count(), r.stale_count()), (1, 1));
    // The stale hunk is left out, the other repaired.
    assert_eq!(r.patch.files[0].hunks.len(), 1);
    assert_eq!(r.patch.files[0].hunks[0].header, "@@ -8 +8,2 @@");
    let HunkOutcome::Stale(StaleReason::Nowhere { closest: Some(c) }) = &r.hunks[0].outcome else {
        panic!("{:?}", r.hunks[0].outcome);
    };
    let b = |s: &str| s.as_bytes().to_vec();
    assert_eq!(
        c.rows,
        vec![
            Row::Same {
                line: 2,
                tree: b("{")
            },
            Row::Same {
                line: 3,
                tree: b("\tint a = 0;")
            },
            Row::Differs {
                line: 4,
                tree: b("\ta += 2;"),
                patch: b("a += 1;")
            },
            Row::Same {
                line: 5,
                tree: b("\treturn a;")
            },
            Row::Same {
                line: 6,
                tree: b("}")
            },
        ]
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("patch p.patch is whitespace-mangled and 1 of its 2 hunks are stale"),
        "{msg}"
    );
    assert!(
        msg.contains("f.c, hunk `@@ -2,5 +2,6 @@` (patch line 3): STALE"),
        "{msg}"
    );
    assert!(
        msg.contains("         4 !         a += 2;\n     patch > a += 1;\n"),
        "{msg}"
    );
    // Nothing alike at all, and no such file.
    let alien = mangled_patch(1, &["struct s {", "+ int x;", "};"]);
    let err = repair(&only_patch("q.patch", alien.as_bytes()), &one_file(base)).unwrap_err();
    assert_eq!(
        err.partial.hunks[0].outcome,
        HunkOutcome::Stale(StaleReason::Nowhere { closest: None })
    );
    let err = repair(&only_patch("q.patch", alien.as_bytes()), &one_file("")).unwrap_err();
    assert!(err.to_string().contains("STALE"), "{err}");
    let nofile = alien.replace("f.c", "g.c");
    let err = repair(&only_patch("q.patch", nofile.as_bytes()), &one_file(base)).unwrap_err();
    assert_eq!(
        err.partial.hunks[0].outcome,
        HunkOutcome::Stale(StaleReason::NoFile)
    );
}

#[test]
fn a_mail_with_intact_and_mangled_hunks_repairs_only_the_mangled() {
    let base = "int a;\nint b;\nint c;\n\nvoid f(void)\n{\n\tx();\n}\n";
    let text = "--- a/f.c\n+++ b/f.c\n@@ -1,2 +1,3 @@\n int a;\n+int a2;\n int b;\n@@ -6,3 +7,4 @@\n{\nx();\n+ y();\n}\n";
    let err = parse("m.patch", text.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            ParseError::Mangled {
                bad_hunks: 1,
                hunks: 2,
                first_line: 8,
                ..
            }
        ),
        "{err:?}"
    );
    let patch = only_patch("m.patch", text.as_bytes());
    let flags: Vec<bool> = patch.files[0].hunks.iter().map(|h| h.mangled).collect();
    assert_eq!(flags, [false, true]);
    let repaired = repair(&patch, &one_file(base)).unwrap();
    assert_eq!(repaired.hunks[0].outcome, HunkOutcome::Intact);
    assert_eq!(repaired.patch.files[0].hunks[0], patch.files[0].hunks[0]);
    assert_eq!(repair_of(&repaired, 1).new_header, "@@ -6,3 +7,4 @@");
    let files = applied_files(&repaired.patch, &one_file(base));
    assert_eq!(
        String::from_utf8_lossy(&files["f.c"]),
        "int a;\nint a2;\nint b;\nint c;\n\nvoid f(void)\n{\n\tx();\n\ty();\n}\n"
    );
    let report = repaired.to_string();
    assert!(
        report.starts_with("repair of m.patch: 1 of 2 hunks repaired, 0 stale, 1 intact\n"),
        "{report}"
    );
    assert!(
        report.contains("- f.c, hunk `@@ -1,2 +1,3 @@` (patch line 3): intact, kept as it is\n"),
        "{report}"
    );
    assert!(report.contains("- f.c, hunk `@@ -6,3 +7,4 @@` (patch line 7): repaired, found at line 6; 1 context and 0 removed lines restored from the tree, 1 of 1 added lines re-indented; now `@@ -6,3 +7,4 @@`"), "{report}");
}

#[test]
fn the_demo_mangled_mail_is_repaired_against_the_demo_tree() {
    let patch = only_patch(
        "mangled-mail.eml",
        &read(&fixtures().join("mangled-mail.eml")),
    );
    let flags: Vec<Vec<bool>> = patch
        .files
        .iter()
        .map(|f| f.hunks.iter().map(|h| h.mangled).collect())
        .collect();
    assert_eq!(flags, [vec![true, true], vec![false]]);
    let tree = tree_reader(fixtures().join("tree"));
    let repaired = repair(&patch, &tree).unwrap_or_else(|e| panic!("{e}"));
    let files = applied_files(&repaired.patch, &tree);
    let a = String::from_utf8_lossy(&files["drivers/demo/a.c"]).into_owned();
    assert!(
        a.contains("{\n\tint rc;\n\tint flag;\n\n\trc = demo_setup();\n"),
        "{a}"
    );
    assert!(a.contains("{\n\tdemo_teardown(DEMO_ALL);\n}\n"), "{a}");
    assert_eq!(
        files["drivers/demo/new.h"],
        b"/* SPDX-License-Identifier: GPL-2.0 */\n#define DEMO_ALL 1\n"
    );
}
