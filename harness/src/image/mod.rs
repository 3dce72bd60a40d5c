//! image stage: the guest initramfs with busybox, dropbear and the agent.
//!
//! `guest-images/image.toml` describes the initramfs as data: pinned Debian
//! arm64 packages (fetched with the host's apt, checked by sha256, unpacked
//! with `dpkg -x`), directories, files, symlinks and device nodes, and two
//! generated files: the cross-built agent and the per-image SSH key.
//! `guest-images/init` is the guest's `/init`.
//!
//! The archive is written here (cpio newc + gzip, sorted, fixed mtimes, owner
//! root), so the same inputs give the same bytes and no root is needed. An
//! image is cached under `cache/images/<key>/` by a [`ContentKey`] over
//! everything that goes in; an unchanged image is not rebuilt.

pub mod cmdline;
pub mod cpio;
pub mod spec;

mod agent;
mod packages;
mod ssh_key;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{cache_dir, project_root, sha256_file, ContentKey, KeyBuilder};
use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::Log;
use cpio::{Entry, Kind, Tree};
use spec::{Content, Generated, Package, Spec};

pub use cmdline::{
    check_bdf, kernel_cmdline, CmdlineOptions, ReadyReport, VfioBinding, READY_MARKER,
};

/// Bump when the build itself changes what it produces (archive layout,
/// gzip settings, key type): every cached image is then rebuilt.
pub const IMAGE_STEP_VERSION: u32 = 1;

/// A built (or cached) guest image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// `cache/images/<key>/initramfs.cpio.gz`, for `-initrd`.
    pub initramfs: PathBuf,
    /// The key `root` logs in with (0600); its public half is in the image.
    pub ssh_private_key: PathBuf,
    pub ssh_public_key: PathBuf,
    pub key: ContentKey,
    /// True when nothing changed and the cached image was reused.
    pub cached: bool,
    /// Printed by `/init` on the console once SSH is up; see [`ReadyReport`].
    pub ready_marker: &'static str,
}

/// What `manifest.json` next to an image records; written last, so a
/// directory with a readable manifest is a complete image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub key: String,
    pub step_version: u32,
    pub initramfs_sha256: String,
    pub initramfs_bytes: u64,
    pub entries: usize,
    pub agent_sha256: String,
    pub packages: Vec<ManifestPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

const SPEC_FILE: &str = "guest-images/image.toml";
const INITRAMFS: &str = "initramfs.cpio.gz";
const MANIFEST: &str = "manifest.json";

/// Builds the guest initramfs, or finds it in the cache. Logs of the tools
/// it runs (cargo, apt, dpkg, ssh-keygen) go to `run_dir/image.log`.
pub fn build(reporter: &dyn Reporter, run_dir: &Path) -> anyhow::Result<GuestImage> {
    let started = Instant::now();
    reporter.start(Stage::Image, "guest initramfs");
    let result = build_inner(reporter, run_dir);
    let what = match &result {
        Ok(img) if img.cached => format!("guest initramfs {} (cached)", img.key.short()),
        Ok(img) => format!("guest initramfs {}", img.key.short()),
        Err(_) => "guest initramfs".to_string(),
    };
    reporter.end(Stage::Image, what, result.is_ok(), started.elapsed());
    result
}

fn build_inner(reporter: &dyn Reporter, run_dir: &Path) -> anyhow::Result<GuestImage> {
    fs::create_dir_all(run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let log = Log::create(&run_dir.join("image.log"))?;
    let root = project_root();
    let guest_dir = root.join("guest-images");
    let spec_path = root.join(SPEC_FILE);
    let spec_text = fs::read_to_string(&spec_path)
        .map_err(|e| Error::infra(format!("cannot read {}: {e}", spec_path.display())))?;
    let spec = Spec::parse(&spec_text, SPEC_FILE)?;
    let mut sources = BTreeMap::new();
    for rel in spec.sources() {
        let path = guest_dir.join(rel);
        let data = fs::read(&path).map_err(|e| {
            Error::infra(format!(
                "{SPEC_FILE}: source {rel:?} cannot be read ({}): {e}",
                path.display()
            ))
        })?;
        sources.insert(rel.to_string(), data);
    }

    let agent_path = agent::build(reporter, &log)?;
    let agent = fs::read(&agent_path).with_context(|| format!("read {}", agent_path.display()))?;
    let agent_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&agent));

    let key = image_key(&spec_text, &sources, &spec.packages, &agent_sha256);
    let images = cache_dir("images")?;
    let dir = images.join(key.short());
    let image = |cached| GuestImage {
        initramfs: dir.join(INITRAMFS),
        ssh_private_key: dir.join(ssh_key::PRIVATE),
        ssh_public_key: dir.join(ssh_key::PUBLIC),
        key: key.clone(),
        cached,
        ready_marker: READY_MARKER,
    };
    if is_complete(&dir, &key) {
        return Ok(image(true));
    }
    if dir.exists() {
        reporter.line(
            Stage::Image,
            format!("{} is incomplete: rebuilding it", dir.display()),
        );
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }

    let downloads = cache_dir("downloads")?;
    remove_stale_temp_dirs(&images, ".build-");
    remove_stale_temp_dirs(&downloads, ".apt-");
    let debs = packages::fetch(&spec.packages, &spec.arch, &downloads, reporter, &log)?;
    // Built beside its final place and renamed into it, so that a killed
    // build leaves nothing that looks finished, and two concurrent builds of
    // the same image both end with one valid directory.
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-{}-", key.short()))
        .tempdir_in(&images)
        .context("create image build dir")?;
    let unpack_dir = work.path().join("unpacked");
    let named: Vec<(String, PathBuf)> = spec
        .packages
        .iter()
        .map(|p| p.name.clone())
        .zip(debs)
        .collect();
    let (pkg_tree, origin) = packages::unpack(&named, &spec.exclude, &unpack_dir, &log)?;
    fs::remove_dir_all(&unpack_dir).ok();

    let out = work.path().join("out");
    fs::create_dir_all(&out)?;
    let public_key = ssh_key::generate(&out, &format!("msi-harness image {}", key.short()), &log)?;
    let generated = GeneratedFiles {
        agent,
        authorized_keys: format!("{public_key}\n").into_bytes(),
    };
    let tree = assemble(&spec, pkg_tree, &origin, &sources, &generated)?;
    let gz = encode(&tree)?;
    fs::write(out.join(INITRAMFS), &gz)?;
    let manifest = Manifest {
        key: key.0.clone(),
        step_version: IMAGE_STEP_VERSION,
        initramfs_sha256: sha256_file(&out.join(INITRAMFS))?,
        initramfs_bytes: gz.len() as u64,
        entries: tree.len(),
        agent_sha256,
        packages: spec
            .packages
            .iter()
            .map(|p| ManifestPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect(),
    };
    fs::write(out.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    reporter.line(
        Stage::Image,
        format!(
            "{} entries, {} KiB gzip'd",
            manifest.entries,
            manifest.initramfs_bytes / 1024
        ),
    );
    if let Err(e) = fs::rename(&out, &dir) {
        // Another build of the same key won the race: use its result.
        if !is_complete(&dir, &key) {
            return Err(e).with_context(|| format!("move the new image to {}", dir.display()));
        }
    }
    Ok(image(false))
}

/// The image's cache key: the description, every file it pulls in, the
/// package pins, the agent binary and the build's own version.
pub fn image_key(
    spec_text: &str,
    sources: &BTreeMap<String, Vec<u8>>,
    packages: &[Package],
    agent_sha256: &str,
) -> ContentKey {
    let mut k = KeyBuilder::new();
    k.str("step-version", &IMAGE_STEP_VERSION.to_string());
    k.str("image.toml", spec_text);
    for (rel, data) in sources {
        k.str("source", rel).bytes("source-content", data);
    }
    for p in packages {
        k.str("package", &p.name)
            .str("version", &p.version)
            .str("sha256", &p.sha256);
    }
    k.str("agent-sha256", agent_sha256);
    k.finish()
}

/// Whether `dir` holds a finished image for `key` whose initramfs is intact.
fn is_complete(dir: &Path, key: &ContentKey) -> bool {
    let Ok(text) = fs::read(dir.join(MANIFEST)) else {
        return false;
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&text) else {
        return false;
    };
    m.key == key.0
        && m.step_version == IMAGE_STEP_VERSION
        && dir.join(ssh_key::PRIVATE).is_file()
        && dir.join(ssh_key::PUBLIC).is_file()
        && sha256_file(&dir.join(INITRAMFS)).is_ok_and(|s| s == m.initramfs_sha256)
}

/// Removes `prefix*` work directories left behind by builds that were killed
/// (Ctrl-C skips destructors). Only old ones: a young one may belong to a
/// build running right now.
fn remove_stale_temp_dirs(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if stale && e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The bytes of the files image.toml marks as generated.
pub struct GeneratedFiles {
    pub agent: Vec<u8>,
    pub authorized_keys: Vec<u8>,
}

/// Puts the unpacked packages and image.toml's own entries into one tree.
/// Declared directories may restate a package's directory (their mode wins);
/// any other clash is an error. Missing parents are added as 0755
/// directories, because the kernel does not create them while unpacking.
pub fn assemble(
    spec: &Spec,
    mut tree: Tree,
    origin: &BTreeMap<String, String>,
    sources: &BTreeMap<String, Vec<u8>>,
    generated: &GeneratedFiles,
) -> anyhow::Result<Tree> {
    let mut add = |path: &str, entry: Entry| -> anyhow::Result<()> {
        match tree.get(path) {
            Some(old) if old.kind == Kind::Dir && entry.kind == Kind::Dir => {}
            Some(_) => {
                return Err(Error::infra(format!(
                    "{SPEC_FILE}: /{path} is also in package {}",
                    origin.get(path).map_or("?", String::as_str)
                ))
                .into())
            }
            None => {}
        }
        tree.insert(path.to_string(), entry);
        Ok(())
    };
    for d in &spec.dirs {
        add(
            &d.path,
            Entry {
                mode: d.mode,
                kind: Kind::Dir,
            },
        )?;
    }
    for f in &spec.files {
        let data = match &f.content {
            Content::Text(t) => t.clone().into_bytes(),
            Content::Source(rel) => sources
                .get(rel)
                .cloned()
                .with_context(|| format!("source {rel} was not read"))?,
            Content::Generated(Generated::Agent) => generated.agent.clone(),
            Content::Generated(Generated::AuthorizedKeys) => generated.authorized_keys.clone(),
        };
        add(
            &f.path,
            Entry {
                mode: f.mode,
                kind: Kind::File(data),
            },
        )?;
    }
    for s in &spec.symlinks {
        add(
            &s.path,
            Entry {
                mode: 0o777,
                kind: Kind::Symlink(s.target.clone()),
            },
        )?;
    }
    for d in &spec.devices {
        add(
            &d.path,
            Entry {
                mode: d.mode,
                kind: Kind::CharDevice {
                    major: d.major,
                    minor: d.minor,
                },
            },
        )?;
    }
    let paths: Vec<String> = tree.keys().cloned().collect();
    for path in paths {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            match tree.get(p) {
                None => {
                    tree.insert(
                        p.to_string(),
                        Entry {
                            mode: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
                Some(e) if e.kind != Kind::Dir => {
                    return Err(Error::infra(format!(
                        "/{path} is below /{p}, which is not a directory"
                    ))
                    .into())
                }
                Some(_) => {}
            }
            parent = p;
        }
    }
    Ok(tree)
}

/// The gzip'd newc archive of `tree`. The gzip header has no name and mtime
/// 0, so equal trees give equal bytes.
pub fn encode(tree: &Tree) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut buf = Vec::new();
    cpio::write(tree, &mut buf)?;
    gz.write_all(&buf)?;
    Ok(gz.finish()?)
}

#[cfg(test)]
mod tests;
