//! The QEMU command line: [`QemuPlan::argv`] adds what is only known at
//! spawn time ([`Runtime`]) to the plan's arguments, and [`shell_quote`]
//! makes the saved command line runnable.

use std::path::Path;

use anyhow::Context;

use super::plan::NIC_SLOT;
use super::QemuPlan;

/// NICs load an iPXE option ROM by default (Debian's `ipxe-qemu`, only a
/// Recommends of qemu-system-arm); a directly booted kernel never runs it,
/// so no NIC asks for one and the package is not needed.
pub const NO_OPTION_ROM: &str = "romfile=";

/// Paths and ports only known at spawn time.
#[derive(Debug, Clone)]
pub struct Runtime<'a> {
    pub qmp_socket: &'a Path,
    pub trace_file: &'a Path,
    pub ssh_port: Option<u16>,
    /// A saved machine to load instead of booting (`-incoming file:`).
    pub incoming: Option<&'a Path>,
}

impl QemuPlan {
    /// The full argv (without the program) for these runtime paths.
    pub fn argv(&self, rt: &Runtime<'_>) -> anyhow::Result<Vec<String>> {
        runtime_argv(&self.args, &self.trace_events, rt)
    }

    /// What a later start of the same machine needs, kept as
    /// `qemu-plan.json` in the run directory (read by `cargo xtask bundle`).
    pub fn recorded(&self, version_line: &str) -> RecordedPlan {
        RecordedPlan {
            qemu: self.qemu.clone(),
            version_line: version_line.to_string(),
            args: self.args.clone(),
            trace_events: self.trace_events.clone(),
        }
    }
}

/// A run's planned command line without its runtime paths and ports: a
/// reproducer bundle starts the same machine from it, with its own
/// kernel, initramfs, sockets and port.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedPlan {
    pub qemu: std::path::PathBuf,
    pub version_line: String,
    pub args: Vec<String>,
    pub trace_events: Vec<String>,
}

impl RecordedPlan {
    /// The file name in a run directory.
    pub const FILE: &'static str = "qemu-plan.json";

    /// The full argv (without the program) for these runtime paths.
    pub fn argv(&self, rt: &Runtime<'_>) -> anyhow::Result<Vec<String>> {
        runtime_argv(&self.args, &self.trace_events, rt)
    }

    /// Points `-kernel` and `-initrd` at other files (a bundle's copies).
    pub fn with_boot_files(mut self, kernel: &str, initrd: &str) -> anyhow::Result<Self> {
        for (flag, value) in [("-kernel", kernel), ("-initrd", initrd)] {
            let at = self
                .args
                .iter()
                .position(|a| a == flag)
                .filter(|i| i + 1 < self.args.len())
                .with_context(|| format!("the recorded QEMU command line has no `{flag} FILE`"))?;
            self.args[at + 1] = value.to_string();
        }
        Ok(self)
    }
}

/// The plan's arguments and the runtime ones.
fn runtime_argv(
    args: &[String],
    trace_events: &[String],
    rt: &Runtime<'_>,
) -> anyhow::Result<Vec<String>> {
    let mut argv = args.to_vec();
    let sock = path_arg(rt.qmp_socket)?;
    argv.extend([
        "-chardev".to_string(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape_opt(&sock)
        ),
        "-mon".to_string(),
        "chardev=qmp,mode=control".to_string(),
    ]);
    match rt.ssh_port {
        Some(port) => {
            // restrict=on: the guest reaches nothing outside; the
            // forward still works.
            argv.push("-netdev".into());
            argv.push(format!(
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
            ));
            argv.push("-device".into());
            argv.push(format!(
                "virtio-net-pci,netdev=net0,bus=pcie.0,addr={NIC_SLOT:#x},{NO_OPTION_ROM}"
            ));
        }
        None => {
            argv.push("-nic".into());
            argv.push("none".into());
        }
    }
    // Every `-trace` option sets the file anew (to stderr when it has no
    // `file=`), so each one names it.
    let file = escape_opt(&path_arg(rt.trace_file)?);
    if trace_events.is_empty() {
        argv.push("-trace".into());
        argv.push(format!("file={file}"));
    }
    for pattern in trace_events {
        argv.push("-trace".into());
        argv.push(format!("enable={pattern},file={file}"));
    }
    if let Some(state) = rt.incoming {
        // Loaded over QMP once the stream's capabilities are set
        // (`mapped-ram`, as it was saved: `Vm::save_state`).
        let _ = path_arg(state)?;
        argv.push("-incoming".into());
        argv.push("defer".into());
    }
    Ok(argv)
}

/// Quotes argv for a POSIX shell, so that the saved command line can be
/// pasted and run as is.
pub fn shell_quote(argv: &[String]) -> String {
    crate::process::display(argv)
}

/// QEMU's option parser splits on `,`; a literal comma is written twice.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

pub(super) fn path_arg(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(String::from)
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::qemu::plan::glob_match;

    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        let argv: Vec<String> = [
            "qemu",
            "-append",
            "console=ttyAMA0 panic=-1",
            "-device",
            "edu,id=a",
            "it's",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            shell_quote(&argv),
            r#"qemu -append 'console=ttyAMA0 panic=-1' -device 'edu,id=a' "it's""#
        );
        assert!(glob_match("smmuv3_translate_*", "smmuv3_translate_success"));
        assert!(!glob_match("smmuv3_translate_*", "smmuv3_record_event"));
        assert!(glob_match("gicv3_its_cmd_ma?d", "gicv3_its_cmd_mapd"));
    }
}
