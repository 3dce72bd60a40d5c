//! The per-image SSH key pair, made with `ssh-keygen` and kept only in the
//! image's cache directory (mode 0600), never in the repository.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::error::Error;
use crate::process::{self, Io, Log};

pub const PRIVATE: &str = "id_key";
pub const PUBLIC: &str = "id_key.pub";

/// Makes `dir/id_key` and `dir/id_key.pub` (ed25519: dropbear 2022.83 and
/// libssh2 with OpenSSL both speak it) and returns the public key line.
pub fn generate(dir: &Path, comment: &str, log: &Log) -> anyhow::Result<String> {
    let private = dir.join(PRIVATE);
    let out = process::cmd("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&private)
        .run(Duration::from_secs(60), Io::log(log))
        .map_err(|e| e.context("install openssh-client for ssh-keygen (`cargo xtask deps`)"))?;
    if !out.success() {
        return Err(Error::infra(format!(
            "ssh-keygen failed ({}): {}",
            out.status,
            out.tail(5)
        ))
        .into());
    }
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600))?;
    let public = fs::read_to_string(dir.join(PUBLIC)).context("read the new public key")?;
    Ok(public.trim_end().to_string())
}
