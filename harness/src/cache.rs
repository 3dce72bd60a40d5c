//! Where the harness keeps things, and how it names them.
//!
//! Two roots. The *cache* (`$MSI_HARNESS_CACHE`, else
//! `$XDG_CACHE_HOME/msi-harness`, else `~/.cache/msi-harness`) outlives
//! checkouts: downloads, kernel trees and builds, ccache, images. The
//! *artifact directory* of a run lives under the project's `target/` and keeps
//! what a person needs after a failure: logs, command lines, traces.
//!
//! Everything cached is keyed by a [`ContentKey`]: a SHA-256 over labelled
//! inputs, so a key changes when, and only when, an input does.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The project checkout: `kernel-configs/`, `scenarios/`, `guest-images/`.
///
/// Read at run time (`MSI_HARNESS_ROOT`) so that archived test binaries can
/// be pointed at a checkout; defaults to the workspace this crate was built in.
pub fn project_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MSI_HARNESS_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

/// The per-user cache root (created on first use).
pub fn cache_root() -> anyhow::Result<PathBuf> {
    let root = if let Some(dir) = std::env::var_os("MSI_HARNESS_CACHE") {
        PathBuf::from(dir)
    } else if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        PathBuf::from(xdg).join("msi-harness")
    } else {
        let home = std::env::var_os("HOME").context("neither HOME nor XDG_CACHE_HOME is set")?;
        PathBuf::from(home).join(".cache/msi-harness")
    };
    fs::create_dir_all(&root).with_context(|| format!("create cache dir {}", root.display()))?;
    Ok(root)
}

/// A subdirectory of the cache root (created on first use).
pub fn cache_dir(sub: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_root()?.join(sub);
    fs::create_dir_all(&dir).with_context(|| format!("create cache dir {}", dir.display()))?;
    Ok(dir)
}

/// Where the runs' artifact directories are: `target/msi-harness/runs/`.
pub fn runs_root() -> PathBuf {
    project_root().join("target/msi-harness/runs")
}

/// A fresh artifact directory for one run: `<runs_root>/<stamp>-<label>-<pid>`,
/// the stamp in milliseconds since the epoch ([`run_stamp`] reads it back).
pub fn new_run_dir(label: &str) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = runs_root().join(format!("{stamp}-{label}-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("create run dir {}", dir.display()))?;
    Ok(dir)
}

/// When the run of a directory named by [`new_run_dir`] started, in
/// milliseconds since the epoch; `None` for a name of another shape.
pub fn run_stamp(dir_name: &str) -> Option<u128> {
    let (stamp, rest) = dir_name.split_once('-')?;
    if stamp.is_empty() || rest.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// A hex SHA-256 key over labelled inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey(pub String);

impl ContentKey {
    /// The first 16 hex digits: enough for a directory name.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

impl std::fmt::Display for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds a [`ContentKey`]. Every input is labelled and length-prefixed so
/// that moving bytes from one input to the next changes the key.
pub struct KeyBuilder {
    hasher: Sha256,
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    pub fn new() -> KeyBuilder {
        KeyBuilder {
            hasher: Sha256::new(),
        }
    }

    pub fn bytes(&mut self, label: &str, data: &[u8]) -> &mut Self {
        self.hasher.update((label.len() as u64).to_le_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update((data.len() as u64).to_le_bytes());
        self.hasher.update(data);
        self
    }

    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        self.bytes(label, value.as_bytes())
    }

    /// A file's content (not its name or mtime).
    pub fn file(&mut self, label: &str, path: &Path) -> anyhow::Result<&mut Self> {
        let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Ok(self.bytes(label, &data))
    }

    /// Every regular file below `dir`, in sorted order, by relative path and
    /// content; symlinks by their target. Names matching `skip` are left out.
    pub fn tree(
        &mut self,
        label: &str,
        dir: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> anyhow::Result<&mut Self> {
        let mut files = Vec::new();
        walk(dir, dir, skip, &mut files)?;
        files.sort();
        self.str(label, &format!("{} entries", files.len()));
        for rel in files {
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path)?;
            let name = rel.to_string_lossy();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?;
                self.str(&format!("link:{name}"), &target.to_string_lossy());
            } else {
                self.str("path", &name);
                let mut f =
                    fs::File::open(&path).with_context(|| format!("read {}", path.display()))?;
                let mut buf = Vec::with_capacity(meta.len() as usize);
                f.read_to_end(&mut buf)?;
                self.bytes("content", &buf);
            }
        }
        Ok(self)
    }

    pub fn finish(&self) -> ContentKey {
        ContentKey(hex::encode(self.hasher.clone().finalize()))
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &dyn Fn(&Path) -> bool,
    out: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read dir {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("below root").to_path_buf();
        if skip(&rel) {
            continue;
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(root, &path, skip, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// SHA-256 of a file, streamed, as hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads the JSON file `path` holding `what` (`inputs file`): an
/// infrastructure error naming the file when it cannot be read, and its
/// `file:line:col` when it does not parse.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = fs::read_to_string(path)
        .map_err(|e| crate::Error::infra(format!("cannot read {what} {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        crate::Error::infra(format!(
            "{}:{}:{}: invalid {what}: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
        .into()
    })
}

/// Writes `data` to `path` atomically (temp file in the same dir + rename),
/// so a killed run never leaves a half-written cache entry behind.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// A file's size and modification time (ns since the epoch, 0 when the
/// filesystem has none): what a key holds for a large file that is cheaper
/// to stat than to hash (a QEMU binary, a kernel image at every start).
pub fn file_stamp(path: &Path) -> anyhow::Result<(u64, u128)> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// An exclusive lock on `path` (created if missing), polled every `poll`
/// until `deadline` has passed; `waiting` is called once, when the lock is
/// first found taken. The error names `holder`, who kept it.
pub fn lock_exclusive(
    path: &Path,
    deadline: std::time::Duration,
    poll: std::time::Duration,
    holder: &str,
    waiting: &mut dyn FnMut(),
) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {
                if !said {
                    waiting();
                    said = true;
                }
                if started.elapsed() > deadline {
                    return Err(crate::Error::infra(format!(
                        "{} stayed locked by {holder} for over {} s",
                        path.display(),
                        deadline.as_secs()
                    ))
                    .into());
                }
                std::thread::sleep(poll);
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_any_input_and_only_then() {
        let a = KeyBuilder::new().str("x", "ab").str("y", "c").finish();
        let b = KeyBuilder::new().str("x", "ab").str("y", "c").finish();
        let c = KeyBuilder::new().str("x", "a").str("y", "bc").finish();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn run_dirs_name_their_start() {
        let dir = new_run_dir("stamp-test").unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        fs::remove_dir(&dir).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let stamp = run_stamp(&name).unwrap();
        assert!(stamp <= now && now - stamp < 60_000, "{name}");
        assert_eq!(run_stamp("1700000000000-test-42"), Some(1_700_000_000_000));
        for other in ["latest", "-test-1", "12a-test-1", "1700000000000"] {
            assert_eq!(run_stamp(other), None, "{other}");
        }
    }

    #[test]
    fn tree_keys_follow_content_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a"), "one").unwrap();
        fs::write(dir.path().join("b"), "two").unwrap();
        let none = |_: &Path| false;
        let k1 = KeyBuilder::new()
            .tree("t", dir.path(), &none)
            .unwrap()
            .finish();
        fs::write(dir.path().join("b"), "two").unwrap();
        let k2 = KeyBuilder::new()
            .tree("t", dir.path(), &none)
            .unwrap()
            .finish();
        assert_eq!(k1, k2);
        fs::write(dir.path().join("sub/a"), "One").unwrap();
        let k3 = KeyBuilder::new()
            .tree("t", dir.path(), &none)
            .unwrap()
            .finish();
        assert_ne!(k1, k3);
        let skip_b = |p: &Path| p == Path::new("b");
        let k4 = KeyBuilder::new()
            .tree("t", dir.path(), &skip_b)
            .unwrap()
            .finish();
        fs::write(dir.path().join("b"), "changed").unwrap();
        let k5 = KeyBuilder::new()
            .tree("t", dir.path(), &skip_b)
            .unwrap()
            .finish();
        assert_eq!(k4, k5);
    }
}
