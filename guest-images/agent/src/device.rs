//! One VFIO device opened through its cdev: region access (config space,
//! BAR0), iommufd bind/attach, and MSI eventfds.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::sys::{self, Failure, Outcome};
use crate::uapi::*;

/// A VFIO region's place in the device fd.
#[derive(Debug, Clone, Copy)]
struct Region {
    offset: u64,
    size: u64,
    flags: u32,
}

#[derive(Debug)]
pub struct Device {
    pub bdf: String,
    file: File,
    /// The iommufd dev id, once bound.
    pub dev_id: Option<u32>,
    /// The IOAS whose mappings the device's DMA goes through, when the agent
    /// can tell (attached to an IOAS, or to a HWPT allocated on one).
    pub attached_ioas: Option<u32>,
    /// What the last `to_device` DMA left in edu's buffer: pattern seed, length.
    pub dma_buffer: Option<(u64, usize)>,
    regions: [Option<Region>; 8],
    eventfds: Vec<File>,
    /// The VFIO IRQ index `msi_enable` set (MSI or MSI-X).
    irq_index: u32,
}

impl Device {
    /// Opens `cdev` read-write. Regions stay closed to us until `bind`.
    pub fn open(bdf: &str, cdev: &Path) -> Outcome<Device> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(cdev)
            .map_err(|e| Failure::io(&e, format!("open {}", cdev.display())))?;
        Ok(Device {
            bdf: bdf.to_owned(),
            file,
            dev_id: None,
            attached_ioas: None,
            dma_buffer: None,
            regions: [None; 8],
            eventfds: Vec::new(),
            irq_index: VFIO_PCI_MSI_IRQ_INDEX,
        })
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`; returns the dev id.
    pub fn bind(&mut self, iommufd: &File) -> Outcome<u32> {
        use std::os::fd::AsRawFd;
        let mut arg = VfioDeviceBindIommufd {
            argsz: size32::<VfioDeviceBindIommufd>(),
            iommufd: iommufd.as_raw_fd(),
            ..Default::default()
        };
        sys::ioctl(
            &self.file,
            VFIO_DEVICE_BIND_IOMMUFD,
            &mut arg,
            "VFIO_DEVICE_BIND_IOMMUFD",
        )?;
        self.dev_id = Some(arg.out_devid);
        Ok(arg.out_devid)
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (attach, or replace when attached);
    /// returns the id the kernel reports back.
    pub fn attach(&self, pt_id: u32) -> Outcome<u32> {
        let mut arg = VfioDeviceAttachIommufdPt {
            argsz: size32::<VfioDeviceAttachIommufdPt>(),
            pt_id,
            ..Default::default()
        };
        sys::ioctl(
            &self.file,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            &mut arg,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        )?;
        Ok(arg.pt_id)
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    pub fn detach(&self) -> Outcome<()> {
        let mut arg = VfioDeviceDetachIommufdPt {
            argsz: size32::<VfioDeviceDetachIommufdPt>(),
            ..Default::default()
        };
        sys::ioctl(
            &self.file,
            VFIO_DEVICE_DETACH_IOMMUFD_PT,
            &mut arg,
            "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        )
    }

    fn region(&mut self, index: u32) -> Outcome<Region> {
        let slot = usize::try_from(index)
            .ok()
            .filter(|&i| i < self.regions.len());
        if let Some(region) = slot.and_then(|i| self.regions[i]) {
            return Ok(region);
        }
        let mut info = VfioRegionInfo {
            argsz: size32::<VfioRegionInfo>(),
            index,
            ..Default::default()
        };
        sys::ioctl(
            &self.file,
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        let region = Region {
            offset: info.offset,
            size: info.size,
            flags: info.flags,
        };
        if let Some(i) = slot {
            self.regions[i] = Some(region);
        }
        Ok(region)
    }

    /// Reads `N` bytes at `off` of region `index` with one `pread`, which
    /// vfio-pci turns into one access of that width.
    fn region_read<const N: usize>(
        &mut self,
        index: u32,
        off: u64,
        what: &str,
    ) -> Outcome<[u8; N]> {
        let region = self.checked_region(index, off, N, VFIO_REGION_INFO_FLAG_READ, what)?;
        let mut buf = [0u8; N];
        let n = self
            .file
            .read_at(&mut buf, region.offset + off)
            .map_err(|e| Failure::io(&e, format!("pread {what}")))?;
        if n != N {
            return Err(Failure::agent(format!(
                "pread {what}: read {n} of {N} bytes"
            )));
        }
        Ok(buf)
    }

    fn region_write(&mut self, index: u32, off: u64, data: &[u8], what: &str) -> Outcome<()> {
        let region =
            self.checked_region(index, off, data.len(), VFIO_REGION_INFO_FLAG_WRITE, what)?;
        let n = self
            .file
            .write_at(data, region.offset + off)
            .map_err(|e| Failure::io(&e, format!("pwrite {what}")))?;
        if n != data.len() {
            return Err(Failure::agent(format!(
                "pwrite {what}: wrote {n} of {} bytes",
                data.len()
            )));
        }
        Ok(())
    }

    fn checked_region(
        &mut self,
        index: u32,
        off: u64,
        len: usize,
        flag: u32,
        what: &str,
    ) -> Outcome<Region> {
        if self.dev_id.is_none() {
            return Err(Failure::agent(format!(
                "{what}: device {} is not bound (VFIO regions open after bind)",
                self.bdf
            )));
        }
        let region = self.region(index)?;
        if region.flags & flag == 0 || off.saturating_add(len as u64) > region.size {
            return Err(Failure::agent(format!(
                "{what}: offset {off:#x}+{len} is outside region {index} (size {:#x}, flags {:#x})",
                region.size, region.flags
            )));
        }
        Ok(region)
    }

    pub fn config_read16(&mut self, off: u64) -> Outcome<u16> {
        Ok(u16::from_le_bytes(self.region_read(
            VFIO_PCI_CONFIG_REGION_INDEX,
            off,
            "config",
        )?))
    }

    pub fn config_write16(&mut self, off: u64, val: u16) -> Outcome<()> {
        self.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            off,
            &val.to_le_bytes(),
            "config",
        )
    }

    pub fn bar0_read32(&mut self, off: u64) -> Outcome<u32> {
        Ok(u32::from_le_bytes(self.region_read(
            VFIO_PCI_BAR0_REGION_INDEX,
            off,
            "BAR0",
        )?))
    }

    pub fn bar0_write32(&mut self, off: u64, val: u32) -> Outcome<()> {
        self.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &val.to_le_bytes(), "BAR0")
    }

    pub fn bar0_write64(&mut self, off: u64, val: u64) -> Outcome<()> {
        self.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &val.to_le_bytes(), "BAR0")
    }

    /// `VFIO_DEVICE_SET_IRQS` on IRQ index `index` (MSI or MSI-X) with a
    /// fresh eventfd per vector.
    pub fn msi_enable(&mut self, vectors: u32, index: u32) -> Outcome<()> {
        if vectors == 0 {
            return Err(Failure::agent(
                "msi_enable needs at least one vector (msi_disable turns MSI off)",
            ));
        }
        let eventfds = (0..vectors)
            .map(|_| sys::eventfd())
            .collect::<Outcome<Vec<File>>>()?;
        let fds: Vec<i32> = eventfds
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let mut buf = irq_set_eventfds(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            &fds,
        );
        sys::ioctl_buf(
            &self.file,
            VFIO_DEVICE_SET_IRQS,
            &mut buf,
            "VFIO_DEVICE_SET_IRQS",
        )?;
        // Replacing the old eventfds only now keeps them if the kernel refused.
        self.eventfds = eventfds;
        self.irq_index = index;
        Ok(())
    }

    /// `VFIO_DEVICE_SET_IRQS` with count 0 on the index `msi_enable` used:
    /// MSI (or MSI-X) off, eventfds released.
    pub fn msi_disable(&mut self) -> Outcome<()> {
        let mut buf = irq_set_eventfds(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            self.irq_index,
            &[],
        );
        sys::ioctl_buf(
            &self.file,
            VFIO_DEVICE_SET_IRQS,
            &mut buf,
            "VFIO_DEVICE_SET_IRQS",
        )?;
        self.eventfds.clear();
        Ok(())
    }

    /// Counts signals on `vector`'s eventfd until `count` arrived or the
    /// timeout passed (`count == 0`: the whole timeout).
    pub fn wait_interrupts(&mut self, vector: u32, count: u64, timeout: Duration) -> Outcome<u64> {
        let enabled = self.eventfds.len();
        let efd = usize::try_from(vector)
            .ok()
            .and_then(|v| self.eventfds.get_mut(v))
            .ok_or_else(|| {
                Failure::agent(format!(
                    "vector {vector} of {} has no eventfd ({enabled} enabled by msi_enable)",
                    self.bdf
                ))
            })?;
        let deadline = sys::deadline_after(timeout)?;
        let mut seen = 0u64;
        loop {
            // Read first: interrupts that came before the wait count too.
            let mut buf = [0u8; 8];
            match efd.read(&mut buf) {
                Ok(8) => seen = seen.saturating_add(u64::from_ne_bytes(buf)),
                Ok(n) => return Err(Failure::agent(format!("eventfd read returned {n} bytes"))),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::io(&e, "read eventfd")),
            }
            if (count > 0 && seen >= count) || Instant::now() >= deadline {
                return Ok(seen);
            }
            if !sys::wait_readable(efd, deadline)? {
                return Ok(seen);
            }
        }
    }
}
