//! `cargo xtask compare` as a reviewer runs it: the real binary on the
//! repository's accepted snapshots, and on a run directory laid out as
//! `cargo xtask test` leaves one (its observations taken from the same
//! snapshots), for output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use harness::compare::load::read_snapshot;
use harness::outcome::Outcome;
use harness::snapshot::result::TrialResult;

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run the xtask binary")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn accepted_snapshots_compare_without_a_vm() {
    let o = xtask(&[
        "compare",
        "--accepted",
        "upstream-6.18",
        "sw-msi-rfcv2",
        "set-after-attach",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("set-after-attach: differs in 3 steps\n")
            && out.contains("  5, 6  option_set  result  EOPNOTSUPP (IOMMU_OPTION)  ok\n"),
        "{out}"
    );

    let o = xtask(&[
        "compare",
        "--accepted",
        "--markdown",
        "upstream-6.18",
        "sw-msi-rfcv2",
        "kselftest",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("| kselftest-iommufd | same") && out.contains("1 scenario: 1 same, 0 differ"),
        "{out}"
    );
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    for (args, says) in [
        (
            &["compare", "--accepted", "upstream-6.18", "sw-msi-v9"][..],
            "unknown variant `sw-msi-v9`",
        ),
        (
            &["compare", "--accepted", "upstream-6.18", "sw-msi-planted"][..],
            "no accepted snapshots of variant `sw-msi-planted`",
        ),
        (
            &[
                "compare",
                "--accepted",
                "upstream-6.18",
                "sw-msi-rfcv2",
                "nothing-like-this",
            ][..],
            "no scenario name contains `nothing-like-this`",
        ),
        (
            &["compare", "upstream-6.18", "sw-msi-rfcv2", "--run-a", "/"][..],
            "is not a run directory",
        ),
    ] {
        let o = xtask(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A run directory as `cargo xtask test` leaves it, each trial's
/// observations the accepted snapshot's document; `broken` trials ended
/// as infrastructure.
fn make_run(dir: &Path, scenario: &str, variants: &[&str], broken: &[&str]) {
    let snapshots = harness::snapshot::snapshot_dir();
    for variant in variants {
        let name = format!("{scenario}@{variant}");
        let doc = read_snapshot(&snapshots.join(format!("{name}.snap"))).unwrap();
        let artifacts = dir.join("scenarios").join(&name);
        std::fs::create_dir_all(&artifacts).unwrap();
        std::fs::write(artifacts.join("observations.json"), serde_json_text(&doc)).unwrap();
        let failed = broken.contains(variant);
        TrialResult {
            scenario: scenario.into(),
            variant: variant.to_string(),
            kernel_release: "6.18.15".into(),
            outcome: if failed {
                Outcome::INFRASTRUCTURE
            } else {
                Outcome::Pass
            },
            reason: failed.then(|| "QEMU exited before the guest was ready".to_string()),
            interrupts_delivered: 0,
            msi_addresses: Vec::new(),
            duration_s: 1.0,
            restored: false,
            artifacts,
            reproducer: TrialResult::reproducer_for(scenario, variant),
        }
        .write(&dir.join("results"))
        .unwrap();
    }
}

fn serde_json_text(doc: &harness::snapshot::SnapshotDoc) -> String {
    // As the trial writes it (`trial.rs`).
    serde_json::to_string_pretty(doc).unwrap()
}

#[test]
fn named_runs_are_compared_and_a_failed_trial_exits_2() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("1700000000000-test-1");
    make_run(
        &run,
        "set-after-attach",
        &["upstream-6.18", "sw-msi-rfcv2"],
        &[],
    );
    let dir = run.to_str().unwrap();
    let args = [
        "compare",
        "upstream-6.18",
        "sw-msi-rfcv2",
        "set-after-attach",
        "--run-a",
        dir,
        "--run-b",
        dir,
    ];
    let o = xtask(&args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("1700000000000-test-1 (")
            && out.contains("kernel 6.18.15, --variant upstream-6.18")
            && out.contains("set-after-attach: differs in 3 steps"),
        "{out}"
    );

    let broken = root.path().join("1700000000001-test-2");
    make_run(
        &broken,
        "set-after-attach",
        &["upstream-6.18", "sw-msi-rfcv2"],
        &["sw-msi-rfcv2"],
    );
    let o = xtask(&[
        "compare",
        "upstream-6.18",
        "sw-msi-rfcv2",
        "set-after-attach",
        "--run-a",
        dir,
        "--run-b",
        broken.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(
        out.contains(
            "set-after-attach: sw-msi-rfcv2 failed to run: QEMU exited before the guest was ready"
        ),
        "{out}"
    );
}
