use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::load::{self, Run};
use super::*;
use crate::outcome::Outcome;
use crate::snapshot::observe::{ItsWrite, Observations, Translation};
use crate::snapshot::result::TrialResult;
use crate::snapshot::{OpFirst, PlacedDevice, SnapshotStep};

fn step(n: usize, request: Value, result: Value) -> SnapshotStep {
    SnapshotStep {
        step: n,
        request: OpFirst(request),
        expect: None,
        result,
        observed: Observations::default(),
    }
}

fn doc(scenario: &str, variant: &str, steps: Vec<SnapshotStep>) -> SnapshotDoc {
    SnapshotDoc {
        scenario: scenario.into(),
        variant: variant.into(),
        kernel_release: String::new(),
        machine: "virt".into(),
        devices: vec![PlacedDevice {
            id: "edu0".into(),
            bdf: "0000:00:02.0".into(),
            requester_id: "0x10".into(),
        }],
        boot_kernel_reports: Vec::new(),
        boot_reports: Vec::new(),
        steps,
        aborted: None,
    }
}

fn eopnotsupp() -> Value {
    json!({"err": {"call": "IOMMU_OPTION", "errno": 95, "name": "EOPNOTSUPP"}})
}

fn option_set(n: usize, object: u32, result: Value) -> SnapshotStep {
    step(
        n,
        json!({"op": "option_set", "object": object, "option": "sw_msi_start", "value": "0x10000000"}),
        result,
    )
}

fn translation(iova: &str, sid: &str, count: u64) -> Translation {
    Translation {
        device: "edu0".into(),
        sid: sid.into(),
        iova: iova.into(),
        translated: "0x8090040".into(),
        perm: "0x3".into(),
        stage: 1,
        count,
    }
}

fn its_write(count: u64) -> ItsWrite {
    ItsWrite {
        device: "edu0".into(),
        requester_id: "0x10".into(),
        offset: "0x40".into(),
        data: "0x0".into(),
        source: None,
        count,
    }
}

fn raise(n: usize, iova: &str) -> SnapshotStep {
    let mut s = step(
        n,
        json!({"op": "edu_raise", "device": "edu0", "value": 1}),
        json!({"ok": "done"}),
    );
    s.observed.smmu_translations = vec![translation(iova, "0x10", 1)];
    s.observed.its_writes = vec![its_write(1)];
    s
}

fn msi_config(n: usize, address: &str) -> SnapshotStep {
    step(
        n,
        json!({"op": "msi_config", "device": "edu0"}),
        json!({"ok": {"msi_config": {"address": address, "data": "0x0", "enabled": true, "max_vectors": 1, "vectors": 1}}}),
    )
}

fn compare_docs(a: SnapshotDoc, b: SnapshotDoc) -> ScenarioComparison {
    diff::scenario(
        &a.scenario.clone(),
        &Observed::Doc(Box::new(a)),
        &Observed::Doc(Box::new(b)),
    )
}

/// One difference: step, what, A's lines, B's lines.
type Flat = (Option<usize>, String, Vec<String>, Vec<String>);

fn rows(s: &ScenarioComparison) -> Vec<Flat> {
    s.steps
        .iter()
        .flat_map(|d| {
            d.rows
                .iter()
                .map(|r| (d.step, r.what.clone(), r.a.clone(), r.b.clone()))
        })
        .collect()
}

fn lines(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

#[test]
fn equal_documents_are_the_same_whatever_they_expect() {
    let a = doc(
        "s",
        "a",
        vec![option_set(1, 0, eopnotsupp()), raise(2, "0x8000040")],
    );
    let mut b = a.clone();
    b.variant = "b".into();
    b.steps[0].expect = Some(json!({"errno": "EOPNOTSUPP"}));
    let c = compare_docs(a, b);
    assert_eq!(c.verdict, Verdict::Same);
    assert!(c.steps.is_empty(), "{c:?}");
    assert_eq!(c.verdict.describe("a", "b"), "same");
}

#[test]
fn an_errno_against_a_value_is_one_result_row() {
    let a = doc("s", "a", vec![option_set(1, 0, eopnotsupp())]);
    let b = doc("s", "b", vec![option_set(1, 0, json!({"ok": "done"}))]);
    let c = compare_docs(a, b);
    assert_eq!(
        rows(&c),
        vec![(
            Some(1),
            "result".into(),
            lines(&["EOPNOTSUPP (IOMMU_OPTION)"]),
            lines(&["ok"])
        )]
    );
    assert_eq!(c.verdict.describe("a", "b"), "differs in 1 step");
}

#[test]
fn a_positive_return_reads_as_one_against_ok() {
    let returned = json!({"returned": {"rc": 1, "call": "IOMMU_OPTION"}});
    let a = doc("s", "a", vec![option_set(1, 0, json!({"ok": "done"}))]);
    let b = doc("s", "b", vec![option_set(1, 0, returned)]);
    assert_eq!(
        rows(&compare_docs(a, b)),
        vec![(
            Some(1),
            "result".into(),
            lines(&["ok"]),
            lines(&["returned 1 (IOMMU_OPTION)"])
        )]
    );
}

#[test]
fn values_of_one_kind_differ_by_field() {
    let a = doc("s", "a", vec![msi_config(1, "0x8000040")]);
    let b = doc("s", "b", vec![msi_config(1, "0x10000040")]);
    assert_eq!(
        rows(&compare_docs(a, b)),
        vec![(
            Some(1),
            "msi_config.address".into(),
            lines(&["0x8000040"]),
            lines(&["0x10000040"])
        )]
    );
    let get = |v: &str| {
        step(
            1,
            json!({"op": "option_get", "object": 0, "option": "sw_msi_start"}),
            json!({"ok": {"value": v}}),
        )
    };
    let a = doc("s", "a", vec![get("0x0")]);
    let b = doc("s", "b", vec![get("0x10000000")]);
    assert_eq!(
        rows(&compare_docs(a, b)),
        vec![(
            Some(1),
            "value".into(),
            lines(&["0x0"]),
            lines(&["0x10000000"])
        )]
    );
}

#[test]
fn translations_and_its_writes_compare_as_multisets() {
    let a = doc("s", "a", vec![raise(1, "0x8000040")]);
    let mut b = doc("s", "b", vec![raise(1, "0x10000040")]);
    b.steps[0].observed.its_writes = vec![its_write(2)];
    assert_eq!(
        rows(&compare_docs(a.clone(), b)),
        vec![
            (
                Some(1),
                "smmu translations".into(),
                lines(&["edu0 0x8000040->0x8090040 x1"]),
                lines(&["edu0 0x10000040->0x8090040 x1"])
            ),
            (
                Some(1),
                "its writes".into(),
                lines(&["edu0 rid 0x10 data 0x0 x1"]),
                lines(&["edu0 rid 0x10 data 0x0 x2"])
            ),
        ]
    );
    // One more translation on B: the shared one is counted, not shown; two
    // entries that differ only in their stream id are shown in full.
    let mut b = a.clone();
    b.variant = "b".into();
    b.steps[0]
        .observed
        .smmu_translations
        .push(translation("0x8000040", "0x18", 1));
    assert_eq!(
        rows(&compare_docs(a.clone(), b)),
        vec![(
            Some(1),
            "smmu translations (+1 same)".into(),
            lines(&["-"]),
            lines(&["edu0 0x8000040->0x8090040 x1"])
        )]
    );
    let mut b = a.clone();
    b.steps[0].observed.smmu_translations = vec![translation("0x8000040", "0x18", 1)];
    assert_eq!(
        rows(&compare_docs(a, b)),
        vec![(
            Some(1),
            "smmu translations".into(),
            lines(&["edu0 0x8000040->0x8090040 x1 sid 0x10 perm 0x3 stage 1"]),
            lines(&["edu0 0x8000040->0x8090040 x1 sid 0x18 perm 0x3 stage 1"])
        )]
    );
}

#[test]
fn kernel_reports_on_one_side_are_shown_in_order() {
    let map = |n| {
        step(
            n,
            json!({"op": "ioas_map", "ioas": "ioas0", "iova": "0x10000000", "length": "0x1000"}),
            json!({"ok": {"iova": "0x10000000"}}),
        )
    };
    let a = doc("s", "a", vec![map(1)]);
    let mut b = a.clone();
    let warn =
        "WARNING: CPU: N PID: N at drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc";
    b.steps[0].observed.kernel = lines(&[warn, "second"]);
    assert_eq!(
        rows(&compare_docs(a, b)),
        vec![(
            Some(1),
            "kernel".into(),
            lines(&["-"]),
            lines(&[warn, "second"])
        )]
    );
}

#[test]
fn a_step_that_differs_only_in_its_request_is_marked() {
    let a = doc(
        "s",
        "a",
        vec![
            option_set(1, 0, eopnotsupp()),
            option_set(2, 0, eopnotsupp()),
        ],
    );
    let b = doc(
        "s",
        "b",
        vec![
            option_set(1, 7, eopnotsupp()),
            option_set(2, 7, json!({"ok": "done"})),
        ],
    );
    let c = compare_docs(a, b);
    assert_eq!(
        rows(&c),
        vec![
            (
                Some(1),
                "request.object".into(),
                lines(&["0"]),
                lines(&["7"])
            ),
            (
                Some(2),
                "request.object".into(),
                lines(&["0"]),
                lines(&["7"])
            ),
            (
                Some(2),
                "result".into(),
                lines(&["EOPNOTSUPP (IOMMU_OPTION)"]),
                lines(&["ok"])
            ),
        ]
    );
    assert_eq!(
        c.steps.iter().map(|d| d.request_only).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(
        c.verdict.describe("a", "b"),
        "differs in 1 step; 1 step more only in the request"
    );
    let a = doc("s", "a", vec![option_set(1, 0, eopnotsupp())]);
    let b = doc("s", "b", vec![option_set(1, 7, eopnotsupp())]);
    assert_eq!(
        compare_docs(a, b).verdict.describe("a", "b"),
        "same behaviour; 1 step differs only in the request"
    );
}

#[test]
fn steps_align_by_number_and_extra_steps_are_one_sided() {
    let a = doc("s", "a", vec![option_set(1, 0, eopnotsupp())]);
    let b = doc(
        "s",
        "b",
        vec![
            option_set(1, 0, eopnotsupp()),
            option_set(2, 0, json!({"ok": "done"})),
        ],
    );
    let c = compare_docs(a, b);
    assert_eq!(
        rows(&c),
        vec![(
            Some(2),
            "step".into(),
            lines(&["(no such step)"]),
            lines(&["object=0 option=sw_msi_start value=0x10000000", "ok"])
        )]
    );
    assert_eq!(c.steps[0].op, "option_set");
}

#[test]
fn the_scenario_as_a_whole_comes_first() {
    let a = doc("s", "a", vec![option_set(1, 0, eopnotsupp())]);
    let mut b = doc("s", "b", vec![option_set(1, 0, json!({"ok": "done"}))]);
    b.devices[0].bdf = "0000:00:03.0".into();
    b.aborted = Some("agent died".into());
    let c = compare_docs(a, b);
    assert_eq!(c.steps[0].step, None);
    assert_eq!(
        rows(&c)[..2],
        [
            (
                None,
                "devices".into(),
                lines(&["edu0 at 0000:00:02.0 rid 0x10"]),
                lines(&["edu0 at 0000:00:03.0 rid 0x10"])
            ),
            (
                None,
                "stopped early".into(),
                lines(&["ran to the end"]),
                lines(&["agent died"])
            ),
        ]
    );
    assert_eq!(
        c.verdict.describe("a", "b"),
        "differs in 1 step, the devices, where it stopped"
    );
}

#[test]
fn verdicts_without_two_documents() {
    let d = || Observed::Doc(Box::new(doc("s", "a", Vec::new())));
    let failed = || Observed::Failed("failed to run: QEMU exited".into());
    let skipped = || Observed::Skipped("needs nest_parent".into());
    let cases = [
        (d(), Observed::Missing, "only in a", false),
        (Observed::Missing, d(), "only in b", false),
        (skipped(), d(), "skipped on a: needs nest_parent", false),
        (d(), failed(), "b failed to run: QEMU exited", true),
        // A failure wins over a skip: nothing could be said about b.
        (skipped(), failed(), "b failed to run: QEMU exited", true),
        (
            Observed::Missing,
            Observed::Missing,
            "a has no data for it; b has no data for it",
            true,
        ),
    ];
    for (a, b, want, incomparable) in cases {
        let c = Comparison::new(
            Side::accepted("a", Path::new("x")),
            Side::accepted("b", Path::new("x")),
            vec![("s".into(), a, b)],
        );
        assert_eq!(c.scenarios[0].verdict.describe("a", "b"), want);
        assert_eq!(c.incomparable(), usize::from(incomparable), "{want}");
        let code = if incomparable {
            ExitCode::Infrastructure
        } else {
            ExitCode::Pass
        };
        assert_eq!(c.exit_code(), code, "{want}");
    }
}

fn two_scenarios() -> Comparison {
    let warn =
        "WARNING: CPU: N PID: N at drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc";
    let a = doc(
        "alpha",
        "up",
        vec![option_set(1, 0, eopnotsupp()), raise(2, "0x8000040")],
    );
    let mut b = doc(
        "alpha",
        "sw",
        vec![
            option_set(1, 0, json!({"ok": "done"})),
            raise(2, "0x10000040"),
        ],
    );
    b.steps[1].observed.kernel = vec![warn.to_string()];
    let same = doc("beta", "up", vec![option_set(1, 0, eopnotsupp())]);
    Comparison::new(
        Side::accepted("up", &crate::snapshot::snapshot_dir()),
        Side::accepted("sw", &crate::snapshot::snapshot_dir()),
        vec![
            (
                "alpha".into(),
                Observed::Doc(Box::new(a)),
                Observed::Doc(Box::new(b)),
            ),
            (
                "beta".into(),
                Observed::Doc(Box::new(same.clone())),
                Observed::Doc(Box::new(same)),
            ),
        ],
    )
}

#[test]
fn text_aligns_the_sides_and_wraps_long_lines() {
    let text = render::text(&two_scenarios());
    let want = "\
A up  accepted snapshots (scenarios/snapshots)
B sw  accepted snapshots (scenarios/snapshots)

alpha: differs in 2 steps
  step  op          what               up                            sw
  1     option_set  result             EOPNOTSUPP (IOMMU_OPTION)     ok
  2     edu_raise   smmu translations  edu0 0x8000040->0x8090040 x1  edu0 0x10000040->0x8090040 x1
                    kernel             -                             WARNING: CPU: N PID: N at
                                                                       drivers/iommu/io-pgtable-arm.c:370
                                                                       __arm_lpae_map+0x498/0x4dc

beta: same
2 scenarios: 1 same, 1 differ
";
    assert_eq!(text, want, "got:\n{text}");
}

#[test]
fn markdown_has_a_verdict_table_and_fences_long_lines() {
    let md = render::markdown(&two_scenarios());
    let want = "\
- `up`: accepted snapshots (scenarios/snapshots)
- `sw`: accepted snapshots (scenarios/snapshots)

| scenario | up vs sw           |
| -------- | ------------------ |
| alpha    | differs in 2 steps |
| beta     | same               |

2 scenarios: 1 same, 1 differ

### alpha: differs in 2 steps

| step | op         | what              | up                             | sw                              |
| ---- | ---------- | ----------------- | ------------------------------ | ------------------------------- |
| 1    | option_set | result            | `EOPNOTSUPP (IOMMU_OPTION)`    | `ok`                            |
| 2    | edu_raise  | smmu translations | `edu0 0x8000040->0x8090040 x1` | `edu0 0x10000040->0x8090040 x1` |
|      |            | kernel            | (below)                        | (below)                         |

```
step 2 edu_raise, kernel:
  up:
    -
  sw:
    WARNING: CPU: N PID: N at drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc
```
";
    assert_eq!(md, want, "got:\n{md}");
    assert!(!md.contains('<'), "no HTML in a mail: {md}");
}

#[test]
fn adjacent_steps_that_differ_alike_share_a_row() {
    let up = |n| option_set(n, 0, eopnotsupp());
    let sw = |n| option_set(n, 0, json!({"ok": "done"}));
    let get = |n, v: &str| {
        step(
            n,
            json!({"op": "option_get", "object": 0, "option": "sw_msi_start"}),
            json!({"ok": {"value": v}}),
        )
    };
    let a = doc(
        "s",
        "up",
        vec![
            up(1),
            up(2),
            get(3, "0x0"),
            up(4),
            up(5),
            up(6),
            up(7),
            up(8),
        ],
    );
    let b = doc(
        "s",
        "sw",
        vec![
            sw(1),
            sw(2),
            get(3, "0x1"),
            sw(4),
            sw(5),
            sw(6),
            sw(7),
            sw(8),
        ],
    );
    let c = Comparison::new(
        Side::accepted("up", Path::new("x")),
        Side::accepted("sw", Path::new("x")),
        vec![(
            "s".into(),
            Observed::Doc(Box::new(a)),
            Observed::Doc(Box::new(b)),
        )],
    );
    assert_eq!(
        c.scenarios[0].verdict.describe("up", "sw"),
        "differs in 8 steps"
    );
    let text = render::text(&c);
    let table: Vec<&str> = text.lines().skip(4).take(5).collect();
    assert_eq!(
        table,
        [
            "  step         op          what    up                         sw",
            "  1, 2         option_set  result  EOPNOTSUPP (IOMMU_OPTION)  ok",
            "  3            option_get  value   0x0                        0x1",
            "  4, 5, ... 8  option_set  result  EOPNOTSUPP (IOMMU_OPTION)  ok",
            "  (5 steps)",
        ],
        "{text}"
    );
}

#[test]
fn accepted_snapshots_parse_header_then_body() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
---
source: harness/src/snapshot/mod.rs
description: \"A window: \\\"quoted\\\"\\nand a second line\"
input_file: scenarios/w.toml
---
scenario: w
variant: v
machine: virt
devices:
  - id: edu0
    bdf: \"0000:00:02.0\"
    requester_id: \"0x10\"
steps:
  - step: 1
    request:
      op: option_get
      object: 0
      option: sw_msi_start
    expect:
      errno: EOPNOTSUPP
    result:
      err:
        call: IOMMU_OPTION
        errno: 95
        name: EOPNOTSUPP
  - step: 2
    request:
      op: edu_raise
      device: edu0
      value: 1
    result:
      ok: done
    smmu_translations:
      - device: edu0
        sid: \"0x10\"
        iova: \"0x8000040\"
        translated: \"0x8090040\"
        perm: \"0x3\"
        stage: 1
        count: 1
    kernel:
      - \"arm-smmu-v3 9050000.smmuv3: event 0x10 received:\"
";
    let path = dir.path().join("w@v.snap");
    std::fs::write(&path, text).unwrap();
    let doc = load::read_snapshot(&path).unwrap();
    assert_eq!((doc.scenario.as_str(), doc.variant.as_str()), ("w", "v"));
    assert_eq!(doc.devices[0].requester_id, "0x10");
    assert_eq!(doc.steps.len(), 2);
    assert_eq!(doc.steps[0].result, eopnotsupp());
    assert_eq!(doc.steps[0].expect, Some(json!({"errno": "EOPNOTSUPP"})));
    assert_eq!(doc.steps[0].request.0["object"], json!(0));
    assert_eq!(
        doc.steps[1].observed.smmu_translations,
        vec![translation("0x8000040", "0x10", 1)]
    );
    assert_eq!(doc.steps[1].observed.kernel.len(), 1);
    assert!(doc.steps[1].observed.its_writes.is_empty());

    // What this module reads is what the snapshot stage writes.
    let round: SnapshotDoc = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
    assert!(compare_docs(doc.clone(), round).steps.is_empty());

    let bad = dir.path().join("bad@v.snap");
    std::fs::write(&bad, "---\nsource: x\n---\nscenario: w\nsteps: 3\n").unwrap();
    let err = format!("{:#}", load::read_snapshot(&bad).unwrap_err());
    assert!(
        err.contains("bad@v.snap") && err.contains("not a snapshot"),
        "{err}"
    );
}

#[test]
fn accepted_mode_needs_snapshots_of_the_variant_and_says_which_exist() {
    let dir = tempfile::tempdir().unwrap();
    let snap = |name: &str, variant: &str| {
        let body = serde_norway::to_string(&doc(name, variant, Vec::new())).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}@{variant}.snap")),
            format!("---\nsource: harness/src/snapshot/mod.rs\n---\n{body}"),
        )
        .unwrap();
    };
    snap("x", "a");
    snap("y", "a");
    snap("x", "b");
    let scenarios = lines(&["x", "y"]);
    let err = accepted(dir.path(), "a", "sw-msi-v2", &scenarios).unwrap_err();
    assert_eq!(crate::outcome::exit_code_of(&err), ExitCode::Infrastructure);
    let msg = err.to_string();
    assert!(
        msg.contains("no accepted snapshots of variant `sw-msi-v2`")
            && msg.contains("variants with snapshots: a, b"),
        "{msg}"
    );
    let c = accepted(dir.path(), "a", "b", &scenarios).unwrap();
    let verdicts: Vec<String> = c
        .scenarios
        .iter()
        .map(|s| s.verdict.describe("a", "b"))
        .collect();
    assert_eq!(verdicts, ["same", "only in a"]);
    assert_eq!(c.exit_code(), ExitCode::Pass);
}

/// The repository's own snapshots: upstream 6.18 has no SW_MSI option, the
/// RFCv2 kernel accepts a SET after attach.
#[test]
fn the_accepted_snapshots_of_upstream_and_rfcv2_differ_where_the_patch_does() {
    let dir = crate::snapshot::snapshot_dir();
    let scenarios = asked_scenarios(&crate::scenario::scenarios_dir(), None).unwrap();
    assert!(scenarios.len() >= 22, "{scenarios:?}");
    let c = accepted(&dir, "upstream-6.18", "sw-msi-rfcv2", &scenarios).unwrap();
    assert_eq!(c.incomparable(), 0, "{}", render::text(&c));
    assert_eq!(c.exit_code(), ExitCode::Pass);
    let by_name = |n: &str| c.scenarios.iter().find(|s| s.scenario == n).unwrap();

    let set_after = by_name("set-after-attach");
    let step5 = set_after.steps.iter().find(|d| d.step == Some(5)).unwrap();
    assert_eq!(step5.op, "option_set");
    assert_eq!(
        step5.rows,
        vec![Row {
            what: "result".into(),
            a: lines(&["EOPNOTSUPP (IOMMU_OPTION)"]),
            b: lines(&["ok"]),
        }]
    );
    // The MSI still goes to the default window on both: steps 10-13 agree.
    assert!(
        set_after.steps.iter().all(|d| d.step < Some(10)),
        "{set_after:?}"
    );
    assert_eq!(set_after.verdict.describe("a", "b"), "differs in 3 steps");

    // A user window after MSI: RFCv2 moves the doorbell and warns on the map.
    let after_msi = by_name("map-user-window-after-msi");
    let all = rows(after_msi);
    assert!(
        all.iter()
            .any(|(_, what, a, b)| what == "msi_config.address"
                && a == &lines(&["0x8000040"])
                && b == &lines(&["0x10000040"])),
        "{all:?}"
    );
    assert!(
        all.iter().any(|(_, what, a, b)| what == "kernel"
            && a == &lines(&["-"])
            && b[0].starts_with("WARNING: ")
            && b[0].contains("drivers/iommu/io-pgtable-arm.c")),
        "{all:?}"
    );
    // The kselftest passes the same on both kernels.
    assert_eq!(by_name("kselftest-iommufd").verdict, Verdict::Same);
}

#[test]
fn unknown_variants_and_filters_are_bad_input() {
    let known = lines(&["upstream-6.18", "sw-msi-rfcv2"]);
    check_variants(&["upstream-6.18", "sw-msi-rfcv2"], &known).unwrap();
    let err = check_variants(&["upstream-6.18", "sw-msi-v3"], &known).unwrap_err();
    assert_eq!(crate::outcome::exit_code_of(&err), ExitCode::Infrastructure);
    assert!(
        err.to_string().contains("unknown variant `sw-msi-v3`")
            && err.to_string().contains("upstream-6.18, sw-msi-rfcv2"),
        "{err}"
    );
    let dir = crate::scenario::scenarios_dir();
    assert_eq!(
        asked_scenarios(&dir, Some("set-after")).unwrap(),
        ["set-after-attach"]
    );
    let err = asked_scenarios(&dir, Some("no-such-scenario")).unwrap_err();
    assert_eq!(crate::outcome::exit_code_of(&err), ExitCode::Infrastructure);
    assert!(
        err.to_string().contains("no scenario name contains"),
        "{err}"
    );
}

const T0: u64 = 1_700_000_000_000;

/// A run directory as `cargo xtask test` leaves it: result files, and
/// observations in each trial's artifact dir.
fn make_run(
    root: &Path,
    stamp_ms: u64,
    trials: &[(&str, &str, Outcome, Option<SnapshotDoc>)],
) -> Run {
    let dir = root.join(format!("{stamp_ms}-test-4242"));
    for (scenario, variant, outcome, observed) in trials {
        let artifacts = dir.join("scenarios").join(format!("{scenario}@{variant}"));
        std::fs::create_dir_all(&artifacts).unwrap();
        if let Some(d) = observed {
            std::fs::write(
                artifacts.join("observations.json"),
                serde_json::to_string_pretty(d).unwrap(),
            )
            .unwrap();
        }
        TrialResult {
            scenario: scenario.to_string(),
            variant: variant.to_string(),
            kernel_release: "6.18.15".into(),
            outcome: *outcome,
            reason: match outcome {
                Outcome::Pass => None,
                _ => Some("QEMU exited with status 1\nartifacts: …".into()),
            },
            interrupts_delivered: 0,
            msi_addresses: Vec::new(),
            duration_s: 1.0,
            restored: false,
            artifacts,
            reproducer: format!("cargo xtask test --variant {variant} {scenario}"),
        }
        .write(&dir.join("results"))
        .unwrap();
    }
    Run::at(&dir)
}

#[test]
fn the_newest_run_with_both_sides_is_reused() {
    let root = tempfile::tempdir().unwrap();
    let up = |s: &str| Some(doc(s, "up", vec![option_set(1, 0, eopnotsupp())]));
    let sw = |s: &str| Some(doc(s, "sw", vec![option_set(1, 0, json!({"ok": "done"}))]));
    let scenarios = lines(&["x"]);
    assert_eq!(
        load::find(root.path(), "up", "sw", &scenarios).unwrap(),
        Runs { a: None, b: None }
    );
    let old = make_run(
        root.path(),
        T0,
        &[
            ("x", "up", Outcome::Pass, up("x")),
            ("x", "sw", Outcome::FINDING, sw("x")),
        ],
    );
    // Newer, but only one side: not enough for the pair.
    let newer = make_run(
        root.path(),
        T0 + 60_000,
        &[("x", "sw", Outcome::Pass, sw("x"))],
    );
    // A directory without results is not a run to reuse.
    std::fs::create_dir_all(root.path().join(format!("{}-kernel-1", T0 + 120_000))).unwrap();
    assert_eq!(
        load::list(root.path()).unwrap(),
        [newer.clone(), old.clone()]
    );
    let found = load::find(root.path(), "up", "sw", &scenarios).unwrap();
    assert_eq!(
        found,
        Runs {
            a: Some(old.clone()),
            b: Some(old.clone())
        }
    );

    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + 25 * 60_000);
    let c = runs(&old, "up", &old, "sw", &scenarios, now);
    assert_eq!(
        c.a.source,
        format!(
            "run {} (25 min old)",
            crate::scenario::display_path(&old.dir)
        )
    );
    assert_eq!(c.a.kernel.as_deref(), Some("6.18.15, --variant up"));
    // A finding is behaviour: it is compared like a pass.
    assert_eq!(
        c.scenarios[0].verdict.describe("up", "sw"),
        "differs in 1 step"
    );

    // A scenario only the newer run has for one side: each side its newest.
    let y = make_run(
        root.path(),
        T0 + 180_000,
        &[("y", "up", Outcome::Pass, up("y"))],
    );
    let found = load::find(root.path(), "up", "sw", &lines(&["y"])).unwrap();
    assert_eq!(
        found,
        Runs {
            a: Some(y),
            b: None
        }
    );
    let found = load::find(root.path(), "up", "sw", &lines(&["x"])).unwrap();
    assert_eq!(found.a, Some(old), "the newest with both still wins");
}

#[test]
fn a_run_shows_failed_and_skipped_trials_as_such() {
    let root = tempfile::tempdir().unwrap();
    let d = |s: &str, v: &str| Some(doc(s, v, Vec::new()));
    let run = make_run(
        root.path(),
        T0,
        &[
            ("broken", "up", Outcome::INFRASTRUCTURE, None),
            ("broken", "sw", Outcome::Pass, d("broken", "sw")),
            ("nested", "up", Outcome::Skip, None),
            ("nested", "sw", Outcome::Pass, d("nested", "sw")),
            ("lost", "up", Outcome::Pass, None),
            ("lost", "sw", Outcome::Pass, d("lost", "sw")),
            ("fine", "up", Outcome::Pass, d("fine", "up")),
            ("fine", "sw", Outcome::Pass, d("fine", "sw")),
        ],
    );
    let scenarios = lines(&["broken", "nested", "lost", "fine", "unrun"]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + 3 * 3_600_000);
    let c = runs(&run, "up", &run, "sw", &scenarios, now);
    let verdicts: Vec<String> = c
        .scenarios
        .iter()
        .map(|s| s.verdict.describe("up", "sw"))
        .collect();
    assert_eq!(verdicts[0], "up failed to run: QEMU exited with status 1");
    assert_eq!(verdicts[1], "skipped on up: QEMU exited with status 1");
    assert!(
        verdicts[2].starts_with("up kept no readable observations (`pass` trial):")
            && verdicts[2].contains("lost@up/observations.json"),
        "{}",
        verdicts[2]
    );
    assert_eq!(verdicts[3], "same");
    assert!(
        verdicts[4].starts_with("up has no result file ")
            && verdicts[4].contains("results/unrun@up.json")
            && verdicts[4].contains("sw has no result file"),
        "{}",
        verdicts[4]
    );
    assert!(c.a.source.ends_with("(3 h old)"), "{}", c.a.source);
    assert_eq!(c.incomparable(), 3);
    assert_eq!(c.exit_code(), ExitCode::Infrastructure);
}
