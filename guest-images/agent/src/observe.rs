//! What the agent reads from sysfs and procfs to report the device's real
//! state: the MSI capability, the iommu group, `/proc/interrupts` lines, and
//! where a device's VFIO cdev is.
//!
//! Parsing is split from reading so that unit tests can feed fixtures.

use std::fs;
use std::path::{Path, PathBuf};

use msi_protocol::{HexU64, IrqLine, MsiConfig, MsixEntry, MsixTable, ReservedRegions};

use crate::sys::{Failure, Outcome};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Rejects a BDF that could escape `/sys/bus/pci/devices` once joined.
pub fn check_bdf(bdf: &str) -> Outcome<()> {
    let ok = !bdf.is_empty()
        && bdf
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    if !ok {
        return Err(Failure::agent(format!(
            "invalid PCI address {bdf:?} (expected domain:bus:device.function, e.g. 0000:00:02.0)"
        )));
    }
    Ok(())
}

fn device_dir(bdf: &str) -> PathBuf {
    Path::new(PCI_DEVICES).join(bdf)
}

/// The VFIO cdev of `bdf` (`/dev/vfio/devices/vfioN`), from the
/// `vfio-dev/vfioN` directory vfio-pci creates in sysfs.
pub fn vfio_cdev(bdf: &str) -> Outcome<PathBuf> {
    let dir = device_dir(bdf);
    if !dir.exists() {
        return Err(Failure::agent(format!(
            "no PCI device {bdf} ({} does not exist)",
            dir.display()
        )));
    }
    let vfio_dev = dir.join("vfio-dev");
    let entries = fs::read_dir(&vfio_dev).map_err(|e| {
        Failure::agent(format!(
            "{bdf} has no VFIO cdev ({}: {e}; is it bound to vfio-pci?)",
            vfio_dev.display()
        ))
    })?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Failure::io(&e, format!("readdir {}", vfio_dev.display())))?;
        let name = entry.file_name();
        if let Some(name) = name.to_str().filter(|n| n.starts_with("vfio")) {
            return Ok(Path::new("/dev/vfio/devices").join(name));
        }
    }
    Err(Failure::agent(format!("{} is empty", vfio_dev.display())))
}

/// The device's real config space (sysfs reads the hardware, unlike the
/// VFIO config region, which virtualises the MSI capability).
pub fn msi_config(bdf: &str) -> Outcome<MsiConfig> {
    let path = device_dir(bdf).join("config");
    let config =
        fs::read(&path).map_err(|e| Failure::io(&e, format!("read {}", path.display())))?;
    parse_msi_capability(&config).map_err(|e| Failure::agent(format!("{bdf}: {e}")))
}

const PCI_STATUS: usize = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_CAPABILITY_LIST: usize = 0x34;
const PCI_CAP_ID_MSI: u8 = 0x05;
const PCI_MSI_FLAGS_ENABLE: u16 = 1 << 0;
const PCI_MSI_FLAGS_64BIT: u16 = 1 << 7;

fn u16_at(config: &[u8], off: usize) -> Result<u16, String> {
    config
        .get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| {
            format!(
                "config space too short ({} bytes) to read offset {off:#x}",
                config.len()
            )
        })
}

fn u32_at(config: &[u8], off: usize) -> Result<u32, String> {
    config
        .get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| {
            format!(
                "config space too short ({} bytes) to read offset {off:#x}",
                config.len()
            )
        })
}

/// Finds the MSI capability in a config space dump and decodes it.
pub fn parse_msi_capability(config: &[u8]) -> Result<MsiConfig, String> {
    match find_capability(config, PCI_CAP_ID_MSI)? {
        Some(cap) => decode_msi(config, cap),
        None => Err("device has no MSI capability".into()),
    }
}

/// The offset of the first standard capability with id `id`.
fn find_capability(config: &[u8], id: u8) -> Result<Option<usize>, String> {
    if u16_at(config, PCI_STATUS)? & PCI_STATUS_CAP_LIST == 0 {
        return Err("device has no capability list".into());
    }
    let mut ptr = usize::from(*config.get(PCI_CAPABILITY_LIST).unwrap_or(&0) & !3);
    // A config space has at most 48 standard capabilities; the bound stops
    // a corrupt, cyclic list.
    for _ in 0..48 {
        if ptr == 0 {
            break;
        }
        let this = *config
            .get(ptr)
            .ok_or_else(|| format!("capability pointer {ptr:#x} past the end"))?;
        if this == id {
            return Ok(Some(ptr));
        }
        ptr = usize::from(*config.get(ptr + 1).unwrap_or(&0) & !3);
    }
    Ok(None)
}

const PCI_CAP_ID_MSIX: u8 = 0x11;
const PCI_MSIX_FLAGS_ENABLE: u16 = 1 << 15;
const PCI_MSIX_FLAGS_MASKALL: u16 = 1 << 14;
const PCI_MSIX_ENTRY_SIZE: usize = 16;
const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 1;

/// The MSI-X capability: Message Control and where the table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    pub enabled: bool,
    pub function_masked: bool,
    pub table_size: u32,
    pub bar: u32,
    pub offset: u64,
}

/// Finds the MSI-X capability in a config space dump and decodes it.
pub fn parse_msix_capability(config: &[u8]) -> Result<MsixCapability, String> {
    let cap = find_capability(config, PCI_CAP_ID_MSIX)?
        .ok_or_else(|| "device has no MSI-X capability".to_string())?;
    let flags = u16_at(config, cap + 2)?;
    let table = u32_at(config, cap + 4)?;
    Ok(MsixCapability {
        enabled: flags & PCI_MSIX_FLAGS_ENABLE != 0,
        function_masked: flags & PCI_MSIX_FLAGS_MASKALL != 0,
        table_size: u32::from(flags & 0x7ff) + 1,
        bar: table & 7,
        offset: u64::from(table & !7),
    })
}

/// Decodes `table_size` MSI-X entries of 16 bytes (address low, high,
/// data, vector control), little-endian as the table holds them.
pub fn decode_msix_entries(table: &[u8]) -> Vec<MsixEntry> {
    table
        .chunks_exact(PCI_MSIX_ENTRY_SIZE)
        .enumerate()
        .map(|(i, e)| {
            let word = |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
            MsixEntry {
                vector: i as u32,
                address: HexU64(u64::from(word(0)) | u64::from(word(4)) << 32),
                data: HexU64(u64::from(word(8))),
                masked: word(12) & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0,
            }
        })
        .collect()
}

/// The device's real MSI-X capability and table. The table is read from
/// the BAR through sysfs `resourceN` (mapped, 32-bit reads): VFIO's own BAR
/// region reads the table area as all ones.
pub fn msix_table(bdf: &str) -> Outcome<MsixTable> {
    let path = device_dir(bdf).join("config");
    let config =
        fs::read(&path).map_err(|e| Failure::io(&e, format!("read {}", path.display())))?;
    let cap = parse_msix_capability(&config).map_err(|e| Failure::agent(format!("{bdf}: {e}")))?;
    let len = cap.table_size as usize * PCI_MSIX_ENTRY_SIZE;
    let resource = device_dir(bdf).join(format!("resource{}", cap.bar));
    let table = crate::sys::read_mmio(&resource, cap.offset, len)?;
    Ok(MsixTable {
        enabled: cap.enabled,
        function_masked: cap.function_masked,
        table_size: cap.table_size,
        bar: cap.bar,
        offset: HexU64(cap.offset),
        entries: decode_msix_entries(&table),
    })
}

fn decode_msi(config: &[u8], cap: usize) -> Result<MsiConfig, String> {
    let flags = u16_at(config, cap + 2)?;
    let addr_lo = u64::from(u32_at(config, cap + 4)?);
    let (address, data_off) = if flags & PCI_MSI_FLAGS_64BIT != 0 {
        (
            addr_lo | u64::from(u32_at(config, cap + 8)?) << 32,
            cap + 12,
        )
    } else {
        (addr_lo, cap + 8)
    };
    let data = u16_at(config, data_off)?;
    Ok(MsiConfig {
        enabled: flags & PCI_MSI_FLAGS_ENABLE != 0,
        address: HexU64(address),
        data: HexU64(u64::from(data)),
        // Multiple Message Enable (bits 6:4) and Capable (bits 3:1) are log2.
        vectors: 1 << ((flags >> 4) & 7).min(5),
        max_vectors: 1 << ((flags >> 1) & 7).min(5),
    })
}

/// The device's iommu group: number, default domain type, reserved regions.
pub fn reserved_regions(bdf: &str) -> Outcome<ReservedRegions> {
    let link = device_dir(bdf).join("iommu_group");
    let target = fs::read_link(&link).map_err(|e| {
        Failure::agent(format!(
            "{bdf} has no iommu group ({}: {e})",
            link.display()
        ))
    })?;
    let group_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let group: u32 = group_name.parse().map_err(|_| {
        Failure::agent(format!(
            "{} points to {}, not a group number",
            link.display(),
            target.display()
        ))
    })?;
    let group_dir = Path::new("/sys/kernel/iommu_groups").join(&group_name);
    let read = |file: &str| {
        let path = group_dir.join(file);
        fs::read_to_string(&path).map_err(|e| Failure::io(&e, format!("read {}", path.display())))
    };
    let group_type = read("type")?.trim().to_owned();
    let regions = read("reserved_regions")?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(ReservedRegions {
        group,
        group_type,
        regions,
    })
}

/// The `/proc/interrupts` lines that mention `bdf`.
pub fn proc_interrupts(bdf: &str) -> Outcome<Vec<IrqLine>> {
    let text = fs::read_to_string("/proc/interrupts")
        .map_err(|e| Failure::io(&e, "read /proc/interrupts"))?;
    Ok(parse_proc_interrupts(&text, bdf))
}

/// Parses `/proc/interrupts`: the header names one column per CPU; each line
/// is `irq:`, up to that many counts, then the description.
pub fn parse_proc_interrupts(text: &str, needle: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    let cpus = lines
        .next()
        .map_or(0, |header| header.split_whitespace().count());
    lines
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            let (irq, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace().peekable();
            let mut count = 0u64;
            for _ in 0..cpus {
                match words.peek().and_then(|w| w.parse::<u64>().ok()) {
                    Some(n) => {
                        count = count.saturating_add(n);
                        words.next();
                    }
                    None => break,
                }
            }
            Some(IrqLine {
                irq: irq.trim().to_owned(),
                count,
                description: words.collect::<Vec<_>>().join(" "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config space shaped like edu's: one 64-bit, single-vector MSI
    /// capability at 0x40, the only capability.
    fn edu_config(msi_flags: u16, addr: u64, data: u16) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
        c[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&PCI_STATUS_CAP_LIST.to_le_bytes());
        c[PCI_CAPABILITY_LIST] = 0x40;
        c[0x40] = PCI_CAP_ID_MSI;
        c[0x41] = 0x00;
        c[0x42..0x44].copy_from_slice(&msi_flags.to_le_bytes());
        c[0x44..0x48].copy_from_slice(&(addr as u32).to_le_bytes());
        c[0x48..0x4c].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
        c[0x4c..0x4e].copy_from_slice(&data.to_le_bytes());
        c
    }

    #[test]
    fn finds_msix_after_msi_and_decodes_its_table() {
        // e1000e's shape: MSI at 0x40, then MSI-X at 0xa0 (5 entries, table
        // in BAR 3 at offset 0), enabled, not function-masked.
        let mut c = edu_config(0x0080, 0, 0);
        c[0x41] = 0xa0;
        c[0xa0] = PCI_CAP_ID_MSIX;
        c[0xa2..0xa4].copy_from_slice(&(PCI_MSIX_FLAGS_ENABLE | 4).to_le_bytes());
        c[0xa4..0xa8].copy_from_slice(&3u32.to_le_bytes());
        let cap = parse_msix_capability(&c).unwrap();
        assert_eq!(
            cap,
            MsixCapability {
                enabled: true,
                function_masked: false,
                table_size: 5,
                bar: 3,
                offset: 0,
            }
        );
        let mut table = Vec::new();
        for (addr, data, ctrl) in [(0x1_0800_0040u64, 0u32, 0u32), (0x0800_0040, 1, 1)] {
            table.extend((addr as u32).to_le_bytes());
            table.extend(((addr >> 32) as u32).to_le_bytes());
            table.extend(data.to_le_bytes());
            table.extend(ctrl.to_le_bytes());
        }
        let entries = decode_msix_entries(&table);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].address, HexU64(0x1_0800_0040));
        assert!(!entries[0].masked);
        assert_eq!(
            (entries[1].vector, entries[1].data, entries[1].masked),
            (1, HexU64(1), true)
        );
        assert_eq!(
            parse_msix_capability(&edu_config(0x0080, 0, 0)).unwrap_err(),
            "device has no MSI-X capability"
        );
    }

    #[test]
    fn decodes_an_enabled_64bit_msi_capability() {
        let msi = parse_msi_capability(&edu_config(0x0081, 0x0800_0040, 0)).unwrap();
        assert_eq!(
            msi,
            MsiConfig {
                enabled: true,
                address: HexU64(0x0800_0040),
                data: HexU64(0),
                vectors: 1,
                max_vectors: 1
            }
        );
    }

    #[test]
    fn decodes_multi_vector_and_high_addresses() {
        // 64-bit, 8 capable (3 << 1), 4 enabled (2 << 4), disabled.
        let msi = parse_msi_capability(&edu_config(
            0x0080 | (3 << 1) | (2 << 4),
            0x1_1000_0040,
            0x21,
        ))
        .unwrap();
        assert_eq!((msi.enabled, msi.vectors, msi.max_vectors), (false, 4, 8));
        assert_eq!(
            (msi.address, msi.data),
            (HexU64(0x1_1000_0040), HexU64(0x21))
        );
    }

    #[test]
    fn decodes_a_32bit_capability_after_another_one() {
        let mut c = vec![0u8; 256];
        c[PCI_STATUS] = PCI_STATUS_CAP_LIST as u8;
        c[PCI_CAPABILITY_LIST] = 0x50;
        c[0x50] = 0x01; // power management, then MSI
        c[0x51] = 0x60;
        c[0x60] = PCI_CAP_ID_MSI;
        c[0x62] = 0x01; // enabled, 32-bit
        c[0x64..0x68].copy_from_slice(&0x0809_0040u32.to_le_bytes());
        c[0x68..0x6a].copy_from_slice(&7u16.to_le_bytes());
        let msi = parse_msi_capability(&c).unwrap();
        assert_eq!(
            (msi.enabled, msi.address, msi.data),
            (true, HexU64(0x0809_0040), HexU64(7))
        );
    }

    #[test]
    fn reports_missing_or_truncated_capabilities() {
        assert_eq!(
            parse_msi_capability(&[0u8; 64]).unwrap_err(),
            "device has no capability list"
        );
        let mut c = edu_config(0x81, 0, 0);
        c[0x40] = 0x10;
        assert_eq!(
            parse_msi_capability(&c).unwrap_err(),
            "device has no MSI capability"
        );
        // Unprivileged reads of sysfs config stop at 64 bytes.
        let short = &edu_config(0x81, 0, 0)[..0x44];
        assert!(parse_msi_capability(short)
            .unwrap_err()
            .contains("too short"));
        // A cyclic list ends rather than looping.
        let mut cyclic = edu_config(0x81, 0, 0);
        cyclic[0x40] = 0x09;
        cyclic[0x41] = 0x40;
        assert_eq!(
            parse_msi_capability(&cyclic).unwrap_err(),
            "device has no MSI capability"
        );
    }

    const PROC_INTERRUPTS: &str = "           CPU0       CPU1       
 11:       1385       1219    GICv3  30 Level     arch_timer
 13:          0          0    GICv3  79 Edge      virtio0
 14:          3          1  ITS-PCI-MSI-0000:00:02.0   0 Edge      vfio-msi[0](0000:00:02.0)
IPI0:        24         31       Rescheduling interrupts
Err:          0
";

    #[test]
    fn sums_counts_of_the_lines_naming_the_device() {
        assert_eq!(
            parse_proc_interrupts(PROC_INTERRUPTS, "0000:00:02.0"),
            vec![IrqLine {
                irq: "14".into(),
                count: 4,
                description: "ITS-PCI-MSI-0000:00:02.0 0 Edge vfio-msi[0](0000:00:02.0)".into(),
            }]
        );
        let ipi = parse_proc_interrupts(PROC_INTERRUPTS, "Rescheduling");
        assert_eq!((ipi[0].irq.as_str(), ipi[0].count), ("IPI0", 55));
        let err = parse_proc_interrupts(PROC_INTERRUPTS, "Err");
        assert_eq!((err[0].count, err[0].description.as_str()), (0, ""));
        assert!(parse_proc_interrupts(PROC_INTERRUPTS, "0000:00:03.0").is_empty());
    }

    #[test]
    fn bdf_must_not_escape_sysfs() {
        assert!(check_bdf("0000:00:02.0").is_ok());
        assert!(check_bdf("../../../etc").is_err());
        assert!(check_bdf("").is_err());
    }
}
