//! Host set-up: checks, and installs when missing, everything the pipeline
//! needs on Debian 12.
//!
//! The check is cheap (one `dpkg-query`, one `rustup`, a few file reads; no
//! apt) so every verb runs it first. Installing needs root; without it the
//! exact commands are printed and the run ends as an infrastructure failure.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::error::Error;
use crate::event::{Reporter, Stage};

/// Debian packages the harness needs, with what each is for.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-arm",
        "QEMU for the arm64 guest (qemu-system-aarch64)",
    ),
    ("gcc-aarch64-linux-gnu", "cross compiler for the kernel"),
    ("make", "kernel build"),
    ("flex", "kernel build (kconfig)"),
    ("bison", "kernel build (kconfig)"),
    ("bc", "kernel build"),
    ("libelf-dev", "kernel build host tools"),
    ("libssl-dev", "kernel build host tools"),
    ("pkg-config", "kernel build host tools"),
    ("xz-utils", "unpacking kernel sources"),
    ("cpio", "kernel build (kheaders) and initramfs inspection"),
    ("ccache", "fast kernel rebuilds"),
    ("rsync", "preparing kernel trees incrementally"),
    (
        "openssh-client",
        "ssh-keygen for per-image keys, and `ssh` for `xtask shell`",
    ),
];

/// The one package that should come from bookworm-backports (QEMU 10.0).
const BACKPORTS_PACKAGE: &str = "qemu-system-arm";
const BACKPORTS_SUITE: &str = "bookworm-backports";
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/msi-harness-backports.sources";
const GUEST_ARCH: &str = "arm64";
const RUST_TARGET: &str = "aarch64-unknown-linux-musl";

/// What is missing on this host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub backports_source: bool,
    pub foreign_arch: bool,
    /// apt has no package lists for the guest architecture yet.
    pub arch_lists: bool,
    pub packages: Vec<&'static str>,
    pub rust_target: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        *self == Missing::default()
    }

    /// The shell commands that would fix this, in order.
    pub fn commands(&self) -> Vec<String> {
        let mut cmds = Vec::new();
        if self.backports_source {
            cmds.push(format!(
                "add an apt source for {BACKPORTS_SUITE} (cargo xtask deps writes {BACKPORTS_FILE} when run as root)"
            ));
        }
        if self.foreign_arch {
            cmds.push(format!("dpkg --add-architecture {GUEST_ARCH}"));
        }
        if self.backports_source
            || self.foreign_arch
            || self.arch_lists
            || !self.packages.is_empty()
        {
            cmds.push("apt-get update".to_string());
        }
        if self.packages.contains(&BACKPORTS_PACKAGE) {
            cmds.push(format!(
                "apt-get install -y -t {BACKPORTS_SUITE} {BACKPORTS_PACKAGE}"
            ));
        }
        let rest: Vec<&str> = self
            .packages
            .iter()
            .copied()
            .filter(|p| *p != BACKPORTS_PACKAGE)
            .collect();
        if !rest.is_empty() {
            cmds.push(format!("apt-get install -y {}", rest.join(" ")));
        }
        if self.rust_target {
            cmds.push(format!("rustup target add {RUST_TARGET}"));
        }
        cmds
    }
}

/// Looks at the host without changing it.
pub fn check() -> anyhow::Result<Missing> {
    let mut missing = Missing {
        backports_source: !apt_has_suite(Path::new("/etc/apt"), BACKPORTS_SUITE),
        ..Missing::default()
    };
    if which("dpkg").is_none() {
        return Err(Error::infra(
            "this host has no dpkg: msi-harness installs its tools with Debian's apt (Debian 12 expected)",
        )
        .into());
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()?;
    missing.foreign_arch = !String::from_utf8_lossy(&foreign.stdout)
        .split_whitespace()
        .any(|a| a == GUEST_ARCH);
    missing.arch_lists = !has_lists_for_arch(Path::new("/var/lib/apt/lists"), GUEST_ARCH);
    let names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    missing.packages = missing_packages(&names)?;
    missing.rust_target = !rust_target_installed()?;
    Ok(missing)
}

/// Checks, then installs what is missing (as root) or says how (otherwise).
pub fn ensure(reporter: &dyn Reporter) -> anyhow::Result<()> {
    let missing = check()?;
    if missing.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    reporter.start(Stage::Deps, "installing missing host tools");
    for (pkg, why) in PACKAGES
        .iter()
        .filter(|(p, _)| missing.packages.contains(p))
    {
        reporter.line(Stage::Deps, format!("missing package {pkg}: {why}"));
    }
    if !is_root() {
        let mut msg = String::from("host tools are missing and installing them needs root; run:\n");
        for c in missing.commands() {
            msg.push_str(&format!("    sudo {c}\n"));
        }
        msg.push_str("or run `sudo cargo xtask deps`");
        reporter.end(Stage::Deps, "host tools", false, started.elapsed());
        return Err(Error::infra(msg).into());
    }
    let result = install(&missing, reporter);
    reporter.end(Stage::Deps, "host tools", result.is_ok(), started.elapsed());
    result?;
    let still = check()?;
    if !still.is_empty() {
        return Err(Error::infra(format!(
            "after installing, still missing: {:?}; try: {}",
            still,
            still.commands().join(" && ")
        ))
        .into());
    }
    Ok(())
}

fn install(missing: &Missing, reporter: &dyn Reporter) -> anyhow::Result<()> {
    if missing.backports_source {
        let text = backports_source_text(Path::new("/etc/apt"))?;
        fs::write(BACKPORTS_FILE, text).with_context(|| format!("write {BACKPORTS_FILE}"))?;
        reporter.line(Stage::Deps, format!("added {BACKPORTS_FILE}"));
    }
    if missing.foreign_arch {
        run(reporter, "dpkg", &["--add-architecture", GUEST_ARCH])?;
    }
    if missing.backports_source
        || missing.foreign_arch
        || missing.arch_lists
        || !missing.packages.is_empty()
    {
        run(reporter, "apt-get", &["update", "-q"])?;
    }
    let apt_install = |extra: &[&str], pkgs: &[&str]| -> anyhow::Result<()> {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend_from_slice(extra);
        args.extend_from_slice(pkgs);
        run(reporter, "apt-get", &args)
    };
    if missing.packages.contains(&BACKPORTS_PACKAGE) {
        apt_install(&["-t", BACKPORTS_SUITE], &[BACKPORTS_PACKAGE])?;
    }
    let rest: Vec<&str> = missing
        .packages
        .iter()
        .copied()
        .filter(|p| *p != BACKPORTS_PACKAGE)
        .collect();
    if !rest.is_empty() {
        apt_install(&[], &rest)?;
    }
    if missing.rust_target {
        run(reporter, "rustup", &["target", "add", RUST_TARGET])?;
    }
    Ok(())
}

fn run(reporter: &dyn Reporter, program: &str, args: &[&str]) -> anyhow::Result<()> {
    reporter.line(Stage::Deps, format!("$ {program} {}", args.join(" ")));
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::infra(format!(
            "`{program} {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        ))
        .into());
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn missing_packages(names: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(names)
        .output()
        .context("run dpkg-query")?;
    // dpkg-query exits 1 when some package is unknown; its stdout still lists
    // the known ones.
    Ok(parse_installed(
        &String::from_utf8_lossy(&out.stdout),
        names,
    ))
}

/// Which of `names` the `dpkg-query` output does not show as installed.
fn parse_installed(output: &str, names: &[&'static str]) -> Vec<&'static str> {
    let installed: Vec<&str> = output
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.trim() == "installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    names
        .iter()
        .copied()
        .filter(|n| !installed.contains(n))
        .collect()
}

fn rust_target_installed() -> anyhow::Result<bool> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Err(Error::infra(
            "rustup is not on PATH: the guest agent is cross-built with `rustup target add aarch64-unknown-linux-musl`",
        )
        .into());
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == RUST_TARGET))
}

/// Every apt source file's text: `sources.list` and `sources.list.d/*`.
fn apt_source_texts(etc_apt: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string(etc_apt.join("sources.list")) {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("list") | Some("sources")) {
                if let Ok(t) = fs::read_to_string(&p) {
                    texts.push(t);
                }
            }
        }
    }
    texts
}

fn apt_has_suite(etc_apt: &Path, suite: &str) -> bool {
    apt_source_texts(etc_apt).iter().any(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.split_whitespace().any(|w| w == suite))
    })
}

/// The Debian mirror and keyring this host already uses for bookworm, as
/// `(uri, signed_by)`, so that added sources use the same mirror.
pub fn debian_mirror(etc_apt: &Path) -> Option<(String, Option<String>)> {
    for text in apt_source_texts(etc_apt) {
        // deb822 stanzas.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
                })
            };
            let suites = field("Suites").unwrap_or_default();
            if suites.split_whitespace().any(|s| s == "bookworm") {
                if let Some(uri) =
                    field("URIs").and_then(|u| u.split_whitespace().next().map(String::from))
                {
                    return Some((uri, field("Signed-By")));
                }
            }
        }
        // One-line format: deb [opts] uri suite components.
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("deb "))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut i = 1;
            if words.get(1).is_some_and(|w| w.starts_with('[')) {
                while i < words.len() && !words[i].ends_with(']') {
                    i += 1;
                }
                i += 1;
            }
            if words.get(i + 1) == Some(&"bookworm") {
                return Some((words[i].to_string(), None));
            }
        }
    }
    None
}

fn backports_source_text(etc_apt: &Path) -> anyhow::Result<String> {
    let (uri, signed_by) = debian_mirror(etc_apt).ok_or_else(|| {
        Error::infra("no apt source for Debian bookworm found: cannot tell which mirror to use for bookworm-backports")
    })?;
    let mut text = format!(
        "# Added by msi-harness (cargo xtask deps): QEMU 10.0 comes from {BACKPORTS_SUITE}.\n\
         Types: deb\nURIs: {uri}\nSuites: {BACKPORTS_SUITE}\nComponents: main\n"
    );
    if let Some(s) = signed_by {
        text.push_str(&format!("Signed-By: {s}\n"));
    }
    Ok(text)
}

fn has_lists_for_arch(lists: &Path, arch: &str) -> bool {
    let needle = format!("binary-{arch}_Packages");
    fs::read_dir(lists)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(&needle))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output_is_read_per_package() {
        let out = "make installed\nflex not-installed\nccache installed\n";
        let missing = parse_installed(out, &["make", "flex", "ccache", "bc"]);
        assert_eq!(missing, vec!["flex", "bc"]);
    }

    #[test]
    fn commands_name_exact_packages_in_order() {
        let m = Missing {
            backports_source: false,
            foreign_arch: true,
            arch_lists: true,
            packages: vec!["qemu-system-arm", "flex"],
            rust_target: true,
        };
        assert_eq!(
            m.commands(),
            vec![
                "dpkg --add-architecture arm64".to_string(),
                "apt-get update".to_string(),
                "apt-get install -y -t bookworm-backports qemu-system-arm".to_string(),
                "apt-get install -y flex".to_string(),
                "rustup target add aarch64-unknown-linux-musl".to_string(),
            ]
        );
        assert!(Missing::default().commands().is_empty());
    }

    #[test]
    fn mirror_and_suites_are_read_from_deb822_and_one_line_sources() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n",
        )
        .unwrap();
        assert_eq!(
            debian_mirror(dir.path()),
            Some((
                "http://mirror.example/debian".into(),
                Some("/usr/share/keyrings/k.gpg".into())
            ))
        );
        assert!(!apt_has_suite(dir.path(), "bookworm-backports"));
        let text = backports_source_text(dir.path()).unwrap();
        assert!(text.contains("Suites: bookworm-backports\n"));
        assert!(text.contains("URIs: http://mirror.example/debian\n"));

        let other = tempfile::tempdir().unwrap();
        fs::write(
            other.path().join("sources.list"),
            "# comment bookworm-backports\ndeb [arch=amd64] http://m.example/debian bookworm main\n",
        )
        .unwrap();
        assert!(!apt_has_suite(other.path(), "bookworm-backports"));
        assert_eq!(
            debian_mirror(other.path()),
            Some(("http://m.example/debian".into(), None))
        );
        fs::write(
            other.path().join("sources.list"),
            "deb http://m.example/debian bookworm-backports main\n",
        )
        .unwrap();
        assert!(apt_has_suite(other.path(), "bookworm-backports"));
    }
}
