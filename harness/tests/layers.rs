//! The stages depend only downward, and no two modules of the crate import
//! each other: checked on the source, as rust-analyzer's `tidy` checks its
//! own invariants.
//!
//! A module's dependencies are the `crate::<module>` paths and `use
//! crate::{..}` groups in its non-test code: every `.rs` file under
//! `harness/src/<module>/` and `harness/src/<module>.rs`, without `tests.rs`
//! files, comment lines, and what follows a file's first `#[cfg(test)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's top-level modules, lowest first. A module may use only
/// modules of a lower rank. The first group is shared plumbing; then the
/// pipeline's stages in order, each handing a typed result to the next;
/// then what wires stages together.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["cache", "event", "outcome", "ktap", "programs"],
    &["process"],
    &["deps"],
    // The stages.
    &["kernel"],
    &["image"],
    &["vm"],
    &["guest"],
    &["scenario"],
    &["snapshot"],
    // One trial (scenario + snapshot); two kernels' observations compared
    // (snapshots and trial results); the orchestrator of the builds.
    &["trial"],
    &["compare"],
    &["pipeline"],
    // What `cargo xtask bench` measures (boots, starts, trials), what
    // `cargo xtask mutants` records (verdicts, the kill matrix), a trial
    // packed for replay (`cargo xtask bundle`) and the nightly matrix's
    // plan and results (shards, KCIDB).
    &["bench", "bisect", "bundle", "mutants", "nightly"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The non-test text of every file of `module`.
fn module_code(module: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let dir = src().join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs")
                    && p.file_name().is_some_and(|n| n != "tests.rs")
                {
                    files.push(p);
                }
            }
        }
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            // Comments may name any module (a doc saying who reads a file);
            // only code is a dependency.
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            (p, code)
        })
        .collect()
}

/// `crate::X` mentions in `code`, X a top-level module name.
fn crate_refs(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // Not `harness::crate::` nor part of a longer identifier.
        if i > 0
            && (code.as_bytes()[i - 1].is_ascii_alphanumeric() || code.as_bytes()[i - 1] == b'_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if modules.contains(&name) {
            out.insert(name);
        }
    }
    // `use crate::{a, b::{c, d}}` groups: the first name of each item at
    // the group's own level.
    for (i, _) in code.match_indices("crate::{") {
        let group = &code[i + "crate::{".len()..];
        let mut depth = 0;
        let mut names = vec![String::new()];
        let mut in_name = true;
        for c in group.chars() {
            match c {
                '{' => {
                    depth += 1;
                    in_name = false;
                }
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(String::new());
                    in_name = true;
                }
                c if depth == 0 && in_name && (c.is_ascii_alphanumeric() || c == '_') => {
                    names.last_mut().unwrap().push(c)
                }
                c if depth == 0 && in_name && !c.is_whitespace() => in_name = false,
                _ => {}
            }
        }
        out.extend(names.into_iter().filter(|n| modules.contains(n)));
    }
    out
}

fn top_level_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_level_modules();
    modules
        .iter()
        .map(|m| {
            let mut deps = BTreeSet::new();
            for (_, code) in module_code(m) {
                deps.extend(crate_refs(&code, &modules));
            }
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = top_level_modules()
        .into_iter()
        .filter(|m| rank(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in harness/tests/layers.rs LAYERS: {unplaced:?}"
    );
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        let Some(r) = rank(&m) else { continue };
        for d in deps {
            if rank(&d).is_some_and(|rd| rd >= r) {
                wrong.push(format!("`{m}` uses `{d}`"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that go up or sideways (a stage may use only the stages before it; \
         see LAYERS in harness/tests/layers.rs):\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_checker_sees_imports_and_paths() {
    let modules: BTreeSet<String> = ["vm", "snapshot", "scenario"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use crate::{vm::{self, Vm}, snapshot};\nfn f() { crate::scenario::run(); }\n// not_crate::vm\n";
    assert_eq!(
        crate_refs(code, &modules),
        modules,
        "{:?}",
        crate_refs(code, &modules)
    );
    assert!(crate_refs("my_crate::vm::x", &modules).is_empty());
}
