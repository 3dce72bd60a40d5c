//! `Step`: one action the agent performs in the guest.
//!
//! A step is what a scenario's `[[step]]` table deserializes into, and what
//! the harness sends the agent inside a `step` request. Objects (devices,
//! IOASes, HWPTs) are named by the scenario; the agent maps names to file
//! descriptors and kernel ids.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::HexU64;

/// One scenario step. See the crate docs for what each op does and returns.
///
/// In JSON: `{"op":"option_set","option":"sw_msi_start","value":"0x10000000"}`.
/// In a scenario file:
///
/// ```toml
/// [[step]]
/// op = "option_set"
/// option = "sw_msi_start"
/// value = "0x10000000"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Open the VFIO cdev of the PCI device `bdf` (`0000:00:02.0`), found via
    /// `/sys/bus/pci/devices/BDF/vfio-dev/vfioN`. → `cdev`.
    OpenDevice { device: String, bdf: String },
    /// `VFIO_DEVICE_BIND_IOMMUFD` to the session's iommufd. → `dev_id`.
    Bind { device: String },
    /// `IOMMU_IOAS_ALLOC`. → `ioas_id`.
    IoasAlloc { ioas: String },
    /// `IOMMU_HWPT_ALLOC` for a bound device on `pt` (an IOAS, a HWPT, or a
    /// vIOMMU). With `vste` it is a nested HWPT on a vIOMMU: data type
    /// `IOMMU_HWPT_DATA_ARM_SMMUV3` carrying that virtual STE (two 64-bit
    /// words, `ste[0]` first). → `hwpt_id`.
    HwptAlloc {
        hwpt: String,
        device: String,
        pt: ObjectRef,
        #[serde(default)]
        flags: Vec<HwptFlag>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vste: Option<[HexU64; 2]>,
    },
    /// `IOMMU_VIOMMU_ALLOC` of an ARM SMMUv3 vIOMMU for a bound device on
    /// `hwpt` (a nesting-parent HWPT). → `viommu_id`.
    ViommuAlloc {
        viommu: String,
        device: String,
        hwpt: ObjectRef,
    },
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`. → `pt_id` (the HWPT actually attached).
    Attach { device: String, pt: ObjectRef },
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`. → `done`.
    Detach { device: String },
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on an already attached device (the
    /// kernel's "replace"). → `pt_id`.
    Replace { device: String, pt: ObjectRef },
    /// `IOMMU_OPTION` with `IOMMU_OPTION_OP_SET`. → `done`.
    OptionSet {
        option: OptionId,
        #[serde(default)]
        object: ObjectRef,
        value: HexU64,
    },
    /// `IOMMU_OPTION` with `IOMMU_OPTION_OP_GET`. → `value`.
    OptionGet {
        option: OptionId,
        #[serde(default)]
        object: ObjectRef,
    },
    /// `IOMMU_OPTION` with `op = code`, for the codes that are neither SET
    /// (0) nor GET (1): a probe of the handler's own check, since every
    /// IOMMU_OPTION handler answers EOPNOTSUPP to an op it does not know.
    /// `value` (raw, never converted to a dialect's unit) goes in `val64`.
    /// → `value` (what the kernel left in `val64`).
    OptionOp {
        option: OptionId,
        #[serde(default)]
        object: ObjectRef,
        code: u16,
        #[serde(default)]
        value: HexU64,
    },
    /// `IOMMU_IOAS_MAP` of fresh anonymous memory (kept until unmapped or the
    /// session ends). Without `iova` the kernel picks one. → `iova`.
    IoasMap {
        ioas: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iova: Option<HexU64>,
        length: HexU64,
        #[serde(default = "yes")]
        readable: bool,
        #[serde(default = "yes")]
        writable: bool,
    },
    /// `IOMMU_IOAS_UNMAP`. → `unmapped` (bytes).
    IoasUnmap {
        ioas: String,
        iova: HexU64,
        length: HexU64,
    },
    /// `IOMMU_IOAS_IOVA_RANGES`. → `iova_ranges`.
    IovaRanges { ioas: String },
    /// `IOMMU_DESTROY` of an IOAS or HWPT (the name is released). → `done`.
    Destroy { object: ObjectRef },
    /// Set or clear PCI_COMMAND bus master through the VFIO config region
    /// (vfio-pci leaves it to userspace). → `command` (the register after).
    BusMaster {
        device: String,
        #[serde(default = "yes")]
        enable: bool,
    },
    /// `VFIO_DEVICE_SET_IRQS` on the MSI (or, with `irq = "msix"`, the
    /// MSI-X) index, one eventfd per vector. → `vectors`.
    MsiEnable {
        device: String,
        #[serde(default = "one_u32")]
        vectors: u32,
        #[serde(default, skip_serializing_if = "IrqKind::is_msi")]
        irq: IrqKind,
    },
    /// `VFIO_DEVICE_SET_IRQS` with count 0 on the index `msi_enable` used. → `done`.
    MsiDisable { device: String },
    /// Write `value` to edu register 0x60 (raise interrupt). → `done`.
    EduRaise {
        device: String,
        #[serde(default = "one_u32")]
        value: u32,
    },
    /// Write `value` to edu register 0x64 (acknowledge interrupt). → `done`.
    EduAck {
        device: String,
        #[serde(default = "one_u32")]
        value: u32,
    },
    /// Wait until `count` interrupts arrived on `vector`'s eventfd or
    /// `timeout_ms` passed; `count = 0` waits the full timeout (to check for
    /// silence). Counts what arrived since `msi_enable` or the previous wait.
    /// Fewer than `count` is a result, not an error. With `at_least` the
    /// answer is `count` once at least that many came: for a device that
    /// may signal a vector more than once per event (QEMU's e1000e re-sends
    /// each MSI-X vector when its EITR throttling timer expires, and the GIC
    /// may merge the two), where the exact number is not the device's
    /// behaviour under test. → `interrupts`.
    WaitInterrupts {
        device: String,
        #[serde(default)]
        vector: u32,
        count: u64,
        #[serde(default = "default_wait_timeout_ms")]
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        at_least: bool,
    },
    /// One edu DMA of `length` (1..=4096) bytes between `iova` and the device
    /// buffer, waiting for completion. → `dma`.
    EduDma {
        device: String,
        direction: DmaDirection,
        iova: HexU64,
        length: HexU64,
        #[serde(default = "dma_timeout_ms")]
        timeout_ms: u64,
    },
    /// Raise MSI-X vector `vector` (0..=4) of an e1000e: the agent masks
    /// every cause (IMC) and clears what is pending (ICR, write 1 to clear),
    /// routes the five MSI-X causes (RxQ0, RxQ1, TxQ0, TxQ1, Other) to
    /// vectors 0..=4 (IVAR) with auto-clear (EIAC), unmasks the vector's
    /// cause alone (IMS) and sets it (ICS). → `done`.
    E1000eRaise { device: String, vector: u32 },
    /// The real MSI capability from `/sys/bus/pci/devices/BDF/config` (the
    /// VFIO config region virtualises it). → `msi_config`.
    MsiConfig { device: String },
    /// The real MSI-X capability (sysfs `config`) and table (the BAR through
    /// sysfs `resourceN`: VFIO's BAR region reads the table as 0xff). →
    /// `msix_table`.
    MsixTable { device: String },
    /// The device's iommu group, its `type` and `reserved_regions` lines. →
    /// `reserved_regions`.
    ReservedRegions { device: String },
    /// The `/proc/interrupts` lines that mention the device's BDF. → `proc_interrupts`.
    ProcInterrupts { device: String },
    /// Kernel log lines new since the previous `dmesg` step (all of them the
    /// first time). → `dmesg`.
    Dmesg {},
    /// Close the device fd (unbinds it from iommufd). → `done`.
    CloseDevice { device: String },
    /// Sleep `ms` milliseconds. → `done`.
    Sleep { ms: u64 },
    /// The `branches` at once, each on its own thread, each repeating its
    /// steps `iterations` times (a branch may say its own), or, with
    /// `duration_ms`, until that much time has passed (`iterations` is then
    /// each branch's cap). Only
    /// `option_set`, `option_get`, `attach`, `replace` and `detach` run in
    /// a branch; names are resolved before the threads start, and the
    /// session's bookkeeping (what is attached) is not updated by them. →
    /// `concurrent`: per branch and step, how often each outcome happened
    /// (never the interleaving).
    Concurrent {
        iterations: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        branches: Vec<Branch>,
    },
}

/// One thread of a `concurrent` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub name: String,
    /// Overrides the step's `iterations` for this branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    pub steps: Vec<Step>,
}

impl Branch {
    /// The ops a branch may run.
    pub const OPS: [&'static str; 5] = ["option_set", "option_get", "attach", "replace", "detach"];
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one_u32() -> u32 {
    1
}

/// `wait_interrupts`'s `timeout_ms` when a step leaves it out: one edu
/// interrupt arrives well within it on a loaded TCG guest.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 2000;

fn default_wait_timeout_ms() -> u64 {
    DEFAULT_WAIT_TIMEOUT_MS
}

fn dma_timeout_ms() -> u64 {
    // edu completes a DMA about 100 ms of virtual time after it starts; TCG
    // on a loaded 2-core host can stretch that several times.
    2000
}

impl Step {
    /// Every op, in declaration order. Tests check it against serde's own
    /// variant names and [`Step::op`], so it cannot drift.
    pub const OPS: [&'static str; 31] = [
        "open_device",
        "bind",
        "ioas_alloc",
        "hwpt_alloc",
        "viommu_alloc",
        "attach",
        "detach",
        "replace",
        "option_set",
        "option_get",
        "option_op",
        "ioas_map",
        "ioas_unmap",
        "iova_ranges",
        "destroy",
        "bus_master",
        "msi_enable",
        "msi_disable",
        "edu_raise",
        "edu_ack",
        "wait_interrupts",
        "edu_dma",
        "e1000e_raise",
        "msi_config",
        "msix_table",
        "reserved_regions",
        "proc_interrupts",
        "dmesg",
        "close_device",
        "sleep",
        "concurrent",
    ];

    /// The ops whose step has a `device` field (tests check it against the
    /// serialized steps and [`Step::device`]).
    pub const DEVICE_OPS: [&'static str; 20] = [
        "open_device",
        "bind",
        "hwpt_alloc",
        "viommu_alloc",
        "attach",
        "detach",
        "replace",
        "bus_master",
        "msi_enable",
        "msi_disable",
        "edu_raise",
        "edu_ack",
        "wait_interrupts",
        "edu_dma",
        "e1000e_raise",
        "msi_config",
        "msix_table",
        "reserved_regions",
        "proc_interrupts",
        "close_device",
    ];

    /// The device the step acts on, if it names one.
    pub fn device(&self) -> Option<&str> {
        match self {
            Step::OpenDevice { device, .. }
            | Step::Bind { device }
            | Step::HwptAlloc { device, .. }
            | Step::ViommuAlloc { device, .. }
            | Step::Attach { device, .. }
            | Step::Detach { device }
            | Step::Replace { device, .. }
            | Step::BusMaster { device, .. }
            | Step::MsiEnable { device, .. }
            | Step::MsiDisable { device }
            | Step::EduRaise { device, .. }
            | Step::EduAck { device, .. }
            | Step::WaitInterrupts { device, .. }
            | Step::EduDma { device, .. }
            | Step::E1000eRaise { device, .. }
            | Step::MsiConfig { device }
            | Step::MsixTable { device }
            | Step::ReservedRegions { device }
            | Step::ProcInterrupts { device }
            | Step::CloseDevice { device } => Some(device),
            Step::IoasAlloc { .. }
            | Step::OptionSet { .. }
            | Step::OptionGet { .. }
            | Step::OptionOp { .. }
            | Step::IoasMap { .. }
            | Step::IoasUnmap { .. }
            | Step::IovaRanges { .. }
            | Step::Destroy { .. }
            | Step::Dmesg {}
            | Step::Sleep { .. }
            | Step::Concurrent { .. } => None,
        }
    }

    /// The `op` tag of this step (`"option_set"`), for logs and messages.
    pub fn op(&self) -> &'static str {
        match self {
            Step::OpenDevice { .. } => "open_device",
            Step::Bind { .. } => "bind",
            Step::IoasAlloc { .. } => "ioas_alloc",
            Step::HwptAlloc { .. } => "hwpt_alloc",
            Step::ViommuAlloc { .. } => "viommu_alloc",
            Step::Attach { .. } => "attach",
            Step::Detach { .. } => "detach",
            Step::Replace { .. } => "replace",
            Step::OptionSet { .. } => "option_set",
            Step::OptionGet { .. } => "option_get",
            Step::OptionOp { .. } => "option_op",
            Step::IoasMap { .. } => "ioas_map",
            Step::IoasUnmap { .. } => "ioas_unmap",
            Step::IovaRanges { .. } => "iova_ranges",
            Step::Destroy { .. } => "destroy",
            Step::BusMaster { .. } => "bus_master",
            Step::MsiEnable { .. } => "msi_enable",
            Step::MsiDisable { .. } => "msi_disable",
            Step::EduRaise { .. } => "edu_raise",
            Step::EduAck { .. } => "edu_ack",
            Step::WaitInterrupts { .. } => "wait_interrupts",
            Step::EduDma { .. } => "edu_dma",
            Step::E1000eRaise { .. } => "e1000e_raise",
            Step::MsiConfig { .. } => "msi_config",
            Step::MsixTable { .. } => "msix_table",
            Step::ReservedRegions { .. } => "reserved_regions",
            Step::ProcInterrupts { .. } => "proc_interrupts",
            Step::Dmesg {} => "dmesg",
            Step::CloseDevice { .. } => "close_device",
            Step::Sleep { .. } => "sleep",
            Step::Concurrent { .. } => "concurrent",
        }
    }
}

/// `IOMMU_HWPT_ALLOC` flags (`enum iommufd_hwpt_alloc_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HwptFlag {
    /// `IOMMU_HWPT_ALLOC_NEST_PARENT`
    NestParent,
    /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`
    DirtyTracking,
    /// `IOMMU_HWPT_ALLOC_PASID`
    Pasid,
}

impl HwptFlag {
    /// The flag's bit in `iommu_hwpt_alloc.flags`.
    pub fn bit(self) -> u32 {
        match self {
            HwptFlag::NestParent => msi_uapi::IOMMU_HWPT_ALLOC_NEST_PARENT,
            HwptFlag::DirtyTracking => msi_uapi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            HwptFlag::Pasid => msi_uapi::IOMMU_HWPT_ALLOC_PASID,
        }
    }
}

/// The interrupt kind of `msi_enable`: the VFIO IRQ index it sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IrqKind {
    /// `VFIO_PCI_MSI_IRQ_INDEX`
    #[default]
    Msi,
    /// `VFIO_PCI_MSIX_IRQ_INDEX`
    Msix,
}

impl IrqKind {
    pub fn is_msi(&self) -> bool {
        *self == IrqKind::Msi
    }

    /// The VFIO IRQ index.
    pub fn index(self) -> u32 {
        match self {
            IrqKind::Msi => msi_uapi::VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::Msix => msi_uapi::VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

/// Direction of an edu DMA, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmaDirection {
    /// Guest RAM at `iova` → edu buffer (the device reads memory).
    ToDevice,
    /// edu buffer → guest RAM at `iova` (the device writes memory).
    FromDevice,
}

/// An `IOMMU_OPTION` option id: a known name or any raw number (to probe
/// ids a kernel may not know).
///
/// Written as its name (`"sw_msi_start"`) or an integer; a known integer
/// reads as its name, so `2` and `"sw_msi_start"` are the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionId {
    /// `IOMMU_OPTION_RLIMIT_MODE` (0)
    RlimitMode,
    /// `IOMMU_OPTION_HUGE_PAGES` (1)
    HugePages,
    /// `IOMMU_OPTION_SW_MSI_START` (2, added by the SW_MSI patch)
    SwMsiStart,
    /// `IOMMU_OPTION_SW_MSI_SIZE` (3, added by the SW_MSI patch)
    SwMsiSize,
    /// Any other id, passed to the kernel as is.
    Raw(u32),
}

const OPTION_NAMES: [(OptionId, &str); 4] = [
    (OptionId::RlimitMode, "rlimit_mode"),
    (OptionId::HugePages, "huge_pages"),
    (OptionId::SwMsiStart, "sw_msi_start"),
    (OptionId::SwMsiSize, "sw_msi_size"),
];

impl OptionId {
    /// The `option_id` the kernel sees (from `msi-uapi`, whose values each
    /// kernel stage checks against the kernel's headers).
    pub fn id(self) -> u32 {
        match self {
            OptionId::RlimitMode => msi_uapi::IOMMU_OPTION_RLIMIT_MODE,
            OptionId::HugePages => msi_uapi::IOMMU_OPTION_HUGE_PAGES,
            OptionId::SwMsiStart => msi_uapi::IOMMU_OPTION_SW_MSI_START,
            OptionId::SwMsiSize => msi_uapi::IOMMU_OPTION_SW_MSI_SIZE,
            OptionId::Raw(id) => id,
        }
    }

    /// The option with kernel id `id` (a name when it has one).
    pub fn from_id(id: u32) -> OptionId {
        OPTION_NAMES
            .iter()
            .map(|(o, _)| *o)
            .find(|o| o.id() == id)
            .unwrap_or(OptionId::Raw(id))
    }

    /// The option's name, `None` for an unnamed raw id.
    pub fn name(self) -> Option<&'static str> {
        OPTION_NAMES
            .iter()
            .find(|(o, _)| *o == self)
            .map(|(_, n)| *n)
    }
}

impl fmt::Display for OptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.id()),
        }
    }
}

impl Serialize for OptionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => serializer.serialize_str(name),
            None => serializer.serialize_u32(self.id()),
        }
    }
}

impl<'de> Deserialize<'de> for OptionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OptionIdVisitor;
        impl Visitor<'_> for OptionIdVisitor {
            type Value = OptionId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an option name (rlimit_mode, huge_pages, sw_msi_start, sw_msi_size) or an integer id",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OptionId, E> {
                u32::try_from(v)
                    .map(OptionId::from_id)
                    .map_err(|_| E::custom(format_args!("option id {v} does not fit in 32 bits")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OptionId, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format_args!("option id {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OptionId, E> {
                OPTION_NAMES.iter().find(|(_, n)| *n == v).map(|(o, _)| *o).ok_or_else(|| {
                    E::custom(format_args!(
                        "unknown option {v:?}: expected rlimit_mode, huge_pages, sw_msi_start, sw_msi_size or an integer id"
                    ))
                })
            }
        }
        deserializer.deserialize_any(OptionIdVisitor)
    }
}

/// A reference to an iommufd object: a name the scenario gave it (an IOAS,
/// a HWPT, or a bound device, which stands for its dev id) or a raw kernel
/// id (to probe ids that do not exist). Defaults to id 0, "no object".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectRef {
    Id(u32),
    Name(String),
}

impl Default for ObjectRef {
    fn default() -> Self {
        ObjectRef::Id(0)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Id(id) => write!(f, "id {id}"),
            ObjectRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl From<&str> for ObjectRef {
    fn from(name: &str) -> Self {
        ObjectRef::Name(name.to_owned())
    }
}

impl Serialize for ObjectRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ObjectRef::Id(id) => serializer.serialize_u32(*id),
            ObjectRef::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectRefVisitor;
        impl Visitor<'_> for ObjectRefVisitor {
            type Value = ObjectRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object name (e.g. \"ioas0\") or an integer id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ObjectRef, E> {
                u32::try_from(v)
                    .map(ObjectRef::Id)
                    .map_err(|_| E::custom(format_args!("object id {v} does not fit in 32 bits")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ObjectRef, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format_args!("object id {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ObjectRef, E> {
                if v.is_empty() {
                    return Err(E::custom("empty object name"));
                }
                Ok(ObjectRef::Name(v.to_owned()))
            }
        }
        deserializer.deserialize_any(ObjectRefVisitor)
    }
}
