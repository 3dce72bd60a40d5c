//! scenario stage: declarative TOML steps run against a fresh VM.
//!
//! [`format`] reads and validates `scenarios/<name>.toml` (errors carry
//! `file:line:col`); [`exec`] boots a VM for one (scenario, kernel variant),
//! runs the steps through one agent session and collects per-step
//! observations; [`inputs`] is the contract with `cargo xtask test`.

pub mod exec;
pub mod format;
pub mod inputs;

pub use format::{
    Action, DeviceSpec, Expect, ExpectFields, HostStep, MachineSpec, Pos, Scenario, ScenarioError,
    ScenarioStep,
};
pub use inputs::{Inputs, KernelInput};

use std::path::{Path, PathBuf};

/// The scenario files of `dir` (`*.toml`), sorted by name.
pub fn discover(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("read {}", dir.display()))),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Overrides where scenarios (and their `snapshots/`) are read from.
pub const SCENARIOS_DIR_ENV: &str = "MSI_HARNESS_SCENARIOS_DIR";

/// `<project>/scenarios`, or `$MSI_HARNESS_SCENARIOS_DIR`.
pub fn scenarios_dir() -> PathBuf {
    match std::env::var_os(SCENARIOS_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::cache::project_root().join("scenarios"),
    }
}
