//! Kernel reports (lockdep, KASAN, KCSAN, UBSAN, WARN, BUG, oops) parsed
//! from a step's console lines into findings with a normalised signature:
//! the report kind, its title without addresses or offsets, the accessed
//! object where the report names one, the locks lockdep names, and the
//! first frames of each stack, by function name, after the detectors' own
//! machinery (`dump_stack`, `kasan_report`, `__lock_acquire`, ...).
//!
//! Findings are recorded for the debug flavours' kernels (the kernel
//! input's `report_scope`; `kernel-configs/flavours/common.config`
//! makes sure of KALLSYMS). The default variants' snapshots keep each
//! report's first line only (`observe::console_reports`), as they were
//! accepted. A report without named frames, locks or a detector's title
//! says nothing its first line does not, and gives no finding.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use regex::Regex;

pub use crate::kernel::ReportScope;
use serde::{Deserialize, Serialize};

/// One kernel report, as the snapshot records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KernelFinding {
    /// `kasan`, `kcsan`, `lockdep`, `ubsan`, `atomic-sleep`, `warning`,
    /// `bug`, `oops` or `panic`.
    pub kind: String,
    /// The report's first line without the kind's prefix, addresses and
    /// offsets: `slab-use-after-free in iommufd_option_sw_msi`.
    pub title: String,
    /// What was accessed, where the report says (KASAN's cache and offset,
    /// KASAN's and KCSAN's access kind and size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object: Vec<String>,
    /// The locks lockdep names (`&ictx->sw_msi_lock at iommufd_...`), in
    /// the report's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// Each stack's first frames: `call: f < g < h`, `write: f < g`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
}

impl KernelFinding {
    /// The signature in one line (for messages and the result file).
    pub fn signature(&self) -> String {
        let mut s = format!("{}: {}", self.kind, self.title);
        for part in self.object.iter().chain(&self.locks).chain(&self.stacks) {
            s.push_str(" | ");
            s.push_str(part);
        }
        s
    }
}

/// A report's console lines and what was made of them.
#[derive(Debug, Clone)]
pub struct ParsedReport {
    pub finding: KernelFinding,
    /// The report as printed, for the artifacts.
    pub text: Vec<String>,
}

/// How many frames of each stack the signature keeps.
const FRAMES: usize = 3;

/// Functions of the reporting machinery, not of the code under test: the
/// detectors' own frames, the exception path of BUG/WARN, the lock and
/// allocator primitives a report's interesting frame calls.
const MACHINERY: &str = r"^(?:show_stack|dump_stack(?:_lvl)?|__dump_stack|dump_backtrace|print_report|print_address_description.*|kasan_.*|__kasan_.*|__asan_.*|__tsan_.*|tsan_.*|kcsan_.*|__kcsan_.*|check_access|ubsan_.*|__ubsan_.*|__warn|warn_slowpath_fmt|report_bug|bug_handler|call_break_hook|brk_handler|do_debug_exception|el1_dbg|el1_brk64|el1h_64_sync_handler|el1h_64_sync|el1_abort|el1_da|__do_kernel_fault|do_page_fault|do_translation_fault|do_mem_abort|die_kernel_fault|die|__might_resched|__might_sleep|___might_sleep|__might_fault|might_fault|lock_acquire|__lock_acquire|lock_release|__lock_release|lock_acquired|lock_contended|validate_chain|check_prev_add|check_prevs_add|check_noncircular|check_deadlock|check_irq_usage|print_.*_bug|print_circular_bug|print_deadlock_bug|print_usage_bug|mark_lock.*|mark_usage|lockdep_.*|debug_check_no_.*|__mutex_lock.*|mutex_lock.*|mutex_unlock|__mutex_unlock_slowpath|_raw_spin_.*|_raw_read_.*|_raw_write_.*|down_read.*|down_write.*|up_read|up_write|__kmalloc.*|kmalloc.*|kzalloc.*|kvmalloc.*|__kvmalloc.*|kfree|kvfree|kmem_cache_.*|__kmem_cache_.*|slab_free.*|__slab_free|do_slab_free|___slab_alloc|__slab_alloc.*|slab_alloc.*|poison_slab_object|stack_trace_save.*|arch_stack_walk|__list_add_valid_or_report|__list_del_entry_valid_or_report)$";

struct Patterns {
    stamp: Regex,
    frame: Regex,
    offset: Regex,
    address: Regex,
    machinery: Regex,
    kcsan_access: Regex,
    kasan_access: Regex,
    kasan_cache: Regex,
    kasan_inside: Regex,
    lock: Regex,
    warning: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("valid regex");
        Patterns {
            stamp: re(r"^\s*\[\s*\d+\.\d+\]\s?"),
            // ` iommufd_option+0x24/0x80 (C)`, ` f+0x1/0x2 [mod]`.
            frame: re(r"^\s+([A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s|$)"),
            offset: re(r"\+0x[0-9a-f]+/0x[0-9a-f]+"),
            address: re(r"\b0x[0-9a-f]{8,}\b|\b[0-9a-f]{16}\b"),
            machinery: re(MACHINERY),
            kcsan_access: re(
                r"^(read|write|read-write)( \(marked\))?(?: \(reordered\))? to 0x[0-9a-f]+ of (\d+) bytes by (task \d+|interrupt) on cpu \d+:",
            ),
            kasan_access: re(r"^(Read|Write) of size (\d+) at addr [0-9a-f]+ by task"),
            kasan_cache: re(r"which belongs to the cache (\S+) of size (\d+)"),
            kasan_inside: re(r"^The buggy address is located (\d+ bytes (?:inside|to the right|to the left)) of"),
            lock: re(r"^\s*[0-9a-f]{16} \((.+?)\)\{[^}]*\}(?:-\{\d+:\d+\})?, at: ([A-Za-z_.$][\w.$]*)\+0x"),
            warning: re(r"^WARNING: CPU: \d+ PID: \d+ at (\S+) ([A-Za-z_.$][\w.$]*)\+0x"),
        }
    })
}

/// The message of a console line: without the printk timestamp.
fn message(line: &str) -> &str {
    let p = patterns();
    match p.stamp.find(line) {
        Some(m) => &line[m.end()..],
        None => line,
    }
    .trim_end_matches(['\r', '\n'])
}

/// The kind and normalised title of a report's first line, if it starts one.
fn start(msg: &str) -> Option<(String, String)> {
    let p = patterns();
    let clean = |s: &str| {
        let s = p.offset.replace_all(s, "");
        crate::snapshot::observe::normalise_kernel_line(&s)
    };
    let lockdep_titles = [
        "possible circular locking dependency detected",
        "possible recursive locking detected",
        "inconsistent lock state",
        "suspicious RCU usage",
        "possible irq lock inversion dependency detected",
        "HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
        "SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected",
        "bad unlock balance detected!",
        "held lock freed!",
        "lock held when returning to user space!",
        "Nested lock was not taken",
    ];
    if let Some(rest) = msg.strip_prefix("BUG: KASAN: ") {
        return Some(("kasan".into(), clean(rest)));
    }
    if let Some(rest) = msg.strip_prefix("BUG: KCSAN: ") {
        return Some(("kcsan".into(), clean(rest)));
    }
    if let Some(rest) = msg.strip_prefix("UBSAN: ") {
        return Some(("ubsan".into(), clean(rest)));
    }
    if let Some(rest) = msg.strip_prefix("BUG: sleeping function called from invalid context") {
        return Some(("atomic-sleep".into(), clean(rest.trim_start())));
    }
    if let Some(rest) = msg.strip_prefix("BUG: Invalid wait context") {
        return Some((
            "lockdep".into(),
            format!("invalid wait context{}", clean(rest)),
        ));
    }
    if let Some(rest) = msg.strip_prefix("WARNING: ") {
        if lockdep_titles.iter().any(|t| rest.starts_with(t)) {
            return Some(("lockdep".into(), rest.trim().to_string()));
        }
        if let Some(c) = p.warning.captures(msg) {
            return Some(("warning".into(), clean(&format!("at {} {}", &c[1], &c[2]))));
        }
        return Some(("warning".into(), clean(rest)));
    }
    if msg.starts_with("BUG: ") || msg.starts_with("kernel BUG at ") {
        let rest = msg.strip_prefix("BUG: ").unwrap_or(msg);
        return Some(("bug".into(), clean(rest)));
    }
    if msg.starts_with("Unable to handle kernel ") {
        let title = p.address.replace_all(msg, "ADDR");
        return Some(("oops".into(), clean(&title)));
    }
    if msg.starts_with("Kernel panic - not syncing") {
        return Some(("panic".into(), clean(msg)));
    }
    None
}

/// Whether `msg` ends the report that is being read.
fn ends(msg: &str) -> bool {
    msg.starts_with("==================") || msg.starts_with("---[ end trace")
}

/// Parses the reports among `lines` (one step's console, in order).
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<ParsedReport> {
    let mut out = Vec::new();
    let mut current: Option<Builder> = None;
    for line in lines {
        let msg = message(line);
        // An oops's "Internal error" follows its "Unable to handle" line and
        // belongs to it; a panic after a report is its own.
        if let Some((kind, title)) = start(msg) {
            let continues = matches!(&current, Some(b) if b.kind == "oops")
                && msg.starts_with("Internal error");
            if !continues {
                if let Some(b) = current.take() {
                    out.extend(b.finish());
                }
                current = Some(Builder::new(kind, title));
            }
        } else if msg.starts_with("Internal error: Oops") && current.is_none() {
            current = Some(Builder::new("oops".into(), "Internal error: Oops".into()));
        }
        let Some(b) = current.as_mut() else {
            continue;
        };
        b.text.push(line.trim_end_matches(['\r', '\n']).to_string());
        if b.text.len() > 1 && ends(msg) {
            if let Some(b) = current.take() {
                out.extend(b.finish());
            }
            continue;
        }
        b.line(msg);
    }
    if let Some(b) = current.take() {
        out.extend(b.finish());
    }
    out
}

/// The distinct findings among `lines` that `scope` admits, sorted (the
/// snapshot's view).
pub fn findings<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    scope: Option<&ReportScope>,
) -> Vec<KernelFinding> {
    let Some(scope) = scope else {
        return Vec::new();
    };
    parse(lines)
        .into_iter()
        .map(|r| r.finding)
        .filter(|f| admits(scope, f))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether `f` names a function in `scope`: in its title or the kept
/// frames of any of its stacks.
pub fn admits(scope: &ReportScope, f: &KernelFinding) -> bool {
    if scope.0.is_empty() {
        return true;
    }
    let words = f
        .title
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .chain(f.stacks.iter().flat_map(|s| {
            s.split_once(": ")
                .map_or("", |(_, frames)| frames)
                .split(" < ")
        }));
    words.filter(|w| !w.is_empty()).any(|w| scope.names(w))
}

struct Builder {
    kind: String,
    title: String,
    object: Vec<String>,
    locks: Vec<String>,
    /// (section name, frames kept so far, frames seen at all).
    stacks: Vec<(String, Vec<String>)>,
    in_stack: bool,
    /// lockdep's own lock chain is past once its backtrace starts.
    past_locks: bool,
    text: Vec<String>,
}

impl Builder {
    fn new(kind: String, title: String) -> Builder {
        Builder {
            kind,
            title,
            object: Vec::new(),
            locks: Vec::new(),
            stacks: Vec::new(),
            in_stack: false,
            past_locks: false,
            text: Vec::new(),
        }
    }

    fn open(&mut self, name: String) {
        self.stacks.push((name, Vec::new()));
        self.in_stack = true;
    }

    fn line(&mut self, msg: &str) {
        let p = patterns();
        if self.in_stack {
            if let Some(c) = p.frame.captures(msg) {
                let f = &c[1];
                // `f.cold`, `f.isra.0`, `f.constprop.0`: the function is f.
                let f = f.split('.').next().unwrap_or(f);
                let (_, frames) = self.stacks.last_mut().expect("a stack is open");
                if frames.len() < FRAMES && !p.machinery.is_match(f) {
                    frames.push(f.to_string());
                }
                return;
            }
            if msg.trim().is_empty() || !msg.starts_with(' ') {
                self.in_stack = false;
            }
        }
        let trimmed = msg.trim();
        if trimmed == "Call trace:" {
            // lockdep's chain shows each dependency's stack; the signature
            // keeps the backtrace of the acquisition that was reported.
            if self.kind == "lockdep" && !self.past_locks {
                return;
            }
            self.open("call".into());
        } else if trimmed == "stack backtrace:" {
            self.past_locks = true;
        } else if let Some(c) = p.kcsan_access.captures(trimmed) {
            let marked = if c.get(2).is_some() { " (marked)" } else { "" };
            self.object
                .push(format!("{}{marked} of {} bytes", &c[1], &c[3]));
            self.open(c[1].to_string());
        } else if let Some(c) = p.kasan_access.captures(trimmed) {
            self.object
                .push(format!("{} of size {}", c[1].to_lowercase(), &c[2]));
        } else if let Some(c) = p.kasan_cache.captures(trimmed) {
            self.object
                .push(format!("cache {} of size {}", &c[1], &c[2]));
        } else if let Some(c) = p.kasan_inside.captures(trimmed) {
            self.object.push(c[1].to_string());
        } else if trimmed.starts_with("Allocated by task ") {
            self.open("allocated".into());
        } else if trimmed.starts_with("Freed by task ") {
            self.open("freed".into());
        } else if self.kind == "lockdep" && !self.past_locks {
            if let Some(c) = p.lock.captures(msg) {
                let l = format!("{} at {}", &c[1], &c[2]);
                if !self.locks.contains(&l) {
                    self.locks.push(l);
                }
            }
        }
    }

    /// The finding, if the report says more than its first line: named
    /// frames, an object, locks, or a detector's title.
    fn finish(self) -> Option<ParsedReport> {
        let stacks: Vec<String> = self
            .stacks
            .into_iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(name, f)| format!("{name}: {}", f.join(" < ")))
            .collect();
        let detector = matches!(
            self.kind.as_str(),
            "kasan" | "kcsan" | "lockdep" | "ubsan" | "atomic-sleep"
        );
        if stacks.is_empty() && self.locks.is_empty() && !detector {
            return None;
        }
        let (mut object, mut stacks) = (self.object, stacks);
        if self.kind == "kcsan" {
            // KCSAN names first the access whose watchpoint fired, which
            // either side of a race may be: the race is the same.
            object.sort();
            stacks.sort();
        }
        Some(ParsedReport {
            finding: KernelFinding {
                kind: self.kind,
                title: self.title,
                object,
                locks: self.locks,
                stacks,
            },
            text: self.text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KCSAN: &str = "\
[   12.000001] ==================================================================
[   12.000002] BUG: KCSAN: data-race in iommufd_device_do_attach / iommufd_option_sw_msi
[   12.000003] 
[   12.000004] write to 0xffff00000a2b3c48 of 8 bytes by task 231 on cpu 1:
[   12.000005]  iommufd_option_sw_msi+0x98/0x130
[   12.000006]  iommufd_option+0x3c/0x1a0
[   12.000007]  iommufd_fops_ioctl+0x1c8/0x2a0
[   12.000008]  __arm64_sys_ioctl+0xb4/0x100
[   12.000009] 
[   12.000010] read to 0xffff00000a2b3c48 of 8 bytes by task 232 on cpu 0:
[   12.000011]  iommufd_device_do_attach+0x5c/0x400 (C)
[   12.000012]  iommufd_device_attach+0x30/0x90
[   12.000013]  vfio_iommufd_physical_attach_ioas+0x44/0x80
[   12.000014] 
[   12.000015] value changed: 0xffffffffffffffff -> 0x0000000008000000
[   12.000016] 
[   12.000017] Reported by Kernel Concurrency Sanitizer on:
[   12.000018] CPU: 0 UID: 0 PID: 232 Comm: msi-agent Not tainted 6.18.15 #1
[   12.000019] ==================================================================";

    #[test]
    fn a_kcsan_race_is_its_two_accesses_and_their_first_frames() {
        let r = parse(KCSAN.lines());
        assert_eq!(r.len(), 1, "{r:?}");
        let f = &r[0].finding;
        assert_eq!(f.kind, "kcsan");
        assert_eq!(
            f.title,
            "data-race in iommufd_device_do_attach / iommufd_option_sw_msi"
        );
        // In name order: which side's watchpoint fired does not matter.
        assert_eq!(f.object, vec!["read of 8 bytes", "write of 8 bytes"]);
        assert_eq!(
            f.stacks,
            vec![
                "read: iommufd_device_do_attach < iommufd_device_attach < vfio_iommufd_physical_attach_ioas",
                "write: iommufd_option_sw_msi < iommufd_option < iommufd_fops_ioctl",
            ]
        );
        assert_eq!(r[0].text.len(), 18, "from the title to the closing rule");
        // Addresses, values and task ids are not part of it: another run's
        // report of the same race is the same finding.
        let other = KCSAN
            .replace("0xffff00000a2b3c48", "0xffff00000b000000")
            .replace("231", "77");
        assert_eq!(
            findings(other.lines(), Some(&ReportScope::default())),
            vec![f.clone()]
        );
    }

    #[test]
    fn a_kasan_report_names_the_object_and_the_allocating_and_freeing_frames() {
        let text = "\
==================================================================
BUG: KASAN: slab-use-after-free in iommufd_option_sw_msi+0x1b4/0x1f0
Read of size 8 at addr ffff0000c2a1b408 by task msi-agent/231

CPU: 1 UID: 0 PID: 231 Comm: msi-agent Tainted: G    B   6.18.15 #1
Hardware name: linux,dummy-virt (DT)
Call trace:
 show_stack+0x18/0x24 (C)
 dump_stack_lvl+0x60/0x80
 print_report+0x114/0x5e0
 kasan_report+0xb0/0x100
 __asan_load8+0x9c/0xc0
 iommufd_option_sw_msi+0x1b4/0x1f0
 iommufd_option+0x3c/0x1a0
 iommufd_fops_ioctl+0x1c8/0x2a0
 __arm64_sys_ioctl+0xb4/0x100

Allocated by task 231:
 kasan_save_stack+0x3c/0x64
 kasan_save_track+0x20/0x3c
 __kasan_kmalloc+0xac/0xb0
 __kmalloc_cache_noprof+0x1a4/0x3c0
 iommufd_option_sw_msi+0x80/0x1f0
 iommufd_option+0x3c/0x1a0

Freed by task 231:
 kasan_save_stack+0x3c/0x64
 kasan_save_free_info+0x40/0x50
 __kasan_slab_free+0x50/0x70
 kfree+0x128/0x3c0
 iommufd_option_sw_msi+0x120/0x1f0

The buggy address belongs to the object at ffff0000c2a1b400
 which belongs to the cache kmalloc-64 of size 64
The buggy address is located 8 bytes inside of
 freed 64-byte region [ffff0000c2a1b400, ffff0000c2a1b440)
==================================================================
";
        let f = &parse(text.lines())[0].finding;
        assert_eq!(f.kind, "kasan");
        assert_eq!(f.title, "slab-use-after-free in iommufd_option_sw_msi");
        assert_eq!(
            f.object,
            vec![
                "read of size 8",
                "cache kmalloc-64 of size 64",
                "8 bytes inside"
            ]
        );
        assert_eq!(
            f.stacks,
            vec![
                "call: iommufd_option_sw_msi < iommufd_option < iommufd_fops_ioctl",
                "allocated: iommufd_option_sw_msi < iommufd_option",
                "freed: iommufd_option_sw_msi",
            ]
        );
    }

    #[test]
    fn a_lockdep_splat_names_its_locks_and_the_reported_acquisition() {
        let text = "\
[   5.1] ======================================================
[   5.1] WARNING: possible circular locking dependency detected
[   5.1] 6.18.15 #1 Not tainted
[   5.1] ------------------------------------------------------
[   5.1] msi-agent/231 is trying to acquire lock:
[   5.1] ffff0000c1e2d0b0 (&ictx->sw_msi_lock){+.+.}-{4:4}, at: iommufd_option_sw_msi+0x40/0x1f0
[   5.1] 
[   5.1] but task is already holding lock:
[   5.1] ffff0000c1e2d010 (&igroup->lock){+.+.}-{4:4}, at: iommufd_device_attach+0x30/0x90
[   5.1] 
[   5.1] which lock already depends on the new lock.
[   5.1] 
[   5.1] the existing dependency chain (in reverse order) is:
[   5.1] 
[   5.1] -> #1 (&igroup->lock){+.+.}-{4:4}:
[   5.1]        __mutex_lock+0xa0/0x7c0
[   5.1]        mutex_lock_nested+0x24/0x30
[   5.1]        iommufd_device_attach+0x30/0x90
[   5.1] 
[   5.1] stack backtrace:
[   5.1] CPU: 0 UID: 0 PID: 231 Comm: msi-agent Not tainted 6.18.15 #1
[   5.1] Call trace:
[   5.1]  show_stack+0x18/0x24 (C)
[   5.1]  dump_stack_lvl+0x90/0xd0
[   5.1]  print_circular_bug+0x27c/0x2a0
[   5.1]  check_noncircular+0x15c/0x170
[   5.1]  __lock_acquire+0x1280/0x1f00
[   5.1]  lock_acquire+0x1c4/0x33c
[   5.1]  __mutex_lock+0xa0/0x7c0
[   5.1]  mutex_lock_nested+0x24/0x30
[   5.1]  iommufd_option_sw_msi+0x40/0x1f0
[   5.1]  iommufd_option+0x3c/0x1a0
[   5.1]  iommufd_fops_ioctl+0x1c8/0x2a0
[   5.1]  __arm64_sys_ioctl+0xb4/0x100
[   5.2] msi-agent: step end";
        let r = parse(text.lines());
        assert_eq!(r.len(), 1);
        let f = &r[0].finding;
        assert_eq!(f.kind, "lockdep");
        assert_eq!(f.title, "possible circular locking dependency detected");
        assert_eq!(
            f.locks,
            vec![
                "&ictx->sw_msi_lock at iommufd_option_sw_msi",
                "&igroup->lock at iommufd_device_attach"
            ]
        );
        assert_eq!(
            f.stacks,
            vec!["call: iommufd_option_sw_msi < iommufd_option < iommufd_fops_ioctl"]
        );
        assert!(f.signature().starts_with("lockdep: possible circular"));
    }

    #[test]
    fn a_warning_without_symbols_is_left_to_its_first_line() {
        // The default variants have no KALLSYMS: frames are bare addresses,
        // and the snapshot keeps the WARNING line only (as before).
        let text = "\
[    3.1] WARNING: CPU: 1 PID: 231 at drivers/iommu/io-pgtable-arm.c:395 __arm_lpae_map+0x1/0x2
[    3.1] Call trace:
[    3.1]  0xffff800080123456
[    3.1]  0xffff800080123999
[    3.1] ---[ end trace 0000000000000000 ]---";
        assert!(parse(text.lines()).is_empty());
        let named = text.replace("0xffff800080123456", "__arm_lpae_map+0x498/0x4dc (C)");
        let f = &parse(named.lines())[0].finding;
        assert_eq!(f.kind, "warning");
        assert_eq!(
            f.title,
            "at drivers/iommu/io-pgtable-arm.c:395 __arm_lpae_map"
        );
        assert_eq!(f.stacks, vec!["call: __arm_lpae_map"]);
    }

    #[test]
    fn ubsan_and_sleeping_in_atomic_are_detector_reports() {
        let text = "\
UBSAN: shift-out-of-bounds in drivers/iommu/iommufd/main.c:301:20
shift exponent 64 is too large for 64-bit type 'long long unsigned int'
CPU: 0 UID: 0 PID: 1 Comm: msi-agent Not tainted
Call trace:
 show_stack+0x18/0x24 (C)
 __ubsan_handle_shift_out_of_bounds+0x1/0x2
 iommufd_option_sw_msi+0x40/0x1f0
BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580
in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 231, name: msi-agent";
        let f = findings(text.lines(), Some(&ReportScope::default()));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].kind, "atomic-sleep");
        assert_eq!(f[0].title, "at kernel/locking/mutex.c:580");
        assert_eq!(f[1].kind, "ubsan");
        assert_eq!(
            f[1].title,
            "shift-out-of-bounds in drivers/iommu/iommufd/main.c:301:20"
        );
        assert_eq!(f[1].stacks, vec!["call: iommufd_option_sw_msi"]);
    }

    #[test]
    fn a_scope_keeps_the_reports_that_name_the_code_under_test() {
        let scope = ReportScope(vec!["iommufd_*".into(), "*msi*".into(), "vfio_".into()]);
        assert!(scope.names("iommufd_option_sw_msi"));
        assert!(scope.names("pci_msi_setup"));
        assert!(!scope.names("vfio_pci_core"));
        assert!(scope.names("vfio_"));
        let elsewhere = "\
BUG: KCSAN: data-race in rcu_all_qs / rcu_report_qs_rdp

write (marked) to 0xfff000003fcda9dd of 1 bytes by interrupt on cpu 0:
 rcu_report_qs_rdp+0x184/0x208
 rcu_core+0x4c0/0x710

read to 0xfff000003fcda9dd of 1 bytes by task 84 on cpu 0:
 rcu_all_qs+0x34/0xbc
 __cond_resched+0x24/0x54
==================================================================";
        assert!(findings(elsewhere.lines(), Some(&scope)).is_empty());
        assert_eq!(
            findings(elsewhere.lines(), Some(&ReportScope::default())).len(),
            1
        );
        let f = findings(KCSAN.lines(), Some(&scope));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].object, vec!["read of 8 bytes", "write of 8 bytes"]);
        // A marked access is said so.
        assert_eq!(
            parse(elsewhere.lines())[0].finding.object,
            vec!["read of 1 bytes", "write (marked) of 1 bytes"]
        );
    }
}
