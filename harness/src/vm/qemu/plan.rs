//! The plan for one boot: [`plan`] checks a [`VmConfig`] against
//! [`QemuCaps`], picks the machine for the SMMU stage, and lays the PCI
//! topology out, so that every device's guest BDF and requester id are known
//! before QEMU starts.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::argv::{path_arg, NO_OPTION_ROM};
use super::{Device, Iommu, Machine, QemuCaps, SmmuStage, VmConfig};

/// A PCI address in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    /// The 16-bit requester id of this function itself.
    pub fn rid(self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.dev) << 3) | u16::from(self.func)
    }
}

impl fmt::Display for Bdf {
    /// As Linux names it in sysfs: `0000:00:02.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0000:{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// Where a device ends up, worked out before boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedDevice {
    pub id: String,
    /// QEMU driver name (`edu`, `e1000e`, `virtio-net-pci`, ...).
    pub driver: String,
    pub bdf: Bdf,
    /// What the SMMU sees as stream id and the ITS as DeviceID: the BDF's
    /// own id, or the bridge's alias `(secondary bus, 0)` behind a
    /// PCIe-to-PCI bridge.
    pub requester_id: u16,
    /// True for devices the harness adds for itself (the SSH NIC, bridges,
    /// hotplug ports).
    pub infrastructure: bool,
    /// For bridges and root ports: the bus number behind them.
    pub secondary_bus: Option<u8>,
}

impl PlacedDevice {
    /// A device under test that DMAs with its own requester id.
    fn endpoint(id: &str, driver: &str, bdf: Bdf) -> PlacedDevice {
        PlacedDevice {
            id: id.to_string(),
            driver: driver.into(),
            bdf,
            requester_id: bdf.rid(),
            infrastructure: false,
            secondary_bus: None,
        }
    }
}

/// Why this QEMU cannot run a configuration: the scenario is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unsupported {
    pub reason: String,
}

fn unsupported(reason: impl Into<String>) -> Unsupported {
    Unsupported {
        reason: reason.into(),
    }
}

/// The checked, laid-out command line for one boot.
#[derive(Debug, Clone)]
pub struct QemuPlan {
    pub qemu: PathBuf,
    pub machine: String,
    pub devices: Vec<PlacedDevice>,
    pub(crate) args: Vec<String>,
    pub(super) trace_events: Vec<String>,
}

impl QemuPlan {
    /// The planned arguments and trace events, which the runtime ones
    /// (sockets, ports, files) do not change: two starts with the same
    /// identity are the same machine to QEMU migration.
    pub fn identity(&self) -> String {
        let mut s = self.args.join("\u{0}");
        s.push_str("\u{0}trace:");
        s.push_str(&self.trace_events.join(","));
        s
    }
}

/// Slot of the SSH NIC on the root bus.
pub(super) const NIC_SLOT: u8 = 1;
/// First root-bus slot for devices under test.
const FIRST_DEVICE_SLOT: u8 = 2;
/// Slots on a bridge's secondary bus for an edu pair.
const BRIDGE_CHILD_SLOTS: [u8; 2] = [1, 2];

/// Checks `cfg` against `caps` and lays the PCI topology out.
///
/// Bus numbers: with a direct kernel boot there is no firmware, so Linux
/// numbers buses itself, depth first in slot order; every bridge here sits on
/// the root bus and has nothing below it but endpoints, so the n-th bridge by
/// slot gets bus n.
pub fn plan(cfg: &VmConfig, caps: &QemuCaps) -> Result<QemuPlan, PlanError> {
    let (machine, stage_global) = resolve_machine(cfg, caps)?;
    for d in &cfg.devices {
        for driver in drivers_of(d) {
            if !caps.devices.contains(driver) {
                return Err(unsupported(format!(
                    "{} has no `{driver}` device (QEMU {})",
                    caps.path.display(),
                    caps.version_line
                ))
                .into());
            }
        }
    }
    if cfg.hotplug_ports > 0 && !caps.devices.contains("pcie-root-port") {
        return Err(unsupported("this QEMU has no pcie-root-port for hotplug").into());
    }
    if cfg.ssh.is_some() && !caps.devices.contains("virtio-net-pci") {
        return Err(unsupported("this QEMU has no virtio-net-pci for SSH").into());
    }
    for pattern in &cfg.trace_events {
        check_id_like("trace event", pattern, true)?;
        if !caps.trace_events.iter().any(|e| glob_match(pattern, e)) {
            return Err(PlanError::Invalid(format!(
                "trace event `{pattern}` matches no event of QEMU {} (see `{} -trace help`)",
                caps.version_line,
                caps.path.display()
            )));
        }
    }
    if cfg.smp == 0 || cfg.memory_mb < 64 {
        return Err(PlanError::Invalid(format!(
            "smp must be at least 1 and memory at least 64 MB (got smp={} memory={} MB)",
            cfg.smp, cfg.memory_mb
        )));
    }

    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    let iommu = match cfg.iommu {
        Iommu::None => "none",
        Iommu::SmmuV3(_) => "smmuv3",
    };
    push(&[
        "-machine",
        &format!("{machine},gic-version=3,its=on,iommu={iommu}"),
    ]);
    if let Some(s) = stage_global {
        push(&["-global", &format!("arm-smmuv3.stage={s}")]);
    }
    push(&["-cpu", &cfg.cpu]);
    push(&["-smp", &cfg.smp.to_string()]);
    push(&["-m", &format!("{}M", cfg.memory_mb)]);
    push(&["-accel", "tcg"]);

    // Slots on the root bus, in order; bridges get bus numbers in that order.
    let mut placed = Vec::new();
    let mut device_args = Vec::new();
    let mut next_bus: u8 = 1;
    let mut slot = FIRST_DEVICE_SLOT;
    let mut take_slot = || -> Result<u8, PlanError> {
        let s = slot;
        if s > 31 {
            return Err(PlanError::Invalid(
                "more than 30 PCI devices on the root bus".into(),
            ));
        }
        slot += 1;
        Ok(s)
    };
    let mut ids = BTreeSet::new();
    let mut claim = |id: &str| -> Result<(), PlanError> {
        check_id_like("device id", id, false)?;
        if id.starts_with("hp") && id[2..].bytes().all(|b| b.is_ascii_digit()) || id == "net0" {
            return Err(PlanError::Invalid(format!(
                "device id `{id}` is reserved by the harness"
            )));
        }
        if !ids.insert(id.to_string()) {
            return Err(PlanError::Invalid(format!(
                "device id `{id}` is used twice"
            )));
        }
        Ok(())
    };
    if cfg.ssh.is_some() {
        placed.push(PlacedDevice {
            id: "net0".into(),
            driver: "virtio-net-pci".into(),
            bdf: Bdf {
                bus: 0,
                dev: NIC_SLOT,
                func: 0,
            },
            requester_id: Bdf {
                bus: 0,
                dev: NIC_SLOT,
                func: 0,
            }
            .rid(),
            infrastructure: true,
            secondary_bus: None,
        });
    }
    for d in &cfg.devices {
        match d {
            Device::Edu { id, dma_mask } => {
                claim(id)?;
                let s = take_slot()?;
                let bdf = Bdf {
                    bus: 0,
                    dev: s,
                    func: 0,
                };
                device_args.push(edu_arg(id, "pcie.0", s, *dma_mask));
                placed.push(PlacedDevice::endpoint(id, "edu", bdf));
            }
            Device::E1000e { id } => {
                claim(id)?;
                let s = take_slot()?;
                let bdf = Bdf {
                    bus: 0,
                    dev: s,
                    func: 0,
                };
                device_args.push(format!(
                    "e1000e,id={id},bus=pcie.0,addr={s:#x},{NO_OPTION_ROM}"
                ));
                placed.push(PlacedDevice::endpoint(id, "e1000e", bdf));
            }
            Device::EduPairMultifunction {
                ids: pair,
                dma_mask,
            } => {
                let s = take_slot()?;
                for (func, id) in pair.iter().enumerate() {
                    claim(id)?;
                    let func = func as u8;
                    let mut a = edu_arg(id, "pcie.0", s, *dma_mask);
                    a = a.replacen(&format!("addr={s:#x}"), &format!("addr={s:#x}.{func}"), 1);
                    if func == 0 {
                        a.push_str(",multifunction=on");
                    }
                    device_args.push(a);
                    let bdf = Bdf {
                        bus: 0,
                        dev: s,
                        func,
                    };
                    placed.push(PlacedDevice::endpoint(id, "edu", bdf));
                }
            }
            Device::EduPairBehindBridge {
                bridge_id,
                ids: pair,
                dma_mask,
            } => {
                claim(bridge_id)?;
                let s = take_slot()?;
                let bus = next_bus;
                next_bus += 1;
                device_args.push(format!(
                    "pcie-pci-bridge,id={bridge_id},bus=pcie.0,addr={s:#x}"
                ));
                let bridge_bdf = Bdf {
                    bus: 0,
                    dev: s,
                    func: 0,
                };
                placed.push(PlacedDevice {
                    id: bridge_id.clone(),
                    driver: "pcie-pci-bridge".into(),
                    bdf: bridge_bdf,
                    requester_id: bridge_bdf.rid(),
                    infrastructure: true,
                    secondary_bus: Some(bus),
                });
                // A PCIe-to-PCI bridge takes ownership of the transactions
                // it forwards: requester id (secondary bus, devfn 0).
                let alias = Bdf {
                    bus,
                    dev: 0,
                    func: 0,
                }
                .rid();
                for (id, child_slot) in pair.iter().zip(BRIDGE_CHILD_SLOTS) {
                    claim(id)?;
                    device_args.push(edu_arg(id, bridge_id, child_slot, *dma_mask));
                    placed.push(PlacedDevice {
                        id: id.clone(),
                        driver: "edu".into(),
                        bdf: Bdf {
                            bus,
                            dev: child_slot,
                            func: 0,
                        },
                        requester_id: alias,
                        infrastructure: false,
                        secondary_bus: None,
                    });
                }
            }
        }
    }
    for n in 0..cfg.hotplug_ports {
        let s = take_slot()?;
        let id = format!("hp{n}");
        // chassis/slot only need to be unique per port.
        device_args.push(format!(
            "pcie-root-port,id={id},bus=pcie.0,addr={s:#x},chassis={},slot={}",
            n + 1,
            n + 1
        ));
        placed.push(PlacedDevice {
            id,
            driver: "pcie-root-port".into(),
            bdf: Bdf {
                bus: 0,
                dev: s,
                func: 0,
            },
            requester_id: Bdf {
                bus: 0,
                dev: s,
                func: 0,
            }
            .rid(),
            infrastructure: true,
            secondary_bus: Some(next_bus),
        });
        next_bus += 1;
    }
    for a in device_args {
        push(&["-device", &a]);
    }

    let utf8 = |p: &Path| path_arg(p).map_err(|e| PlanError::Invalid(e.to_string()));
    push(&["-kernel", &utf8(&cfg.kernel)?]);
    push(&["-initrd", &utf8(&cfg.initrd)?]);
    push(&["-append", &cfg.append]);
    // The console is QEMU's stdout; nothing else may write there.
    push(&[
        "-display",
        "none",
        "-monitor",
        "none",
        "-parallel",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]);
    if cfg.start_paused {
        push(&["-S"]);
    }
    let mut trace_events = cfg.trace_events.clone();
    if cfg.iommu != Iommu::None
        && !trace_events
            .iter()
            .any(|p| glob_match(p, "smmuv3_record_event"))
    {
        // Gives translation faults (below) their sid.
        trace_events.push("smmuv3_record_event".into());
    }
    // Guest errors go to the same log file as the traces: that is where the
    // SMMU says which IOVA faulted (its trace event only names the sid).
    push(&["-msg", "timestamp=on", "-d", "guest_errors"]);
    Ok(QemuPlan {
        qemu: caps.path.clone(),
        machine,
        devices: placed,
        args,
        trace_events,
    })
}

/// Why [`plan`] refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// This QEMU cannot do it: skip.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The configuration itself is wrong.
    #[error("invalid vm config: {0}")]
    Invalid(String),
}

/// The machine to run and the `arm-smmuv3.stage` global to pass, if any.
///
/// Measured on QEMU 10.0.2 (SMMU IDR features as Linux prints them):
/// `virt` (= `virt-10.0`) gives S1+S2+nesting (0x01088705) and ignores the
/// stage global; `virt-9.0` gives S1 by default (0x01008305), `stage=2` S2
/// (0x01008505) and `stage=nested` nesting (0x01088705). The `stage`
/// property came with stage-2 support in QEMU 8.1 and `nested` with nesting
/// in 9.1; older QEMUs only do stage 1.
fn resolve_machine(
    cfg: &VmConfig,
    caps: &QemuCaps,
) -> Result<(String, Option<&'static str>), PlanError> {
    let wanted = match &cfg.machine {
        Machine::Virt => "virt".to_string(),
        Machine::Versioned(v) => {
            let name = if v.starts_with("virt") {
                v.clone()
            } else {
                format!("virt-{v}")
            };
            check_id_like("machine", &name, false)?;
            name
        }
    };
    let stage = match cfg.iommu {
        Iommu::None => None,
        Iommu::SmmuV3(s) => Some(s),
    };
    if stage.is_some() && !caps.virt_props.contains("iommu") {
        return Err(unsupported(format!(
            "QEMU {} has no `iommu=smmuv3` on virt",
            caps.version_line
        ))
        .into());
    }
    let v = (caps.version.0, caps.version.1);
    let forces_nested =
        |machine: &str| v >= (10, 0) && machine_version(machine).is_none_or(|m| m >= (10, 0));
    let needs = |min: (u32, u32), what: &str| -> Result<(), PlanError> {
        if v < min {
            return Err(unsupported(format!(
                "{what} needs QEMU {}.{} or newer (this is {})",
                min.0, min.1, caps.version_line
            ))
            .into());
        }
        Ok(())
    };
    let (machine, global) = match stage {
        None | Some(SmmuStage::MachineDefault) => (wanted, None),
        Some(SmmuStage::Nested) if forces_nested(&wanted) => (wanted, None),
        Some(SmmuStage::Nested) => {
            needs((9, 1), "a nested SMMU")?;
            (wanted, Some("nested"))
        }
        Some(s @ (SmmuStage::Stage1 | SmmuStage::Stage2)) => {
            let global = if s == SmmuStage::Stage1 { "1" } else { "2" };
            if s == SmmuStage::Stage2 {
                needs((8, 1), "a stage-2 SMMU")?;
            }
            if forces_nested(&wanted) {
                if cfg.machine != Machine::Virt {
                    return Err(unsupported(format!(
                        "machine {wanted} forces a nested SMMU on QEMU {}; use virt-9.0 for {s:?}",
                        caps.version_line
                    ))
                    .into());
                }
                ("virt-9.0".to_string(), Some(global))
            } else if v < (8, 1) {
                // No `stage` property yet: stage 1 is all there is.
                (wanted, None)
            } else {
                (wanted, Some(global))
            }
        }
    };
    if !caps.machines.contains(&machine) {
        return Err(unsupported(format!(
            "QEMU {} has no machine `{machine}`",
            caps.version_line
        ))
        .into());
    }
    Ok((machine, global))
}

fn machine_version(machine: &str) -> Option<(u32, u32)> {
    let v = machine.strip_prefix("virt-")?;
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn drivers_of(d: &Device) -> Vec<&'static str> {
    match d {
        Device::Edu { .. } | Device::EduPairMultifunction { .. } => vec!["edu"],
        Device::EduPairBehindBridge { .. } => vec!["edu", "pcie-pci-bridge"],
        Device::E1000e { .. } => vec!["e1000e"],
    }
}

fn edu_arg(id: &str, bus: &str, slot: u8, dma_mask: Option<u64>) -> String {
    let mut a = format!("edu,id={id},bus={bus},addr={slot:#x}");
    if let Some(m) = dma_mask {
        a.push_str(&format!(",dma_mask={m:#x}"));
    }
    a
}

/// QEMU ids: a letter, then letters, digits, `-`, `.`, `_`. Trace patterns
/// may also hold `*` and `?`.
fn check_id_like(what: &str, s: &str, glob: bool) -> Result<(), PlanError> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || (glob && c == '*'))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c) || (glob && "*?".contains(c)));
    if ok {
        Ok(())
    } else {
        Err(PlanError::Invalid(format!(
            "{what} `{s}` must start with a letter and hold only letters, digits, `-`, `.`, `_`{}",
            if glob { ", `*`, `?`" } else { "" }
        )))
    }
}

/// `*` and `?` globbing, as QEMU's trace patterns.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qemu::{Runtime, SshConfig};

    /// What QEMU 10.0.2 reports, trimmed to what the plan looks at.
    fn caps_10() -> QemuCaps {
        let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        QemuCaps {
            path: PathBuf::from("/usr/bin/qemu-system-aarch64"),
            version: (10, 0, 2),
            version_line: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
                .into(),
            machines: set(&["virt", "virt-10.0", "virt-9.0", "virt-9.2"]),
            devices: set(&[
                "edu",
                "e1000e",
                "pcie-pci-bridge",
                "pcie-root-port",
                "virtio-net-pci",
            ]),
            virt_props: set(&["iommu", "gic-version", "its"]),
            trace_events: set(&[
                "smmuv3_translate_success",
                "smmuv3_record_event",
                "gicv3_its_translation_write",
            ]),
        }
    }

    fn cfg() -> VmConfig {
        VmConfig::new("/k/Image".into(), "/k/initrd".into(), "/run".into())
    }

    fn argv(plan: &QemuPlan, ssh: Option<u16>) -> Vec<String> {
        plan.argv(&Runtime {
            qmp_socket: Path::new("/tmp/q,x/qmp.sock"),
            trace_file: Path::new("/run/trace.log"),
            ssh_port: ssh,
            incoming: None,
        })
        .unwrap()
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn devices_get_slots_buses_and_requester_ids_before_boot() {
        let mut c = cfg();
        c.ssh = Some(SshConfig {
            private_key: "/k/id".into(),
            user: "root".into(),
        });
        c.devices = vec![
            Device::Edu {
                id: "edu0".into(),
                dma_mask: Some(0xffff_ffff_ffff),
            },
            Device::EduPairBehindBridge {
                bridge_id: "br0".into(),
                ids: ["a".into(), "b".into()],
                dma_mask: None,
            },
            Device::EduPairMultifunction {
                ids: ["f0".into(), "f1".into()],
                dma_mask: None,
            },
            Device::E1000e { id: "nic1".into() },
        ];
        c.hotplug_ports = 2;
        let plan = plan(&c, &caps_10()).unwrap();
        let got: Vec<(String, String, u16, Option<u8>)> = plan
            .devices
            .iter()
            .map(|d| {
                (
                    d.id.clone(),
                    d.bdf.to_string(),
                    d.requester_id,
                    d.secondary_bus,
                )
            })
            .collect();
        let want = [
            ("net0", "0000:00:01.0", 0x08, None),
            ("edu0", "0000:00:02.0", 0x10, None),
            ("br0", "0000:00:03.0", 0x18, Some(1)),
            ("a", "0000:01:01.0", 0x100, None),
            ("b", "0000:01:02.0", 0x100, None),
            ("f0", "0000:00:04.0", 0x20, None),
            ("f1", "0000:00:04.1", 0x21, None),
            ("nic1", "0000:00:05.0", 0x28, None),
            ("hp0", "0000:00:06.0", 0x30, Some(2)),
            ("hp1", "0000:00:07.0", 0x38, Some(3)),
        ];
        let want: Vec<(String, String, u16, Option<u8>)> = want
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, *d))
            .collect();
        assert_eq!(got, want);

        let argv = argv(&plan, Some(2222));
        assert_eq!(
            after(&argv, "-machine"),
            ["virt,gic-version=3,its=on,iommu=smmuv3"]
        );
        assert_eq!(
            after(&argv, "-device"),
            [
                "edu,id=edu0,bus=pcie.0,addr=0x2,dma_mask=0xffffffffffff",
                "pcie-pci-bridge,id=br0,bus=pcie.0,addr=0x3",
                "edu,id=a,bus=br0,addr=0x1",
                "edu,id=b,bus=br0,addr=0x2",
                "edu,id=f0,bus=pcie.0,addr=0x4.0,multifunction=on",
                "edu,id=f1,bus=pcie.0,addr=0x4.1",
                "e1000e,id=nic1,bus=pcie.0,addr=0x5,romfile=",
                "pcie-root-port,id=hp0,bus=pcie.0,addr=0x6,chassis=1,slot=1",
                "pcie-root-port,id=hp1,bus=pcie.0,addr=0x7,chassis=2,slot=2",
                "virtio-net-pci,netdev=net0,bus=pcie.0,addr=0x1,romfile=",
            ]
        );
        assert_eq!(
            after(&argv, "-netdev"),
            ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"]
        );
        // A comma in a path is doubled for QEMU's option parser.
        assert_eq!(
            after(&argv, "-chardev")[1],
            "socket,id=qmp,path=/tmp/q,,x/qmp.sock,server=on,wait=off"
        );
        // The SMMU's fault event is always on (it names the sid of faults).
        assert_eq!(
            after(&argv, "-trace"),
            ["enable=smmuv3_record_event,file=/run/trace.log"]
        );
        assert!(after(&argv, "-nic").is_empty());
    }

    #[test]
    fn without_ssh_there_is_no_nic_and_devices_start_at_slot_2() {
        let mut c = cfg();
        c.iommu = Iommu::None;
        c.devices = vec![Device::Edu {
            id: "e".into(),
            dma_mask: None,
        }];
        c.trace_events = vec!["gicv3_its_*".into()];
        let p = plan(&c, &caps_10()).unwrap();
        assert_eq!(p.devices[0].bdf.to_string(), "0000:00:02.0");
        let argv = argv(&p, None);
        assert_eq!(after(&argv, "-nic"), ["none"]);
        assert_eq!(
            after(&argv, "-machine"),
            ["virt,gic-version=3,its=on,iommu=none"]
        );
        assert_eq!(
            after(&argv, "-trace"),
            ["enable=gicv3_its_*,file=/run/trace.log"]
        );
    }

    #[test]
    fn smmu_stages_pick_the_machine_that_honours_them() {
        let caps = caps_10();
        let run = |machine: Machine, stage| {
            let mut c = cfg();
            c.machine = machine;
            c.iommu = Iommu::SmmuV3(stage);
            plan(&c, &caps).map(|p| {
                let a = argv(&p, None);
                (
                    p.machine.clone(),
                    after(&a, "-global")
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )
            })
        };
        let ok = |m: &str, g: &[&str]| {
            (
                m.to_string(),
                g.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            run(Machine::Virt, SmmuStage::MachineDefault).unwrap(),
            ok("virt", &[])
        );
        assert_eq!(
            run(Machine::Virt, SmmuStage::Nested).unwrap(),
            ok("virt", &[])
        );
        assert_eq!(
            run(Machine::Virt, SmmuStage::Stage1).unwrap(),
            ok("virt-9.0", &["arm-smmuv3.stage=1"])
        );
        assert_eq!(
            run(Machine::Virt, SmmuStage::Stage2).unwrap(),
            ok("virt-9.0", &["arm-smmuv3.stage=2"])
        );
        assert_eq!(
            run(Machine::Versioned("9.2".into()), SmmuStage::Nested).unwrap(),
            ok("virt-9.2", &["arm-smmuv3.stage=nested"])
        );
        let err = run(Machine::Versioned("virt-10.0".into()), SmmuStage::Stage2).unwrap_err();
        assert!(
            matches!(err, PlanError::Unsupported(ref u) if u.reason.contains("forces a nested SMMU")),
            "{err}"
        );
        let err = run(Machine::Versioned("7.1".into()), SmmuStage::Stage1).unwrap_err();
        assert!(
            matches!(err, PlanError::Unsupported(ref u) if u.reason.contains("no machine `virt-7.1`")),
            "{err}"
        );

        let mut old = caps.clone();
        old.version = (7, 2, 0);
        old.machines.insert("virt-7.2".into());
        let mut c = cfg();
        c.iommu = Iommu::SmmuV3(SmmuStage::Stage2);
        let err = plan(&c, &old).unwrap_err();
        assert!(
            matches!(err, PlanError::Unsupported(ref u) if u.reason.contains("needs QEMU 8.1")),
            "{err}"
        );
        c.iommu = Iommu::SmmuV3(SmmuStage::Stage1);
        assert!(after(&argv(&plan(&c, &old).unwrap(), None), "-global").is_empty());
    }

    #[test]
    fn what_qemu_lacks_is_unsupported_and_bad_input_is_invalid() {
        let mut caps = caps_10();
        caps.devices.remove("e1000e");
        let mut c = cfg();
        c.devices = vec![Device::E1000e { id: "n".into() }];
        assert!(
            matches!(plan(&c, &caps), Err(PlanError::Unsupported(u)) if u.reason.contains("no `e1000e` device"))
        );

        let bad = |devices: Vec<Device>, trace: &[&str]| {
            let mut c = cfg();
            c.devices = devices;
            c.trace_events = trace.iter().map(|s| s.to_string()).collect();
            match plan(&c, &caps_10()) {
                Err(PlanError::Invalid(m)) => m,
                other => panic!("expected invalid, got {other:?}"),
            }
        };
        let edu = |id: &str| Device::Edu {
            id: id.into(),
            dma_mask: None,
        };
        assert!(bad(vec![edu("x,addr=0x9")], &[]).contains("must start with a letter"));
        assert!(bad(vec![edu("e"), edu("e")], &[]).contains("used twice"));
        assert!(bad(vec![edu("hp0")], &[]).contains("reserved"));
        assert!(bad(vec![], &["smmuv3_nosuch"]).contains("matches no event"));
        assert!(bad((0..31).map(|i| edu(&format!("e{i}"))).collect(), &[]).contains("more than 30"));
    }
}
