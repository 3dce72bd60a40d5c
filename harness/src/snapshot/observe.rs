//! Host observations of one step, normalised for snapshots: trace events
//! aggregated per distinct key (counts instead of timestamps), kernel
//! console reports with timestamps and PIDs stripped.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::vm::console::classify;
use crate::vm::{TraceEvent, TraceKind};

/// What the host saw between the previous step's answer and this one's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// SMMU translations, one entry per distinct (sid, iova, translated, perm, stage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smmu_translations: Vec<Translation>,
    /// SMMU aborts, faults and queued events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smmu_faults: Vec<Counted>,
    /// Writes that reached GITS_TRANSLATER (delivered MSIs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub its_writes: Vec<ItsWrite>,
    /// Kernel WARNING/BUG/Oops/panic and `arm-smmu-v3 ... event` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel: Vec<String>,
    /// The step's kernel reports with their signatures (a kernel with
    /// symbolized stacks: the debug flavours), distinct and sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_reports: Vec<super::kernel_report::KernelFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Translation {
    pub device: String,
    pub sid: String,
    pub iova: String,
    pub translated: String,
    pub perm: String,
    pub stage: u32,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItsWrite {
    pub device: String,
    pub requester_id: String,
    pub offset: String,
    pub data: String,
    /// `dma` for a write that carried no requester id of the device's and
    /// is the device's by the SMMU translation just before it (see
    /// [`aggregate`]); absent for an MSI the device signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub count: u64,
}

/// A fault or event, in words, and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Counted {
    pub device: String,
    pub event: String,
    pub count: u64,
}

/// Aggregates `events` of the devices in `rids` (requester id → device id)
/// and picks the kernel reports out of console `lines`.
pub fn aggregate<'a>(
    events: &[TraceEvent],
    rids: &BTreeMap<u16, String>,
    lines: impl Iterator<Item = &'a str>,
    scope: Option<&super::kernel_report::ReportScope>,
) -> Observations {
    let lines: Vec<&str> = lines.collect();
    let name = |rid: u32| -> Option<String> {
        u16::try_from(rid).ok().and_then(|r| rids.get(&r)).cloned()
    };
    // BTreeMaps keep the output sorted, so order of arrival does not matter.
    let mut tr: BTreeMap<(String, u32, u64, u64, u32, u32), u64> = BTreeMap::new();
    let mut faults: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut its: BTreeMap<(String, u32, u64, u64, bool), u64> = BTreeMap::new();
    // The device and output address of the translation just before the
    // current event. QEMU's `pci_dma_read`/`pci_dma_write` (edu's DMA) pass
    // MEMTXATTRS_UNSPECIFIED, so a DMA write that the SMMU translates to the
    // doorbell reaches the ITS with requester id 0; only `msi_send_message`
    // sets the device's. The SMMU itself knows the stream from the device's
    // IOMMU address space, so its translation, traced right before the ITS
    // write (the same call chain), names the device.
    let mut just_translated: Option<(String, u64)> = None;
    for e in events {
        let previous = just_translated.take();
        let Some(device) = e.requester_id().and_then(name) else {
            if let (
                TraceKind::ItsTranslationWrite {
                    offset,
                    data,
                    requester_id,
                    ..
                },
                Some((device, translated)),
            ) = (&e.kind, previous)
            {
                if translated & 0xfff == offset & 0xfff {
                    *its.entry((device, *requester_id, *offset, *data, true))
                        .or_default() += 1;
                }
            }
            continue;
        };
        match &e.kind {
            TraceKind::SmmuTranslateSuccess {
                sid,
                iova,
                translated,
                perm,
                stage,
                ..
            } => {
                just_translated = Some((device.clone(), *translated));
                *tr.entry((device, *sid, *iova, *translated, *perm, *stage))
                    .or_default() += 1;
            }
            TraceKind::SmmuTranslateAbort {
                sid,
                iova,
                is_write,
                ..
            } => {
                let rw = if *is_write { "write" } else { "read" };
                *faults
                    .entry((
                        device,
                        format!("translate_abort sid={sid:#x} iova={iova:#x} {rw}"),
                    ))
                    .or_default() += 1;
            }
            TraceKind::SmmuRecordEvent { event, sid } => {
                *faults
                    .entry((device, format!("record_event {event} sid={sid:#x}")))
                    .or_default() += 1;
            }
            TraceKind::SmmuFault { iova, event, .. } => {
                *faults
                    .entry((device, format!("fault {event} iova={iova:#x}")))
                    .or_default() += 1;
            }
            TraceKind::ItsTranslationWrite {
                offset,
                data,
                requester_id,
                ..
            } => {
                *its.entry((device, *requester_id, *offset, *data, false))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    Observations {
        smmu_translations: tr
            .into_iter()
            .map(
                |((device, sid, iova, translated, perm, stage), count)| Translation {
                    device,
                    sid: format!("{sid:#x}"),
                    iova: format!("{iova:#x}"),
                    translated: format!("{translated:#x}"),
                    perm: format!("{perm:#x}"),
                    stage,
                    count,
                },
            )
            .collect(),
        smmu_faults: faults
            .into_iter()
            .map(|((device, event), count)| Counted {
                device,
                event,
                count,
            })
            .collect(),
        its_writes: its
            .into_iter()
            .map(|((device, rid, offset, data, dma), count)| ItsWrite {
                device,
                requester_id: format!("{rid:#x}"),
                offset: format!("{offset:#x}"),
                data: format!("{data:#x}"),
                source: dma.then(|| "dma".to_string()),
                count,
            })
            .collect(),
        kernel: first_lines(lines.iter().copied(), scope),
        kernel_reports: super::kernel_report::findings(lines.iter().copied(), scope),
    }
}

/// The console lines worth a snapshot, normalised.
pub fn console_reports<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .filter(|l| classify(l).is_some() || is_smmu_event(l))
        .map(normalise_kernel_line)
        .collect()
}

/// [`console_reports`] for a kernel whose reports are also recorded with
/// signatures (`scope` given): KCSAN's first lines are left to those, which
/// keep only the reports in scope (KCSAN's others come at random).
pub fn first_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    scope: Option<&super::kernel_report::ReportScope>,
) -> Vec<String> {
    console_reports(lines)
        .into_iter()
        .filter(|l| scope.is_none() || !l.starts_with("BUG: KCSAN: "))
        .collect()
}

fn is_smmu_event(line: &str) -> bool {
    line.contains("arm-smmu-v3") && line.contains("event")
}

/// Strips the printk timestamp and the numbers that change from run to
/// run (PID, CPU: `CPU: 0 PID: 77`, and since 7.x's WARN format
/// `CPU#0: msi-agent/77`) from a kernel line, and the build layout from source
/// paths: a WARN names `../src/drivers/...` when the kernel was built out of
/// tree (the variants' `build`→`src` layout), an absolute path or `drivers/...`
/// for other layouts; the snapshot says `drivers/...` for all of them.
pub fn normalise_kernel_line(line: &str) -> String {
    static RES: std::sync::OnceLock<[Regex; 4]> = std::sync::OnceLock::new();
    let [stamp, pid, task, path] = RES.get_or_init(|| {
        [
            Regex::new(r"^\s*\[\s*\d+\.\d+\]\s?").expect("valid regex"),
            Regex::new(r"CPU: \d+ (UID: \d+ )?PID: \d+").expect("valid regex"),
            Regex::new(r"CPU#\d+: (\S+)/\d+").expect("valid regex"),
            // The shortest prefix (none if possible) before a kernel top-level directory, in a
            // `dir/file.c:LINE` path.
            Regex::new(
                r"(^|[\s(])(?:[^\s(]*?/)??((?:arch|block|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|net|rust|security|sound|virt)/[^\s:]+:\d+)",
            )
            .expect("valid regex"),
        ]
    });
    let line = line.trim_end_matches(['\r', '\n']);
    let line = stamp.replace(line, "");
    let line = pid.replace_all(&line, "CPU: N PID: N");
    let line = task.replace_all(&line, "CPU#N: $1/N");
    path.replace_all(&line, "$1$2").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::trace::parse_all;

    #[test]
    fn traces_are_aggregated_per_device_and_sorted() {
        let text = "\
1@1.000001:smmuv3_translate_success smmuv3-iommu-memory-region-0-0 sid=0x8 iova=0x8000040 translated=0x8090040 perm=0x3 stage=1
1@1.000002:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x8
1@1.000003:smmuv3_translate_success smmuv3-iommu-memory-region-0-0 sid=0x8 iova=0x8000040 translated=0x8090040 perm=0x3 stage=1
1@1.000004:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x8
1@1.000005:smmuv3_translate_success smmuv3-iommu-memory-region-0-0 sid=0x10 iova=0xfffff040 translated=0x8090040 perm=0x3 stage=1
";
        let events = parse_all(text);
        let rids = BTreeMap::from([(8u16, "edu0".to_string())]);
        let lines = ["[    3.123456] WARNING: CPU: 1 PID: 231 at drivers/iommu/io-pgtable-arm.c:395 __arm_lpae_map+0x1/0x2", "[    3.2] hello"];
        let o = aggregate(&events, &rids, lines.into_iter(), None);
        assert_eq!(o.smmu_translations.len(), 1, "{o:?}");
        assert_eq!(o.smmu_translations[0].count, 2);
        assert_eq!(o.smmu_translations[0].iova, "0x8000040");
        assert_eq!(o.its_writes[0].count, 2);
        assert_eq!(o.kernel, vec!["WARNING: CPU: N PID: N at drivers/iommu/io-pgtable-arm.c:395 __arm_lpae_map+0x1/0x2".to_string()]);
    }

    #[test]
    fn a_dma_write_to_the_doorbell_is_the_device_whose_translation_preceded_it() {
        // edu0 (rid 0x10): an MSI (its own rid), then a DMA write to the
        // doorbell (rid 0); then a rid-0 write with no translation before it
        // and one after a translation elsewhere: neither is edu0's.
        let text = "\
1@1.000001:smmuv3_translate_success smmuv3-iommu-memory-region-16-2 sid=0x10 iova=0x8000040 translated=0x8090040 perm=0x3 stage=1
1@1.000002:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x10
1@1.000003:smmuv3_translate_success smmuv3-iommu-memory-region-16-2 sid=0x10 iova=0x4000040 translated=0x8090040 perm=0x2 stage=1
1@1.000004:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x0
1@1.000005:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x0
1@1.000006:smmuv3_translate_success smmuv3-iommu-memory-region-16-2 sid=0x10 iova=0x1000 translated=0x4321000 perm=0x2 stage=1
1@1.000007:gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x0
";
        let rids = BTreeMap::from([(0x10u16, "edu0".to_string())]);
        let o = aggregate(&parse_all(text), &rids, std::iter::empty(), None);
        let got: Vec<(&str, &str, Option<&str>, u64)> = o
            .its_writes
            .iter()
            .map(|w| {
                (
                    w.device.as_str(),
                    w.requester_id.as_str(),
                    w.source.as_deref(),
                    w.count,
                )
            })
            .collect();
        assert_eq!(
            got,
            [("edu0", "0x0", Some("dma"), 1), ("edu0", "0x10", None, 1)]
        );
    }

    #[test]
    fn the_cpu_and_pid_of_a_7_x_warning_are_not_kept() {
        assert_eq!(
            normalise_kernel_line("[    3.1] WARNING: ../src/drivers/iommu/io-pgtable-arm.c:402 at __arm_lpae_map+0x3ec/0x42c, CPU#1: msi-agent/99"),
            "WARNING: drivers/iommu/io-pgtable-arm.c:402 at __arm_lpae_map+0x3ec/0x42c, CPU#N: msi-agent/N"
        );
    }

    #[test]
    fn source_paths_lose_the_build_layout() {
        let want = "WARNING: CPU: N PID: N at drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc";
        for line in [
            "[   12.5] WARNING: CPU: 0 PID: 77 at ../src/drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc",
            "[   12.5] WARNING: CPU: 1 PID: 78 at drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc",
            "WARNING: CPU: 1 PID: 78 at /home/r/linux/drivers/iommu/io-pgtable-arm.c:370 __arm_lpae_map+0x498/0x4dc",
        ] {
            assert_eq!(normalise_kernel_line(line), want, "{line}");
        }
        // A path inside the tree that names another top-level directory's
        // name (drivers/net) keeps its own first component.
        assert_eq!(
            normalise_kernel_line("WARNING: at drivers/net/x.c:1 f"),
            "WARNING: at drivers/net/x.c:1 f"
        );
        assert_eq!(
            normalise_kernel_line("kernel BUG at ../src/mm/slub.c:42!"),
            "kernel BUG at mm/slub.c:42!"
        );
    }
}
