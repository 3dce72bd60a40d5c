//! Checks of the repository itself, in plain Rust, run by `cargo test`: the
//! codemap names files that exist, every scenario has its snapshots and no
//! snapshot is orphaned, only `harness::vm` starts QEMU, no comment points at
//! an issue number, and tests that need a guest or a tool are `#[ignore]`d
//! with a reason instead of passing without having run.
//!
//! Each check is a function over text (tested here on small in-memory
//! examples) and a test that runs it over the checkout; a failure lists
//! every offence and says what to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use regex::Regex;

/// The checkout (`MSI_HARNESS_ROOT` points the binary at another one).
fn root() -> PathBuf {
    harness::cache::project_root()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `.rs` file of the checkout (not `target/`), as (path relative to
/// the root with `/` separators, text).
fn rust_files() -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "artifacts") {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy();
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((rel.replace('\\', "/"), text));
            }
        }
    }
    files.sort();
    assert!(
        files.len() > 40,
        "found only {} Rust files under {}: is the walk broken?",
        files.len(),
        root.display()
    );
    files
}

fn fail_if_any(problems: &[String], what_to_fix: &str) {
    assert!(
        problems.is_empty(),
        "{what_to_fix}\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// A small Rust lexer: enough to tell comments, string literals and code apart.

/// A Rust file seen three ways, aligned char for char: `code` has comments
/// blanked, `skeleton` has comments and the contents of literals blanked
/// (so braces and keywords in it are real), and `comments` lists each
/// comment with its line.
struct Lexed {
    code: Vec<char>,
    skeleton: Vec<char>,
    comments: Vec<(usize, String)>,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(text: &str) -> Lexed {
    let b: Vec<char> = text.chars().collect();
    let mut lx = Lexed {
        code: Vec::with_capacity(b.len()),
        skeleton: Vec::with_capacity(b.len()),
        comments: Vec::new(),
    };
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut line = 1;
    let mut i = 0;
    // Emits b[from..to]: code keeps it unless `comment`; the skeleton keeps
    // only what lies outside `keep_out` (a literal's contents).
    let emit = |lx: &mut Lexed,
                from: usize,
                to: usize,
                comment: bool,
                keep_out: (usize, usize),
                line: &mut usize| {
        for (idx, &ch) in b.iter().enumerate().take(to).skip(from) {
            let inside = idx >= keep_out.0 && idx < keep_out.1;
            lx.code.push(if comment { blank(ch) } else { ch });
            lx.skeleton.push(if comment || inside || !ch.is_ascii() {
                blank(ch)
            } else {
                ch
            });
            if ch == '\n' {
                *line += 1;
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let start = i;
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            lx.comments.push((line, b[start..i].iter().collect()));
            emit(&mut lx, start, i, true, (0, 0), &mut line);
            continue;
        }
        if c == '/' && next == Some('*') {
            let (start, start_line) = (i, line);
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            let i2 = i.min(b.len());
            lx.comments
                .push((start_line, b[start..i2].iter().collect()));
            emit(&mut lx, start, i2, true, (0, 0), &mut line);
            i = i2;
            continue;
        }
        let raw_start = c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && (i == 0
                || !is_ident(b[i - 1])
                || (b[i - 1] == 'b' && (i < 2 || !is_ident(b[i - 2]))));
        if raw_start {
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) == Some(&'"') {
                let open = j + 1;
                let mut k = open;
                while k < b.len()
                    && !(b[k] == '"' && (0..hashes).all(|h| b.get(k + 1 + h) == Some(&'#')))
                {
                    k += 1;
                }
                let end = (k + 1 + hashes).min(b.len());
                emit(&mut lx, i, end, false, (open, k), &mut line);
                i = end;
                continue;
            }
        }
        if c == '"' {
            let mut k = i + 1;
            while k < b.len() && b[k] != '"' {
                k += if b[k] == '\\' { 2 } else { 1 };
            }
            let end = (k + 1).min(b.len());
            emit(&mut lx, i, end, false, (i + 1, k), &mut line);
            i = end;
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\''); otherwise a lifetime.
            let end = if next == Some('\\') {
                let mut k = i + 2;
                while k < b.len() && b[k] != '\'' {
                    k += 1;
                }
                Some(k + 1)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            if let Some(end) = end {
                let end = end.min(b.len());
                emit(&mut lx, i, end, false, (i + 1, end - 1), &mut line);
                i = end;
                continue;
            }
        }
        emit(&mut lx, i, i + 1, false, (0, 0), &mut line);
        i += 1;
    }
    lx
}

impl Lexed {
    fn skeleton_str(&self) -> String {
        self.skeleton.iter().collect()
    }

    fn code_str(&self) -> String {
        self.code.iter().collect()
    }

    fn code_range(&self, from: usize, to: usize) -> String {
        self.code[from..to].iter().collect()
    }

    fn line_of(&self, pos: usize) -> usize {
        self.code[..pos].iter().filter(|&&c| c == '\n').count() + 1
    }

    /// The index just past the bracket matching the one at `open`.
    fn matching(&self, open: usize) -> usize {
        let (o, c) = match self.skeleton[open] {
            '(' => ('(', ')'),
            '[' => ('[', ']'),
            _ => ('{', '}'),
        };
        let mut depth = 0;
        for (i, &ch) in self.skeleton.iter().enumerate().skip(open) {
            if ch == o {
                depth += 1;
            } else if ch == c {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
        }
        self.skeleton.len()
    }
}

/// Converts a byte offset of an ASCII-only string (the skeleton) to a char
/// index, which is the same.
fn ascii(s: &str) -> &str {
    debug_assert!(s.is_ascii());
    s
}

// ---------------------------------------------------------------------------
// 1. The codemap names what exists.

/// What a path in the checkout is.
enum Found {
    Missing,
    Dir,
    File(String),
}

fn lookup_fs(rel: &str) -> Found {
    let p = root().join(rel);
    if p.is_dir() {
        Found::Dir
    } else if p.is_file() {
        Found::File(std::fs::read_to_string(&p).unwrap_or_default())
    } else {
        Found::Missing
    }
}

/// Each codemap bullet (`` - `path` — … ``) names a file or directory that
/// exists; for a directory, each backticked module name (`qemu`, `uapi.rs`)
/// is a file in it (or in its `src/`); for a file, each backticked Rust name
/// (`KeyBuilder`) occurs in it.
fn codemap_problems(architecture: &str, lookup: &dyn Fn(&str) -> Found) -> Vec<String> {
    let mut problems = Vec::new();
    let architecture = format!("\n{architecture}");
    let Some(start) = architecture.find("\n## Codemap\n") else {
        return vec!["ARCHITECTURE.md has no `## Codemap` section".into()];
    };
    let section = &architecture[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let tick = Regex::new(r"`([^`]+)`").unwrap();
    let module = Regex::new(r"^[a-z][a-z0-9_]*(\.rs)?$").unwrap();
    let item = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").unwrap();
    let mut bullets = 0;
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        bullets += 1;
        let Some(end) = rest.find('`') else { continue };
        let path = &rest[..end];
        let tail = &rest[end + 1..];
        match lookup(path.trim_end_matches('/')) {
            Found::Missing => problems.push(format!(
                "ARCHITECTURE.md's codemap names `{path}`, which does not exist: fix the path or remove the line"
            )),
            Found::File(_) if path.ends_with('/') => problems.push(format!(
                "ARCHITECTURE.md's codemap names `{path}` as a directory, but it is a file"
            )),
            Found::Dir => {
                let dir = if path.ends_with('/') {
                    path.to_string()
                } else {
                    format!("{path}/")
                };
                for name in tick.captures_iter(tail).map(|c| c[1].to_string()) {
                    if !module.is_match(&name) {
                        continue;
                    }
                    let file = if name.ends_with(".rs") {
                        name.clone()
                    } else {
                        format!("{name}.rs")
                    };
                    let candidates = [
                        format!("{dir}{file}"),
                        format!("{dir}src/{file}"),
                        format!("{dir}{name}/mod.rs"),
                    ];
                    if candidates
                        .iter()
                        .all(|c| matches!(lookup(c), Found::Missing))
                    {
                        problems.push(format!(
                            "ARCHITECTURE.md's codemap line for `{path}` names `{name}`, but none of {} exists: fix the name or the line",
                            candidates.join(", ")
                        ));
                    }
                }
            }
            Found::File(text) => {
                for name in tick.captures_iter(tail).map(|c| c[1].to_string()) {
                    if !item.is_match(&name) {
                        continue;
                    }
                    let word = Regex::new(&format!(r"\b{name}\b")).unwrap();
                    if !word.is_match(&text) {
                        problems.push(format!(
                            "ARCHITECTURE.md's codemap line for `{path}` names `{name}`, which `{path}` does not contain: fix the name or the line"
                        ));
                    }
                }
            }
        }
    }
    if bullets == 0 {
        problems.push("ARCHITECTURE.md's codemap has no `` - `path` — … `` lines".into());
    }
    problems
}

#[test]
fn codemap_checker_catches_missing_paths_modules_and_names() {
    let files: BTreeMap<&str, Found> = [
        ("a/src", Found::Dir),
        ("a/src/x.rs", Found::File(String::new())),
        ("a/lib.rs", Found::File("pub struct Thing;".into())),
        ("crate", Found::Dir),
        ("crate/src/uapi.rs", Found::File(String::new())),
    ]
    .into_iter()
    .collect();
    let lookup = |p: &str| match files.get(p) {
        Some(Found::Dir) => Found::Dir,
        Some(Found::File(t)) => Found::File(t.clone()),
        _ => Found::Missing,
    };
    let good = "# A\n\n## Codemap\n\n- `a/src/` — `x` (the x), `~/.cache`\n- `a/lib.rs` — `Thing`, `~/.cache/x`\n- `crate/` — `my-crate`: `uapi.rs`\n\n## Invariants\n\n- `gone/` — not the codemap\n";
    assert!(codemap_problems(good, &lookup).is_empty());
    let bad = "## Codemap\n\n- `a/src/` — `x`, `y`\n- `a/lib.rs` — `Other`\n- `b/` — gone\n- `a/lib.rs/` — a file\n";
    let problems = codemap_problems(bad, &lookup);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("names `y`"), "{}", problems[0]);
    assert!(problems[1].contains("names `Other`"), "{}", problems[1]);
    assert!(
        problems[2].contains("`b/`, which does not exist"),
        "{}",
        problems[2]
    );
    assert!(problems[3].contains("as a directory"), "{}", problems[3]);
    assert!(!codemap_problems("# no codemap\n", &lookup).is_empty());
}

#[test]
fn codemap_names_what_exists() {
    fail_if_any(
        &codemap_problems(&read("ARCHITECTURE.md"), &lookup_fs),
        "ARCHITECTURE.md's codemap is out of date:",
    );
}

// ---------------------------------------------------------------------------
// 2. Snapshots: one per scenario and default variant, none orphaned.

/// `snapshots` are the file names in `scenarios/snapshots/`; an accepted
/// snapshot is `<scenario>@<variant>.snap` (`harness::snapshot::snapshot_name`).
fn snapshot_problems(
    scenarios: &[String],
    variants: &[String],
    defaults: &[String],
    snapshots: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    for d in defaults {
        if !variants.contains(d) {
            problems.push(format!(
                "default variant `{d}` is not a [[variant]] of kernel-configs/kernels.toml"
            ));
        }
    }
    let have: BTreeSet<&str> = snapshots.iter().map(String::as_str).collect();
    for s in scenarios {
        for d in defaults {
            let name = format!("{s}@{d}.snap");
            if !have.contains(name.as_str()) {
                problems.push(format!(
                    "scenarios/{s}.toml has no snapshot for the default variant `{d}` (scenarios/snapshots/{name}): run `cargo xtask bless --variant {d} {s}` and review it"
                ));
            }
        }
    }
    for file in snapshots {
        // insta's pending files are not accepted snapshots (and git ignores them).
        if file.ends_with(".snap.new") || file.ends_with(".pending-snap") {
            continue;
        }
        let parsed = file
            .strip_suffix(".snap")
            .and_then(|stem| stem.split_once('@'));
        let Some((scenario, variant)) = parsed else {
            problems.push(format!(
                "scenarios/snapshots/{file} is not a `<scenario>@<variant>.snap` snapshot: remove it"
            ));
            continue;
        };
        if !scenarios.iter().any(|s| s == scenario) {
            problems.push(format!(
                "scenarios/snapshots/{file} is orphaned: there is no scenarios/{scenario}.toml (delete the snapshot, or rename it with the scenario)"
            ));
        } else if !variants.iter().any(|v| v == variant) {
            problems.push(format!(
                "scenarios/snapshots/{file} is orphaned: kernel-configs/kernels.toml has no variant `{variant}` (delete the snapshot, or rename it with the variant)"
            ));
        }
    }
    problems
}

/// `DEFAULT_VARIANTS` of `cargo xtask test` (xtask is a binary; its source is read).
fn default_variants(xtask_test_rs: &str) -> Vec<String> {
    let decl = Regex::new(r"DEFAULT_VARIANTS\s*:\s*&\[&str\]\s*=\s*&\[([^\]]*)\]").unwrap();
    let Some(list) = decl.captures(xtask_test_rs) else {
        panic!(
            "tidy reads the default variants from `const DEFAULT_VARIANTS: &[&str] = &[…]` in xtask/src/test.rs and did not find it: update `default_variants` in harness/tests/tidy.rs"
        );
    };
    Regex::new(r#""([^"]+)""#)
        .unwrap()
        .captures_iter(&list[1])
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn snapshot_checker_catches_missing_and_orphaned_snapshots() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let scenarios = s(&["a", "b"]);
    let variants = s(&["up", "rfc", "rfc-7.2"]);
    let defaults = s(&["up", "rfc"]);
    let complete = s(&[
        "a@up.snap",
        "a@rfc.snap",
        "b@up.snap",
        "b@rfc.snap",
        "b@rfc-7.2.snap",
        "a@up.snap.new",
    ]);
    assert!(snapshot_problems(&scenarios, &variants, &defaults, &complete).is_empty());
    let broken = s(&[
        "a@up.snap",
        "b@up.snap",
        "b@rfc.snap",
        "gone@up.snap",
        "a@old.snap",
        "notes.txt",
    ]);
    let problems = snapshot_problems(&scenarios, &variants, &defaults, &broken);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("scenarios/a.toml has no snapshot for the default variant `rfc`"));
    assert!(problems[1].contains("no scenarios/gone.toml"));
    assert!(problems[2].contains("no variant `old`"));
    assert!(problems[3].contains("notes.txt"));
    assert!(!snapshot_problems(&scenarios, &variants, &s(&["nope"]), &complete).is_empty());
    assert_eq!(
        default_variants("const DEFAULT_VARIANTS: &[&str] = &[\"up\", \"rfc\"];"),
        ["up", "rfc"]
    );
}

#[test]
fn every_scenario_has_its_snapshots_and_none_is_orphaned() {
    let names = |dir: &str, suffix: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|n| {
                if suffix.is_empty() {
                    Some(n)
                } else {
                    n.strip_suffix(suffix).map(String::from)
                }
            })
            .collect();
        v.sort();
        v
    };
    let scenarios = names("scenarios", ".toml");
    let snapshots = names("scenarios/snapshots", "");
    let kernels: toml::Value = toml::from_str(&read("kernel-configs/kernels.toml")).unwrap();
    let mut variants: Vec<String> = kernels["variant"]
        .as_array()
        .expect("kernels.toml has [[variant]] tables")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    // Flavoured variants (`VARIANT+FLAVOUR`) have snapshots of their own.
    let flavours: Vec<String> = kernels
        .get("flavour")
        .and_then(|f| f.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let flavoured: Vec<String> = variants
        .iter()
        .flat_map(|v| flavours.iter().map(move |f| format!("{v}+{f}")))
        .collect();
    variants.extend(flavoured);
    let defaults = default_variants(&read("xtask/src/test.rs"));
    assert!(
        !scenarios.is_empty() && !defaults.is_empty(),
        "no scenarios or no default variants found"
    );
    fail_if_any(
        &snapshot_problems(&scenarios, &variants, &defaults, &snapshots),
        "scenarios and snapshots do not match:",
    );
}

/// Every `expect.dialect.NAME` names a `[dialect.NAME]` of kernels.toml, and
/// every known finding (`scenarios/known-findings/<variant>.toml`) names a
/// variant, a scenario and one of its steps: a typo would otherwise make an
/// expectation or a declaration silently apply to nothing.
#[test]
fn dialects_and_known_findings_name_what_exists() {
    let kernels =
        harness::kernel::variants::load_file(&root().join("kernel-configs/kernels.toml")).unwrap();
    let mut problems = Vec::new();
    let mut steps_of = std::collections::BTreeMap::new();
    for file in harness::scenario::discover(&root().join("scenarios")).unwrap() {
        let scenario = harness::scenario::Scenario::load(&file).unwrap();
        for step in &scenario.steps {
            for name in step.expect.iter().flat_map(|e| e.dialect.keys()) {
                if !kernels.dialects.contains_key(name) {
                    problems.push(format!(
                        "{}:{}:{}: expect.dialect.{name}: kernels.toml has no [dialect.{name}] (dialects: {})",
                        scenario.display_path,
                        step.expect_pos.line,
                        step.expect_pos.col,
                        kernels.dialects.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        steps_of.insert(scenario.name.clone(), scenario.steps.len());
    }
    let dir = root().join("scenarios/known-findings");
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(variant) = name.strip_suffix(".toml") else {
            problems.push(format!(
                "scenarios/known-findings/{name}: not a `<variant>.toml`"
            ));
            continue;
        };
        if !kernels.knows(variant) {
            problems.push(format!(
                "scenarios/known-findings/{name}: kernels.toml has no variant `{variant}`"
            ));
        }
        let known = match harness::scenario::known::load(&root().join("scenarios"), variant) {
            Ok(k) => k,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        for k in known {
            match steps_of.get(&k.scenario) {
                None => problems.push(format!("{}: no scenario `{}`", k.at, k.scenario)),
                Some(&n) if k.step == 0 || k.step > n => problems.push(format!(
                    "{}: {} has steps 1..={n}, not {}",
                    k.at, k.scenario, k.step
                )),
                Some(_) => {}
            }
        }
    }
    fail_if_any(
        &problems,
        "dialects or known findings name what does not exist:",
    );
}

// ---------------------------------------------------------------------------
// 3. Only harness::vm starts QEMU.

/// Where QEMU may be started: its command builder, process groups and probe.
const VM_DIR: &str = "harness/src/vm/";

/// The files outside `vm/` that may name the QEMU binary or its package:
/// `programs` maps programs to the packages that provide them and `deps`
/// installs those packages (neither starts QEMU).
const NAMES_QEMU: &[&str] = &["harness/src/programs.rs", "harness/src/deps.rs"];

/// Where a file outside `harness/src/vm/` may start QEMU: a `qemu-system-…`
/// binary name in its code (outside comments; only `deps` may name it), or
/// a process started (`Command::new(…)`, duct's `cmd(…)`) with an argument
/// that mentions qemu (`QEMU_BIN`, `cfg.qemu`).
fn qemu_spawns(rel: &str, text: &str) -> Vec<String> {
    if rel.starts_with(VM_DIR) {
        return Vec::new();
    }
    let lx = lex(text);
    let mut found = Vec::new();
    if !NAMES_QEMU.contains(&rel) {
        let code = lx.code_str();
        // Char offsets: `code` may hold non-ASCII text, so count chars.
        for (byte, _) in code.match_indices("qemu-system-") {
            let pos = code[..byte].chars().count();
            found.push(format!(
                "{rel}:{}: names the QEMU binary (`qemu-system-…`)",
                lx.line_of(pos)
            ));
        }
    }
    let skeleton = lx.skeleton_str();
    let start = Regex::new(r"(\bCommand::new|\bcmd!?)\s*\(").unwrap();
    for m in start.find_iter(ascii(&skeleton)) {
        let open = m.end() - 1;
        let args = lx.code_range(open, lx.matching(open));
        if args.to_lowercase().contains("qemu") {
            found.push(format!(
                "{rel}:{}: starts a process named by `{}`",
                lx.line_of(open),
                args.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    found
}

#[test]
fn qemu_checker_finds_starts_outside_vm_and_only_there() {
    let spawn = "fn f() {\n    let _ = std::process::Command::new(\"qemu-system-aarch64\").arg(\"-M\");\n}\n";
    let found = qemu_spawns("harness/src/scenario/exec.rs", spawn);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("harness/src/scenario/exec.rs:2: names"));
    assert!(found[1].contains("starts a process named by `(\"qemu-system-aarch64\")`"));
    assert!(qemu_spawns("harness/src/vm/process.rs", spawn).is_empty());
    assert!(qemu_spawns(
        "xtask/src/boot.rs",
        "// runs qemu-system-aarch64 via harness::vm\nfn f() { Command::new(\"sh\"); }"
    )
    .is_empty());
    // Split over lines, through a constant, through a variable, with duct.
    let split =
        "fn f() {\n    tokio::process::Command::new(\n        \"qemu-system-x86_64\",\n    );\n}\n";
    assert_eq!(qemu_spawns("xtask/src/x.rs", split).len(), 2);
    let via_const =
        "const QEMU: &str = \"qemu-system-aarch64\";\nfn f() { Command::new(QEMU).spawn(); }\n";
    let found = qemu_spawns("harness/src/kernel/x.rs", via_const);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[1].starts_with("harness/src/kernel/x.rs:2: starts"));
    assert_eq!(
        qemu_spawns(
            "harness/src/image/x.rs",
            "fn f(cfg: &C) { Command::new(&cfg.qemu); }"
        )
        .len(),
        1
    );
    assert_eq!(
        qemu_spawns(
            "harness/src/image/x.rs",
            "fn f() { duct::cmd!(qemu_path(), \"-M\"); }"
        )
        .len(),
        1
    );
    // deps may name QEMU (program → package), but not start it.
    let table = "pub const PROGRAMS: &[(&str, &str)] = &[(\"qemu-system-aarch64\", \"qemu-system-arm\")];\n";
    assert!(qemu_spawns(NAMES_QEMU[0], table).is_empty());
    assert_eq!(qemu_spawns(NAMES_QEMU[0], spawn).len(), 1);
    // In a string that is not QEMU's name, or a raw string with quotes.
    assert!(qemu_spawns(
        "harness/src/x.rs",
        "fn f() { Command::new(\"cp\").arg(r#\"a\"b\"#); let c = '\"'; }"
    )
    .is_empty());
}

#[test]
fn only_the_vm_module_starts_qemu() {
    let files = rust_files();
    let mut found = Vec::new();
    let mut named_in_vm = 0;
    for (rel, text) in &files {
        // This file's examples start QEMU on purpose.
        if rel == "harness/tests/tidy.rs" {
            continue;
        }
        if rel.starts_with(VM_DIR) {
            named_in_vm += lex(text).code_str().matches("qemu-system-").count();
        }
        found.extend(qemu_spawns(rel, text));
    }
    assert!(
        named_in_vm > 0,
        "{VM_DIR} no longer names the QEMU binary as `qemu-system-…`: tidy's QEMU check looks for that name; update `qemu_spawns` in harness/tests/tidy.rs"
    );
    fail_if_any(
        &found,
        "QEMU is started only by harness::vm (ARCHITECTURE.md's invariants): boot guests with harness::vm::Vm, or move the code into harness/src/vm/:",
    );
}

// ---------------------------------------------------------------------------
// 4. Comments say what and why, not which issue.

fn issue_references(rel: &str, text: &str) -> Vec<String> {
    let pattern =
        Regex::new(r"(?i)\b(issues?|bugs?|tickets?|PR)\s*#?\d+\b|(^|[\s(\[,])#\d+\b").unwrap();
    let pattern = &pattern;
    lex(text)
        .comments
        .iter()
        .flat_map(|(line, comment)| {
            comment.lines().enumerate().filter_map(move |(i, l)| {
                pattern
                    .find(l)
                    .map(|m| format!("{rel}:{}: `{}`", line + i, m.as_str().trim()))
            })
        })
        .collect()
}

#[test]
fn issue_checker_finds_issue_numbers_in_comments_only() {
    let text = "//! The vm stage (issue 5).\n/// See #12.\nfn f() {\n    let s = \"issue 9\"; // Issue #3\n    /* bug 7 */\n}\n// Step 2 of 3; `#[ignore]`; 0x12; &#1\n";
    let found = issue_references("a.rs", text);
    assert_eq!(
        found,
        [
            "a.rs:1: `issue 5`",
            "a.rs:2: `#12`",
            "a.rs:4: `Issue #3`",
            "a.rs:5: `bug 7`"
        ]
    );
}

#[test]
fn no_comment_refers_to_an_issue() {
    let mut found = Vec::new();
    for (rel, text) in rust_files() {
        if rel == "harness/tests/tidy.rs" {
            continue;
        }
        found.extend(issue_references(&rel, &text));
    }
    fail_if_any(
        &found,
        "comments and module docs say what the code does and why, not which issue asked for it (issue trackers move; the history has the link): reword these:",
    );
}

// ---------------------------------------------------------------------------
// 5. A test that cannot run is ignored, with a reason, and never passes.

/// Every `fn` of a file: (name, attributes above it, body, line).
fn functions(lx: &Lexed) -> Vec<(String, String, String, usize)> {
    let skeleton = lx.skeleton_str();
    let fn_re = Regex::new(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let mut out = Vec::new();
    let mut prev_end = 0;
    for c in fn_re.captures_iter(ascii(&skeleton)) {
        let at = c.get(0).unwrap().start();
        let Some(open) = skeleton[at..].find(['{', ';']).map(|o| at + o) else {
            continue;
        };
        // Attributes: from the end of the previous item (or line) up to `fn`.
        let attr_start = skeleton[prev_end.min(at)..at]
            .rfind(['}', ';'])
            .map(|p| prev_end.min(at) + p + 1)
            .unwrap_or(prev_end.min(at));
        let attrs = lx.code_range(attr_start, at);
        let body = if skeleton.as_bytes()[open] == b'{' {
            let end = lx.matching(open);
            lx.code_range(open, end)
        } else {
            String::new()
        };
        prev_end = at;
        out.push((c[1].to_string(), attrs, body, lx.line_of(at)));
    }
    out
}

/// The names of the functions whose body satisfies `seed`, or calls (by
/// name, in the same file) one that does.
fn reaching(
    fns: &[(String, String, String, usize)],
    seed: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = fns
        .iter()
        .filter(|f| seed(&f.2))
        .map(|f| f.0.clone())
        .collect();
    loop {
        let calls: Vec<Regex> = found
            .iter()
            .map(|g| Regex::new(&format!(r"\b{g}\s*\(")).unwrap())
            .collect();
        let more: Vec<String> = fns
            .iter()
            .filter(|f| !found.contains(&f.0) && calls.iter().any(|c| c.is_match(&f.2)))
            .map(|f| f.0.clone())
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// Offences against "a test that needs a guest, QEMU, a toolchain or a tool
/// is `#[ignore = "…: run by cargo xtask test"]` and fails without it":
/// a bare `#[ignore]`, a reason that does not say what runs the test, a test
/// that prints a skip and passes, and a test that gets its run context
/// (`crate::testing`, directly or through a helper of its file) without
/// being ignored.
fn gate_problems(rel: &str, text: &str) -> Vec<String> {
    let lx = lex(text);
    let mut problems = Vec::new();
    // Attributes are found in the skeleton (not inside string literals);
    // the reason is read from the code at the same place.
    let skeleton = lx.skeleton_str();
    let ignore = Regex::new(r#"#\[ignore\s*(=\s*"([^"]*)")?\s*\]"#).unwrap();
    for c in ignore.captures_iter(ascii(&skeleton)) {
        let line = lx.line_of(c.get(0).unwrap().start());
        match c.get(2) {
            None => problems.push(format!(
                "{rel}:{line}: bare #[ignore]: say what the test needs and what runs it, #[ignore = \"needs …: run by cargo xtask test\"]"
            )),
            Some(r) => {
                let reason = lx.code_range(r.start(), r.end());
                if !reason.contains("cargo xtask test") {
                    problems.push(format!(
                        "{rel}:{line}: #[ignore = \"{reason}\"] does not say what runs the test: end the reason with \": run by cargo xtask test\""
                    ));
                }
            }
        }
    }
    let fns = functions(&lx);
    let skip_print = Regex::new(r#"(?i)(e?print(ln)?!|eprint!)\(\s*"[^"]*\bskip"#).unwrap();
    // Functions that get the run context, and ones that print a skip (or
    // read the old opt-in switch), directly or through each other.
    let gated = reaching(&fns, |body| body.contains("testing::"));
    let skipping = reaching(&fns, |body| {
        skip_print.is_match(body) || body.contains("MSI_HARNESS_VM_TESTS")
    });
    let is_test = Regex::new(r"#\[(tokio::)?test\b").unwrap();
    let ignored = Regex::new(r#"#\[ignore\s*=\s*""#).unwrap();
    for (name, attrs, _, line) in &fns {
        if !is_test.is_match(attrs) {
            continue;
        }
        if gated.contains(name) && !ignored.is_match(attrs) {
            problems.push(format!(
                "{rel}:{line}: test `{name}` needs `cargo xtask test`'s run context (crate::testing) but is not ignored: add #[ignore = \"needs …: run by cargo xtask test\"]"
            ));
        }
        if skipping.contains(name) {
            problems.push(format!(
                "{rel}:{line}: test `{name}` prints a skip (or reads MSI_HARNESS_VM_TESTS), directly or through a helper, and would pass without having run: mark it #[ignore = \"needs …: run by cargo xtask test\"] and let it fail when what it needs is missing (crate::testing)"
            ));
        }
    }
    problems
}

#[test]
fn gate_checker_catches_tests_that_pass_without_running() {
    let good = r##"
fn helper() -> Guest { crate::testing::guest() }
fn vm_test(f: impl FnOnce(Guest)) { f(helper()) }
#[test]
#[ignore = "needs a booted guest: run by cargo xtask test"]
fn boots() { vm_test(|g| { let s = "{"; }) }
#[test]
fn pure() { let x = '}'; let src = "#[test]\n#[ignore]\nfn f() { eprintln!(\"skipped\") }"; }
"##;
    assert_eq!(gate_problems("a.rs", good), Vec::<String>::new());
    let bad = r#"
fn vm_test(f: impl FnOnce(Guest)) { f(crate::testing::guest()) }
#[test]
fn boots() {
    vm_test(|g| {});
}
#[test]
#[ignore]
fn bare() {}
#[test]
#[ignore = "slow"]
fn vague() {}
#[tokio::test]
async fn quietly() {
    if std::env::var_os("MSI_HARNESS_VM_TESTS").is_none() { return; }
}
#[test]
fn prints() {
    if which("rsync").is_none() {
        eprintln!("skipped: no rsync");
        return;
    }
}
fn inputs() -> Option<I> {
    std::env::var_os("MSI_HARNESS_VM_TESTS")?;
    None
}
fn old_vm_test(f: impl FnOnce(I)) { let Some(i) = inputs() else { return }; f(i) }
#[test]
fn through_a_helper() { old_vm_test(|i| {}) }
"#;
    let problems = gate_problems("a.rs", bad);
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(problems[0].starts_with("a.rs:8: bare #[ignore]"));
    assert!(problems[1].contains("\"slow\"] does not say what runs"));
    assert!(problems[2].contains("test `boots` needs"));
    assert!(problems[3].contains("`quietly` prints a skip (or reads"));
    assert!(problems[4].contains("`prints` prints a skip"));
    assert!(problems[5].contains("`through_a_helper` prints a skip"));
}

#[test]
fn tests_that_cannot_run_are_ignored_with_a_reason() {
    let mut problems = Vec::new();
    for (rel, text) in rust_files() {
        if rel == "harness/tests/tidy.rs" {
            continue;
        }
        problems.extend(gate_problems(&rel, &text));
    }
    fail_if_any(
        &problems,
        "a test that needs a guest, QEMU, a toolchain, a built kernel or a host tool must show as ignored under `cargo test`, never as passed (ARCHITECTURE.md's invariants):",
    );
}
