//! The kernel ABI the agent speaks, defined once in `msi-uapi` (whose
//! layout table the harness checks against every kernel's headers).

pub use msi_uapi::*;
