//! Host set-up: checks, and installs when missing, everything the pipeline
//! needs on Debian 12.
//!
//! The check is cheap (one `dpkg-query`, one `rustup`, a few file reads; no
//! apt) so every verb runs it first. Installing needs root; without it the
//! exact commands are printed and the run ends as an infrastructure failure.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Io};
pub use crate::programs::{not_installed, package_of, require_tool, spawn_error, which, PROGRAMS};

/// Where apt takes a package from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// The host's own release (bookworm).
    Stable,
    /// bookworm-backports, installed together in one `-t bookworm-backports`
    /// transaction.
    Backports,
}

/// A Debian package the harness needs, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub why: &'static str,
    pub suite: Suite,
}

const fn stable(name: &'static str, why: &'static str) -> Package {
    Package {
        name,
        why,
        suite: Suite::Stable,
    }
}

/// Every Debian package the harness and the programs it drives need, each
/// installed explicitly: deps installs with `--no-install-recommends`, so a
/// Recommends that is really needed (libc6-dev-arm64-cross, say) must be
/// named here. The fresh-host proof (`.ci/fresh-host`) is what shows the
/// list is complete.
pub const PACKAGES: &[Package] = &[
    Package {
        name: "qemu-system-arm",
        why: "QEMU 10.0 for the arm64 guest (qemu-system-aarch64)",
        suite: Suite::Backports,
    },
    // QEMU from backports pulls libelf1 0.192~bpo12; bookworm's libelf-dev
    // needs libelf1 = 0.188 and then cannot be installed ("held broken
    // packages"). Taking both from backports in one transaction works
    // whichever was there first.
    Package {
        name: "libelf-dev",
        why: "kernel build host tools (objtool, resolve_btfids), matching QEMU's libelf1",
        suite: Suite::Backports,
    },
    stable("gcc-aarch64-linux-gnu", "cross compiler for the kernel"),
    stable(
        "libc6-dev-arm64-cross",
        "libc.a for the statically linked iommufd kselftest (only a Recommends of the cross compiler)",
    ),
    stable("gcc", "host compiler for the kernel's build tools"),
    stable("libc6-dev", "headers for the kernel's host tools"),
    stable("make", "kernel build"),
    stable("flex", "kernel build (kconfig)"),
    stable("bison", "kernel build (kconfig)"),
    stable("bc", "kernel build"),
    stable("libssl-dev", "kernel build host tools"),
    stable("pkg-config", "kernel build host tools"),
    stable("xz-utils", "unpacking kernel sources"),
    stable("cpio", "kernel build (kheaders) and initramfs inspection"),
    stable("ccache", "fast kernel rebuilds"),
    stable("rsync", "preparing kernel trees incrementally"),
    stable("git", "local kernel trees that are git checkouts, and the run's commit in reports"),
    stable(
        "openssh-client",
        "ssh-keygen for per-image keys, and `ssh` for `xtask shell`",
    ),
];

/// Packages named here (comma or space separated) are treated as if they
/// were not in [`PACKAGES`]: neither checked nor installed. It exists to
/// show that the fresh-host proof catches a package missing from the list;
/// nothing else should set it.
pub const OMIT_ENV: &str = "MSI_HARNESS_DEPS_OMIT";

/// [`PACKAGES`] less those that [`OMIT_ENV`] leaves out.
pub fn packages() -> anyhow::Result<Vec<Package>> {
    let omit = std::env::var(OMIT_ENV).unwrap_or_default();
    packages_without(&omit)
}

fn packages_without(omit: &str) -> anyhow::Result<Vec<Package>> {
    let omit: Vec<&str> = omit
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(unknown) = omit
        .iter()
        .find(|o| !PACKAGES.iter().any(|p| p.name == **o))
    {
        return Err(Error::infra(format!(
            "{OMIT_ENV} names `{unknown}`, which is not one of deps' packages"
        ))
        .into());
    }
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|p| !omit.contains(&p.name))
        .collect())
}

/// Packages every Debian 12 system has (priority required or essential),
/// which deps therefore does not install.
pub const BASE_SYSTEM: &[&str] = &["tar", "apt", "dpkg", "coreutils", "gzip", "sed", "grep"];

const BACKPORTS_SUITE: &str = "bookworm-backports";
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/msi-harness-backports.sources";
const GUEST_ARCH: &str = "arm64";
const RUST_TARGET: &str = "aarch64-unknown-linux-musl";

/// The host checks read local state only.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// `apt-get update` fetches a few lists per suite and architecture: seconds
/// on a good mirror, minutes on a slow one; ten minutes means it is stuck.
const APT_UPDATE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `apt-get install` of the whole list on a fresh host downloads some
/// 300 MB (QEMU, cross compilers) and unpacks it; half an hour allows a
/// slow mirror and a slow disk, not a hung dpkg or a lock that never frees.
const APT_INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `rustup target add` downloads the musl standard library (about 40 MB).
const RUSTUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What is missing on this host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub backports_source: bool,
    pub foreign_arch: bool,
    /// apt has no package lists for the guest architecture yet.
    pub arch_lists: bool,
    pub packages: Vec<Package>,
    /// Every backports package deps knows of: when one is missing, all are
    /// named in its transaction, so that those already installed from
    /// bookworm are upgraded alongside instead of being left broken.
    pub backports_set: Vec<&'static str>,
    pub rust_target: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        !self.needs_apt() && !self.rust_target
    }

    /// Anything to do with apt: then its package lists are refreshed first.
    fn needs_apt(&self) -> bool {
        self.backports_source || self.foreign_arch || self.arch_lists || !self.packages.is_empty()
    }

    /// The apt-get install argument lists, in order: the backports
    /// transaction, then the rest.
    fn installs(&self) -> Vec<Vec<&'static str>> {
        let mut out = Vec::new();
        if self.packages.iter().any(|p| p.suite == Suite::Backports) {
            let mut args = vec!["-t", BACKPORTS_SUITE];
            args.extend(self.backports_set.iter().copied());
            out.push(args);
        }
        let rest: Vec<&'static str> = self
            .packages
            .iter()
            .filter(|p| p.suite == Suite::Stable)
            .map(|p| p.name)
            .collect();
        if !rest.is_empty() {
            out.push(rest);
        }
        out
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
        if self.needs_apt() {
            cmds.push("apt-get update".to_string());
        }
        for args in self.installs() {
            cmds.push(format!(
                "apt-get install -y --no-install-recommends {}",
                args.join(" ")
            ));
        }
        if self.rust_target {
            cmds.push(format!("rustup target add {RUST_TARGET}"));
        }
        cmds
    }
}

/// Looks at the host without changing it.
pub fn check() -> anyhow::Result<Missing> {
    let wanted = packages()?;
    let mut missing = Missing {
        backports_source: !apt_has_suite(Path::new("/etc/apt"), BACKPORTS_SUITE),
        backports_set: wanted
            .iter()
            .filter(|p| p.suite == Suite::Backports)
            .map(|p| p.name)
            .collect(),
        ..Missing::default()
    };
    if which("dpkg").is_none() {
        return Err(Error::infra(
            "this host has no dpkg: msi-harness installs its tools with Debian's apt (Debian 12 expected)",
        )
        .into());
    }
    let foreign = process::cmd("dpkg")
        .arg("--print-foreign-architectures")
        .run(CHECK_TIMEOUT, Io::quiet())?
        .check()?;
    missing.foreign_arch = !foreign
        .stdout_text()
        .split_whitespace()
        .any(|a| a == GUEST_ARCH);
    missing.arch_lists = !has_lists_for_arch(Path::new("/var/lib/apt/lists"), GUEST_ARCH);
    let names: Vec<&'static str> = wanted.iter().map(|p| p.name).collect();
    let absent = missing_packages(&names)?;
    missing.packages = wanted
        .into_iter()
        .filter(|p| absent.contains(&p.name))
        .collect();
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
    if let Ok(omit) = std::env::var(OMIT_ENV) {
        reporter.line(
            Stage::Deps,
            format!("{OMIT_ENV}={omit}: acting as if these packages were not in the list"),
        );
    }
    for p in &missing.packages {
        reporter.line(
            Stage::Deps,
            format!("missing package {}: {}", p.name, p.why),
        );
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
        run(
            reporter,
            "dpkg",
            &["--add-architecture", GUEST_ARCH],
            CHECK_TIMEOUT,
        )?;
    }
    if missing.needs_apt() {
        run(reporter, "apt-get", &["update", "-q"], APT_UPDATE_TIMEOUT)?;
    }
    for extra in missing.installs() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(extra);
        run(reporter, "apt-get", &args, APT_INSTALL_TIMEOUT)?;
    }
    if missing.rust_target {
        run(
            reporter,
            "rustup",
            &["target", "add", RUST_TARGET],
            RUSTUP_TIMEOUT,
        )?;
    }
    Ok(())
}

fn run(
    reporter: &dyn Reporter,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut cmd = process::cmd(program);
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    reporter.line(Stage::Deps, format!("$ {cmd}"));
    cmd.run(timeout, Io::quiet())?.check()?;
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn missing_packages(names: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let mut cmd = process::cmd("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(names);
    // dpkg-query exits 1 when some package is unknown; its stdout still lists
    // the known ones.
    let out = cmd.run(CHECK_TIMEOUT, Io::quiet())?;
    Ok(parse_installed(&out.stdout_text(), names))
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
    if which("rustup").is_none() {
        return Err(Error::infra(
            "rustup is not on PATH: the guest agent is cross-built with `rustup target add aarch64-unknown-linux-musl`",
        )
        .into());
    }
    let out = process::cmd("rustup")
        .args(["target", "list", "--installed"])
        .run(CHECK_TIMEOUT, Io::quiet())?;
    Ok(out.stdout_text().lines().any(|l| l.trim() == RUST_TARGET))
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
        let pkg = |n: &str| *PACKAGES.iter().find(|p| p.name == n).unwrap();
        let m = Missing {
            backports_source: false,
            foreign_arch: true,
            arch_lists: true,
            packages: vec![pkg("qemu-system-arm"), pkg("flex")],
            backports_set: vec!["qemu-system-arm", "libelf-dev"],
            rust_target: true,
        };
        assert_eq!(
            m.commands(),
            vec![
                "dpkg --add-architecture arm64".to_string(),
                "apt-get update".to_string(),
                // libelf-dev goes along although only QEMU is missing: an
                // installed bookworm libelf-dev is upgraded with libelf1.
                "apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-arm libelf-dev"
                    .to_string(),
                "apt-get install -y --no-install-recommends flex".to_string(),
                "rustup target add aarch64-unknown-linux-musl".to_string(),
            ]
        );
        assert!(Missing::default().commands().is_empty());
        assert!(Missing::default().is_empty());
    }

    #[test]
    fn omitted_packages_leave_the_list_and_typos_are_refused() {
        let all = packages_without("").unwrap();
        assert_eq!(all.len(), PACKAGES.len());
        let less = packages_without("libc6-dev-arm64-cross, rsync").unwrap();
        assert_eq!(less.len(), PACKAGES.len() - 2);
        assert!(!less.iter().any(|p| p.name == "rsync"));
        let err = packages_without("libc6-dev-arm64-crosss").unwrap_err();
        assert!(
            err.to_string().contains("`libc6-dev-arm64-crosss`"),
            "{err}"
        );
    }

    #[test]
    fn every_program_comes_from_a_listed_or_base_package() {
        for (program, pkg) in PROGRAMS {
            assert!(
                PACKAGES.iter().any(|p| p.name == *pkg) || BASE_SYSTEM.contains(pkg),
                "{program} comes from {pkg}, which deps neither installs nor can assume"
            );
        }
        assert_eq!(package_of("flex"), Some("flex"));
        assert_eq!(package_of("no-such-tool"), None);
        assert!(not_installed("/usr/bin/rsync").contains("Debian package `rsync`"));
    }

    /// Every program the harness and xtask start by name is in [`PROGRAMS`],
    /// so deps installs it and a missing one is reported with its package.
    /// (`sh`, `cargo` and `rustup` are there wherever the harness can run.)
    #[test]
    fn every_program_started_by_name_has_a_package() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        let mut dirs = vec![root.join("harness/src"), root.join("xtask/src")];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        // Literal program names given to `process::cmd`, or to std's
        // `Command::new` where that is still used (QEMU in vm, test helpers).
        let re = regex::Regex::new(r#"(?:\bcmd!?|Command::new)\(\s*"([^"]+)""#).unwrap();
        let mut seen = 0;
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            for c in re.captures_iter(&text) {
                let program = &c[1];
                seen += 1;
                assert!(
                    matches!(program, "sh" | "cargo" | "rustup") || package_of(program).is_some(),
                    "{} starts `{program}`, which deps::PROGRAMS does not list",
                    f.display()
                );
            }
        }
        assert!(
            seen > 10,
            "found only {seen} program names: is the pattern stale?"
        );
        // Written in two pieces so that the scan does not find them here.
        for call in [
            concat!("process::cmd", r#"("make")"#),
            concat!("Command::", r#"new("qemu-system-aarch64")"#),
        ] {
            assert!(re.is_match(call), "the pattern misses {call}");
        }
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
