//! Command-line flags: one struct per verb; its doc comment is the `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// msi-harness: build a kernel, boot it under QEMU with an emulated SMMUv3,
/// run the SW_MSI scenarios and compare what the kernel did with snapshots.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, and install when missing, every host tool the harness needs.
    Deps(Deps),
    /// Build a kernel variant (or a local tree) and print where the Image and headers are.
    Kernel(Kernel),
    /// Build the guest initramfs (busybox, dropbear, the agent) and print where it is.
    Image(Image),
    /// Boot a guest, print the boot phases with timings, power it off.
    Boot(Boot),
    /// Boot a guest and open a shell in it (prints the ssh command for other terminals).
    Shell(Shell),
    /// Everything: set-up, kernels, image, VM tests and scenarios, summary and reports.
    Test(Test),
    /// Like `test`, but accept the new snapshots (review them with `git diff`).
    Bless(Test),
    /// Benchmarks (not built yet).
    Bench(Bench),
}

#[derive(Debug, Args)]
pub struct Deps {}

#[derive(Debug, Args)]
pub struct Kernel {
    /// The variant from kernel-configs/kernels.toml.
    #[arg(long, default_value = "sw-msi-rfcv2", conflicts_with = "kernel_tree")]
    pub variant: String,
    /// Build this local kernel tree as it is (never modified; built out of tree).
    #[arg(long, value_name = "PATH")]
    pub kernel_tree: Option<PathBuf>,
    /// A mail, mbox or directory of mails/patches replacing the variant's
    /// series, as downloaded; `PATH:9`, `PATH:9-10` or `PATH:4,8-9` picks
    /// patches by their n of [PATCH n/m].
    #[arg(long, value_name = "PATH[:N]", conflicts_with = "kernel_tree")]
    pub series: Option<PathBuf>,
    /// Let hunks apply with up to N context lines ignored at each end, as
    /// patch(1)'s --fuzz (default: strict, no fuzz).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "kernel_tree"
    )]
    pub fuzz: u32,
    /// Only apply the series in memory on the pristine source and report
    /// each patch (applies / already applied / stale); build nothing.
    #[arg(long, conflicts_with = "kernel_tree")]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct Image {}

#[derive(Debug, Args)]
pub struct Boot {
    /// The kernel variant to boot.
    #[arg(long, default_value = "sw-msi-rfcv2")]
    pub variant: String,
    /// How many edu devices to attach (bound to vfio-pci by /init).
    #[arg(long, default_value_t = 1)]
    pub edu: u32,
}

#[derive(Debug, Args)]
pub struct Shell {
    /// The kernel variant to boot.
    #[arg(long, default_value = "sw-msi-rfcv2")]
    pub variant: String,
    /// How many edu devices to attach (bound to vfio-pci by /init).
    #[arg(long, default_value_t = 1)]
    pub edu: u32,
}

#[derive(Debug, Args)]
pub struct Test {
    /// Kernel variants to run the scenarios on (repeatable).
    /// Default: upstream-6.18 and sw-msi-rfcv2.
    #[arg(long = "variant", value_name = "NAME")]
    pub variants: Vec<String>,
    /// Build this local kernel tree and judge it against the snapshots of `--as`.
    #[arg(long, value_name = "PATH", requires = "as_variant")]
    pub kernel_tree: Option<PathBuf>,
    /// The variant whose snapshots a `--kernel-tree` is compared with.
    #[arg(long = "as", value_name = "VARIANT", requires = "kernel_tree")]
    pub as_variant: Option<String>,
    /// A mail, mbox or directory of mails/patches replacing the variants'
    /// series (e.g. a reviewer's respin, judged against the variant's
    /// snapshots); `PATH:9-10` picks patches by number.
    #[arg(long, value_name = "PATH[:N]", conflicts_with = "kernel_tree")]
    pub series: Option<PathBuf>,
    /// Let the variants' hunks apply with up to N context lines ignored at
    /// each end, as patch(1)'s --fuzz (default: strict, no fuzz).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "kernel_tree"
    )]
    pub fuzz: u32,
    /// Only tests whose name contains this (e.g. a scenario name).
    pub filter: Option<String>,
}

#[derive(Debug, Args)]
pub struct Bench {}
