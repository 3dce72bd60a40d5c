//! The programs the harness starts by name, the Debian package of each, and
//! the message for one that is not there. Below both the process runner
//! (which names the package when a spawn fails) and `deps` (which installs
//! the packages).

use std::path::Path;

use crate::error::Error;

/// The Debian package that provides `program`, for messages about a tool
/// that is not there.
pub fn package_of(program: &str) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| *pkg)
}

/// The error for a program that could not be started: when it is not
/// installed, the message names the Debian package that provides it.
pub fn spawn_error(program: &str, err: &std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        return Error::infra(not_installed(program));
    }
    Error::infra(format!("cannot run {program}: {err}"))
}

/// "`X` is not installed: install the Debian package `P`".
pub fn not_installed(program: &str) -> String {
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string());
    match package_of(&name) {
        Some(pkg) => format!(
            "`{name}` is not installed: install the Debian package `{pkg}` (or run `cargo xtask deps`)"
        ),
        None => format!("`{name}` is not installed (not found on PATH)"),
    }
}

/// Fails naming the Debian package when `program` is not on PATH.
pub fn require_tool(program: &str) -> anyhow::Result<()> {
    if which(program).is_none() {
        return Err(Error::infra(not_installed(program)).into());
    }
    Ok(())
}

/// Programs the harness runs (or that `make` runs for it), with the package
/// that provides each. Unit tests in `deps` check that every program started
/// by name is here and that every package named here is installed by deps
/// or part of a Debian 12 minimal system.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("pkg-config", "pkg-config"),
    ("xz", "xz-utils"),
    ("cpio", "cpio"),
    ("cp", "coreutils"),
    ("ccache", "ccache"),
    ("rsync", "rsync"),
    ("git", "git"),
    ("ssh-keygen", "openssh-client"),
    ("ssh", "openssh-client"),
    ("tar", "tar"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-query", "dpkg"),
];

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
