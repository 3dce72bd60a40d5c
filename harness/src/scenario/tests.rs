//! The file format's tests: good files, and one positioned error for each
//! way a file can be wrong (the constructs' own included).

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(Path::new("scenarios/x.toml"), "scenarios/x.toml", text)
}

const HEAD: &str =
    "description = \"d\"\n[machine]\ndevices = [{ kind = \"edu\", id = \"edu0\" }]\n";

#[test]
fn good_file_parses_with_defaults() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"open_device\"\ndevice = \"edu0\"\n[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\nvalue = \"0x10000000\"\nexpect = {{ with_sw_msi = {{ ok = true }}, without_sw_msi = {{ errno = \"EOPNOTSUPP\" }} }}\n[[step]]\nop = \"host_sleep\"\nms = 10\n"
    ))
    .unwrap();
    assert_eq!(s.name, "x");
    assert_eq!(s.machine.smp, 2);
    assert_eq!(s.machine.vfio_ids(), vec!["edu0".to_string()]);
    assert!(s.steps[0].bdf_from_placement);
    assert_eq!(s.steps[1].pos, Pos { line: 7, col: 1 });
    let e = s.steps[1].expect.as_ref().unwrap();
    assert_eq!(e.for_variant(None)[1].errno.as_deref(), Some("EOPNOTSUPP"));
    assert_eq!(
        s.steps[2].action,
        Action::Host(HostStep::HostSleep { ms: 10 })
    );
}

#[test]
fn unknown_field_points_at_the_key() {
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\n    valu = 1\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 7, col: 5 }, "{e}");
    assert!(
        e.to_string().starts_with(
            "scenarios/x.toml:7:5: step 1 (option_set): unknown field `valu`, expected one of"
        ),
        "{e}"
    );
}

#[test]
fn unknown_op_lists_the_valid_ones() {
    let e = parse(&format!("{HEAD}[[step]]\nop = \"attach_device\"\n")).unwrap_err();
    assert_eq!(e.pos, Pos { line: 5, col: 6 }, "{e}");
    assert!(
        e.message
            .contains("unknown op `attach_device`, expected one of `open_device`"),
        "{e}"
    );
    assert!(e.message.contains("`hotplug`"), "{e}");
}

#[test]
fn bad_value_points_at_the_value() {
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"wait_interrupts\"\ndevice = \"edu0\"\ncount = \"many\"\ntimeout_ms = 10\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 7, col: 9 }, "{e}");
    assert!(e.message.contains("`count`"), "{e}");
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\nvalue = \"0xZZ\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 7, col: 9 }, "{e}");
}

#[test]
fn missing_field_and_bad_expect_and_device() {
    let e = parse(&format!("{HEAD}[[step]]\nop = \"ioas_alloc\"\n")).unwrap_err();
    assert!(e.message.contains("missing field `ioas`"), "{e}");
    assert_eq!(e.pos.line, 4, "{e}");
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ erno = \"EINVAL\" }}\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 7, col: 12 }, "{e}");
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu9\"\n"
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("scenario x: step 1 (bind): device `edu9` is not in [machine].devices"),
        "{e}"
    );
    let e = parse("description = \"d\"\n[machine]\ndevices = [{ kind = \"edux\", id = \"a\" }]\n[[step]]\nop = \"sleep\"\nms = 1\n").unwrap_err();
    assert_eq!(e.pos, Pos { line: 3, col: 21 }, "{e}");
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ interrupts = 1 }}\n"
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("`interrupts` applies only to `wait_interrupts`"),
        "{e}"
    );
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ errno = \"ENOPE\" }}\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("unknown errno name"), "{e}");
}

/// Each malformed fixture yields exactly the error its first line
/// names (`# expect-error: LINE:COL: message prefix`).
#[test]
fn malformed_fixtures_give_one_positioned_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios");
    let files = crate::scenario::discover(&dir).unwrap();
    assert!(files.len() >= 5, "fixtures missing in {}", dir.display());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let want = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-error: "))
            .unwrap_or_else(|| panic!("{} lacks its expect-error line", f.display()));
        let shown = format!("fixtures/{}", f.file_name().unwrap().to_str().unwrap());
        let err = Scenario::parse(&f, &shown, &text).unwrap_err().to_string();
        let want = format!("{shown}:{want}");
        assert!(err.starts_with(&want), "\n got: {err}\nwant: {want}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn toml_syntax_errors_are_positioned() {
    let e = parse("description = \"d\"\n[[step]\nop = 1\n").unwrap_err();
    assert_eq!(e.pos.line, 2, "{e}");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    let e = parse("descriptio = \"d\"\n").unwrap_err();
    assert_eq!(e.pos, Pos { line: 1, col: 1 }, "{e}");
    assert!(
        e.message.contains("unknown top-level key `descriptio`"),
        "{e}"
    );
}

const TWO: &str = "description = \"d\"\n[machine]\ndevices = [{ kind = \"edu\", id = \"a\" }, { kind = \"edu\", id = \"b\" }]\n";

/// The steps as `op device` lines, to compare expansions at a glance.
fn ops(s: &Scenario) -> Vec<String> {
    s.steps
        .iter()
        .map(|st| match &st.action {
            Action::Agent(a) => format!("{} {}", a.op(), a.device().unwrap_or("-")),
            Action::Host(h) => h.op().to_string(),
        })
        .collect()
}

#[test]
fn machine_values_are_typed_and_their_errors_list_the_names() {
    let s = parse("description = \"d\"\n[machine]\nmachine = \"virt-9.0\"\nsmmu_stage = \"nested\"\n[[step]]\nop = \"dmesg\"\n").unwrap();
    assert_eq!(s.machine.machine, MachineType::Virt9_0);
    assert_eq!(s.machine.smmu_stage, Some(SmmuStageSpec::Nested));
    let e = parse("description = \"d\"\n[machine]\nsmmu_stage = \"3\"\n[[step]]\nop = \"dmesg\"\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenarios/x.toml:3:14: [machine]: `smmu_stage`: unknown SMMU stage \"3\", expected one of `nested`, `1`, `2`"
    );
    let e = parse("description = \"d\"\n[machine]\nmachine = \"q35\"\n[[step]]\nop = \"dmesg\"\n")
        .unwrap_err();
    assert_eq!(e.pos, Pos { line: 3, col: 11 }, "{e}");
    assert!(
        e.message
            .ends_with("unknown machine type \"q35\", expected one of `virt`, `virt-9.0`"),
        "{e}"
    );
    let e =
        parse("description = \"d\"\nrequires = [\"edu\", \"sw_msi\"]\n[[step]]\nop = \"dmesg\"\n")
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenarios/x.toml:2:20: requires: unknown requirement \"sw_msi\", expected one of `sw_msi_option`, `nest_parent`, `edu`, `e1000e`, `pcie-pci-bridge`"
    );
}

#[test]
fn prelude_expands_first_positioned_at_its_value() {
    let s = parse(&format!(
        "{TWO}prelude = \"attached\"\n[[step]]\nop = \"dmesg\"\n"
    ))
    .unwrap_err();
    // `prelude` after `[machine]` belongs to the table: TOML, not us.
    assert!(s.message.contains("unknown field `prelude`"), "{s}");
    let s = parse(&format!(
        "prelude = \"attached\"\n{TWO}[[step]]\nop = \"msi_enable\"\ndevice = \"b\"\n"
    ))
    .unwrap();
    assert_eq!(
        ops(&s),
        [
            "open_device a",
            "open_device b",
            "bind a",
            "bind b",
            "ioas_alloc -",
            "attach a",
            "attach b",
            "msi_enable b"
        ]
    );
    assert!(s.steps[0].bdf_from_placement && s.steps[1].bdf_from_placement);
    assert_eq!(s.steps[5].pos, Pos { line: 1, col: 11 });
    assert_eq!(
        s.steps[5].label(),
        "step 6 (attach, from prelude `attached`, step 6)"
    );
    assert_eq!(s.steps[7].index, 8);
    assert_eq!(s.steps[7].pos, Pos { line: 5, col: 1 });
}

#[test]
fn unknown_prelude_lists_the_preludes() {
    let e = parse(&format!(
        "prelude = \"atached\"\n{HEAD}[[step]]\nop = \"dmesg\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenarios/x.toml:1:11: prelude: unknown prelude \"atached\", expected one of `bound`, `attached`"
    );
}

#[test]
fn the_only_device_is_the_default_and_two_devices_need_a_name() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\n[[step]]\nop = \"wait_interrupts\"\ncount = 1\n"
    ))
    .unwrap();
    assert_eq!(ops(&s), ["bind edu0", "wait_interrupts edu0"]);
    assert_eq!(
        s.steps[1].action,
        Action::Agent(msi_protocol::Step::WaitInterrupts {
            device: "edu0".into(),
            vector: 0,
            count: 1,
            timeout_ms: 2000,
            at_least: false,
        })
    );
    let e = parse(&format!(
        "{TWO}[[step]]\nop = \"bind\"\ndevice = \"a\"\n[[step]]\nop = \"bind\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenarios/x.toml:7:1: step 2 (bind): `device` left out, but the scenario has 2 devices (`a`, `b`): name the device"
    );
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\n[[step]]\nop = \"hotplug\"\ndevice = {{ kind = \"edu\", id = \"edu1\" }}\n"
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("`device` left out, but the scenario hotplugs devices"),
        "{e}"
    );
}

#[test]
fn raise_and_wait_is_three_steps_with_the_expect_on_the_wait() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"raise_and_wait\"\nexpect = {{ interrupts = 1 }}\n[[step]]\nop = \"raise_and_wait\"\ncount = 2\ntimeout_ms = 300\n"
    ))
    .unwrap();
    assert_eq!(
        ops(&s),
        [
            "edu_raise edu0",
            "wait_interrupts edu0",
            "edu_ack edu0",
            "edu_raise edu0",
            "wait_interrupts edu0",
            "edu_ack edu0"
        ]
    );
    assert_eq!(s.steps[0].expect, None);
    assert_eq!(
        s.steps[1].expect.as_ref().unwrap().common.interrupts,
        Some(1)
    );
    assert_eq!(s.steps[1].expect_pos, Pos { line: 6, col: 1 });
    assert!(s
        .steps
        .iter()
        .all(|st| st.pos.line == 4 || st.pos.line == 7));
    assert!(matches!(
        &s.steps[4].action,
        Action::Agent(msi_protocol::Step::WaitInterrupts {
            count: 2,
            timeout_ms: 300,
            ..
        })
    ));
    assert_eq!(
        s.steps[2].label(),
        "step 3 (edu_ack, from `raise_and_wait` at step 1)"
    );
    // The wait's expectation rules still apply to the expanded step.
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"raise_and_wait\"\nexpect = {{ iova = 1 }}\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("step 2 (wait_interrupts, from `raise_and_wait` at step 1): expect: `iova` applies only to `ioas_map` steps"), "{e}");
}

#[test]
fn enable_msi_is_bus_master_then_msi_enable_with_the_expect() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"enable_msi\"\nexpect = {{ ok = true }}\n"
    ))
    .unwrap();
    assert_eq!(ops(&s), ["bus_master edu0", "msi_enable edu0"]);
    assert_eq!(s.steps[0].expect, None);
    assert_eq!(s.steps[1].expect.as_ref().unwrap().common.ok, Some(true));
}

#[test]
fn set_window_sets_start_then_size_of_its_device_and_its_expect_overrides() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"set_window\"\nstart = \"0x10000000\"\n"
    ))
    .unwrap();
    assert_eq!(ops(&s), ["option_set -", "option_set -"]);
    // The only device's window, addressed through the dialect at run time.
    assert_eq!(s.steps[0].sw_msi_device.as_deref(), Some("edu0"));
    assert_eq!(s.steps[1].sw_msi_device.as_deref(), Some("edu0"));
    let e = s.steps[1].expect.as_ref().unwrap();
    assert_eq!(e.for_variant(Some("rfcv2"))[1].ok, Some(true));
    assert_eq!(e.for_variant(None)[1].errno.as_deref(), Some("EOPNOTSUPP"));
    // Its own `expect` replaces the default's tables it names, on both steps.
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"set_window\"\nstart = 1\nexpect = {{ dialect.v2 = {{ errno = \"EBUSY\" }} }}\n"
    ))
    .unwrap();
    for step in &s.steps {
        let e = step.expect.as_ref().unwrap();
        assert_eq!(e.for_variant(Some("v2"))[1].errno.as_deref(), Some("EBUSY"));
        assert_eq!(e.for_variant(Some("rfcv2"))[1].ok, Some(true));
        assert_eq!(e.for_variant(None)[1].errno.as_deref(), Some("EOPNOTSUPP"));
    }
}

#[test]
fn option_steps_without_object_address_a_device_window_and_with_object_are_raw() {
    let two = "description = \"d\"\n[machine]\ndevices = [ { kind = \"edu\", id = \"a\" }, { kind = \"edu\", id = \"b\" } ]\n";
    let s = parse(&format!(
        "{two}[[step]]\nop = \"option_get\"\noption = \"sw_msi_start\"\ndevice = \"b\"\n\
         [[step]]\nop = \"option_get\"\noption = \"sw_msi_start\"\nobject = 0\n"
    ))
    .unwrap();
    assert_eq!(s.steps[0].sw_msi_device.as_deref(), Some("b"));
    assert_eq!(s.steps[1].sw_msi_device, None);
    let e = parse(&format!(
        "{two}[[step]]\nop = \"option_get\"\noption = \"sw_msi_start\"\nobject = 0\ndevice = \"a\"\n"
    ))
    .unwrap_err();
    assert!(
        e.message.contains("`device` and `object` both given"),
        "{e}"
    );
    let e = parse(&format!(
        "{two}[[step]]\nop = \"option_set\"\noption = \"huge_pages\"\nvalue = 1\ndevice = \"a\"\n"
    ))
    .unwrap_err();
    assert!(
        e.message.contains("applies only to the SW_MSI options"),
        "{e}"
    );
}

#[test]
fn set_window_rejects_unknown_keys() {
    let e = parse(&format!(
        "{HEAD}[[step]]\nop = \"set_window\"\nstart = 1\nsise = 1\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 7, col: 1 }, "{e}");
    assert!(
        e.message
            .starts_with("step 1 (set_window): unknown field `sise`, expected"),
        "{e}"
    );
}

#[test]
fn unknown_op_lists_agent_host_and_compound_ops() {
    let e = parse(&format!("{HEAD}[[step]]\nop = \"raise\"\n")).unwrap_err();
    let listed = e.message.split("expected one of ").nth(1).unwrap();
    assert_eq!(listed, model::list(&all_ops()), "{e}");
    for op in [
        "open_device",
        "sleep",
        "hotplug",
        "kselftest",
        "raise_and_wait",
        "set_window",
    ] {
        assert!(listed.contains(&format!("`{op}`")), "{e}");
    }
}

const REPEAT: &str = "[[step]]\nrepeat = 3\nsteps = [\n  { op = \"option_set\", option = \"sw_msi_start\", value = \"{0x10000000 + i * 0x100000}\" },\n  { op = \"ioas_alloc\", ioas = \"ioas{i}\" },\n  { op = \"raise_and_wait\", count = \"{i + 1}\" },\n]\n";

#[test]
fn repeat_expands_its_body_with_the_index() {
    let s = parse(&format!(
        "{HEAD}[[step]]\nop = \"bind\"\n{REPEAT}[[step]]\nop = \"dmesg\"\n"
    ))
    .unwrap();
    assert_eq!(s.steps.len(), 1 + 3 * 5 + 1);
    let Action::Agent(msi_protocol::Step::OptionSet { value, .. }) = &s.steps[11].action else {
        panic!("{:?}", s.steps[11]);
    };
    assert_eq!(value.get(), 0x1020_0000);
    assert_eq!(
        s.steps[12].action,
        Action::Agent(msi_protocol::Step::IoasAlloc {
            ioas: "ioas2".into()
        })
    );
    assert!(matches!(
        &s.steps[14].action,
        Action::Agent(msi_protocol::Step::WaitInterrupts { count: 3, .. })
    ));
    // Each expanded step points into the body, and says which iteration.
    assert_eq!(s.steps[12].pos, Pos { line: 10, col: 3 });
    assert_eq!(s.steps[12].index, 13);
    assert_eq!(
        s.steps[12].label(),
        "step 13 (ioas_alloc, from repeat i = 2 of 0..3, body step 2)"
    );
    assert_eq!(
        s.steps[14].label(),
        "step 15 (wait_interrupts, from repeat i = 2 of 0..3, body step 3, `raise_and_wait`)"
    );
    assert_eq!(s.steps[16].index, 17);
}

#[test]
fn repeat_errors_point_into_the_construct() {
    for (count, col) in [
        ("0", 10),
        ("-1", 10),
        ("1001", 10),
        ("\"3\"", 10),
        ("2.0", 10),
    ] {
        let e = parse(&format!(
            "{HEAD}[[step]]\nrepeat = {count}\nsteps = [{{ op = \"dmesg\" }}]\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("scenarios/x.toml:5:{col}: step 1 (repeat): `repeat` must be an integer in 1..=1000 (the number of iterations)")
        );
    }
    let e = parse(&format!("{HEAD}[[step]]\nrepeat = 2\n")).unwrap_err();
    assert!(e.message.contains("missing `steps`"), "{e}");
    let e = parse(&format!("{HEAD}[[step]]\nrepeat = 2\nstep = []\n")).unwrap_err();
    assert_eq!(e.pos, Pos { line: 6, col: 1 }, "{e}");
    assert!(e.message.contains("unknown key `step`"), "{e}");
    let e = parse(&format!(
        "{HEAD}[[step]]\nrepeat = 2\nsteps = [{{ repeat = 2, steps = [] }}]\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 6, col: 12 }, "{e}");
    assert!(e.message.contains("cannot hold another repeat"), "{e}");
    // A bad value in the second iteration names it and points at the value.
    let e = parse(&format!(
        "{HEAD}[[step]]\nrepeat = 2\nsteps = [\n  {{ op = \"sleep\", ms = \"{{5 - i * 5 - 1}}\" }},\n]\n"
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scenarios/x.toml:7:24: step 2 (repeat i = 1 of 0..2, body step 1): template \"{5 - i * 5 - 1}\" at i = 1: the difference is negative"
    );
    let e = parse(&format!(
        "{HEAD}[[step]]\nrepeat = 2\nsteps = [\n  {{ op = \"attach\", pt = 1 }},\n  {{ op = \"atach\" }},\n]\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 8, col: 10 }, "{e}");
    assert!(
        e.message.starts_with(
            "step 2 (atach, from repeat i = 0 of 0..2, body step 2): unknown op `atach`"
        ),
        "{e}"
    );
    let e = parse(&format!(
        "{TWO}[[step]]\nrepeat = 1\nsteps = [{{ op = \"bind\" }}]\n"
    ))
    .unwrap_err();
    assert_eq!(e.pos, Pos { line: 6, col: 10 }, "{e}");
    assert!(e.message.contains("`device` left out"), "{e}");
}

#[test]
fn an_unplugged_device_is_gone_and_may_be_plugged_again() {
    let plug = "[[step]]\nop = \"hotplug\"\ndevice = { kind = \"edu\", id = \"edu1\" }\n";
    let step = |s: &str| format!("[[step]]\n{s}\n");
    let ok = |body: &str| parse(&format!("{HEAD}{body}")).map(|s| s.steps.len());
    // Unplug, re-plug, use.
    let body = format!(
        "{plug}{}{plug}{}",
        step("op = \"unplug\"\ndevice = \"edu1\""),
        step("op = \"bind\"\ndevice = \"edu1\"")
    );
    assert_eq!(ok(&body).unwrap(), 4);
    // A started unplug leaves the device usable until wait_unplugged.
    let body = format!(
        "{plug}{}{}{}",
        step("op = \"unplug\"\ndevice = \"edu1\"\nwait = false"),
        step("op = \"close_device\"\ndevice = \"edu1\""),
        step("op = \"wait_unplugged\"\ndevice = \"edu1\"")
    );
    assert_eq!(ok(&body).unwrap(), 4);
    let gone = format!(
        "{plug}{}{}",
        step("op = \"unplug\"\ndevice = \"edu1\""),
        step("op = \"bind\"\ndevice = \"edu1\"")
    );
    let e = ok(&gone).unwrap_err();
    assert!(
        e.message
            .contains("device `edu1` is not in [machine].devices nor hotplugged before this step"),
        "{e}"
    );
    let e = ok(&format!(
        "{plug}{}",
        step("op = \"wait_unplugged\"\ndevice = \"edu1\"")
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("no unplug of `edu1` with `wait = false` before this step"),
        "{e}"
    );
    let twice = format!(
        "{plug}{}{}",
        step("op = \"unplug\"\ndevice = \"edu1\"\nwait = false"),
        step("op = \"unplug\"\ndevice = \"edu1\"")
    );
    let e = ok(&twice).unwrap_err();
    assert!(
        e.message.contains("`edu1` is being unplugged already"),
        "{e}"
    );
}
