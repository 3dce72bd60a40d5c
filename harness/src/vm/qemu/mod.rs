//! The QEMU command line, built from types, and what a QEMU binary can do.
//!
//! [`VmConfig`] describes a guest; [`QemuCaps`] is what a given
//! `qemu-system-aarch64` supports (probed once per binary and cached);
//! [`plan`] checks one against the other and lays the PCI topology out, so
//! that every device's guest BDF and requester id are known before boot, and
//! [`QemuPlan::argv`] turns the result into argv. Nothing here goes through a
//! shell: values become single argv entries, and ids are checked against
//! QEMU's id syntax so they cannot smuggle extra `-device` options in.
//!
//! A configuration this QEMU cannot run is [`Unsupported`] (the scenario is
//! skipped with the reason), not an error.

mod argv;
mod config;
mod plan;
mod probe;

pub use argv::{shell_quote, RecordedPlan, Runtime, NO_OPTION_ROM};
pub use config::{Device, Incoming, Iommu, Machine, SmmuStage, SshConfig, VmConfig, QEMU};
pub use plan::{plan, Bdf, PlacedDevice, PlanError, QemuPlan, Unsupported};
pub use probe::{caps_of, probe, QemuCaps};
