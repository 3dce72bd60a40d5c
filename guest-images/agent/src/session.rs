//! A session: one iommufd context, the scenario's named objects, and the
//! memory behind IOAS mappings. [`Session::run`] performs one step.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use msi_protocol::{
    DmaDirection, DmaReport, HexU64, HwptFlag, IovaRange, ObjectRef, OptionId, Step, StepResult,
    StepValue,
};

use crate::device::Device;
use crate::kmsg::Kmsg;
use crate::observe;
use crate::sys::{self, AnonMemory, Failure, Outcome};
use crate::uapi::*;

/// edu registers (QEMU `hw/misc/edu.c`, BAR0).
mod edu {
    pub const RAISE: u64 = 0x60;
    pub const ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
    pub const DMA_START: u64 = 1 << 0;
    /// Direction bit: set = edu buffer → RAM.
    pub const DMA_TO_RAM: u64 = 1 << 1;
    /// edu's DMA buffer, as a device-side address.
    pub const DMA_BUFFER: u64 = 0x40000;
    pub const DMA_BUFFER_SIZE: u64 = 4096;
    /// edu's `dma_mask` property defaults to 28 bits.
    pub const DEFAULT_DMA_MASK_BITS: u32 = 28;
}

/// e1000e (82574L) registers and bits (QEMU `hw/net/e1000_regs.h`, BAR0).
mod e1000e {
    pub const ICR: u64 = 0xc0;
    pub const ICS: u64 = 0xc8;
    pub const IMS: u64 = 0xd0;
    pub const IMC: u64 = 0xd8;
    pub const EIAC: u64 = 0xdc;
    pub const IVAR: u64 = 0xe4;
    /// The MSI-X interrupt causes, in the order IVAR lists them: RxQ0,
    /// RxQ1, TxQ0, TxQ1, Other (`E1000_ICR_RXQ0` ... `E1000_ICR_OTHER`).
    pub const CAUSES: [u32; 5] = [1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24];
    /// IVAR: 4 bits per cause, vector in bits 2:0, bit 3 valid
    /// (`E1000_IVAR_INT_ALLOC_VALID`); cause `i` to vector `i`.
    pub const IVAR_IDENTITY: u32 = {
        let mut v = 0;
        let mut i = 0;
        while i < 5 {
            v |= (8 | i) << (4 * i);
            i += 1;
        }
        v
    };
}

const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ioas,
    Hwpt,
    Viommu,
}

#[derive(Debug)]
struct Object {
    kind: Kind,
    id: u32,
    /// For a HWPT: the IOAS its mappings come from, when known.
    ioas_id: Option<u32>,
}

/// Memory the agent mapped into an IOAS, kept alive until unmapped.
#[derive(Debug)]
struct Mapping {
    ioas_id: u32,
    iova: u64,
    length: u64,
    memory: AnonMemory,
}

#[derive(Debug, Default)]
pub struct Session {
    iommufd: Option<File>,
    devices: BTreeMap<String, Device>,
    objects: BTreeMap<String, Object>,
    mappings: Vec<Mapping>,
    kmsg: Kmsg,
    dma_seed: u64,
}

impl Session {
    /// Performs `step`; every failure becomes a result. The kernel log gets
    /// the step-end marker before the caller sends the answer.
    pub fn run(&mut self, step: &Step) -> StepResult {
        let result = match self.perform(step) {
            Ok(value) => StepResult::Ok(value),
            Err(failure) => failure.into(),
        };
        self.kmsg.mark_step_end();
        result
    }

    fn perform(&mut self, step: &Step) -> Outcome<StepValue> {
        match step {
            Step::OpenDevice { device, bdf } => {
                self.check_unused(device)?;
                observe::check_bdf(bdf)?;
                let cdev = observe::vfio_cdev(bdf)?;
                let dev = Device::open(bdf, &cdev)?;
                self.devices.insert(device.clone(), dev);
                Ok(StepValue::Cdev(cdev.display().to_string()))
            }
            Step::Bind { device } => {
                // Name errors first: they must not depend on /dev/iommu.
                self.device(device)?;
                let iommufd = self
                    .iommufd()?
                    .try_clone()
                    .map_err(|e| Failure::io(&e, "dup iommufd"))?;
                Ok(StepValue::DevId(self.device(device)?.bind(&iommufd)?))
            }
            Step::IoasAlloc { ioas } => {
                self.check_unused(ioas)?;
                let mut arg = IommuIoasAlloc {
                    size: size32::<IommuIoasAlloc>(),
                    ..Default::default()
                };
                sys::ioctl(
                    self.iommufd()?,
                    IOMMU_IOAS_ALLOC,
                    &mut arg,
                    "IOMMU_IOAS_ALLOC",
                )?;
                self.objects.insert(
                    ioas.clone(),
                    Object {
                        kind: Kind::Ioas,
                        id: arg.out_ioas_id,
                        ioas_id: None,
                    },
                );
                Ok(StepValue::IoasId(arg.out_ioas_id))
            }
            Step::HwptAlloc {
                hwpt,
                device,
                pt,
                flags,
                vste,
            } => self.hwpt_alloc(hwpt, device, pt, flags, vste.as_ref()),
            Step::ViommuAlloc {
                viommu,
                device,
                hwpt,
            } => self.viommu_alloc(viommu, device, hwpt),
            Step::Attach { device, pt } | Step::Replace { device, pt } => {
                let pt_id = self.resolve(pt)?;
                let ioas = self.ioas_behind(pt_id);
                let dev = self.device(device)?;
                let out = dev.attach(pt_id)?;
                dev.attached_ioas = ioas;
                Ok(StepValue::PtId(out))
            }
            Step::Detach { device } => {
                let dev = self.device(device)?;
                dev.detach()?;
                dev.attached_ioas = None;
                Ok(StepValue::Done)
            }
            Step::OptionSet {
                option,
                object,
                value,
            } => {
                self.option(*option, object, IOMMU_OPTION_OP_SET, value.get())?;
                Ok(StepValue::Done)
            }
            Step::OptionGet { option, object } => Ok(StepValue::Value(HexU64(self.option(
                *option,
                object,
                IOMMU_OPTION_OP_GET,
                0,
            )?))),
            Step::OptionOp {
                option,
                object,
                code,
                value,
            } => Ok(StepValue::Value(HexU64(self.option(
                *option,
                object,
                *code,
                value.get(),
            )?))),
            Step::IoasMap {
                ioas,
                iova,
                length,
                readable,
                writable,
            } => self.ioas_map(ioas, *iova, length.get(), *readable, *writable),
            Step::IoasUnmap { ioas, iova, length } => {
                self.ioas_unmap(ioas, iova.get(), length.get())
            }
            Step::IovaRanges { ioas } => self.iova_ranges(ioas),
            Step::Destroy { object } => self.destroy(object),
            Step::BusMaster { device, enable } => {
                let dev = self.device(device)?;
                let cmd = dev.config_read16(PCI_COMMAND)?;
                let new = if *enable {
                    cmd | PCI_COMMAND_MASTER
                } else {
                    cmd & !PCI_COMMAND_MASTER
                };
                dev.config_write16(PCI_COMMAND, new)?;
                Ok(StepValue::Command(HexU64(u64::from(
                    dev.config_read16(PCI_COMMAND)?,
                ))))
            }
            Step::MsiEnable {
                device,
                vectors,
                irq,
            } => {
                self.device(device)?.msi_enable(*vectors, irq.index())?;
                Ok(StepValue::Vectors(*vectors))
            }
            Step::MsiDisable { device } => {
                self.device(device)?.msi_disable()?;
                Ok(StepValue::Done)
            }
            Step::EduRaise { device, value } => {
                self.device(device)?.bar0_write32(edu::RAISE, *value)?;
                Ok(StepValue::Done)
            }
            Step::EduAck { device, value } => {
                self.device(device)?.bar0_write32(edu::ACK, *value)?;
                Ok(StepValue::Done)
            }
            Step::WaitInterrupts {
                device,
                vector,
                count,
                timeout_ms,
                at_least,
            } => {
                let seen = self.device(device)?.wait_interrupts(
                    *vector,
                    *count,
                    Duration::from_millis(*timeout_ms),
                )?;
                Ok(StepValue::Interrupts(if *at_least {
                    seen.min(*count)
                } else {
                    seen
                }))
            }
            Step::EduDma {
                device,
                direction,
                iova,
                length,
                timeout_ms,
            } => self.edu_dma(
                device,
                *direction,
                iova.get(),
                length.get(),
                Duration::from_millis(*timeout_ms),
            ),
            Step::E1000eRaise { device, vector } => {
                let cause = usize::try_from(*vector)
                    .ok()
                    .and_then(|v| e1000e::CAUSES.get(v))
                    .copied()
                    .ok_or_else(|| {
                        Failure::agent(format!(
                            "e1000e_raise: vector {vector} is not 0..=4 (RxQ0, RxQ1, TxQ0, TxQ1, Other)"
                        ))
                    })?;
                let all = e1000e::CAUSES.iter().fold(0, |a, c| a | c);
                let dev = self.device(device)?;
                // Only this cause unmasked, and nothing left pending (ICR is
                // write-1-to-clear; with MSI-X on, reading it clears
                // nothing): a link-status change from the device's start
                // would otherwise keep raising the Other vector.
                dev.bar0_write32(e1000e::IMC, u32::MAX)?;
                dev.bar0_write32(e1000e::ICR, u32::MAX)?;
                dev.bar0_write32(e1000e::IVAR, e1000e::IVAR_IDENTITY)?;
                // Auto-clear on delivery, so the next raise of the cause is new.
                dev.bar0_write32(e1000e::EIAC, all)?;
                dev.bar0_write32(e1000e::IMS, cause)?;
                dev.bar0_write32(e1000e::ICS, cause)?;
                Ok(StepValue::Done)
            }
            Step::MsiConfig { device } => Ok(StepValue::MsiConfig(observe::msi_config(
                &self.device(device)?.bdf,
            )?)),
            Step::MsixTable { device } => Ok(StepValue::MsixTable(observe::msix_table(
                &self.device(device)?.bdf,
            )?)),
            Step::ReservedRegions { device } => Ok(StepValue::ReservedRegions(
                observe::reserved_regions(&self.device(device)?.bdf)?,
            )),
            Step::ProcInterrupts { device } => Ok(StepValue::ProcInterrupts(
                observe::proc_interrupts(&self.device(device)?.bdf)?,
            )),
            Step::Dmesg {} => Ok(StepValue::Dmesg(self.kmsg.read_new()?)),
            Step::CloseDevice { device } => {
                self.devices
                    .remove(device)
                    .ok_or_else(|| unknown_device(device))?;
                Ok(StepValue::Done)
            }
            Step::Sleep { ms } => {
                std::thread::sleep(Duration::from_millis(*ms));
                Ok(StepValue::Done)
            }
            Step::Concurrent {
                iterations,
                duration_ms,
                branches,
            } => self.concurrent(
                *iterations,
                duration_ms.map(Duration::from_millis),
                branches,
            ),
        }
    }

    /// Resolves every branch's steps, then runs them at once.
    fn concurrent(
        &mut self,
        iterations: u32,
        duration: Option<Duration>,
        branches: &[msi_protocol::Branch],
    ) -> Outcome<StepValue> {
        use crate::concurrent::{self, Call, Plan};
        if branches.is_empty() {
            return Err(Failure::agent("a concurrent step needs branches"));
        }
        // What cannot run in a branch is a scenario bug, told before any
        // system call.
        if let Some(s) = branches
            .iter()
            .flat_map(|b| &b.steps)
            .find(|s| !msi_protocol::Branch::OPS.contains(&s.op()))
        {
            return Err(concurrent::not_in_a_branch(s.op()));
        }
        self.iommufd()?;
        let this = &*self;
        let iommufd = this
            .iommufd
            .as_ref()
            .ok_or_else(|| Failure::agent("iommufd vanished"))?;
        let device = |name: &str| -> Outcome<&Device> {
            this.devices.get(name).ok_or_else(|| unknown_device(name))
        };
        let mut plans = Vec::new();
        for b in branches {
            let mut calls = Vec::new();
            for step in &b.steps {
                calls.push(match step {
                    Step::OptionSet {
                        option,
                        object,
                        value,
                    } => Call::Option {
                        iommufd,
                        option_id: option.id(),
                        op: IOMMU_OPTION_OP_SET,
                        object_id: this.resolve(object)?,
                        val64: value.get(),
                    },
                    Step::OptionGet { option, object } => Call::Option {
                        iommufd,
                        option_id: option.id(),
                        op: IOMMU_OPTION_OP_GET,
                        object_id: this.resolve(object)?,
                        val64: 0,
                    },
                    Step::Attach { device: d, pt } | Step::Replace { device: d, pt } => {
                        Call::Attach {
                            device: device(d)?,
                            pt_id: this.resolve(pt)?,
                        }
                    }
                    Step::Detach { device: d } => Call::Detach { device: device(d)? },
                    other => return Err(concurrent::not_in_a_branch(other.op())),
                });
            }
            plans.push(Plan {
                name: b.name.clone(),
                iterations: b.iterations.unwrap_or(iterations),
                calls,
            });
        }
        Ok(StepValue::Concurrent(concurrent::run(plans, duration)))
    }

    /// The session's iommufd, opened at first need.
    fn iommufd(&mut self) -> Outcome<&File> {
        if self.iommufd.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/iommu")
                .map_err(|e| Failure::io(&e, "open /dev/iommu"))?;
            self.iommufd = Some(file);
        }
        self.iommufd
            .as_ref()
            .ok_or_else(|| Failure::agent("iommufd vanished"))
    }

    fn device(&mut self, name: &str) -> Outcome<&mut Device> {
        self.devices
            .get_mut(name)
            .ok_or_else(|| unknown_device(name))
    }

    fn check_unused(&self, name: &str) -> Outcome<()> {
        if let Some(dev) = self.devices.get(name) {
            return Err(Failure::agent(format!(
                "name {name:?} is already the device {}",
                dev.bdf
            )));
        }
        if let Some(obj) = self.objects.get(name) {
            let kind = match obj.kind {
                Kind::Ioas => "IOAS",
                Kind::Hwpt => "HWPT",
                Kind::Viommu => "vIOMMU",
            };
            return Err(Failure::agent(format!(
                "name {name:?} is already the {kind} with id {}",
                obj.id
            )));
        }
        Ok(())
    }

    /// The kernel id `object` stands for; a device name stands for its dev id.
    fn resolve(&self, object: &ObjectRef) -> Outcome<u32> {
        let name = match object {
            ObjectRef::Id(id) => return Ok(*id),
            ObjectRef::Name(name) => name,
        };
        if let Some(obj) = self.objects.get(name) {
            return Ok(obj.id);
        }
        match self.devices.get(name) {
            Some(dev) => dev.dev_id.ok_or_else(|| {
                Failure::agent(format!("device {name:?} has no dev id until it is bound"))
            }),
            None => Err(Failure::agent(format!(
                "unknown object {name:?} (no ioas_alloc, hwpt_alloc, viommu_alloc or open_device named it)"
            ))),
        }
    }

    /// The IOAS whose mappings a device attached to `pt_id` uses, if known.
    fn ioas_behind(&self, pt_id: u32) -> Option<u32> {
        let obj = self.objects.values().find(|o| o.id == pt_id)?;
        match obj.kind {
            Kind::Ioas => Some(obj.id),
            Kind::Hwpt | Kind::Viommu => obj.ioas_id,
        }
    }

    fn hwpt_alloc(
        &mut self,
        hwpt: &str,
        device: &str,
        pt: &ObjectRef,
        flags: &[HwptFlag],
        vste: Option<&[HexU64; 2]>,
    ) -> Outcome<StepValue> {
        self.check_unused(hwpt)?;
        let pt_id = self.resolve(pt)?;
        let dev_id = self.device(device)?.dev_id.ok_or_else(|| {
            Failure::agent(format!("device {device:?} must be bound before hwpt_alloc"))
        })?;
        // The vSTE lives on this stack frame for the whole ioctl.
        let data = vste.map(|[a, b]| IommuHwptArmSmmuv3 {
            ste: [a.get().to_le(), b.get().to_le()],
        });
        let mut arg = IommuHwptAlloc {
            size: size32::<IommuHwptAlloc>(),
            flags: flags.iter().fold(0, |acc, f| acc | f.bit()),
            dev_id,
            pt_id,
            data_type: IOMMU_HWPT_DATA_NONE,
            ..Default::default()
        };
        if let Some(data) = &data {
            arg.data_type = IOMMU_HWPT_DATA_ARM_SMMUV3;
            arg.data_len = size32::<IommuHwptArmSmmuv3>();
            arg.data_uptr = std::ptr::from_ref(data) as u64;
        }
        sys::ioctl(
            self.iommufd()?,
            IOMMU_HWPT_ALLOC,
            &mut arg,
            "IOMMU_HWPT_ALLOC",
        )?;
        let ioas_id = self.ioas_behind(pt_id);
        self.objects.insert(
            hwpt.to_owned(),
            Object {
                kind: Kind::Hwpt,
                id: arg.out_hwpt_id,
                ioas_id,
            },
        );
        Ok(StepValue::HwptId(arg.out_hwpt_id))
    }

    fn viommu_alloc(&mut self, viommu: &str, device: &str, hwpt: &ObjectRef) -> Outcome<StepValue> {
        self.check_unused(viommu)?;
        let hwpt_id = self.resolve(hwpt)?;
        let dev_id = self.device(device)?.dev_id.ok_or_else(|| {
            Failure::agent(format!(
                "device {device:?} must be bound before viommu_alloc"
            ))
        })?;
        let mut arg = IommuViommuAlloc {
            size: size32::<IommuViommuAlloc>(),
            viommu_type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            dev_id,
            hwpt_id,
            ..Default::default()
        };
        sys::ioctl(
            self.iommufd()?,
            IOMMU_VIOMMU_ALLOC,
            &mut arg,
            "IOMMU_VIOMMU_ALLOC",
        )?;
        let ioas_id = self.ioas_behind(hwpt_id);
        self.objects.insert(
            viommu.to_owned(),
            Object {
                kind: Kind::Viommu,
                id: arg.out_viommu_id,
                ioas_id,
            },
        );
        Ok(StepValue::ViommuId(arg.out_viommu_id))
    }

    fn option(
        &mut self,
        option: OptionId,
        object: &ObjectRef,
        op: u16,
        val64: u64,
    ) -> Outcome<u64> {
        let object_id = self.resolve(object)?;
        iommu_option(self.iommufd()?, option.id(), op, object_id, val64)
    }

    fn ioas_map(
        &mut self,
        ioas: &str,
        iova: Option<HexU64>,
        length: u64,
        readable: bool,
        writable: bool,
    ) -> Outcome<StepValue> {
        let ioas_id = self.resolve(&ObjectRef::Name(ioas.to_owned()))?;
        let memory = AnonMemory::new(length)?;
        let mut flags = 0;
        if readable {
            flags |= IOMMU_IOAS_MAP_READABLE;
        }
        if writable {
            flags |= IOMMU_IOAS_MAP_WRITEABLE;
        }
        if iova.is_some() {
            flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
        }
        let mut arg = IommuIoasMap {
            size: size32::<IommuIoasMap>(),
            flags,
            ioas_id,
            user_va: memory.addr(),
            length,
            iova: iova.map_or(0, HexU64::get),
            ..Default::default()
        };
        sys::ioctl(self.iommufd()?, IOMMU_IOAS_MAP, &mut arg, "IOMMU_IOAS_MAP")?;
        self.mappings.push(Mapping {
            ioas_id,
            iova: arg.iova,
            length,
            memory,
        });
        Ok(StepValue::Iova(HexU64(arg.iova)))
    }

    fn ioas_unmap(&mut self, ioas: &str, iova: u64, length: u64) -> Outcome<StepValue> {
        let ioas_id = self.resolve(&ObjectRef::Name(ioas.to_owned()))?;
        let mut arg = IommuIoasUnmap {
            size: size32::<IommuIoasUnmap>(),
            ioas_id,
            iova,
            length,
        };
        sys::ioctl(
            self.iommufd()?,
            IOMMU_IOAS_UNMAP,
            &mut arg,
            "IOMMU_IOAS_UNMAP",
        )?;
        // The kernel unmaps whole mappings only; release the memory of those
        // that lay inside what it reports as unmapped.
        let end = iova.saturating_add(arg.length);
        self.mappings.retain(|m| {
            !(m.ioas_id == ioas_id && m.iova >= iova && m.iova.saturating_add(m.length) <= end)
        });
        Ok(StepValue::Unmapped(HexU64(arg.length)))
    }

    fn iova_ranges(&mut self, ioas: &str) -> Outcome<StepValue> {
        let ioas_id = self.resolve(&ObjectRef::Name(ioas.to_owned()))?;
        let mut ranges: Vec<IommuIovaRange> = Vec::new();
        // Ask with room for what the kernel last reported; it answers
        // EMSGSIZE with the real count when that is not enough. The count can
        // only change between calls if another thread maps, so two tries do.
        for _ in 0..3 {
            let mut arg = IommuIoasIovaRanges {
                size: size32::<IommuIoasIovaRanges>(),
                ioas_id,
                num_iovas: u32::try_from(ranges.len()).unwrap_or(u32::MAX),
                allowed_iovas: ranges.as_mut_ptr() as u64,
                ..Default::default()
            };
            match sys::ioctl(
                self.iommufd()?,
                IOMMU_IOAS_IOVA_RANGES,
                &mut arg,
                "IOMMU_IOAS_IOVA_RANGES",
            ) {
                Ok(()) => {
                    ranges.truncate(arg.num_iovas as usize);
                    let ranges = ranges
                        .iter()
                        .map(|r| IovaRange {
                            start: HexU64(r.start),
                            last: HexU64(r.last),
                        })
                        .collect();
                    return Ok(StepValue::IovaRanges(ranges));
                }
                Err(Failure::Errno {
                    errno: libc::EMSGSIZE,
                    ..
                }) => {
                    ranges = vec![IommuIovaRange::default(); arg.num_iovas as usize];
                }
                Err(other) => return Err(other),
            }
        }
        Err(Failure::agent(
            "IOMMU_IOAS_IOVA_RANGES kept changing its range count",
        ))
    }

    fn destroy(&mut self, object: &ObjectRef) -> Outcome<StepValue> {
        if let ObjectRef::Name(name) = object {
            if self.devices.contains_key(name) {
                return Err(Failure::agent(format!(
                    "{name:?} is a device: close_device it instead"
                )));
            }
        }
        let id = self.resolve(object)?;
        let mut arg = IommuDestroy {
            size: size32::<IommuDestroy>(),
            id,
        };
        sys::ioctl(self.iommufd()?, IOMMU_DESTROY, &mut arg, "IOMMU_DESTROY")?;
        self.objects.retain(|_, o| o.id != id);
        self.mappings.retain(|m| m.ioas_id != id);
        Ok(StepValue::Done)
    }

    fn edu_dma(
        &mut self,
        device: &str,
        direction: DmaDirection,
        iova: u64,
        length: u64,
        timeout: Duration,
    ) -> Outcome<StepValue> {
        if length == 0 || length > edu::DMA_BUFFER_SIZE {
            return Err(Failure::agent(format!(
                "edu_dma length {length:#x} must be 1..=0x1000 (edu's buffer is 4 KB)"
            )));
        }
        let len = length as usize;
        let mask = (1u64 << edu::DEFAULT_DMA_MASK_BITS) - 1;
        // What the device really uses: edu ANDs addresses with its dma_mask.
        let used = iova & mask;
        let clamped_iova = (used != iova).then_some(HexU64(used));

        self.dma_seed += 1;
        let seed = self.dma_seed;
        let dev = self
            .devices
            .get_mut(device)
            .ok_or_else(|| unknown_device(device))?;
        let memory = dev.attached_ioas.and_then(|ioas| {
            self.mappings.iter().find(|m| {
                m.ioas_id == ioas
                    && used >= m.iova
                    && used.saturating_add(length) <= m.iova.saturating_add(m.length)
            })
        });
        let at = memory.map(|m| (m, (used - m.iova) as usize));

        let expected = match direction {
            DmaDirection::ToDevice => {
                if let Some((m, off)) = at {
                    m.memory.write(off, &pattern(seed, len));
                }
                None
            }
            DmaDirection::FromDevice => {
                let expected = dev
                    .dma_buffer
                    .filter(|&(_, n)| n >= len)
                    .map(|(s, _)| pattern(s, len));
                if let Some((m, off)) = at {
                    // Poison the destination so that a DMA that never lands
                    // cannot look like one that did.
                    let poison = expected
                        .as_ref()
                        .map_or_else(|| vec![0xa5; len], |e| e.iter().map(|b| !b).collect());
                    m.memory.write(off, &poison);
                }
                expected
            }
        };

        let (src, dst, cmd) = match direction {
            DmaDirection::ToDevice => (iova, edu::DMA_BUFFER, edu::DMA_START),
            DmaDirection::FromDevice => (edu::DMA_BUFFER, iova, edu::DMA_START | edu::DMA_TO_RAM),
        };
        dev.bar0_write64(edu::DMA_SRC, src)?;
        dev.bar0_write64(edu::DMA_DST, dst)?;
        dev.bar0_write64(edu::DMA_COUNT, length)?;
        dev.bar0_write64(edu::DMA_CMD, cmd)?;
        let deadline = sys::deadline_after(timeout)?;
        let completed = loop {
            if u64::from(dev.bar0_read32(edu::DMA_CMD)?) & edu::DMA_START == 0 {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };

        let data_matches = match direction {
            DmaDirection::ToDevice => {
                // Only a finished DMA from memory we filled leaves a known buffer.
                dev.dma_buffer = (completed && at.is_some()).then_some((seed, len));
                None
            }
            DmaDirection::FromDevice => match (at, expected) {
                (Some((m, off)), Some(expected)) if completed => {
                    Some(m.memory.read(off, len) == expected)
                }
                _ => None,
            },
        };
        Ok(StepValue::Dma(DmaReport {
            completed,
            clamped_iova,
            data_matches,
        }))
    }
}

/// `IOMMU_OPTION` on `iommufd`: the value the kernel left in `val64`.
pub(crate) fn iommu_option(
    iommufd: &File,
    option_id: u32,
    op: u16,
    object_id: u32,
    val64: u64,
) -> Outcome<u64> {
    let mut arg = IommuOption {
        size: size32::<IommuOption>(),
        option_id,
        op,
        object_id,
        val64,
        ..Default::default()
    };
    sys::ioctl(iommufd, IOMMU_OPTION, &mut arg, "IOMMU_OPTION")?;
    Ok(arg.val64)
}

fn unknown_device(name: &str) -> Failure {
    Failure::agent(format!("unknown device {name:?} (open_device it first)"))
}

/// A byte pattern that differs per DMA and per offset, so a stale or
/// shifted buffer does not compare equal.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(0x9e) as usize ^ i.wrapping_mul(7) ^ 0x5a) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_agent_errors() {
        let mut session = Session::default();
        assert_eq!(
            session.run(&Step::Bind {
                device: "edu1".into()
            }),
            StepResult::agent_error("unknown device \"edu1\" (open_device it first)")
        );
        assert_eq!(
            session.run(&Step::IovaRanges {
                ioas: "ioas9".into()
            }),
            StepResult::agent_error(
                "unknown object \"ioas9\" (no ioas_alloc, hwpt_alloc, viommu_alloc or open_device named it)"
            )
        );
    }

    #[test]
    fn bad_arguments_are_agent_errors_before_any_syscall() {
        let mut session = Session::default();
        let got = session.run(&Step::OpenDevice {
            device: "d".into(),
            bdf: "../x".into(),
        });
        assert!(
            matches!(got, StepResult::AgentError { ref message } if message.contains("invalid PCI address"))
        );
    }

    #[test]
    fn a_concurrent_branch_runs_only_iommufd_and_vfio_calls() {
        let mut session = Session::default();
        let step = Step::Concurrent {
            iterations: 1,
            duration_ms: None,
            branches: vec![msi_protocol::Branch {
                name: "b".into(),
                iterations: None,
                steps: vec![Step::Sleep { ms: 1 }],
            }],
        };
        match session.run(&step) {
            StepResult::AgentError { message } => {
                assert!(
                    message.contains("`sleep` cannot run in a concurrent branch"),
                    "{message}"
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sleep_and_dmesg_work_without_devices() {
        let mut session = Session::default();
        assert_eq!(
            session.run(&Step::Sleep { ms: 1 }),
            StepResult::Ok(StepValue::Done)
        );
        // /dev/kmsg may be unreadable on a build host: either way a result.
        match session.run(&Step::Dmesg {}) {
            StepResult::Ok(StepValue::Dmesg(_)) | StepResult::Err(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dma_patterns_differ_per_seed_and_offset() {
        let a = pattern(1, 64);
        assert_ne!(a, pattern(2, 64));
        assert_ne!(a[0], a[1]);
        assert_eq!(a, pattern(1, 64));
    }
}
