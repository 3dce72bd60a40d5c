//! The exit code of a run whose tests fail in ways that are not findings,
//! judged from what a real `cargo nextest run` leaves behind (its exit
//! status and its JUnit report), as `cargo xtask test` judges it.
//!
//! Each case builds a tiny crate in a temporary directory and runs nextest
//! on it with the same JUnit configuration as the project's `ci` profile.
//! It needs only Rust and cargo-nextest, both on every machine the
//! harness runs on.

use std::path::Path;
use std::process::Command;

use harness::snapshot::report::Summary;
use harness::ExitCode;

const NEXTEST_CONFIG: &str =
    "[profile.ci]\nfail-fast = false\n[profile.ci.junit]\npath = \"junit.xml\"\n";

/// Runs nextest on a crate whose `src/lib.rs` is `lib`, and judges the
/// run as `cargo xtask test` does (no scenario trials, no bad files).
fn judge(lib: &str) -> (ExitCode, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join(".config")).unwrap();
    std::fs::write(root.join("src/lib.rs"), lib).unwrap();
    std::fs::write(root.join(".config/nextest.toml"), NEXTEST_CONFIG).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["nextest", "run", "--profile", "ci", "--offline"])
        .current_dir(root)
        // The fixture's own target dir: never the project's.
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo nextest (cargo-nextest is installed with Rust here)");
    let junit = std::fs::read_to_string(junit_path(root)).ok();
    let summary = Summary::from_trials(Vec::new());
    let code = summary
        .judge(junit.as_deref(), status.status.success(), 0)
        .exit_code();
    (code, junit.is_some())
}

fn junit_path(root: &Path) -> std::path::PathBuf {
    root.join("target/nextest/ci/junit.xml")
}

#[test]
fn passing_tests_exit_0() {
    let (code, _) = judge("#[test]\nfn fine() {}\n");
    assert_eq!(code, ExitCode::Pass);
}

#[test]
fn a_test_binary_that_does_not_build_is_infrastructure() {
    let (code, wrote_junit) = judge("#[test]\nfn broken() { let x: u32 = \"no\"; }\n");
    assert!(
        !wrote_junit,
        "nextest wrote a report for a crate that does not build"
    );
    assert_eq!(code, ExitCode::Infrastructure);
}

#[test]
fn a_failing_test_outside_the_scenarios_is_infrastructure_not_a_finding() {
    let (code, wrote_junit) =
        judge("#[test]\nfn fine() {}\n#[test]\nfn fails() { panic!(\"no\") }\n");
    assert!(wrote_junit);
    assert_eq!(code, ExitCode::Infrastructure);
}
