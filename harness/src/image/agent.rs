//! Cross-building the guest agent (`msi-agent`) for the arm64 guest.
//!
//! Built every time the image stage runs: cargo decides what is stale, and a
//! no-op build is quick. The binary's sha256 then goes into the image key,
//! so an unchanged agent leaves the cached image valid.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::project_root;
use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Io, Log, Stdout, Stream};

pub const PACKAGE: &str = "msi-agent";
pub const TARGET: &str = "aarch64-unknown-linux-musl";

/// A cold release build with LTO on two shared cores takes minutes, not tens.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs `cargo build --release -p msi-agent --target aarch64-unknown-linux-musl`
/// in the workspace and returns the executable cargo reports (which honours
/// `CARGO_TARGET_DIR` and any configured target dir).
pub fn build(reporter: &dyn Reporter, log: &Log) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = process::cmd(&cargo);
    cmd.args(["build", "--release", "-p", PACKAGE, "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(project_root());
    let mut on_line = |stream: Stream, line: &str| {
        let l = line.trim_start();
        if stream == Stream::Stderr
            && (l.starts_with("Compiling")
                || l.starts_with("error")
                || l.starts_with("warning: unused"))
        {
            reporter.line(Stage::Image, l.to_string());
        }
    };
    // Stdout is cargo's JSON messages: kept for the executable's path, not
    // logged.
    let io = Io {
        stdout: Stdout::Keep,
        on_line: Some(&mut on_line),
        ..Io::log(log)
    };
    let out = cmd.run(BUILD_TIMEOUT, io)?;
    if !out.success() {
        let hint = if out
            .stderr
            .iter()
            .any(|l| l.contains("target may not be installed"))
        {
            format!(" (install the target: `rustup target add {TARGET}`)")
        } else {
            String::new()
        };
        return Err(Error::infra(format!(
            "the guest agent did not build (`cargo build --release -p {PACKAGE} --target {TARGET}`, {}){hint}; \
             cargo said:\n{}",
            out.status,
            out.tail(20)
        ))
        .into());
    }
    executable(&out.stdout_text()).ok_or_else(|| {
        Error::infra(format!(
            "cargo built {PACKAGE} but reported no executable for it (see {})",
            log.path().display()
        ))
        .into()
    })
}

/// The path of the `msi-agent` binary in cargo's JSON messages.
fn executable(json_lines: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == PACKAGE)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_executable_is_read_from_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"libc","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"msi-agent","kind":["bin"]},"executable":"/t/aarch64-unknown-linux-musl/release/msi-agent"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(msgs),
            Some(PathBuf::from(
                "/t/aarch64-unknown-linux-musl/release/msi-agent"
            ))
        );
        assert_eq!(
            executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }
}
