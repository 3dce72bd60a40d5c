//! What a QEMU binary can do: [`probe`] runs its `help` outputs once per
//! binary (cached by path, size and mtime) into [`QemuCaps`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{self, KeyBuilder};

/// What one QEMU binary supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuCaps {
    pub path: PathBuf,
    /// `(major, minor, micro)`.
    pub version: (u32, u32, u32),
    pub version_line: String,
    pub machines: BTreeSet<String>,
    /// User-creatable devices (`-device help`).
    pub devices: BTreeSet<String>,
    /// Properties of `-M virt`.
    pub virt_props: BTreeSet<String>,
    pub trace_events: BTreeSet<String>,
}

/// The capabilities of `cfg.qemu`: the run's probe when `cfg` carries it,
/// otherwise [`probe`] (off the async threads: it may run QEMU).
pub async fn caps_of(cfg: &super::VmConfig) -> anyhow::Result<QemuCaps> {
    if let Some(caps) = &cfg.caps {
        return Ok(caps.clone());
    }
    let qemu = cfg.qemu.clone();
    tokio::task::spawn_blocking(move || probe(&qemu))
        .await
        .context("qemu probe task")?
        .with_context(|| format!("probe {}", cfg.qemu.display()))
}

/// Probes `qemu` (cached per binary path, size and mtime).
pub fn probe(qemu: &Path) -> anyhow::Result<QemuCaps> {
    let path = resolve_program(qemu)?;
    let (size, mtime) = cache::file_stamp(&path)?;
    let key = KeyBuilder::new()
        .str("probe-format", "1")
        .str("path", &path.to_string_lossy())
        .str("size", &size.to_string())
        .str("mtime", &mtime.to_string())
        .finish();
    let cache_file = cache::cache_dir("qemu")?.join(format!("caps-{}.json", key.short()));
    if let Ok(text) = std::fs::read_to_string(&cache_file) {
        if let Ok(caps) = serde_json::from_str::<QemuCaps>(&text) {
            return Ok(caps);
        }
    }
    let caps = probe_uncached(&path)?;
    cache::write_atomic(&cache_file, serde_json::to_string_pretty(&caps)?.as_bytes())?;
    Ok(caps)
}

fn probe_uncached(path: &Path) -> anyhow::Result<QemuCaps> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {} {}", path.display(), args.join(" ")))?;
        if !out.status.success() {
            anyhow::bail!(
                "`{} {}` failed ({}): {}",
                path.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version_text = run(&["--version"])?;
    let version_line = version_text
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let version = parse_version(&version_line)
        .with_context(|| format!("cannot read a version from `{version_line}`"))?;
    Ok(QemuCaps {
        path: path.to_path_buf(),
        version,
        version_line,
        machines: parse_machines(&run(&["-machine", "help"])?),
        devices: parse_devices(&run(&["-device", "help"])?),
        virt_props: parse_props(&run(&["-machine", "virt,help"])?),
        trace_events: run(&["-trace", "help"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains(' '))
            .map(String::from)
            .collect(),
    })
}

fn resolve_program(p: &Path) -> anyhow::Result<PathBuf> {
    if p.components().count() > 1 {
        return Ok(p.to_path_buf());
    }
    crate::deps::which(&p.to_string_lossy()).ok_or_else(|| {
        crate::Error::infra(format!(
            "{} is not on PATH: install qemu-system-arm (cargo xtask deps)",
            p.display()
        ))
        .into()
    })
}

fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.split("version ").nth(1)?;
    let v = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next().unwrap_or(Ok(0)).ok()?,
        parts.next().unwrap_or(Ok(0)).ok()?,
    ))
}

fn parse_machines(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn parse_devices(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("name \""))
        .filter_map(|l| l.split('"').next().map(String::from))
        .collect()
}

fn parse_props(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| !k.contains(' '))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_outputs_are_parsed() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19"),
            Some((7, 2, 19))
        );
        let machines = parse_machines(
            "Supported machines are:\nvirt                 QEMU 10.0 ARM Virtual Machine (alias of virt-10.0)\nvirt-10.0            QEMU 10.0 ARM Virtual Machine\nnone                 empty machine\n",
        );
        assert_eq!(
            machines.into_iter().collect::<Vec<_>>(),
            ["none", "virt", "virt-10.0"]
        );
        let devices = parse_devices(
            "Controller/Bridge/Hub devices:\nname \"pcie-pci-bridge\", bus PCI\n\nMisc devices:\nname \"edu\", bus PCI\nname \"virtio-net-pci\", bus PCI, alias \"virtio-net\"\n",
        );
        assert_eq!(
            devices.into_iter().collect::<Vec<_>>(),
            ["edu", "pcie-pci-bridge", "virtio-net-pci"]
        );
        let props = parse_props(
            "virt-10.0-machine options:\n  acpi=<OnOffAuto>       - Enable ACPI\n  iommu=<string>         - Set the IOMMU type. Valid values are none and smmuv3\n",
        );
        assert!(props.contains("iommu") && props.contains("acpi"));
    }
}
