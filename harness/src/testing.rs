//! What the harness's ignored tests need, obtained in one place.
//!
//! A test that needs a booted guest, QEMU, the cross toolchain, a built
//! kernel, the network or a host tool that only `cargo xtask deps` installs
//! is `#[ignore = "<what it needs>: run by cargo xtask test"]`: plain
//! `cargo test` lists it as ignored, and `cargo xtask test` runs it (nextest
//! `--run-ignored all`) after installing the tools, building the kernels and
//! the image and writing their paths to `inputs.json`. Such a test never
//! returns early: run with `--ignored` without what it needs, it fails here
//! with a message saying what is missing and how to get it.

use std::path::{Path, PathBuf};

use crate::pipeline::{Inputs, INPUTS_ENV};

/// How to get a run context, for the messages below.
const RUN_XTASK: &str = "run `cargo xtask test` (it builds the kernels and the image, \
     writes their paths to inputs.json and runs the ignored tests), or set \
     MSI_HARNESS_INPUTS to the inputs.json of an earlier run \
     (target/msi-harness/runs/<run>/inputs.json)";

/// The kernels and image `cargo xtask test` built, read from the inputs file
/// named by `MSI_HARNESS_INPUTS`. Panics when it is unset, and when the file
/// is unreadable or invalid: a broken inputs file is a failure, not a skip.
pub fn inputs() -> Inputs {
    load(
        std::env::var_os(INPUTS_ENV)
            .filter(|v| !v.is_empty())
            .as_deref()
            .map(Path::new),
    )
}

/// [`inputs`] from the file at `path` (`None`: the variable is unset).
fn load(path: Option<&Path>) -> Inputs {
    let Some(path) = path else {
        panic!(
            "{INPUTS_ENV} is not set: this test needs a built kernel and guest image; {RUN_XTASK}"
        );
    };
    Inputs::load(path).unwrap_or_else(|e| panic!("{INPUTS_ENV}={}: {e:#}", path.display()))
}

/// The guest the VM tests boot.
pub struct Guest {
    /// The variant whose kernel it is.
    pub variant: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub ssh_key: PathBuf,
}

/// The harness's image with the first kernel of [`inputs`] that has the
/// SW_MSI options (else the first kernel).
pub fn guest() -> Guest {
    let inputs = inputs();
    let (variant, kernel) = inputs
        .kernels
        .iter()
        .find(|(_, k)| k.has_sw_msi)
        .or_else(|| inputs.kernels.iter().next())
        .unwrap_or_else(|| {
            panic!(
                "the inputs file {} names no kernel; {RUN_XTASK}",
                std::env::var(INPUTS_ENV).unwrap_or_default()
            )
        });
    Guest {
        variant: variant.clone(),
        kernel: kernel.image.clone(),
        initramfs: inputs.initramfs.clone(),
        ssh_key: inputs.ssh_private_key.clone(),
    }
}

/// Panics, naming the Debian package, unless `program` is on PATH.
pub fn program(program: &str) {
    if let Err(e) = crate::deps::require_tool(program) {
        panic!("{e:#}; `cargo xtask test` installs it before it runs the ignored tests");
    }
}

/// Panics unless the host has everything `cargo xtask deps` installs (the
/// cross compiler, the kernel's build tools, the arm64 apt lists): what a
/// kernel, selftest or image build needs.
pub fn host_tools() {
    match crate::deps::check() {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => panic!(
            "this host lacks what the test builds with; `cargo xtask deps` would run:\n  {}\n\
             (`cargo xtask test` does this before it runs the ignored tests)",
            missing.commands().join("\n  ")
        ),
        Err(e) => panic!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_text(f: impl FnOnce() -> Inputs + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("no panic");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn no_run_context_says_to_run_xtask_and_a_broken_file_is_a_failure() {
        let absent = panic_text(|| load(None));
        assert!(absent.contains("MSI_HARNESS_INPUTS is not set"), "{absent}");
        assert!(absent.contains("cargo xtask test"), "{absent}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inputs.json");
        let missing = panic_text(|| load(Some(&file)));
        assert!(missing.contains("cannot read inputs file"), "{missing}");
        std::fs::write(&file, "{\"kernels\": {}, \"initrd\": \"x\"}").unwrap();
        let broken = panic_text(|| load(Some(&file)));
        assert!(broken.contains("invalid inputs file"), "{broken}");
        assert!(broken.contains(&file.display().to_string()), "{broken}");
    }
}
