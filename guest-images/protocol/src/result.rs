//! `StepResult`: what the agent saw when it performed a step.
//!
//! Every enum here is externally tagged so that JSON and YAML read as
//! `ok: {iova: "0x8000000"}` or `err: {errno: 95, name: EOPNOTSUPP, call:
//! IOMMU_OPTION}` in snapshots.

use serde::{Deserialize, Serialize};

use crate::{errno_name, HexU64};

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StepResult {
    /// The step completed; what it produced.
    Ok(StepValue),
    /// A system call failed: the kernel's answer, which scenarios assert on.
    Err(ErrnoError),
    /// An ioctl documented to return 0 on success (every iommufd and VFIO
    /// cdev ioctl the agent issues) returned a positive value. That is the
    /// kernel's behaviour, so it is a result the snapshot shows, not an agent
    /// error; what the call may have written back is not reported, as no
    /// caller can know whether it was.
    Returned(NonzeroReturn),
    /// The agent could not perform the step (unknown object name, device not
    /// bound, malformed argument...): a scenario bug, not a kernel finding.
    AgentError { message: String },
}

impl StepResult {
    /// The result of `call` failing with `errno`, named from the kernel's table.
    pub fn errno(errno: i32, call: impl Into<String>) -> StepResult {
        StepResult::Err(ErrnoError::new(errno, call))
    }

    /// The result of `call` returning `rc` (> 0) where it must return 0.
    pub fn returned(rc: i32, call: impl Into<String>) -> StepResult {
        StepResult::Returned(NonzeroReturn {
            rc,
            call: call.into(),
        })
    }

    /// An agent error with `message`.
    pub fn agent_error(message: impl Into<String>) -> StepResult {
        StepResult::AgentError {
            message: message.into(),
        }
    }
}

/// A failed system call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrnoError {
    /// The errno number (`95`).
    pub errno: i32,
    /// Its kernel name (`EOPNOTSUPP`), or `E<number>` if it has none.
    pub name: String,
    /// The ioctl or system call that failed (`IOMMU_OPTION`, `open /dev/iommu`).
    pub call: String,
}

impl ErrnoError {
    pub fn new(errno: i32, call: impl Into<String>) -> ErrnoError {
        let name = errno_name(errno).map_or_else(|| format!("E{errno}"), str::to_owned);
        ErrnoError {
            errno,
            name,
            call: call.into(),
        }
    }
}

/// A positive return from a call that must return 0 on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonzeroReturn {
    /// What the call returned.
    pub rc: i32,
    /// The ioctl (`IOMMU_OPTION`).
    pub call: String,
}

/// What a successful step produced; the variant name says what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StepValue {
    /// Nothing to report.
    Done,
    /// `open_device`: the VFIO cdev opened (`/dev/vfio/devices/vfio0`).
    Cdev(String),
    /// `bind`: the iommufd device id.
    DevId(u32),
    /// `ioas_alloc`: the IOAS id.
    IoasId(u32),
    /// `hwpt_alloc`: the HWPT id.
    HwptId(u32),
    /// `viommu_alloc`: the vIOMMU id.
    ViommuId(u32),
    /// `attach`/`replace`: the id the kernel reports as attached (for an IOAS,
    /// the HWPT it created automatically).
    PtId(u32),
    /// `option_get`: the option's value.
    Value(HexU64),
    /// `ioas_map`: the IOVA the mapping was placed at.
    Iova(HexU64),
    /// `ioas_unmap`: bytes the kernel unmapped.
    Unmapped(HexU64),
    /// `iova_ranges`: the IOVA ranges the IOAS allows.
    IovaRanges(Vec<IovaRange>),
    /// `bus_master`: PCI_COMMAND (as the VFIO config region shows it) after the write.
    Command(HexU64),
    /// `msi_enable`: vectors enabled.
    Vectors(u32),
    /// `wait_interrupts`: interrupts seen.
    Interrupts(u64),
    /// `edu_dma`: what the DMA did.
    Dma(DmaReport),
    /// `msi_config`: the device's real MSI capability.
    MsiConfig(MsiConfig),
    /// `msix_table`: the device's real MSI-X capability and table.
    MsixTable(MsixTable),
    /// `reserved_regions`: the device's iommu group.
    ReservedRegions(ReservedRegions),
    /// `proc_interrupts`: the matching `/proc/interrupts` lines.
    ProcInterrupts(Vec<IrqLine>),
    /// `dmesg`: new kernel log lines, `[seconds.micros] text`.
    Dmesg(Vec<String>),
    /// `concurrent`: what each branch's steps answered.
    Concurrent(Vec<BranchOutcome>),
}

/// What one branch of a `concurrent` step saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchOutcome {
    pub branch: String,
    /// Iterations done (fewer than asked when a `duration_ms` ended them).
    pub iterations: u32,
    /// Per step of the branch, in order: outcome (`ok` or the errno's name)
    /// → how many times.
    pub steps: Vec<std::collections::BTreeMap<String, u32>>,
}

/// An inclusive IOVA range, `struct iommu_iova_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IovaRange {
    pub start: HexU64,
    pub last: HexU64,
}

/// The result of one edu DMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaReport {
    /// The device cleared the busy bit before the deadline. Completion does
    /// not mean the transfer reached memory: edu ignores IOMMU faults.
    pub completed: bool,
    /// edu's default 28-bit `dma_mask` silently clamps addresses; when `iova`
    /// does not fit, this is the address the device really used (the agent
    /// assumes the default mask: QEMU's `-device edu,dma_mask=` changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped_iova: Option<HexU64>,
    /// `from_device` into memory the agent mapped: whether the bytes that
    /// arrived are the ones the last `to_device` step sent. Absent when
    /// there is nothing to compare (`to_device`, unknown memory, no earlier
    /// `to_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_matches: Option<bool>,
}

/// The MSI capability as the device really holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsiConfig {
    /// Message Control bit 0.
    pub enabled: bool,
    /// Message Address (upper half included for 64-bit capable devices).
    pub address: HexU64,
    /// Message Data.
    pub data: HexU64,
    /// Vectors enabled (2^Multiple Message Enable).
    pub vectors: u32,
    /// Vectors the device can do (2^Multiple Message Capable).
    pub max_vectors: u32,
}

/// The MSI-X capability and table as the device really holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixTable {
    /// Message Control bit 15 (MSI-X Enable).
    pub enabled: bool,
    /// Message Control bit 14 (Function Mask).
    pub function_masked: bool,
    /// Table entries (Table Size + 1).
    pub table_size: u32,
    /// The BAR (BIR) and offset of the table.
    pub bar: u32,
    pub offset: HexU64,
    /// Every entry, in order.
    pub entries: Vec<MsixEntry>,
}

impl MsixTable {
    /// The entries a device can signal: MSI-X on, the function and the entry unmasked.
    pub fn live(&self) -> impl Iterator<Item = &MsixEntry> {
        let on = self.enabled && !self.function_masked;
        self.entries.iter().filter(move |e| on && !e.masked)
    }
}

/// One MSI-X table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixEntry {
    pub vector: u32,
    /// Message Address (upper and lower).
    pub address: HexU64,
    /// Message Data.
    pub data: HexU64,
    /// Vector Control bit 0.
    pub masked: bool,
}

/// A device's iommu group as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedRegions {
    /// The group number (`/sys/kernel/iommu_groups/N`).
    pub group: u32,
    /// The group's default domain `type` (`DMA`, `identity`, ...).
    #[serde(rename = "type")]
    pub group_type: String,
    /// The lines of `reserved_regions` (`0x0000000008000000 0x00000000080fffff msi`).
    pub regions: Vec<String>,
}

/// One `/proc/interrupts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrqLine {
    /// The interrupt number or name (before the colon).
    pub irq: String,
    /// The per-CPU counts summed.
    pub count: u64,
    /// The rest of the line (chip, hwirq, type, action), spaces collapsed.
    pub description: String,
}
