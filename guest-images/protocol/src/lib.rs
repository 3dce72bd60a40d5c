//! Steps and results exchanged between the harness and the guest agent.
//!
//! This crate is the contract between the host (the scenario executor) and
//! `msi-agent`, which runs inside the guest and performs each step with real
//! ioctls. Both sides use these types, so they cannot drift; scenario files
//! deserialize into [`Step`] directly.
//!
//! # Transport
//!
//! The harness runs `/bin/msi-agent serve` over SSH. The agent reads
//! newline-delimited JSON [`Request`]s on stdin and writes exactly one JSON
//! [`Response`] line per request on stdout, flushed at once. Diagnostics go to
//! stderr and are never needed to understand a response.
//!
//! 1. The first request must be `hello` carrying [`PROTOCOL_VERSION`]. The
//!    agent answers with its version and the kernel release (`uname -r`). A
//!    different version, or any other first request, gets an `error`
//!    response and the agent exits with status 2.
//! 2. Then any number of `step` requests, each answered by a `step` response
//!    holding a [`StepResult`]. Steps run one at a time, in order.
//! 3. `shutdown` is answered with `shutdown` and the agent exits 0 (end of
//!    stdin does the same, without the answer).
//!
//! A line that is not a valid request gets an `error` response; the session
//! goes on. For people there is also `msi-agent run '<step json>'...`, which
//! runs the given steps in one session and prints one [`StepResult`] line each.
//!
//! # Results
//!
//! A [`StepResult`] is one of:
//! - `ok`: the step worked; a [`StepValue`] whose variant name says what it
//!   holds (`done`, `dev_id`, `iova`, `value`, `interrupts`, ...);
//! - `err`: a system call failed ([`ErrnoError`]: number, kernel name and the
//!   call). This is how the kernel answers, so scenarios assert on it;
//! - `returned`: an ioctl that must return 0 on success returned a positive
//!   value ([`NonzeroReturn`]): also the kernel's answer, never taken for `ok`;
//! - `agent_error`: the step could not be performed (unknown name, device not
//!   bound, bad argument). That is a bug in the scenario, not a finding.
//!
//! Addresses, lengths and option values are [`HexU64`]: written as `"0x..."`
//! strings, read from integers or strings.
//!
//! # Objects
//!
//! The scenario names its objects: devices (`edu0`), IOASes (`ioas0`), HWPTs
//! (`hwpt0`), in one namespace. The agent keeps one iommufd context
//! (`/dev/iommu`, opened at first need) per session and maps names to file
//! descriptors and kernel ids; results carry the kernel ids. Where an object
//! is expected ([`ObjectRef`]) a raw integer id may be given instead, to probe
//! ids that do not exist; a device name stands for its iommufd dev id.
//!
//! # Steps
//!
//! | op | does | `ok` value |
//! |----|------|------------|
//! | `open_device {device, bdf}` | open `/dev/vfio/devices/vfioN` of the PCI device | `cdev` |
//! | `bind {device}` | `VFIO_DEVICE_BIND_IOMMUFD` | `dev_id` |
//! | `ioas_alloc {ioas}` | `IOMMU_IOAS_ALLOC` | `ioas_id` |
//! | `hwpt_alloc {hwpt, device, pt, flags=[], vste?}` | `IOMMU_HWPT_ALLOC` (`flags`: `nest_parent`, `dirty_tracking`, `pasid`; `vste`: two words of an SMMUv3 virtual STE, a nested HWPT on a vIOMMU `pt`) | `hwpt_id` |
//! | `viommu_alloc {viommu, device, hwpt}` | `IOMMU_VIOMMU_ALLOC` of an ARM SMMUv3 vIOMMU on a nesting-parent HWPT | `viommu_id` |
//! | `attach {device, pt}` / `replace {device, pt}` | `VFIO_DEVICE_ATTACH_IOMMUFD_PT` | `pt_id` |
//! | `detach {device}` | `VFIO_DEVICE_DETACH_IOMMUFD_PT` | `done` |
//! | `option_set {option, object=0, value}` | `IOMMU_OPTION` SET | `done` |
//! | `option_get {option, object=0}` | `IOMMU_OPTION` GET | `value` |
//! | `option_op {option, object=0, code, value=0}` | `IOMMU_OPTION` with `op = code` (neither SET nor GET: a probe of the handler's op check) | `value` |
//! | `ioas_map {ioas, iova?, length, readable=true, writable=true}` | `IOMMU_IOAS_MAP` of fresh anonymous memory; fixed IOVA when `iova` is given | `iova` |
//! | `ioas_unmap {ioas, iova, length}` | `IOMMU_IOAS_UNMAP` | `unmapped` |
//! | `iova_ranges {ioas}` | `IOMMU_IOAS_IOVA_RANGES` | `iova_ranges` |
//! | `destroy {object}` | `IOMMU_DESTROY` | `done` |
//! | `bus_master {device, enable=true}` | PCI_COMMAND bit 2 via the VFIO config region | `command` |
//! | `msi_enable {device, vectors=1, irq=msi}` / `msi_disable {device}` | `VFIO_DEVICE_SET_IRQS` on the MSI (`irq = "msix"`: MSI-X) index | `vectors` / `done` |
//! | `edu_raise {device, value=1}` / `edu_ack {device, value=1}` | write edu BAR0 0x60 / 0x64 | `done` |
//! | `wait_interrupts {device, vector=0, count, timeout_ms=2000}` | count eventfd signals | `interrupts` |
//! | `edu_dma {device, direction, iova, length, timeout_ms=2000}` | one edu DMA (`to_device`/`from_device`) | `dma` |
//! | `e1000e_raise {device, vector}` | an e1000e's MSI-X vector 0..=4: IVAR, EIAC, IMS, then its cause in ICS | `done` |
//! | `msi_config {device}` | MSI capability from sysfs `config` | `msi_config` |
//! | `msix_table {device}` | MSI-X capability (sysfs `config`) and table (sysfs `resourceN`) | `msix_table` |
//! | `reserved_regions {device}` | iommu group, `type`, `reserved_regions` | `reserved_regions` |
//! | `proc_interrupts {device}` | `/proc/interrupts` lines naming the BDF | `proc_interrupts` |
//! | `dmesg {}` | kernel log lines since the previous `dmesg` | `dmesg` |
//! | `close_device {device}` | close the cdev | `done` |
//! | `sleep {ms}` | sleep | `done` |
//!
//! Option names are `rlimit_mode` (0), `huge_pages` (1), `sw_msi_start` (2)
//! and `sw_msi_size` (3); any integer id is accepted too.
//!
//! # Example session
//!
//! `→` is a request line, `←` the response line. This is a real run: Linux
//! 6.18.15 with the SW_MSI patch on QEMU 10.0 `-M virt,iommu=smmuv3 -nic none
//! -device edu` (so edu sits at 00:01.0), edu bound to vfio-pci.
//!
//! ```text
//! → {"hello":{"version":1}}
//! ← {"hello":{"version":1,"kernel_release":"6.18.15","agent":"0.1.0"}}
//! → {"step":{"op":"open_device","device":"edu0","bdf":"0000:00:01.0"}}
//! ← {"step":{"ok":{"cdev":"/dev/vfio/devices/vfio0"}}}
//! → {"step":{"op":"bind","device":"edu0"}}
//! ← {"step":{"ok":{"dev_id":1}}}
//! → {"step":{"op":"ioas_alloc","ioas":"ioas0"}}
//! ← {"step":{"ok":{"ioas_id":2}}}
//! → {"step":{"op":"option_set","option":"sw_msi_start","value":"0x10000000"}}
//! ← {"step":{"ok":"done"}}
//! → {"step":{"op":"option_set","option":"sw_msi_size","value":1}}
//! ← {"step":{"ok":"done"}}
//! → {"step":{"op":"attach","device":"edu0","pt":"ioas0"}}
//! ← {"step":{"ok":{"pt_id":3}}}
//! → {"step":{"op":"bus_master","device":"edu0"}}
//! ← {"step":{"ok":{"command":"0x6"}}}
//! → {"step":{"op":"msi_enable","device":"edu0"}}
//! ← {"step":{"ok":{"vectors":1}}}
//! → {"step":{"op":"msi_config","device":"edu0"}}
//! ← {"step":{"ok":{"msi_config":{"enabled":true,"address":"0x10000040","data":"0x0","vectors":1,"max_vectors":1}}}}
//! → {"step":{"op":"edu_raise","device":"edu0"}}
//! ← {"step":{"ok":"done"}}
//! → {"step":{"op":"wait_interrupts","device":"edu0","count":1,"timeout_ms":1000}}
//! ← {"step":{"ok":{"interrupts":1}}}
//! → {"step":{"op":"option_get","option":99}}
//! ← {"step":{"err":{"errno":95,"name":"EOPNOTSUPP","call":"IOMMU_OPTION"}}}
//! → {"step":{"op":"attach","device":"edu1","pt":"ioas0"}}
//! ← {"step":{"agent_error":{"message":"unknown device \"edu1\" (open_device it first)"}}}
//! → {"shutdown":{}}
//! ← {"shutdown":{}}
//! ```
//!
//! The same results in YAML, as snapshots show them:
//! `ok: {iova: "0x8000000"}`, `ok: done`,
//! `err: {errno: 95, name: EOPNOTSUPP, call: IOMMU_OPTION}`.

mod errno;
mod hex;
mod result;
mod step;

use serde::{Deserialize, Serialize};

pub use crate::errno::{errno_name, errno_number};
pub use crate::hex::{HexU64, ParseHexU64Error};
pub use crate::result::{
    BranchOutcome, DmaReport, ErrnoError, IovaRange, IrqLine, MsiConfig, MsixEntry, MsixTable,
    NonzeroReturn, ReservedRegions, StepResult, StepValue,
};
pub use crate::step::{
    Branch, DmaDirection, HwptFlag, IrqKind, ObjectRef, OptionId, Step, DEFAULT_WAIT_TIMEOUT_MS,
};

/// The protocol version both sides must agree on in `hello`. Bump it on any
/// change to the types of this crate that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 4;

/// What the agent writes to the kernel log (`/dev/kmsg`) after each step,
/// before it answers: on the serial console, every kernel line the step's
/// system calls printed comes before it, so the host attributes kernel lines
/// to steps by this barrier, not by their arrival time. The agent's own
/// `dmesg` step leaves it out.
pub const STEP_END_MARKER: &str = "msi-agent: step end";

/// One line from the harness to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Must come first; `version` is the sender's [`PROTOCOL_VERSION`].
    Hello { version: u32 },
    /// Perform one step.
    Step(Step),
    /// End the session.
    Shutdown {},
}

/// One line from the agent to the harness, answering one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to `hello`: the agent's protocol version, `uname -r`, and the
    /// agent crate version.
    Hello {
        version: u32,
        kernel_release: String,
        agent: String,
    },
    /// Answer to `step`.
    Step(StepResult),
    /// Answer to `shutdown`; the agent exits after writing it.
    Shutdown {},
    /// The request line could not be understood (or the handshake failed).
    Error { message: String },
}

#[cfg(test)]
mod tests;
