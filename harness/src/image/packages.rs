//! Pinned Debian packages: fetched with the host's own apt, checked against
//! image.toml's sha256, cached in `cache/downloads/`, unpacked with
//! `dpkg -x` (no maintainer scripts, no root needed).
//!
//! The archive drops superseded versions, so a pin can stop resolving; the
//! error then lists what apt can fetch instead (`apt-cache madison`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::cpio::{Entry, Kind, Tree};
use super::spec::Package;
use crate::cache::sha256_file;
use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Finished, Io, Log};

/// The cached `.deb` of each package, in image.toml order; fetches what is
/// missing (in one apt call) and checks every file's sha256.
pub fn fetch(
    packages: &[Package],
    arch: &str,
    downloads: &Path,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for p in packages {
        let path = downloads.join(deb_name(p, arch));
        if path.exists() {
            if sha256_file(&path)? == p.sha256 {
                continue;
            }
            // A partial or tampered file, or the same name pinned to a new
            // checksum: fetch it again and let the check below decide.
            reporter.line(
                Stage::Image,
                format!(
                    "{} in the cache has the wrong sha256: fetching again",
                    path.display()
                ),
            );
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        missing.push(p);
    }
    if !missing.is_empty() {
        download(&missing, arch, downloads, reporter, log)?;
    }
    Ok(packages
        .iter()
        .map(|p| downloads.join(deb_name(p, arch)))
        .collect())
}

/// apt's own file name: `name_version_arch.deb` with the epoch colon escaped.
pub fn deb_name(p: &Package, arch: &str) -> String {
    format!("{}_{}_{arch}.deb", p.name, p.version.replace(':', "%3a"))
}

fn download(
    missing: &[&Package],
    arch: &str,
    downloads: &Path,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<()> {
    let names: Vec<String> = missing
        .iter()
        .map(|p| format!("{}:{arch}={}", p.name, p.version))
        .collect();
    reporter.line(
        Stage::Image,
        format!("apt-get download {}", names.join(" ")),
    );
    // A private directory per call: apt writes into the current directory,
    // and a concurrent build must never see a half-written .deb.
    let tmp = tempfile::Builder::new()
        .prefix(".apt-")
        .tempdir_in(downloads)
        .with_context(|| format!("create temp dir in {}", downloads.display()))?;
    // apt drops to its `_apt` user to download when it can; let it write here.
    let _ = fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755));
    let out = process::cmd("apt-get")
        .args(["download", "-q"])
        .args(&names)
        .current_dir(tmp.path())
        .run(Duration::from_secs(600), Io::log(log))?;
    if !out.success() {
        return Err(diagnose(missing, arch, &out, log));
    }
    let mut mismatches = Vec::new();
    for p in missing {
        let prefix = format!("{}_", p.name);
        let found = fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|f| {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .ok_or_else(|| {
                Error::infra(format!(
                    "apt-get download {}:{arch}={} succeeded but left no .deb behind",
                    p.name, p.version
                ))
            })?;
        let got = sha256_file(&found)?;
        if got != p.sha256 {
            // Keep checking the rest: one message for every wrong pin.
            mismatches.push(format!(
                "{}:{arch} {}: the archive's .deb has sha256 {got}, guest-images/image.toml pins {}",
                p.name, p.version, p.sha256
            ));
            continue;
        }
        let dest = downloads.join(deb_name(p, arch));
        fs::rename(&found, &dest)
            .with_context(|| format!("move {} to {}", found.display(), dest.display()))?;
    }
    if !mismatches.is_empty() {
        return Err(Error::infra(format!(
            "{}\neither a pin is wrong or the archive changed a file under the same version \
             (check before updating a pin)",
            mismatches.join("\n")
        ))
        .into());
    }
    Ok(())
}

/// Turns a failed `apt-get download` into an actionable message: a pin the
/// archive no longer has (with the versions it does have), a package apt does
/// not know at all, or else apt's own words.
fn diagnose(missing: &[&Package], arch: &str, out: &Finished, log: &Log) -> anyhow::Error {
    let mut problems = Vec::new();
    for p in missing {
        let query = format!("{}:{arch}", p.name);
        let versions = match process::cmd("apt-cache")
            .args(["madison", &query])
            .run(Duration::from_secs(60), Io::log(log))
        {
            Ok(o) => madison_versions(&o.stdout_text()),
            Err(e) => return e,
        };
        if versions.is_empty() {
            problems.push(format!(
                "apt knows no package {query}: is the name right, is the {arch} architecture added and are its lists fetched? \
                 (`cargo xtask deps` does both)"
            ));
        } else if !versions.contains(&p.version) {
            problems.push(format!(
                "{query} {} is gone from the apt archive; available: {}. Pick one and update its \
                 version and sha256 in guest-images/image.toml (sha256sum of the .deb from \
                 `apt-get download {query}=VERSION`)",
                p.version,
                versions.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        problems.push(format!(
            "apt-get download failed ({}) although apt lists every pinned version; the package lists \
             may be stale (try `apt-get update`). apt said:\n{}",
            out.status,
            out.tail(10)
        ));
    }
    Error::infra(problems.join("\n")).into()
}

/// The versions in `apt-cache madison` output (`pkg | version | source`),
/// without duplicates, in apt's order (newest first).
pub fn madison_versions(output: &str) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for line in output.lines() {
        let mut cols = line.split('|').map(str::trim);
        if let (Some(_), Some(v)) = (cols.next(), cols.next()) {
            if !v.is_empty() && !versions.iter().any(|x| x == v) {
                versions.push(v.to_string());
            }
        }
    }
    versions
}

/// Unpacks each `.deb` with `dpkg -x` below `work` and merges their trees,
/// leaving out `exclude` (relative paths, with everything below them).
/// Returns the tree and, for each path, the package it came from.
pub fn unpack(
    debs: &[(String, PathBuf)],
    exclude: &[String],
    work: &Path,
    log: &Log,
) -> anyhow::Result<(Tree, BTreeMap<String, String>)> {
    let mut tree = Tree::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (name, deb) in debs {
        let dir = work.join(name);
        fs::create_dir_all(&dir)?;
        let out = process::cmd("dpkg")
            .arg("-x")
            .arg(deb)
            .arg(&dir)
            .run(Duration::from_secs(120), Io::log(log))?;
        if !out.success() {
            return Err(Error::infra(format!(
                "dpkg -x {} failed ({}): {}",
                deb.display(),
                out.status,
                out.tail(5)
            ))
            .into());
        }
        let mut entries = Vec::new();
        collect(&dir, &dir, exclude, &mut entries)?;
        for (path, entry) in entries {
            match tree.get(&path) {
                Some(old) if old.kind == Kind::Dir && entry.kind == Kind::Dir => continue,
                Some(_) => {
                    return Err(Error::infra(format!(
                        "/{path} is in both {} and {name}: the image cannot hold both",
                        origin.get(&path).map_or("?", String::as_str)
                    ))
                    .into())
                }
                None => {
                    origin.insert(path.clone(), name.clone());
                    tree.insert(path, entry);
                }
            }
        }
    }
    Ok((tree, origin))
}

/// Whether `path` is `ex` or below it.
pub fn excluded(path: &str, exclude: &[String]) -> bool {
    exclude.iter().any(|ex| {
        path == ex
            || path
                .strip_prefix(ex.as_str())
                .is_some_and(|r| r.starts_with('/'))
    })
}

fn collect(
    root: &Path,
    dir: &Path,
    exclude: &[String],
    out: &mut Vec<(String, Entry)>,
) -> anyhow::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let rel = path
            .strip_prefix(root)
            .context("unpacked path outside its root")?
            .to_str()
            .with_context(|| format!("non-UTF-8 file name {}", path.display()))?
            .to_string();
        if excluded(&rel, exclude) {
            continue;
        }
        let meta = fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let ty = meta.file_type();
        if ty.is_dir() {
            out.push((
                rel,
                Entry {
                    mode,
                    kind: Kind::Dir,
                },
            ));
            collect(root, &path, exclude, out)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&path)?;
            let target = target
                .to_str()
                .with_context(|| format!("non-UTF-8 link {}", path.display()))?;
            out.push((
                rel,
                Entry {
                    mode: 0o777,
                    kind: Kind::Symlink(target.to_string()),
                },
            ));
        } else if ty.is_file() {
            let data = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            out.push((
                rel,
                Entry {
                    mode,
                    kind: Kind::File(data),
                },
            ));
        } else {
            return Err(Error::infra(format!(
                "{}: unsupported file type in a package",
                path.display()
            ))
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madison_output_gives_versions_newest_first() {
        let out = "   libc6:arm64 | 2.36-9+deb12u14 | http://mirror/debian bookworm/main arm64 Packages\n\
                   libc6:arm64 | 2.36-9+deb12u7 | http://mirror/debian-security bookworm-security/main arm64 Packages\n\
                   libc6:arm64 | 2.36-9+deb12u7 | http://other/debian-security bookworm-security/main arm64 Packages\n";
        assert_eq!(
            madison_versions(out),
            vec!["2.36-9+deb12u14", "2.36-9+deb12u7"]
        );
        assert!(madison_versions("").is_empty());
    }

    #[test]
    fn deb_names_match_apt() {
        let p = Package {
            name: "zlib1g".into(),
            version: "1:1.2.13.dfsg-1".into(),
            sha256: String::new(),
        };
        assert_eq!(deb_name(&p, "arm64"), "zlib1g_1%3a1.2.13.dfsg-1_arm64.deb");
    }

    #[test]
    fn exclusion_is_by_path_component() {
        let ex = vec!["usr/share".to_string(), "usr/bin/dbclient".to_string()];
        assert!(excluded("usr/share", &ex));
        assert!(excluded("usr/share/doc/x", &ex));
        assert!(!excluded("usr/shared", &ex));
        assert!(!excluded("usr", &ex));
        assert!(excluded("usr/bin/dbclient", &ex));
    }
}
