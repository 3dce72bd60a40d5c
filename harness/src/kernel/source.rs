//! Kernel sources: fetched once, verified by checksum, extracted once.
//!
//! Downloads land in `cache/downloads/<sha256>-<file>`; a `.verified`
//! marker beside a file records its size and mtime once its checksum was
//! checked, so a 150 MB tarball is not rehashed on every run. The extracted
//! tree lives in `cache/kernel/pristine/<sha16>/`, complete only when
//! `<sha16>.complete` exists.
//!
//! Debian files are fetched through a private apt configuration (own source
//! list, lists and cache under `cache/apt/`, the host's mirror and keyring
//! read from /etc/apt) so that nothing of the host's apt state changes and
//! no root is needed. Only the one file is downloaded, with apt-helper:
//! `apt-get source` would also want the `.dsc`, which the archive no longer
//! serves for some versions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::variants::SourceSpec;
use crate::cache;
use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Cmd, Io, Log};

const APT_TIMEOUT: Duration = Duration::from_secs(300);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
const EXTRACT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The checksum that identifies a source's content, without touching the
/// network: the pinned one for downloads, the (cached) hash of a tarball.
pub fn source_sha256(spec: &SourceSpec) -> anyhow::Result<String> {
    match spec {
        SourceSpec::DebianSource { sha256, .. } | SourceSpec::DebianBinary { sha256, .. } => {
            Ok(sha256.clone())
        }
        SourceSpec::Tarball { path, sha256, .. } => {
            let actual = verified_sha256(path)?;
            if let Some(want) = sha256 {
                if *want != actual {
                    return Err(Error::infra(format!(
                        "{} has sha256 {actual}, kernels.toml pins {want}",
                        path.display()
                    ))
                    .into());
                }
            }
            Ok(actual)
        }
        SourceSpec::Tree { .. } => anyhow::bail!("a tree source has no archive checksum"),
    }
}

/// The extracted source tree for `spec`, when it is there (nothing is
/// fetched).
pub fn extracted(spec: &SourceSpec) -> Option<PathBuf> {
    let sha = source_sha256(spec).ok()?;
    let root = cache::cache_dir("kernel/pristine").ok()?;
    let dir = root.join(&sha[..16]);
    let marker = root.join(format!("{}.complete", &sha[..16]));
    (marker.is_file() && dir.is_dir()).then_some(dir)
}

/// The extracted source tree for `spec` (not for trees), fetching and
/// extracting it if this has not been done yet.
pub fn ensure_pristine(
    spec: &SourceSpec,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = extracted(spec) {
        return Ok(dir);
    }
    let sha = source_sha256(spec)?;
    let root = cache::cache_dir("kernel/pristine")?;
    let dir = root.join(&sha[..16]);
    let marker = root.join(format!("{}.complete", &sha[..16]));
    // One process fetches and extracts; others building from the same
    // source wait for it, then find it done.
    let _lock = super::lock(&root.join(format!("{}.lock", &sha[..16])), reporter)?;
    if marker.is_file() && dir.is_dir() {
        return Ok(dir);
    }
    let archive = match spec {
        SourceSpec::DebianSource { file, .. } => fetch_debian(spec, file, reporter, log)?,
        SourceSpec::DebianBinary {
            package, version, ..
        } => fetch_debian(spec, &format!("{package}_{version}_all.deb"), reporter, log)?,
        SourceSpec::Tarball { path, .. } => path.clone(),
        SourceSpec::Tree { .. } => anyhow::bail!("a tree source is not extracted"),
    };
    let started = Instant::now();
    reporter.line(Stage::Kernel, format!("extracting {}", file_name(&archive)));
    let tmp = root.join(format!("{}.tmp-{}", &sha[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let tarball = match spec {
        SourceSpec::DebianBinary { member, .. } => {
            // The .deb's data holds the tarball; unpack the .deb, then it.
            let deb_dir = tmp.join(".deb");
            process::cmd("dpkg-deb")
                .arg("-x")
                .arg(&archive)
                .arg(&deb_dir)
                .output(EXTRACT_TIMEOUT, log)?;
            let inner = deb_dir.join(member);
            if !inner.is_file() {
                return Err(Error::infra(format!(
                    "{} has no {member} (kernels.toml `member`)",
                    archive.display()
                ))
                .into());
            }
            inner
        }
        _ => archive.clone(),
    };
    let tree = tmp.join("tree");
    std::fs::create_dir_all(&tree)?;
    // GNU tar detects the compression itself; it refuses `..` members.
    process::cmd("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .output(EXTRACT_TIMEOUT, log)
        .with_context(|| format!("extract {}", tarball.display()))?;
    // A kernel tarball holds one top directory (linux-6.18.15/); use it.
    let entries: Vec<PathBuf> = std::fs::read_dir(&tree)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    let top = match entries.as_slice() {
        [one] if one.is_dir() => one.clone(),
        _ => tree.clone(),
    };
    if !top.join("Makefile").is_file() || !top.join("scripts/kconfig/merge_config.sh").is_file() {
        return Err(Error::infra(format!(
            "{} does not look like a kernel source (no Makefile or scripts/kconfig/merge_config.sh at its top)",
            tarball.display()
        ))
        .into());
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&top, &dir).with_context(|| format!("move source to {}", dir.display()))?;
    std::fs::remove_dir_all(&tmp)?;
    cache::write_atomic(&marker, format!("{}\n", archive.display()).as_bytes())?;
    reporter.line(
        Stage::Kernel,
        format!(
            "extracted into {} in {:.0}s",
            dir.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(dir)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The sha256 of a file, trusting a `.verified` marker in the cache whose
/// recorded size and mtime still match.
pub fn verified_sha256(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::infra(format!("cannot read {}: {e}", path.display())))?;
    let stamp = format!("{} {}", meta.len(), mtime_ns(&meta));
    let marker = marker_path(path)?;
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if let Some((recorded, sha)) = text.trim().rsplit_once(' ') {
            if recorded == stamp {
                return Ok(sha.to_string());
            }
        }
    }
    let sha = cache::sha256_file(path)?;
    cache::write_atomic(&marker, format!("{stamp} {sha}\n").as_bytes())?;
    Ok(sha)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// Downloads keep their marker beside them; other files get one in the
/// cache, named by their absolute path.
fn marker_path(path: &Path) -> anyhow::Result<PathBuf> {
    let downloads = cache::cache_dir("downloads")?;
    if path.parent() == Some(downloads.as_path()) {
        return Ok(path.with_file_name(format!("{}.verified", file_name(path))));
    }
    let abs = std::fs::canonicalize(path)?;
    let key = cache::KeyBuilder::new()
        .str("path", &abs.to_string_lossy())
        .finish();
    Ok(cache::cache_dir("kernel/verified")?.join(key.short()))
}

/// The private apt setup for one suite and kind of entry.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(suite: &str, binary: bool) -> anyhow::Result<PrivateApt> {
        let (uri, signed_by) = crate::deps::debian_mirror(Path::new("/etc/apt")).ok_or_else(|| {
            Error::infra("no Debian mirror found in /etc/apt sources (a `bookworm` entry): cannot download kernel sources")
        })?;
        let kind = if binary { "deb" } else { "deb-src" };
        let dir = cache::cache_dir(&format!("apt/{suite}-{kind}"))?;
        for sub in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut text = format!(
            "# Written by msi-harness: where kernel sources come from.\nTypes: {kind}\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
        );
        if binary {
            text.push_str("Architectures: all\n");
        }
        if let Some(s) = signed_by {
            text.push_str(&format!("Signed-By: {s}\n"));
        }
        cache::write_atomic(
            &dir.join("etc/sources.list.d/msi-harness.sources"),
            text.as_bytes(),
        )?;
        cache::write_atomic(&dir.join("etc/sources.list"), b"")?;
        Ok(PrivateApt { dir })
    }

    /// `program` with options that point apt at the private state only.
    fn command(&self, program: &str) -> Cmd {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        let mut cmd = process::cmd(program);
        for (k, v) in [
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/sources.list.d")),
            ("Dir::Etc::Preferences", d("etc/preferences")),
            ("Dir::Etc::PreferencesParts", d("etc/preferences.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            ("Dir::State::status", "/var/lib/dpkg/status".to_string()),
            ("Debug::NoLocking", "1".to_string()),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".to_string(),
            ),
        ] {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        // As root apt downloads as `_apt`, which cannot write into root's
        // cache; the private dirs are ours, so download as ourselves.
        if nix::unistd::geteuid().is_root() {
            cmd.arg("-o").arg("APT::Sandbox::User=root");
        }
        cmd.env("LC_ALL", "C");
        cmd
    }
}

/// Downloads one Debian file (an orig tarball or a .deb) into
/// `cache/downloads/<sha>-<name>`, verifying the pinned checksum.
fn fetch_debian(
    spec: &SourceSpec,
    name: &str,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<PathBuf> {
    let (package, version, suite, sha, binary) = match spec {
        SourceSpec::DebianSource {
            package,
            version,
            suite,
            sha256,
            ..
        } => (package, version, suite, sha256, false),
        SourceSpec::DebianBinary {
            package,
            version,
            suite,
            sha256,
            ..
        } => (package, version, suite, sha256, true),
        _ => anyhow::bail!("not a Debian source"),
    };
    let downloads = cache::cache_dir("downloads")?;
    let dest = downloads.join(format!("{sha}-{name}"));
    if dest.is_file() {
        let have = verified_sha256(&dest)?;
        if have == *sha {
            return Ok(dest);
        }
        reporter.line(
            Stage::Kernel,
            format!(
                "{} has the wrong checksum; downloading again",
                dest.display()
            ),
        );
        std::fs::remove_file(&dest)?;
    }
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        super::require_tool(tool)?;
    }
    let helper = Path::new("/usr/lib/apt/apt-helper");
    if !helper.is_file() {
        return Err(Error::infra(
            "/usr/lib/apt/apt-helper is missing: install the Debian package `apt`",
        )
        .into());
    }
    let apt = PrivateApt::new(suite, binary)?;
    reporter.line(
        Stage::Kernel,
        format!("looking up {package} {version} in {suite}"),
    );
    apt.command("apt-get")
        .args(["-q", "update"])
        .output(APT_TIMEOUT, log)
        .context("apt-get update (private kernel-source lists)")?;
    let what = format!("{package}={version}");
    let mut query = apt.command("apt-get");
    query.arg("--print-uris").arg("-q").arg("-y");
    if binary {
        query.arg("download").arg(&what);
    } else {
        query.arg("source").arg(&what);
    }
    let listing = match query.output(APT_TIMEOUT, log) {
        Ok(text) => text,
        // "Can not find version", "Unable to find a source package",
        // "Version '...' for '...' was not found".
        Err(e) if e.to_string().contains("find") || e.to_string().contains("not found") => {
            return Err(vanished(
                &apt,
                package,
                version,
                suite,
                binary,
                log,
                "is not (or no longer) in the archive",
            ));
        }
        Err(e) => return Err(e.context(format!("look up {what} in {suite}"))),
    };
    let Some((uri, size, listed_sha)) = find_uri(&listing, name) else {
        return Err(Error::infra(format!(
            "apt lists no file {name} for {package} {version} in {suite} (kernels.toml `file`?); it lists:\n{listing}"
        ))
        .into());
    };
    if let Some(listed) = listed_sha {
        if listed != *sha {
            return Err(Error::infra(format!(
                "the archive's {name} has sha256 {listed}, kernels.toml pins {sha}: the file changed upstream; check it and update the pin"
            ))
            .into());
        }
    }
    reporter.line(
        Stage::Kernel,
        format!("downloading {name} ({} MB)", size.unwrap_or(0) / 1_000_000),
    );
    let partial = downloads.join(format!("{sha}-{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut cmd = apt.command(helper.to_string_lossy().as_ref());
    cmd.arg("download-file")
        .arg(&uri)
        .arg(&partial)
        .arg(format!("SHA256:{sha}"));
    let mut tick = || {
        if let (Some(total), Ok(meta)) = (size, std::fs::metadata(&partial)) {
            reporter.progress(
                Stage::Kernel,
                meta.len() / 1_000_000,
                Some(total / 1_000_000),
            );
        }
    };
    let io = Io {
        on_tick: Some(&mut tick),
        ..Io::log(log)
    };
    let done = cmd.run(DOWNLOAD_TIMEOUT, io)?;
    if !done.status.success() {
        let _ = std::fs::remove_file(&partial);
        let why = done.tail(3);
        if why.contains("404") {
            let how = format!("is listed, but its file {name} answers 404 Not Found");
            return Err(vanished(&apt, package, version, suite, binary, log, &how));
        }
        return Err(Error::infra(format!("downloading {uri} failed: {why}")).into());
    }
    // apt-helper checked the hash; record it so it is not hashed again.
    if verified_sha256(&partial)? != *sha {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::infra(format!(
            "{name} downloaded with a checksum other than the pinned {sha}"
        ))
        .into());
    }
    std::fs::rename(&partial, &dest)?;
    let _ = std::fs::rename(
        partial.with_file_name(format!("{}.verified", file_name(&partial))),
        dest.with_file_name(format!("{}.verified", file_name(&dest))),
    );
    verified_sha256(&dest)?;
    Ok(dest)
}

/// `'URI' name size SHA256:hex` lines of `apt-get --print-uris`.
fn find_uri(listing: &str, name: &str) -> Option<(String, Option<u64>, Option<String>)> {
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let uri = words.next()?.strip_prefix('\'')?.strip_suffix('\'')?;
        if words.next()? != name {
            return None;
        }
        let size = words.next().and_then(|s| s.parse().ok());
        let sha = words
            .next()
            .and_then(|h| h.strip_prefix("SHA256:"))
            .map(str::to_string);
        Some((uri.to_string(), size, sha))
    })
}

/// The error for a pinned version that is gone, listing what is there.
fn vanished(
    apt: &PrivateApt,
    package: &str,
    version: &str,
    suite: &str,
    binary: bool,
    log: &Log,
    how: &str,
) -> anyhow::Error {
    let mut cmd = apt.command("apt-cache");
    if binary {
        cmd.arg("madison").arg(package);
    } else {
        cmd.arg("showsrc").arg(package);
    }
    let versions = cmd
        .output(APT_TIMEOUT, log)
        .map(|text| available_versions(&text, binary))
        .unwrap_or_default();
    let list = if versions.is_empty() {
        "none".to_string()
    } else {
        versions.join(", ")
    };
    Error::infra(format!(
        "{package} {version} {how} ({suite}); versions listed there now: {list}; pin one of them in kernel-configs/kernels.toml (version and sha256)"
    ))
    .into()
}

/// Versions from `apt-cache madison` (binary) or `showsrc` output.
fn available_versions(text: &str, binary: bool) -> Vec<String> {
    let mut out: Vec<String> = if binary {
        text.lines()
            .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
            .collect()
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
            .collect()
    };
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_and_version_listings_are_read() {
        let listing = "Need to get 159 MB of source archives.\n\
            'http://m.example/debian/pool/main/l/linux/linux_6.18.15-1%7ebpo13%2b1.dsc' linux_6.18.15-1~bpo13+1.dsc 140033 SHA256:40a1\n\
            'http://m.example/debian/pool/main/l/linux/linux_6.18.15.orig.tar.xz' linux_6.18.15.orig.tar.xz 157422084 SHA256:fdf4\n";
        let (uri, size, sha) = find_uri(listing, "linux_6.18.15.orig.tar.xz").unwrap();
        assert_eq!(
            uri,
            "http://m.example/debian/pool/main/l/linux/linux_6.18.15.orig.tar.xz"
        );
        assert_eq!(size, Some(157422084));
        assert_eq!(sha.as_deref(), Some("fdf4"));
        assert!(find_uri(listing, "linux_6.18.16.orig.tar.xz").is_none());
        let madison =
            "linux-source-7.2 |   7.2.13-1 | http://m.example/debian sid/main all Packages\n";
        assert_eq!(available_versions(madison, true), ["7.2.13-1"]);
        let showsrc = "Package: linux\nVersion: 6.18.12-1~bpo13+1\nBinary: x\n\nPackage: linux\nVersion: 6.18.15-1~bpo13+1\n";
        assert_eq!(
            available_versions(showsrc, false),
            ["6.18.12-1~bpo13+1", "6.18.15-1~bpo13+1"]
        );
    }
}
