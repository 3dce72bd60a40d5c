//! What a guest is made of: [`VmConfig`] and the machine, IOMMU, device and
//! SSH types it is built from.

use std::path::PathBuf;
use std::time::Duration;

/// The QEMU every guest runs on unless a config names another (from PATH).
pub const QEMU: &str = "qemu-system-aarch64";

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
/// On QEMU ≥ 10.0, `virt` forces a nested SMMU (S1+S2) whatever
/// `-global arm-smmuv3.stage=` says, so with [`Machine::Virt`] an explicit
/// S1 or S2 runs on `virt-9.0`, which honours the global (see
/// `resolve_machine` for what was measured).
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
    EduPairMultifunction {
        ids: [String; 2],
        dma_mask: Option<u64>,
    },
    /// Two `edu` behind one `pcie-pci-bridge`: both DMA with the bridge's
    /// alias requester id `(secondary bus, 0)`. Measured on Linux 6.18: the
    /// first gets an iommu group (shared with the bridge), the second is
    /// refused ("Aliasing StreamID 0x100 ... unsupported, expect DMA to be
    /// broken") and has none. Use [`Device::EduPairMultifunction`] for a
    /// shared group; this one is for the aliasing case itself.
    EduPairBehindBridge {
        bridge_id: String,
        ids: [String; 2],
        dma_mask: Option<u64>,
    },
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
    /// Start with the CPUs stopped (`-S`) and stop at QMP: the machine and
    /// every device exist, no guest code has run (the pre-flight check).
    pub start_paused: bool,
    /// Start from a machine saved by `Vm::save_state` (`-incoming`) instead
    /// of booting: the rest of the config must be the one it was saved
    /// with, as QEMU migration requires.
    pub incoming: Option<Incoming>,
    /// What `qemu` can do, when the run has probed it already (once per
    /// run, not per guest); `None`: probed at boot.
    pub caps: Option<super::QemuCaps>,
}

/// A saved machine to start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The migration stream, as `migrate` wrote it to a `file:` URI.
    pub state: PathBuf,
    /// The saving boot's console up to the save: replayed first, so the
    /// console (and its kernel reports) reads as a booted guest's would.
    pub console: Vec<String>,
}

impl VmConfig {
    /// A config with the harness's defaults for everything but the inputs.
    pub fn new(kernel: PathBuf, initrd: PathBuf, run_dir: PathBuf) -> VmConfig {
        VmConfig {
            qemu: PathBuf::from(QEMU),
            machine: Machine::Virt,
            iommu: Iommu::SmmuV3(SmmuStage::MachineDefault),
            cpu: "max".into(),
            smp: 2,
            memory_mb: 1024,
            kernel,
            initrd,
            append: crate::image::kernel_cmdline(&Default::default()),
            devices: Vec::new(),
            hotplug_ports: 0,
            ssh: None,
            trace_events: Vec::new(),
            run_dir,
            boot_timeout: Duration::from_secs(60),
            start_paused: false,
            incoming: None,
            caps: None,
        }
    }
}
