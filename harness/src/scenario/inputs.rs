//! `inputs.json`: what `cargo xtask test` built, handed to the `scenarios`
//! test target through `MSI_HARNESS_INPUTS`. The type lives in
//! `crate::pipeline`, which writes it; this is where the scenario side reads it.

pub use crate::pipeline::{Inputs, KernelInput, INPUTS_ENV};
