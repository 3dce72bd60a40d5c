//! The kernel ABI the agent speaks: iommufd and VFIO ioctl numbers and
//! argument structures, mirrored by hand from Linux 6.18's
//! `include/uapi/linux/iommufd.h` and `include/uapi/linux/vfio.h`.
//!
//! Every structure is `#[repr(C)]` with a compile-time check of its size and
//! of each field's offset against the C layout, so a mistake fails the build
//! on both the host and the guest target. Fields named `__reserved` in C are
//! `reserved` here and must stay zero (iommufd rejects non-zero with E2BIG).

#![allow(dead_code)] // The ABI is mirrored whole; not every flag is used yet.

use std::mem::{offset_of, size_of};

/// `_IO(type, nr)`: both headers define every command with `_IO`, so the
/// direction and size bits are zero and only type and number remain. The
/// encoding is the asm-generic one, shared by arm64 and x86_64.
const fn io(ty: u8, nr: u32) -> u32 {
    ((ty as u32) << 8) | nr
}

// ---- iommufd.h ---------------------------------------------------------

/// `IOMMUFD_TYPE` (iommufd.h)
pub const IOMMUFD_TYPE: u8 = b';';
/// `IOMMU_DESTROY` (iommufd.h, `IOMMUFD_CMD_DESTROY` = 0x80)
pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, 0x80);
/// `IOMMU_IOAS_ALLOC` (iommufd.h, 0x81)
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, 0x81);
/// `IOMMU_IOAS_IOVA_RANGES` (iommufd.h, 0x84)
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, 0x84);
/// `IOMMU_IOAS_MAP` (iommufd.h, 0x85)
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, 0x85);
/// `IOMMU_IOAS_UNMAP` (iommufd.h, 0x86)
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, 0x86);
/// `IOMMU_OPTION` (iommufd.h, 0x87)
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, 0x87);
/// `IOMMU_HWPT_ALLOC` (iommufd.h, 0x89)
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, 0x89);

/// `enum iommufd_ioas_map_flags` (iommufd.h)
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `enum iommufd_option_ops` (iommufd.h)
pub const IOMMU_OPTION_OP_SET: u16 = 0;
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `enum iommu_hwpt_data_type` (iommufd.h)
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;

/// `struct iommu_destroy` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuDestroy {
    pub size: u32,
    pub id: u32,
}

/// `struct iommu_ioas_alloc` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}

/// `struct iommu_iova_range` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIovaRange {
    pub start: u64,
    pub last: u64,
}

/// `struct iommu_ioas_iova_ranges` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasIovaRanges {
    pub size: u32,
    pub ioas_id: u32,
    pub num_iovas: u32,
    pub reserved: u32,
    pub allowed_iovas: u64,
    pub out_iova_alignment: u64,
}

/// `struct iommu_ioas_map` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMap {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub reserved: u32,
    pub user_va: u64,
    pub length: u64,
    pub iova: u64,
}

/// `struct iommu_ioas_unmap` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasUnmap {
    pub size: u32,
    pub ioas_id: u32,
    pub iova: u64,
    pub length: u64,
}

/// `struct iommu_option` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuOption {
    pub size: u32,
    pub option_id: u32,
    pub op: u16,
    pub reserved: u16,
    pub object_id: u32,
    pub val64: u64,
}

/// `struct iommu_hwpt_alloc` (iommufd.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuHwptAlloc {
    pub size: u32,
    pub flags: u32,
    pub dev_id: u32,
    pub pt_id: u32,
    pub out_hwpt_id: u32,
    pub reserved: u32,
    pub data_type: u32,
    pub data_len: u32,
    pub data_uptr: u64,
    pub fault_id: u32,
    pub reserved2: u32,
}

// ---- vfio.h ------------------------------------------------------------

/// `VFIO_TYPE` and `VFIO_BASE` (vfio.h)
pub const VFIO_TYPE: u8 = b';';
const VFIO_BASE: u32 = 100;
/// `VFIO_DEVICE_GET_INFO` (vfio.h, VFIO_BASE + 7)
pub const VFIO_DEVICE_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 7);
/// `VFIO_DEVICE_GET_REGION_INFO` (vfio.h, VFIO_BASE + 8)
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 8);
/// `VFIO_DEVICE_GET_IRQ_INFO` (vfio.h, VFIO_BASE + 9)
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 9);
/// `VFIO_DEVICE_SET_IRQS` (vfio.h, VFIO_BASE + 10)
pub const VFIO_DEVICE_SET_IRQS: u32 = io(VFIO_TYPE, VFIO_BASE + 10);
/// `VFIO_DEVICE_BIND_IOMMUFD` (vfio.h, VFIO_BASE + 18)
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = io(VFIO_TYPE, VFIO_BASE + 18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (vfio.h, VFIO_BASE + 19)
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 19);
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT` (vfio.h, VFIO_BASE + 20)
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 20);

/// `VFIO_PCI_BAR0_REGION_INDEX` and `VFIO_PCI_CONFIG_REGION_INDEX` (vfio.h,
/// positions in the anonymous region-index enum).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `VFIO_PCI_MSI_IRQ_INDEX` (vfio.h, second entry of the IRQ-index enum).
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;

/// `VFIO_REGION_INFO_FLAG_*` (vfio.h)
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;

/// `VFIO_IRQ_SET_*` (vfio.h)
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `struct vfio_device_info` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_region_info` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioRegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_irq_info` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

/// The fixed head of `struct vfio_irq_set` (vfio.h); the C struct ends in a
/// flexible `__u8 data[]`, which [`irq_set_eventfds`] appends.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqSet {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

/// `struct vfio_device_bind_iommufd` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceBindIommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
    pub token_uuid_ptr: u64,
}

/// `struct vfio_device_attach_iommufd_pt` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceAttachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
    pub pasid: u32,
}

/// `struct vfio_device_detach_iommufd_pt` (vfio.h)
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceDetachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pasid: u32,
}

/// A `struct vfio_irq_set` with `fds` as its `data[]`, as 32-bit words so the
/// buffer is aligned for the header. Its byte length is the `argsz` inside.
pub fn irq_set_eventfds(flags: u32, index: u32, fds: &[i32]) -> Vec<u32> {
    let argsz = size_of::<VfioIrqSet>() + size_of_val(fds);
    let head = [argsz as u32, flags, index, 0, fds.len() as u32];
    let mut words = Vec::with_capacity(head.len() + fds.len());
    words.extend_from_slice(&head);
    // data[] holds `__s32` eventfds; the bit pattern is what the kernel reads.
    words.extend(fds.iter().map(|&fd| fd as u32));
    words
}

/// The size a structure declares for itself in its `size`/`argsz` field.
pub const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

// ---- layout checks -----------------------------------------------------

/// Fails the build unless `$ty` is `$size` bytes and each field sits at
/// the offset the C header gives it.
macro_rules! assert_layout {
    ($ty:ty, $size:expr, { $($field:ident: $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(size_of::<$ty>() == $size, concat!("size of ", stringify!($ty)));
            $(assert!(offset_of!($ty, $field) == $off, concat!(stringify!($ty), ".", stringify!($field)));)*
        };
    };
}

assert_layout!(IommuDestroy, 8, { size: 0, id: 4 });
assert_layout!(IommuIoasAlloc, 12, { size: 0, flags: 4, out_ioas_id: 8 });
assert_layout!(IommuIovaRange, 16, { start: 0, last: 8 });
assert_layout!(IommuIoasIovaRanges, 32, {
    size: 0, ioas_id: 4, num_iovas: 8, reserved: 12, allowed_iovas: 16, out_iova_alignment: 24,
});
assert_layout!(IommuIoasMap, 40, {
    size: 0, flags: 4, ioas_id: 8, reserved: 12, user_va: 16, length: 24, iova: 32,
});
assert_layout!(IommuIoasUnmap, 24, { size: 0, ioas_id: 4, iova: 8, length: 16 });
assert_layout!(IommuOption, 24, {
    size: 0, option_id: 4, op: 8, reserved: 10, object_id: 12, val64: 16,
});
assert_layout!(IommuHwptAlloc, 48, {
    size: 0, flags: 4, dev_id: 8, pt_id: 12, out_hwpt_id: 16, reserved: 20, data_type: 24,
    data_len: 28, data_uptr: 32, fault_id: 40, reserved2: 44,
});
assert_layout!(VfioDeviceInfo, 24, {
    argsz: 0, flags: 4, num_regions: 8, num_irqs: 12, cap_offset: 16, pad: 20,
});
assert_layout!(VfioRegionInfo, 32, {
    argsz: 0, flags: 4, index: 8, cap_offset: 12, size: 16, offset: 24,
});
assert_layout!(VfioIrqInfo, 16, { argsz: 0, flags: 4, index: 8, count: 12 });
assert_layout!(VfioIrqSet, 20, { argsz: 0, flags: 4, index: 8, start: 12, count: 16 });
assert_layout!(VfioDeviceBindIommufd, 24, {
    argsz: 0, flags: 4, iommufd: 8, out_devid: 12, token_uuid_ptr: 16,
});
assert_layout!(VfioDeviceAttachIommufdPt, 16, { argsz: 0, flags: 4, pt_id: 8, pasid: 12 });
assert_layout!(VfioDeviceDetachIommufdPt, 12, { argsz: 0, flags: 4, pasid: 8 });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // Values as the kernel computes them (checked against a C build of
        // the 6.18 headers): type ';' = 0x3b, direction and size zero.
        let expected = [
            (IOMMU_DESTROY, 0x3b80),
            (IOMMU_IOAS_ALLOC, 0x3b81),
            (IOMMU_IOAS_IOVA_RANGES, 0x3b84),
            (IOMMU_IOAS_MAP, 0x3b85),
            (IOMMU_IOAS_UNMAP, 0x3b86),
            (IOMMU_OPTION, 0x3b87),
            (IOMMU_HWPT_ALLOC, 0x3b89),
            (VFIO_DEVICE_GET_INFO, 0x3b6b),
            (VFIO_DEVICE_GET_REGION_INFO, 0x3b6c),
            (VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d),
            (VFIO_DEVICE_SET_IRQS, 0x3b6e),
            (VFIO_DEVICE_BIND_IOMMUFD, 0x3b76),
            (VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77),
            (VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78),
        ];
        for (got, want) in expected {
            assert_eq!(got, want, "{got:#x} != {want:#x}");
        }
    }

    #[test]
    fn layouts_match_the_c_headers() {
        // The const assertions above already hold at build time; repeating
        // the sizes here makes them visible in `cargo test` output.
        assert_eq!(size_of::<IommuOption>(), 24);
        assert_eq!(offset_of!(IommuOption, val64), 16);
        assert_eq!(size_of::<IommuHwptAlloc>(), 48);
        assert_eq!(size_of::<IommuIoasMap>(), 40);
        assert_eq!(size_of::<VfioDeviceBindIommufd>(), 24);
        assert_eq!(size_of::<VfioIrqSet>(), 20);
    }

    #[test]
    fn irq_set_appends_eventfds_after_the_header() {
        let words = irq_set_eventfds(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            &[5, -1],
        );
        assert_eq!(words, [28, 0x24, 1, 0, 2, 5, u32::MAX]);
        assert_eq!(words.len() * 4, 28);
    }
}
