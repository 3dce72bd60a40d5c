//! The contract between the harness and `guest-images/init`: what goes on
//! the kernel command line, and the readiness line `/init` prints back.
//!
//! `/init` reads `msi.*` parameters from `/proc/cmdline` (the kernel ignores
//! them: dotted names are module parameters of a module that does not exist)
//! and ends its set-up with one console line:
//!
//! ```text
//! MSI-HARNESS-READY uptime=1.43 net=ok hugepages=256/256 vfio=0000:00:02.0/vfio0/group3
//! ```
//!
//! printed only once dropbear listens, so a host that waits for it can
//! connect at once.

/// The first word of `/init`'s readiness line.
pub const READY_MARKER: &str = "MSI-HARNESS-READY";

/// What the guest should do at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdlineOptions {
    /// PCI functions to bind to vfio-pci, as `DDDD:BB:DD.F` (see [`check_bdf`]).
    pub vfio: Vec<String>,
    /// Huge pages `/init` reserves (`/proc/sys/vm/nr_hugepages`), if any.
    pub hugepages: Option<u32>,
    /// Further kernel parameters, appended verbatim.
    pub extra: Vec<String>,
}

/// The kernel command line for the harness's guest.
///
/// `panic=-1` makes a panicking guest reboot at once, which with QEMU's
/// `-no-reboot` ends the VM instead of leaving it hanging until a timeout.
/// `printk.devkmsg=on` lets the agent write its step-end marker after every
/// step (`msi_protocol::STEP_END_MARKER`); by default the kernel keeps only
/// ten writes to `/dev/kmsg` in five seconds.
pub fn kernel_cmdline(opts: &CmdlineOptions) -> String {
    let mut words = vec![
        "console=ttyAMA0".to_string(),
        "rdinit=/init".to_string(),
        "panic=-1".to_string(),
        "printk.devkmsg=on".to_string(),
    ];
    if !opts.vfio.is_empty() {
        words.push(format!("msi.vfio={}", opts.vfio.join(",")));
    }
    if let Some(n) = opts.hugepages {
        words.push(format!("msi.hugepages={n}"));
    }
    words.extend(opts.extra.iter().cloned());
    words.join(" ")
}

/// Checks a PCI address in the full `domain:bus:device.function` form
/// sysfs uses (`0000:00:02.0`), which is what `/init` looks up.
pub fn check_bdf(bdf: &str) -> Result<(), String> {
    let b = bdf.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
        && u8::from_str_radix(&bdf[8..10], 16).is_ok_and(|d| d < 32)
        && !bdf.chars().any(|c| c.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid PCI address {bdf:?}: want lowercase domain:bus:device.function like 0000:00:02.0"))
    }
}

/// The parsed readiness line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReport {
    /// Seconds since boot when `/init` was ready.
    pub uptime: Option<String>,
    /// `ok`, or why the network is not up (`no-eth0`, ...).
    pub net: String,
    /// Huge pages `(got, asked)`, when asked for.
    pub hugepages: Option<(u64, u64)>,
    pub vfio: Vec<VfioBinding>,
}

/// What became of one device named in `msi.vfio=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioBinding {
    pub bdf: String,
    /// `Ok((cdev, iommu_group))`, e.g. `("vfio0", 3)`: `/dev/vfio/devices/vfio0`.
    pub outcome: Result<(String, u32), String>,
}

impl ReadyReport {
    /// Reads a console line; `None` unless it carries [`READY_MARKER`].
    /// Unknown fields are skipped, so an older harness can read a newer init.
    pub fn parse(line: &str) -> Option<ReadyReport> {
        let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
        let mut r = ReadyReport {
            uptime: None,
            net: "unknown".into(),
            hugepages: None,
            vfio: Vec::new(),
        };
        for word in rest.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "uptime" => r.uptime = Some(v.to_string()),
                "net" => r.net = v.to_string(),
                "hugepages" => {
                    r.hugepages = v
                        .split_once('/')
                        .and_then(|(g, a)| Some((g.parse().ok()?, a.parse().ok()?)));
                }
                "vfio" => {
                    let mut parts = v.splitn(3, '/');
                    let bdf = parts.next().unwrap_or_default().to_string();
                    let (a, b) = (
                        parts.next().unwrap_or_default(),
                        parts.next().unwrap_or_default(),
                    );
                    let outcome = if a == "error" {
                        Err(b.to_string())
                    } else {
                        match b.strip_prefix("group").and_then(|g| g.parse().ok()) {
                            Some(group) => Ok((a.to_string(), group)),
                            None => Err(format!("unreadable vfio result {v:?}")),
                        }
                    };
                    r.vfio.push(VfioBinding { bdf, outcome });
                }
                _ => {}
            }
        }
        Some(r)
    }

    /// What went wrong, one sentence each; empty when the guest is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.net != "ok" {
            out.push(format!(
                "guest network is not up ({}): SSH cannot work; does QEMU give the guest a NIC, and \
                 does the kernel have its driver (virtio-net-pci needs VIRTIO_PCI and VIRTIO_NET)?",
                self.net
            ));
        }
        for b in &self.vfio {
            if let Err(e) = &b.outcome {
                out.push(format!("{} was not bound to vfio-pci: {e}", b.bdf));
            }
        }
        if let Some((got, asked)) = self.hugepages {
            if got < asked {
                out.push(format!("guest reserved {got} of {asked} huge pages"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(vfio: &[&str], hugepages: Option<u32>) -> CmdlineOptions {
        CmdlineOptions {
            vfio: vfio.iter().map(|s| s.to_string()).collect(),
            hugepages,
            extra: Vec::new(),
        }
    }

    #[test]
    fn cmdline_carries_console_init_and_options() {
        assert_eq!(
            kernel_cmdline(&opts(&[], None)),
            "console=ttyAMA0 rdinit=/init panic=-1 printk.devkmsg=on"
        );
        let mut o = opts(&["0000:00:02.0", "0000:01:00.0"], Some(256));
        o.extra.push("iommu.strict=1".into());
        assert_eq!(
            kernel_cmdline(&o),
            "console=ttyAMA0 rdinit=/init panic=-1 printk.devkmsg=on msi.vfio=0000:00:02.0,0000:01:00.0 msi.hugepages=256 iommu.strict=1"
        );
    }

    #[test]
    fn bdfs_are_checked() {
        assert!(check_bdf("0000:00:02.0").is_ok());
        assert!(check_bdf("0000:01:1f.7").is_ok());
        for bad in [
            "00:02.0",
            "0000:00:02.8",
            "0000:00:20.0",
            "0000:00:02",
            "0000:0A:02.0",
            "0000:00:02.0,x",
        ] {
            assert!(check_bdf(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ready_line_is_parsed() {
        let line = "[    1.5] MSI-HARNESS-READY uptime=1.43 net=ok hugepages=200/256 \
                    vfio=0000:00:02.0/vfio0/group3 vfio=0000:01:00.0/error/no-such-device future=1";
        let r = ReadyReport::parse(line).unwrap();
        assert_eq!(r.uptime.as_deref(), Some("1.43"));
        assert_eq!(r.hugepages, Some((200, 256)));
        assert_eq!(
            r.vfio[0],
            VfioBinding {
                bdf: "0000:00:02.0".into(),
                outcome: Ok(("vfio0".into(), 3))
            }
        );
        assert_eq!(r.vfio[1].outcome, Err("no-such-device".into()));
        assert_eq!(
            r.problems(),
            vec![
                "0000:01:00.0 was not bound to vfio-pci: no-such-device".to_string(),
                "guest reserved 200 of 256 huge pages".to_string(),
            ]
        );
        assert!(ReadyReport::parse("random console line").is_none());
        let r = ReadyReport::parse("MSI-HARNESS-READY net=no-eth0").unwrap();
        assert!(r.problems()[0].contains("no-eth0"));
    }
}
