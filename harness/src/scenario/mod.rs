//! scenario stage: declarative TOML steps run against a fresh VM.
//!
//! A scenario file (`scenarios/<name>.toml`) becomes a [`Scenario`] in
//! four steps: [`parse`] reads the document, [`source`] turns TOML spans
//! into `file:line:col` for every error, [`expand`] turns preludes, repeats
//! and compound steps into the flat steps that run, and [`validate`]
//! checks the cross-field rules; [`model`] holds the types. [`exec`] boots
//! a VM for one (scenario, kernel variant), runs the steps through one
//! agent session and collects per-step observations; [`inputs`] is the
//! contract with `cargo xtask test`.

pub mod exec;
pub mod expand;
pub mod inputs;
pub mod known;
pub mod model;
mod parse;
mod source;
mod validate;

#[cfg(test)]
mod tests;

pub use expand::{all_ops, Compound};
pub use inputs::{Inputs, KernelInput};
pub use model::{
    Action, DeviceSpec, Expect, ExpectFields, HostStep, MachineSpec, MachineType, Pos, Prelude,
    Requirement, Scenario, ScenarioError, ScenarioStep, SmmuStageSpec,
};
pub use source::display_path;

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

/// A scenario's name: its file's stem.
pub fn name_of(file: &Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("?")
        .to_string()
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

/// Starts QEMU once, paused, for each distinct machine the scenarios (and
/// the harness's own guest, used by `boot`, `shell` and the VM tests) will
/// boot, before any test runs: a QEMU that cannot start is reported once,
/// not by every test. Returns the number of distinct machines started.
pub fn preflight(
    inputs: &Inputs,
    run_dir: &Path,
    reporter: &dyn crate::event::Reporter,
) -> anyhow::Result<usize> {
    use crate::event::Stage;
    let Some(kernel) = inputs.kernels.values().next() else {
        return Ok(0);
    };
    let started = std::time::Instant::now();
    reporter.start(
        Stage::Vm,
        "pre-flight: QEMU with every machine the tests use",
    );
    let dir = run_dir.join("preflight");
    let mut cfgs = vec![crate::guest::with_devices(
        &kernel.image,
        &inputs.initramfs,
        &inputs.ssh_private_key,
        vec![crate::vm::Device::Edu {
            id: "edu0".into(),
            dma_mask: None,
        }],
        &dir.join("guest"),
    )?];
    for file in discover(&scenarios_dir())? {
        // A file that does not parse fails its own `parse:` test.
        if let Ok(s) = Scenario::load(&file) {
            let name = name_of(&file);
            cfgs.push(exec::vm_config(&s, kernel, inputs, &dir.join(name)));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(crate::vm::preflight(cfgs));
    reporter.end(
        Stage::Vm,
        match &result {
            Ok(n) => format!("pre-flight: {n} distinct machines started"),
            Err(_) => "pre-flight".to_string(),
        },
        result.is_ok(),
        started.elapsed(),
    );
    result
}
