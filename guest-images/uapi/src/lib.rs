//! The kernel ABI the agent speaks: iommufd and VFIO ioctl numbers, option
//! ids, flags and argument structures, mirrored from `linux/iommufd.h` and
//! `linux/vfio.h`.
//!
//! The definitions are written once, inside `structs!` and
//! `constants!`, which also build [`STRUCTS`] and [`CONSTANTS`]: the size
//! and every field offset of each structure and the value of each constant,
//! as this crate compiled them. The harness turns those tables into C
//! `_Static_assert`s and compiles them against every kernel's exported
//! headers (`harness::kernel::uapi_check`), so a kernel that renumbers an
//! option or moves a field fails its kernel stage instead of being probed
//! with the wrong bytes. The tables cannot drift from what the agent uses
//! because they are generated from the same tokens.
//!
//! Fields named `__reserved` in C are `reserved` here and must stay zero
//! (iommufd rejects non-zero with E2BIG).
//!
//! Every field is a fixed-width integer, so the layout is the same on the
//! host (which reads the tables) and on the aarch64 guest (which uses the
//! structures); the assertion below holds that assumption to the build.

#![allow(dead_code)] // The ABI is mirrored whole; not every flag is used yet.

use std::mem::{offset_of, size_of};

// u64 fields are 8-aligned on both targets (aarch64 and x86_64); a host
// where they are not would compute a different table from the guest.
const _: () = assert!(std::mem::align_of::<u64>() == 8);

/// A `#[repr(C)]` structure as this crate lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Struct {
    /// The C tag: `iommu_option` for `struct iommu_option`.
    pub c_name: &'static str,
    /// The Rust type: `IommuOption`.
    pub rust_name: &'static str,
    /// The header that declares it, as included: `linux/iommufd.h`.
    pub header: &'static str,
    pub size: usize,
    pub fields: &'static [Field],
}

/// One field of a [`Struct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The C member name (`__reserved`).
    pub c_name: &'static str,
    /// The Rust field name (`reserved`).
    pub rust_name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// An integer constant (a macro or an enumerator in C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    pub c_name: &'static str,
    pub header: &'static str,
    pub value: u64,
    pub presence: Presence,
}

/// Whether every kernel the harness builds must define a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In every kernel's headers; absent is a mismatch.
    Required,
    /// Added by a patch under test: a kernel without it is fine (the agent
    /// then gets an errno for it), one that defines it with another value
    /// is a mismatch.
    Optional,
}

/// The C member name: the Rust one unless `as` renames it.
macro_rules! c_field_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $c_field:ident) => {
        stringify!($c_field)
    };
}

/// Defines `#[repr(C)]` structures and [`STRUCTS`], their layout table.
macro_rules! structs {
    ($(
        $(#[$meta:meta])*
        $header:literal struct $c_name:ident => $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident $(as $c_field:ident)? : $ty:ty, )*
        }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Debug, Default, Clone, Copy)]
            pub struct $name {
                $( $(#[$fmeta])* pub $field: $ty, )*
            }
        )*

        /// Every structure of this crate: size and field offsets as compiled.
        pub const STRUCTS: &[Struct] = &[$(
            Struct {
                c_name: stringify!($c_name),
                rust_name: stringify!($name),
                header: $header,
                size: size_of::<$name>(),
                fields: &[$(
                    Field {
                        c_name: c_field_name!($field $($c_field)?),
                        rust_name: stringify!($field),
                        offset: offset_of!($name, $field),
                        size: size_of::<$ty>(),
                    },
                )*],
            },
        )*];
    };
}

/// Defines constants and [`CONSTANTS`], their value table.
macro_rules! constants {
    ($(
        $header:literal $presence:ident {
            $( $(#[$meta:meta])* pub const $name:ident : $ty:ty = $value:expr; )*
        }
    )*) => {
        $($( $(#[$meta])* pub const $name: $ty = $value; )*)*

        /// Every constant of this crate, with its value as compiled.
        pub const CONSTANTS: &[Constant] = &[$($(
            Constant {
                c_name: stringify!($name),
                header: $header,
                value: $name as u64,
                presence: Presence::$presence,
            },
        )*)*];
    };
}

/// `_IO(type, nr)`: both headers define every command with `_IO`, so the
/// direction and size bits are zero and only type and number remain. The
/// encoding is the asm-generic one, shared by arm64 and x86_64.
const fn io(ty: u8, nr: u32) -> u32 {
    ((ty as u32) << 8) | nr
}

constants! {
    "linux/iommufd.h" Required {
        pub const IOMMUFD_TYPE: u8 = b';';
        pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, 0x80);
        pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, 0x81);
        pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, 0x84);
        pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, 0x85);
        pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, 0x86);
        pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, 0x87);
        pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, 0x89);
        pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_TYPE, 0x90);

        /// `enum iommufd_ioas_map_flags`
        pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
        pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
        pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

        /// `enum iommufd_option`
        pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
        pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;

        /// `enum iommufd_option_ops`
        pub const IOMMU_OPTION_OP_SET: u16 = 0;
        pub const IOMMU_OPTION_OP_GET: u16 = 1;

        /// `enum iommufd_hwpt_alloc_flags`
        pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
        pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
        pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
        pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

        /// `enum iommu_hwpt_data_type`
        pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
        pub const IOMMU_HWPT_DATA_ARM_SMMUV3: u32 = 2;

        /// `enum iommu_viommu_type`
        pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
    }

    "linux/iommufd.h" Optional {
        /// `enum iommufd_option`, added by the SW_MSI patch (RFCv2).
        pub const IOMMU_OPTION_SW_MSI_START: u32 = 2;
        /// `enum iommufd_option`, added by the SW_MSI patch (RFCv2).
        pub const IOMMU_OPTION_SW_MSI_SIZE: u32 = 3;
    }

    "linux/vfio.h" Required {
        pub const VFIO_TYPE: u8 = b';';
        pub const VFIO_BASE: u32 = 100;
        pub const VFIO_DEVICE_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 7);
        pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 8);
        pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 9);
        pub const VFIO_DEVICE_SET_IRQS: u32 = io(VFIO_TYPE, VFIO_BASE + 10);
        pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = io(VFIO_TYPE, VFIO_BASE + 18);
        pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 19);
        pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 20);

        /// Positions in the anonymous region-index enum.
        pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
        pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
        /// Positions in the anonymous IRQ-index enum.
        pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
        pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

        pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
        pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;

        pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
        pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
        pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
    }
}

structs! {
    "linux/iommufd.h" struct iommu_destroy => IommuDestroy {
        pub size: u32,
        pub id: u32,
    }

    "linux/iommufd.h" struct iommu_ioas_alloc => IommuIoasAlloc {
        pub size: u32,
        pub flags: u32,
        pub out_ioas_id: u32,
    }

    "linux/iommufd.h" struct iommu_iova_range => IommuIovaRange {
        pub start: u64,
        pub last: u64,
    }

    "linux/iommufd.h" struct iommu_ioas_iova_ranges => IommuIoasIovaRanges {
        pub size: u32,
        pub ioas_id: u32,
        pub num_iovas: u32,
        pub reserved as __reserved: u32,
        pub allowed_iovas: u64,
        pub out_iova_alignment: u64,
    }

    "linux/iommufd.h" struct iommu_ioas_map => IommuIoasMap {
        pub size: u32,
        pub flags: u32,
        pub ioas_id: u32,
        pub reserved as __reserved: u32,
        pub user_va: u64,
        pub length: u64,
        pub iova: u64,
    }

    "linux/iommufd.h" struct iommu_ioas_unmap => IommuIoasUnmap {
        pub size: u32,
        pub ioas_id: u32,
        pub iova: u64,
        pub length: u64,
    }

    "linux/iommufd.h" struct iommu_option => IommuOption {
        pub size: u32,
        pub option_id: u32,
        pub op: u16,
        pub reserved as __reserved: u16,
        pub object_id: u32,
        pub val64: u64,
    }

    "linux/iommufd.h" struct iommu_hwpt_alloc => IommuHwptAlloc {
        pub size: u32,
        pub flags: u32,
        pub dev_id: u32,
        pub pt_id: u32,
        pub out_hwpt_id: u32,
        pub reserved as __reserved: u32,
        pub data_type: u32,
        pub data_len: u32,
        pub data_uptr: u64,
        pub fault_id: u32,
        pub reserved2 as __reserved2: u32,
    }

    "linux/iommufd.h" struct iommu_viommu_alloc => IommuViommuAlloc {
        pub size: u32,
        pub flags: u32,
        pub viommu_type as type: u32,
        pub dev_id: u32,
        pub hwpt_id: u32,
        pub out_viommu_id: u32,
        pub data_len: u32,
        pub reserved as __reserved: u32,
        pub data_uptr: u64,
    }

    /// The data of an `IOMMU_HWPT_DATA_ARM_SMMUV3` nested HWPT: the guest's
    /// STE, little-endian words (`__aligned_le64`).
    "linux/iommufd.h" struct iommu_hwpt_arm_smmuv3 => IommuHwptArmSmmuv3 {
        pub ste: [u64; 2],
    }

    "linux/vfio.h" struct vfio_device_info => VfioDeviceInfo {
        pub argsz: u32,
        pub flags: u32,
        pub num_regions: u32,
        pub num_irqs: u32,
        pub cap_offset: u32,
        pub pad: u32,
    }

    "linux/vfio.h" struct vfio_region_info => VfioRegionInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub cap_offset: u32,
        pub size: u64,
        pub offset: u64,
    }

    "linux/vfio.h" struct vfio_irq_info => VfioIrqInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub count: u32,
    }

    /// The fixed head of `struct vfio_irq_set`; the C struct ends in a
    /// flexible `__u8 data[]` (which adds nothing to its size), appended
    /// by [`irq_set_eventfds`].
    "linux/vfio.h" struct vfio_irq_set => VfioIrqSet {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub start: u32,
        pub count: u32,
    }

    "linux/vfio.h" struct vfio_device_bind_iommufd => VfioDeviceBindIommufd {
        pub argsz: u32,
        pub flags: u32,
        pub iommufd: i32,
        pub out_devid: u32,
        pub token_uuid_ptr: u64,
    }

    "linux/vfio.h" struct vfio_device_attach_iommufd_pt => VfioDeviceAttachIommufdPt {
        pub argsz: u32,
        pub flags: u32,
        pub pt_id: u32,
        pub pasid: u32,
    }

    "linux/vfio.h" struct vfio_device_detach_iommufd_pt => VfioDeviceDetachIommufdPt {
        pub argsz: u32,
        pub flags: u32,
        pub pasid: u32,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_use_the_io_encoding() {
        // type ';' = 0x3b, direction and size zero.
        assert_eq!(IOMMU_DESTROY, 0x3b80);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
    }

    #[test]
    fn the_tables_come_from_the_definitions() {
        let option = STRUCTS.iter().find(|s| s.c_name == "iommu_option").unwrap();
        assert_eq!(option.rust_name, "IommuOption");
        assert_eq!(option.header, "linux/iommufd.h");
        assert_eq!(option.size, size_of::<IommuOption>());
        let names: Vec<(&str, &str, usize, usize)> = option
            .fields
            .iter()
            .map(|f| (f.c_name, f.rust_name, f.offset, f.size))
            .collect();
        assert_eq!(
            names,
            [
                ("size", "size", 0, 4),
                ("option_id", "option_id", 4, 4),
                ("op", "op", 8, 2),
                ("__reserved", "reserved", 10, 2),
                ("object_id", "object_id", 12, 4),
                ("val64", "val64", 16, 8),
            ]
        );
        let start = CONSTANTS
            .iter()
            .find(|c| c.c_name == "IOMMU_OPTION_SW_MSI_START")
            .unwrap();
        assert_eq!(
            (start.value, start.presence),
            (u64::from(IOMMU_OPTION_SW_MSI_START), Presence::Optional)
        );
        assert_eq!(STRUCTS.len(), 17);
        let mut names: Vec<&str> = CONSTANTS.iter().map(|c| c.c_name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CONSTANTS.len(), "a constant is listed twice");
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
