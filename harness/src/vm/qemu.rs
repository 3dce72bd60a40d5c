//! The QEMU command line, built from types, and what a QEMU binary can do.
//!
//! [`VmConfig`] describes a guest; [`QemuCaps`] is what a given
//! `qemu-system-aarch64` supports (probed once per binary and cached);
//! [`plan`] checks one against the other and lays the PCI topology out, so
//! that every device's guest BDF and requester id are known before boot, and
//! [`QemuPlan::argv`] turns the result into argv. Nothing here goes through a
//! shell: values become single argv entries, and ids are checked against
//! QEMU's id syntax so they cannot smuggle extra `-device` options in.
//!
//! A configuration this QEMU cannot run is [`Unsupported`] (the scenario is
//! skipped with the reason), not an error.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{self, KeyBuilder};

/// The machine type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Machine {
    /// `virt`, unless the SMMU stage asks for an older machine version (see
    /// [`SmmuStage`]).
    Virt,
    /// A versioned machine such as `virt-9.0`.
    Versioned(String),
}

/// Which translation stages the SMMUv3 implements.
///
/// Measured on QEMU 10.0.2: on `virt` (= `virt-10.0`) the SMMU is nested
/// (S1+S2) whatever `-global arm-smmuv3.stage=` says; on `virt-9.0` the
/// default is stage 1 and the global is honoured. So S1 and S2 on QEMU ≥ 10
/// run on `virt-9.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuStage {
    /// Whatever the machine does by default.
    MachineDefault,
    Stage1,
    Stage2,
    Nested,
}

/// The IOMMU on the PCIe root complex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iommu {
    None,
    SmmuV3(SmmuStage),
}

/// A PCI device under test. Ids become QEMU `id=`s and must match
/// `[A-Za-z][A-Za-z0-9_.-]*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// QEMU's `edu` (1234:11e8): one MSI vector, DMA engine. `dma_mask`
    /// widens its 28-bit default DMA mask.
    Edu { id: String, dma_mask: Option<u64> },
    /// Two `edu` as functions 0 and 1 of one slot. Without ACS, Linux puts
    /// the functions of a multifunction device in one iommu group, while
    /// each keeps its own requester id: the shared-group case that works.
    EduPairMultifunction { ids: [String; 2], dma_mask: Option<u64> },
    /// Two `edu` behind one `pcie-pci-bridge`: both DMA with the bridge's
    /// alias requester id `(secondary bus, 0)`. Measured on Linux 6.18: the
    /// first gets an iommu group (shared with the bridge), the second is
    /// refused ("Aliasing StreamID 0x100 ... unsupported, expect DMA to be
    /// broken") and has none. Use [`Device::EduPairMultifunction`] for a
    /// shared group; this one is for the aliasing case itself.
    EduPairBehindBridge { bridge_id: String, ids: [String; 2], dma_mask: Option<u64> },
    /// Intel 82574L (`e1000e`): MSI-X with several vectors. No backend is
    /// attached; it is there to be bound to vfio-pci.
    E1000e { id: String },
}

/// Host port forwarding for SSH into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// Private key whose public half is in the image's authorized_keys.
    pub private_key: PathBuf,
    pub user: String,
}

/// Everything needed to boot one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The QEMU binary (`qemu-system-aarch64` from PATH if relative).
    pub qemu: PathBuf,
    pub machine: Machine,
    pub iommu: Iommu,
    /// `-cpu` model; `max` gives every feature TCG has.
    pub cpu: String,
    pub smp: u32,
    pub memory_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub devices: Vec<Device>,
    /// Empty `pcie-root-port`s for hotplugging devices later (ids
    /// `hp0`, `hp1`...).
    pub hotplug_ports: u32,
    /// `Some`: user networking with an SSH port forward on 127.0.0.1;
    /// `None`: `-nic none`.
    pub ssh: Option<SshConfig>,
    /// Trace event names or globs (`smmuv3_translate_*`) enabled from the
    /// start; more can be enabled at run time over QMP.
    pub trace_events: Vec<String>,
    /// Where the run's artifacts go (created if missing).
    pub run_dir: PathBuf,
    /// From QEMU start to the readiness marker (and SSH, if configured).
    pub boot_timeout: Duration,
}

impl VmConfig {
    /// A config with the harness's defaults for everything but the inputs.
    pub fn new(kernel: PathBuf, initrd: PathBuf, run_dir: PathBuf) -> VmConfig {
        VmConfig {
            qemu: PathBuf::from("qemu-system-aarch64"),
            machine: Machine::Virt,
            iommu: Iommu::SmmuV3(SmmuStage::MachineDefault),
            cpu: "max".into(),
            smp: 2,
            memory_mb: 1024,
            kernel,
            initrd,
            append: DEFAULT_APPEND.into(),
            devices: Vec::new(),
            hotplug_ports: 0,
            ssh: None,
            trace_events: Vec::new(),
            run_dir,
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// Kernel command line: console on the PL011, reboot at once on panic (QEMU
/// runs with `-no-reboot`, so a panic also ends QEMU).
pub const DEFAULT_APPEND: &str = "console=ttyAMA0 panic=-1";

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

/// What one QEMU binary supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuCaps {
    pub path: PathBuf,
    /// `(major, minor, micro)`.
    pub version: (u32, u32, u32),
    pub version_line: String,
    pub machines: BTreeSet<String>,
    /// User-creatable devices (`-device help`).
    pub devices: BTreeSet<String>,
    /// Properties of `-M virt`.
    pub virt_props: BTreeSet<String>,
    pub trace_events: BTreeSet<String>,
}

/// Why this QEMU cannot run a configuration: the scenario is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unsupported {
    pub reason: String,
}

fn unsupported(reason: impl Into<String>) -> Unsupported {
    Unsupported { reason: reason.into() }
}

/// The checked, laid-out command line for one boot.
#[derive(Debug, Clone)]
pub struct QemuPlan {
    pub qemu: PathBuf,
    pub machine: String,
    pub devices: Vec<PlacedDevice>,
    args: Vec<String>,
    trace_events: Vec<String>,
}

/// Paths and ports only known at spawn time.
#[derive(Debug, Clone)]
pub struct Runtime<'a> {
    pub qmp_socket: &'a Path,
    pub trace_file: &'a Path,
    pub ssh_port: Option<u16>,
}

/// Slot of the SSH NIC on the root bus.
const NIC_SLOT: u8 = 1;
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
    let machine = resolve_machine(cfg, caps)?;
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
    push(&["-machine", &format!("{machine},gic-version=3,its=on,iommu={iommu}")]);
    if let Iommu::SmmuV3(stage) = cfg.iommu {
        if let Some(s) = stage_global(stage) {
            push(&["-global", &format!("arm-smmuv3.stage={s}")]);
        }
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
            return Err(PlanError::Invalid("more than 30 PCI devices on the root bus".into()));
        }
        slot += 1;
        Ok(s)
    };
    let mut ids = BTreeSet::new();
    let mut claim = |id: &str| -> Result<(), PlanError> {
        check_id_like("device id", id, false)?;
        if id.starts_with("hp") && id[2..].bytes().all(|b| b.is_ascii_digit()) || id == "net0" {
            return Err(PlanError::Invalid(format!("device id `{id}` is reserved by the harness")));
        }
        if !ids.insert(id.to_string()) {
            return Err(PlanError::Invalid(format!("device id `{id}` is used twice")));
        }
        Ok(())
    };
    if cfg.ssh.is_some() {
        placed.push(PlacedDevice {
            id: "net0".into(),
            driver: "virtio-net-pci".into(),
            bdf: Bdf { bus: 0, dev: NIC_SLOT, func: 0 },
            requester_id: Bdf { bus: 0, dev: NIC_SLOT, func: 0 }.rid(),
            infrastructure: true,
            secondary_bus: None,
        });
    }
    for d in &cfg.devices {
        match d {
            Device::Edu { id, dma_mask } => {
                claim(id)?;
                let s = take_slot()?;
                let bdf = Bdf { bus: 0, dev: s, func: 0 };
                device_args.push(edu_arg(id, "pcie.0", s, *dma_mask));
                placed.push(PlacedDevice {
                    id: id.clone(),
                    driver: "edu".into(),
                    bdf,
                    requester_id: bdf.rid(),
                    infrastructure: false,
                    secondary_bus: None,
                });
            }
            Device::E1000e { id } => {
                claim(id)?;
                let s = take_slot()?;
                let bdf = Bdf { bus: 0, dev: s, func: 0 };
                device_args.push(format!("e1000e,id={id},bus=pcie.0,addr={s:#x}"));
                placed.push(PlacedDevice {
                    id: id.clone(),
                    driver: "e1000e".into(),
                    bdf,
                    requester_id: bdf.rid(),
                    infrastructure: false,
                    secondary_bus: None,
                });
            }
            Device::EduPairMultifunction { ids: pair, dma_mask } => {
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
                    let bdf = Bdf { bus: 0, dev: s, func };
                    placed.push(PlacedDevice {
                        id: id.clone(),
                        driver: "edu".into(),
                        bdf,
                        requester_id: bdf.rid(),
                        infrastructure: false,
                        secondary_bus: None,
                    });
                }
            }
            Device::EduPairBehindBridge { bridge_id, ids: pair, dma_mask } => {
                claim(bridge_id)?;
                let s = take_slot()?;
                let bus = next_bus;
                next_bus += 1;
                device_args.push(format!("pcie-pci-bridge,id={bridge_id},bus=pcie.0,addr={s:#x}"));
                let bridge_bdf = Bdf { bus: 0, dev: s, func: 0 };
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
                let alias = Bdf { bus, dev: 0, func: 0 }.rid();
                for (id, child_slot) in pair.iter().zip(BRIDGE_CHILD_SLOTS) {
                    claim(id)?;
                    device_args.push(edu_arg(id, bridge_id, child_slot, *dma_mask));
                    placed.push(PlacedDevice {
                        id: id.clone(),
                        driver: "edu".into(),
                        bdf: Bdf { bus, dev: child_slot, func: 0 },
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
            bdf: Bdf { bus: 0, dev: s, func: 0 },
            requester_id: Bdf { bus: 0, dev: s, func: 0 }.rid(),
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
    push(&["-display", "none", "-monitor", "none", "-parallel", "none", "-no-reboot"]);
    push(&["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
    let mut trace_events = cfg.trace_events.clone();
    if cfg.iommu != Iommu::None && !trace_events.iter().any(|p| glob_match(p, "smmuv3_record_event")) {
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

impl QemuPlan {
    /// The full argv (without the program) for these runtime paths.
    pub fn argv(&self, rt: &Runtime<'_>) -> anyhow::Result<Vec<String>> {
        let mut argv = self.args.clone();
        let sock = path_arg(rt.qmp_socket)?;
        argv.extend([
            "-chardev".to_string(),
            format!("socket,id=qmp,path={},server=on,wait=off", escape_opt(&sock)),
            "-mon".to_string(),
            "chardev=qmp,mode=control".to_string(),
        ]);
        match rt.ssh_port {
            Some(port) => {
                // restrict=on: the guest reaches nothing outside; the
                // forward still works.
                argv.push("-netdev".into());
                argv.push(format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"));
                argv.push("-device".into());
                argv.push(format!("virtio-net-pci,netdev=net0,bus=pcie.0,addr={NIC_SLOT:#x}"));
            }
            None => {
                argv.push("-nic".into());
                argv.push("none".into());
            }
        }
        // Every `-trace` option sets the file anew (to stderr when it has no
        // `file=`), so each one names it.
        let file = escape_opt(&path_arg(rt.trace_file)?);
        if self.trace_events.is_empty() {
            argv.push("-trace".into());
            argv.push(format!("file={file}"));
        }
        for pattern in &self.trace_events {
            argv.push("-trace".into());
            argv.push(format!("enable={pattern},file={file}"));
        }
        Ok(argv)
    }
}

/// Quotes argv for a POSIX shell, so that the saved command line can be
/// pasted and run as is.
pub fn shell_quote(argv: &[String]) -> String {
    argv.iter().map(|a| quote_one(a)).collect::<Vec<_>>().join(" ")
}

fn quote_one(a: &str) -> String {
    let safe = !a.is_empty()
        && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Probes `qemu` (cached per binary path, size and mtime).
pub fn probe(qemu: &Path) -> anyhow::Result<QemuCaps> {
    let path = resolve_program(qemu)?;
    let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = KeyBuilder::new()
        .str("probe-format", "1")
        .str("path", &path.to_string_lossy())
        .str("size", &meta.len().to_string())
        .str("mtime", &mtime.to_string())
        .finish();
    let cache_file = cache::cache_dir("qemu")?.join(format!("caps-{}.json", key.short()));
    if let Ok(text) = std::fs::read_to_string(&cache_file) {
        if let Ok(caps) = serde_json::from_str::<QemuCaps>(&text) {
            return Ok(caps);
        }
    }
    let caps = probe_uncached(&path)?;
    cache::write_atomic(&cache_file, serde_json::to_string_pretty(&caps)?.as_bytes())?;
    Ok(caps)
}

fn probe_uncached(path: &Path) -> anyhow::Result<QemuCaps> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {} {}", path.display(), args.join(" ")))?;
        if !out.status.success() {
            anyhow::bail!(
                "`{} {}` failed ({}): {}",
                path.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version_text = run(&["--version"])?;
    let version_line = version_text.lines().next().unwrap_or_default().trim().to_string();
    let version = parse_version(&version_line)
        .with_context(|| format!("cannot read a version from `{version_line}`"))?;
    Ok(QemuCaps {
        path: path.to_path_buf(),
        version,
        version_line,
        machines: parse_machines(&run(&["-machine", "help"])?),
        devices: parse_devices(&run(&["-device", "help"])?),
        virt_props: parse_props(&run(&["-machine", "virt,help"])?),
        trace_events: run(&["-trace", "help"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains(' '))
            .map(String::from)
            .collect(),
    })
}

fn resolve_program(p: &Path) -> anyhow::Result<PathBuf> {
    if p.components().count() > 1 {
        return Ok(p.to_path_buf());
    }
    crate::deps::which(&p.to_string_lossy()).ok_or_else(|| {
        crate::Error::infra(format!(
            "{} is not on PATH: install qemu-system-arm (cargo xtask deps)",
            p.display()
        ))
        .into()
    })
}

fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.split("version ").nth(1)?;
    let v = rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next().unwrap_or(Ok(0)).ok()?, parts.next().unwrap_or(Ok(0)).ok()?))
}

fn parse_machines(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn parse_devices(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("name \""))
        .filter_map(|l| l.split('"').next().map(String::from))
        .collect()
}

fn parse_props(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| !k.contains(' '))
        .collect()
}

fn resolve_machine(cfg: &VmConfig, caps: &QemuCaps) -> Result<String, PlanError> {
    if !caps.virt_props.contains("iommu") && cfg.iommu != Iommu::None {
        return Err(unsupported(format!(
            "QEMU {} has no `iommu=smmuv3` on virt",
            caps.version_line
        ))
        .into());
    }
    let forces_nested = |machine: &str| -> bool {
        // Measured: 10.0's own machine forces nested; versioned machines up
        // to virt-9.0 honour the stage global.
        caps.version.0 >= 10 && machine_version(machine).is_none_or(|v| v >= (10, 0))
    };
    let wanted = match &cfg.machine {
        Machine::Virt => "virt".to_string(),
        Machine::Versioned(v) => {
            check_id_like("machine", v, false)?;
            if v.starts_with("virt") {
                v.clone()
            } else {
                format!("virt-{v}")
            }
        }
    };
    let stage = match cfg.iommu {
        Iommu::None => SmmuStage::MachineDefault,
        Iommu::SmmuV3(s) => s,
    };
    let machine = match stage {
        SmmuStage::Stage1 | SmmuStage::Stage2 if forces_nested(&wanted) => {
            if cfg.machine != Machine::Virt {
                return Err(unsupported(format!(
                    "machine {wanted} forces a nested SMMU on QEMU {}; use virt-9.0 for {stage:?}",
                    caps.version_line
                ))
                .into());
            }
            "virt-9.0".to_string()
        }
        SmmuStage::Nested if !forces_nested(&wanted) && caps.version.0 < 10 => {
            return Err(unsupported(format!(
                "a nested SMMU needs QEMU 10.0 or newer (this is {})",
                caps.version_line
            ))
            .into())
        }
        SmmuStage::Nested if !forces_nested(&wanted) => {
            return Err(unsupported(format!(
                "machine {wanted} on QEMU {} does not give a nested SMMU; use `virt`",
                caps.version_line
            ))
            .into())
        }
        _ => wanted,
    };
    if !caps.machines.contains(&machine) {
        return Err(unsupported(format!(
            "QEMU {} has no machine `{machine}`",
            caps.version_line
        ))
        .into());
    }
    Ok(machine)
}

fn stage_global(stage: SmmuStage) -> Option<&'static str> {
    match stage {
        SmmuStage::MachineDefault | SmmuStage::Nested => None,
        SmmuStage::Stage1 => Some("1"),
        SmmuStage::Stage2 => Some("2"),
    }
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
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || (glob && c == '*'))
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || "-._".contains(c) || (glob && "*?".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(PlanError::Invalid(format!(
            "{what} `{s}` must start with a letter and hold only letters, digits, `-`, `.`, `_`{}",
            if glob { ", `*`, `?`" } else { "" }
        )))
    }
}

/// QEMU's option parser splits on `,`; a literal comma is written twice.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn path_arg(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(String::from)
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// `*` and `?` globbing, as QEMU's trace patterns.
fn glob_match(pattern: &str, name: &str) -> bool {
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
