//! Wire-format tests: every step and result survives JSON and TOML, the
//! exact JSON lines match the documented protocol, and the YAML form that
//! snapshots show stays readable.

use serde::Deserialize;

use crate::*;

/// One of every step, with non-default values where a field has a default.
fn all_steps() -> Vec<Step> {
    let dev = || "edu0".to_owned();
    vec![
        Step::OpenDevice {
            device: dev(),
            bdf: "0000:00:02.0".into(),
        },
        Step::Bind { device: dev() },
        Step::IoasAlloc {
            ioas: "ioas0".into(),
        },
        Step::HwptAlloc {
            hwpt: "hwpt0".into(),
            device: dev(),
            pt: "ioas0".into(),
            flags: vec![HwptFlag::NestParent, HwptFlag::DirtyTracking],
            vste: Some([HexU64(0x9), HexU64(0)]),
        },
        Step::ViommuAlloc {
            viommu: "viommu0".into(),
            device: dev(),
            hwpt: "hwpt0".into(),
        },
        Step::Attach {
            device: dev(),
            pt: "hwpt0".into(),
        },
        Step::Detach { device: dev() },
        Step::Replace {
            device: dev(),
            pt: ObjectRef::Id(77),
        },
        Step::OptionSet {
            option: OptionId::SwMsiStart,
            object: ObjectRef::Id(0),
            value: HexU64(0x1000_0000),
        },
        Step::OptionGet {
            option: OptionId::Raw(99),
            object: "ioas0".into(),
        },
        Step::OptionOp {
            option: OptionId::SwMsiSize,
            object: ObjectRef::Id(0),
            code: 2,
            value: HexU64(1),
        },
        Step::IoasMap {
            ioas: "ioas0".into(),
            iova: Some(HexU64(0x1000_0000)),
            length: HexU64(0x1000),
            readable: true,
            writable: false,
        },
        Step::IoasMap {
            ioas: "ioas0".into(),
            iova: None,
            length: HexU64(0x20_0000),
            readable: false,
            writable: true,
        },
        Step::IoasUnmap {
            ioas: "ioas0".into(),
            iova: HexU64(0),
            length: HexU64(u64::MAX),
        },
        Step::IovaRanges {
            ioas: "ioas0".into(),
        },
        Step::Destroy {
            object: "hwpt0".into(),
        },
        Step::BusMaster {
            device: dev(),
            enable: false,
        },
        Step::MsiEnable {
            device: dev(),
            vectors: 4,
            irq: IrqKind::Msix,
        },
        Step::MsiDisable { device: dev() },
        Step::EduRaise {
            device: dev(),
            value: 0x10,
        },
        Step::EduAck {
            device: dev(),
            value: 0x10,
        },
        Step::WaitInterrupts {
            device: dev(),
            vector: 1,
            count: 3,
            timeout_ms: 500,
            at_least: true,
        },
        Step::EduDma {
            device: dev(),
            direction: DmaDirection::FromDevice,
            iova: HexU64(0x1000_0000),
            length: HexU64(4096),
            timeout_ms: 100,
        },
        Step::E1000eRaise {
            device: dev(),
            vector: 2,
        },
        Step::MsiConfig { device: dev() },
        Step::MsixTable { device: dev() },
        Step::ReservedRegions { device: dev() },
        Step::ProcInterrupts { device: dev() },
        Step::Dmesg {},
        Step::CloseDevice { device: dev() },
        Step::Sleep { ms: 10 },
        Step::Concurrent {
            iterations: 100,
            duration_ms: Some(50),
            branches: vec![
                crate::Branch {
                    name: "set".into(),
                    iterations: Some(1000),
                    steps: vec![Step::OptionSet {
                        option: OptionId::SwMsiStart,
                        object: ObjectRef::Id(0),
                        value: HexU64(0x1000_0000),
                    }],
                },
                crate::Branch {
                    name: "attach".into(),
                    iterations: None,
                    steps: vec![Step::Detach { device: dev() }],
                },
            ],
        },
    ]
}

#[test]
fn sample_covers_every_op() {
    let mut ops: Vec<&str> = all_steps().iter().map(Step::op).collect();
    ops.sort_unstable();
    ops.dedup();
    // `Step::op` is an exhaustive match, so a new variant shows up there;
    // bump this count and add it to `all_steps` together.
    assert_eq!(ops.len(), 31, "{ops:?}");
}

#[test]
fn op_list_is_every_variant_in_order() {
    let mut ops: Vec<&str> = all_steps().iter().map(Step::op).collect();
    ops.dedup();
    assert_eq!(ops, Step::OPS);
    for step in all_steps() {
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(json["op"], step.op(), "{json}");
    }
    // serde's own list of variants, as its error for an unknown op gives it.
    let err = serde_json::from_str::<Step>(r#"{"op":"no_such_op"}"#)
        .unwrap_err()
        .to_string();
    let listed: Vec<&str> = err
        .split("expected one of")
        .nth(1)
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(listed, Step::OPS, "{err}");
}

#[test]
fn device_accessor_and_device_ops_agree_with_the_wire_format() {
    for step in all_steps() {
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(
            json.get("device").and_then(|d| d.as_str()),
            step.device(),
            "{json}"
        );
        assert_eq!(
            Step::DEVICE_OPS.contains(&step.op()),
            step.device().is_some(),
            "{json}"
        );
    }
}

#[test]
fn wait_interrupts_timeout_defaults_to_2000_ms() {
    let step: Step =
        serde_json::from_str(r#"{"op":"wait_interrupts","device":"edu0","count":1}"#).unwrap();
    assert!(
        matches!(
            step,
            Step::WaitInterrupts {
                timeout_ms: 2000,
                ..
            }
        ),
        "{step:?}"
    );
}

#[test]
fn every_step_round_trips_through_json() {
    for step in all_steps() {
        let json = serde_json::to_string(&step).unwrap();
        let back: Step = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(back, step, "{json}");
        // The op tag leads, so a line is readable at a glance.
        assert!(
            json.starts_with(&format!("{{\"op\":\"{}\"", step.op())),
            "{json}"
        );
    }
}

#[test]
fn every_step_round_trips_through_toml() {
    for step in all_steps() {
        let text = toml::to_string(&step).unwrap_or_else(|e| panic!("{step:?}: {e}"));
        let back: Step = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back, step, "{text}");
    }
}

#[test]
fn every_request_and_result_round_trips_through_json() {
    let mut requests = vec![
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::Shutdown {},
    ];
    requests.extend(all_steps().into_iter().map(Request::Step));
    for request in requests {
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<Request>(&json).unwrap(),
            request,
            "{json}"
        );
    }
    let mut responses = vec![
        Response::Hello {
            version: 1,
            kernel_release: "6.18.15".into(),
            agent: "0.1.0".into(),
        },
        Response::Shutdown {},
        Response::Error {
            message: "bad".into(),
        },
    ];
    responses.extend(sample_results().into_iter().map(Response::Step));
    for response in responses {
        let json = serde_json::to_string(&response).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&json).unwrap(),
            response,
            "{json}"
        );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    step: Vec<Step>,
}

#[test]
fn scenario_toml_deserializes_with_defaults() {
    let scenario: Scenario = toml::from_str(
        r#"
        [[step]]
        op = "option_set"
        option = "sw_msi_start"
        value = "0x10000000"

        [[step]]
        op = "option_set"
        option = 3
        value = 1

        [[step]]
        op = "ioas_map"
        ioas = "ioas0"
        iova = 0x1000_0000
        length = "0x1000"

        [[step]]
        op = "hwpt_alloc"
        hwpt = "hwpt0"
        device = "edu0"
        pt = "ioas0"

        [[step]]
        op = "wait_interrupts"
        device = "edu0"
        count = 1
        timeout_ms = 1000

        [[step]]
        op = "option_get"
        option = "huge_pages"
        object = "ioas0"

        [[step]]
        op = "dmesg"
        "#,
    )
    .unwrap();
    assert_eq!(
        scenario.step,
        vec![
            Step::OptionSet {
                option: OptionId::SwMsiStart,
                object: ObjectRef::Id(0),
                value: HexU64(0x1000_0000)
            },
            Step::OptionSet {
                option: OptionId::SwMsiSize,
                object: ObjectRef::Id(0),
                value: HexU64(1)
            },
            Step::IoasMap {
                ioas: "ioas0".into(),
                iova: Some(HexU64(0x1000_0000)),
                length: HexU64(0x1000),
                readable: true,
                writable: true,
            },
            Step::HwptAlloc {
                hwpt: "hwpt0".into(),
                device: "edu0".into(),
                pt: "ioas0".into(),
                flags: vec![],
                vste: None,
            },
            Step::WaitInterrupts {
                device: "edu0".into(),
                vector: 0,
                count: 1,
                timeout_ms: 1000,
                at_least: false,
            },
            Step::OptionGet {
                option: OptionId::HugePages,
                object: "ioas0".into()
            },
            Step::Dmesg {},
        ]
    );
}

fn step_error(toml_text: &str) -> String {
    toml::from_str::<Scenario>(toml_text)
        .unwrap_err()
        .to_string()
}

#[test]
fn scenario_typos_are_rejected_with_the_offending_name() {
    let unknown_field = step_error("[[step]]\nop = \"bind\"\ndevice = \"edu0\"\ndevcie = \"x\"\n");
    assert!(
        unknown_field.contains("unknown field `devcie`"),
        "{unknown_field}"
    );
    let unknown_op = step_error("[[step]]\nop = \"bnid\"\ndevice = \"edu0\"\n");
    assert!(
        unknown_op.contains("unknown variant `bnid`"),
        "{unknown_op}"
    );
    let missing = step_error("[[step]]\nop = \"bind\"\n");
    assert!(missing.contains("missing field `device`"), "{missing}");
    let option = step_error("[[step]]\nop = \"option_get\"\noption = \"sw_msi_begin\"\n");
    assert!(
        option.contains("unknown option \"sw_msi_begin\""),
        "{option}"
    );
    let value = step_error("[[step]]\nop = \"sleep\"\nms = -1\n");
    assert!(value.contains("invalid value"), "{value}");
    let hex =
        step_error("[[step]]\nop = \"ioas_unmap\"\nioas = \"a\"\niova = \"0x1g\"\nlength = 1\n");
    assert!(hex.contains("not a hex digit"), "{hex}");
}

#[test]
fn option_ids_read_names_and_numbers() {
    let ids: Vec<OptionId> = serde_json::from_str(r#"["sw_msi_size", 2, 0, 1, 99]"#).unwrap();
    assert_eq!(
        ids,
        [
            OptionId::SwMsiSize,
            OptionId::SwMsiStart,
            OptionId::RlimitMode,
            OptionId::HugePages,
            OptionId::Raw(99)
        ]
    );
    assert_eq!(
        serde_json::to_string(&ids).unwrap(),
        r#"["sw_msi_size","sw_msi_start","rlimit_mode","huge_pages",99]"#
    );
    assert_eq!(
        ids.iter().map(|o| o.id()).collect::<Vec<_>>(),
        [3, 2, 0, 1, 99]
    );
}

#[test]
fn wire_lines_match_the_documented_protocol() {
    let line = |r: &Request| serde_json::to_string(r).unwrap();
    assert_eq!(
        line(&Request::Hello { version: 1 }),
        r#"{"hello":{"version":1}}"#
    );
    assert_eq!(line(&Request::Shutdown {}), r#"{"shutdown":{}}"#);
    assert_eq!(
        line(&Request::Step(Step::OptionSet {
            option: OptionId::SwMsiStart,
            object: ObjectRef::default(),
            value: HexU64(0x1000_0000)
        })),
        r#"{"step":{"op":"option_set","option":"sw_msi_start","object":0,"value":"0x10000000"}}"#
    );
    let reply = |r: &Response| serde_json::to_string(r).unwrap();
    assert_eq!(
        reply(&Response::Step(StepResult::Ok(StepValue::Done))),
        r#"{"step":{"ok":"done"}}"#
    );
    assert_eq!(
        reply(&Response::Step(StepResult::errno(95, "IOMMU_OPTION"))),
        r#"{"step":{"err":{"errno":95,"name":"EOPNOTSUPP","call":"IOMMU_OPTION"}}}"#
    );
    // The lines of the crate docs' example session parse as documented.
    let docs = include_str!("lib.rs");
    let mut seen = 0;
    for doc_line in docs.lines() {
        if let Some(json) = doc_line.trim_start().strip_prefix("//! → ") {
            serde_json::from_str::<Request>(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            seen += 1;
        } else if let Some(json) = doc_line.trim_start().strip_prefix("//! ← ") {
            serde_json::from_str::<Response>(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 20,
        "example session not found in the crate docs ({seen} lines)"
    );
}

#[test]
fn errno_results_carry_kernel_names() {
    assert_eq!(
        StepResult::errno(95, "IOMMU_OPTION"),
        StepResult::Err(ErrnoError {
            errno: 95,
            name: "EOPNOTSUPP".into(),
            call: "IOMMU_OPTION".into()
        })
    );
    let StepResult::Err(unknown) = StepResult::errno(4095, "ioctl") else {
        unreachable!()
    };
    assert_eq!(unknown.name, "E4095");
}

fn sample_results() -> Vec<StepResult> {
    vec![
        StepResult::Ok(StepValue::Done),
        StepResult::Ok(StepValue::Cdev("/dev/vfio/devices/vfio0".into())),
        StepResult::Ok(StepValue::DevId(1)),
        StepResult::Ok(StepValue::IoasId(2)),
        StepResult::Ok(StepValue::HwptId(4)),
        StepResult::Ok(StepValue::ViommuId(5)),
        StepResult::Ok(StepValue::PtId(3)),
        StepResult::Ok(StepValue::Value(HexU64(u64::MAX))),
        StepResult::Ok(StepValue::Iova(HexU64(0x1000_0000))),
        StepResult::Ok(StepValue::Unmapped(HexU64(0x1000))),
        StepResult::Ok(StepValue::IovaRanges(vec![
            IovaRange {
                start: HexU64(0),
                last: HexU64(0x7ff_ffff),
            },
            IovaRange {
                start: HexU64(0x810_0000),
                last: HexU64(0xffff_ffff_ffff),
            },
        ])),
        StepResult::Ok(StepValue::Command(HexU64(0x106))),
        StepResult::Ok(StepValue::Vectors(1)),
        StepResult::Ok(StepValue::Interrupts(1)),
        StepResult::Ok(StepValue::Dma(DmaReport {
            completed: true,
            clamped_iova: Some(HexU64(0x40_0000)),
            data_matches: Some(false),
        })),
        StepResult::Ok(StepValue::Dma(DmaReport {
            completed: false,
            clamped_iova: None,
            data_matches: None,
        })),
        StepResult::Ok(StepValue::MsiConfig(MsiConfig {
            enabled: true,
            address: HexU64(0x800_0040),
            data: HexU64(0),
            vectors: 1,
            max_vectors: 1,
        })),
        StepResult::Ok(StepValue::MsixTable(MsixTable {
            enabled: true,
            function_masked: false,
            table_size: 2,
            bar: 3,
            offset: HexU64(0),
            entries: vec![
                MsixEntry {
                    vector: 0,
                    address: HexU64(0x800_0040),
                    data: HexU64(0),
                    masked: false,
                },
                MsixEntry {
                    vector: 1,
                    address: HexU64(0x800_0040),
                    data: HexU64(1),
                    masked: true,
                },
            ],
        })),
        StepResult::Ok(StepValue::ReservedRegions(ReservedRegions {
            group: 0,
            group_type: "DMA".into(),
            regions: vec!["0x0000000008000000 0x00000000080fffff msi".into()],
        })),
        StepResult::Ok(StepValue::ProcInterrupts(vec![IrqLine {
            irq: "20".into(),
            count: 1,
            description: "ITS-PCI-MSI-0000:00:02.0 0 Edge vfio-msi[0](0000:00:02.0)".into(),
        }])),
        StepResult::Ok(StepValue::Dmesg(vec![
            "[    1.234567] vfio-pci 0000:00:02.0: enabling device".into(),
        ])),
        StepResult::errno(95, "IOMMU_OPTION"),
        StepResult::agent_error("unknown device \"edu1\" (open_device it first)"),
    ]
}

#[test]
fn results_read_well_as_yaml() {
    insta::assert_yaml_snapshot!(sample_results());
}
