use super::diff::git_header_paths;
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

#[test]
fn mangled_hunks_are_read_leniently_from_their_counts() {
    let patches = parse_lenient("m.eml", &fixture("mangled-mail.eml")).unwrap();
    let files = &patches[0].files;
    let (a, b) = (&files[0].hunks[0], &files[0].hunks[1]);
    assert!(a.mangled && b.mangled && !files[1].hunks[0].mangled);
    assert!(patches[0].is_mangled());
    // A line without marker is context; an empty one is an empty context
    // line; `+`/`-` lines keep what follows the marker.
    assert_eq!(
        a.lines,
        [
            HunkLine::Context(b"static int demo_probe(void)".to_vec()),
            HunkLine::Context(b"{".to_vec()),
            HunkLine::Context(b"int rc;".to_vec()),
            HunkLine::Add(b" int flag;".to_vec()),
            HunkLine::Context(Vec::new()),
            HunkLine::Context(b"rc = demo_setup();".to_vec()),
        ]
    );
    assert_eq!((b.old_lines().len(), b.new_lines().len()), (7, 7));
    // The same file, strictly: one error for the whole file.
    assert!(matches!(
        parse("m.eml", &fixture("mangled-mail.eml")),
        Err(ParseError::Mangled { bad_hunks: 2, .. })
    ));
}

#[test]
fn counts_that_do_not_add_up_in_a_mangled_hunk_say_why() {
    // `\t\t-1,` lost its tabs and reads as a removal.
    let text = b"--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,4 @@\nint t[] = {\n-1,\n+ 2,\n};\n@@ -9 +10 @@\n-x\n+y\n";
    let err = parse_lenient("t.patch", text).unwrap_err().to_string();
    assert!(
        err.starts_with("t.patch:3: hunk `@@ -1,3 +1,4 @@` of f.c ends early, at line 8"),
        "{err}"
    );
    assert!(
        err.contains("a context line that starts with '-' or '+'"),
        "{err}"
    );
}
