//! msi-harness: a test harness for Linux IOMMU/MSI kernel work.
//!
//! The pipeline has one module per stage, each handing a typed result to the
//! next: `kernel` (source → patches → config → arm64 `Image` + uapi headers),
//! `image` (initramfs with busybox, dropbear and the guest agent), `vm` (QEMU
//! under TCG, QMP, SSH, console and traces), `scenario` (declarative steps run
//! against a fresh VM) and `snapshot` (normalised observations, reports).
//! `xtask` is a thin command-line layer over these modules.

pub mod bench;
pub mod bisect;
pub mod bundle;
pub mod cache;
pub mod compare;
pub mod deps;
pub mod error;
pub mod event;
pub mod guest;
pub mod image;
pub mod kernel;
pub mod ktap;
pub mod mutants;
pub mod nightly;
pub mod outcome;
pub mod pipeline;
pub mod process;
pub mod programs;
pub mod scenario;
pub mod snapshot;
#[cfg(test)]
mod testing;
pub mod trial;
pub mod vm;

pub use error::Error;
pub use outcome::ExitCode;
