//! Source trees: preparing a variant's patched tree from the pristine one,
//! and keying a user's kernel tree by its content.
//!
//! A variant's `src/` is made from the pristine tree with `rsync -a
//! --delete` and then the series' result is written over it. Make decides
//! by modification time, so every file rsync restores gets mtime "now" (a
//! restored file is older than the objects built from the patched one and
//! would otherwise be skipped), and a patched file is written only when its
//! content differs: changing one patch line rebuilds what that line touches.
//!
//! An empty `src/` is instead filled with hard links to the pristine tree
//! (`cp -al`: 7 s for 91k files here, where rsync takes 22-38 s): nothing
//! has been built from it, so mtimes do not matter, and the caller starts
//! its build directory afresh. The pristine tree stays unmodified because
//! nothing writes a source file in place: patched files are written as new
//! files (below), rsync replaces files by renaming, make builds out of tree
//! (`O=`), and every file given a new mtime is one rsync just wrote.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::apply::Applied;
use crate::cache::{ContentKey, KeyBuilder};
use crate::error::Error;
use crate::process::{self, Io, Log, Stdout};

const RSYNC_TIMEOUT: Duration = Duration::from_secs(1800);
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// What preparing a tree changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// `src` was empty and is now hard links to the pristine tree: any
    /// build directory made from an earlier `src` must be discarded.
    pub linked: bool,
    /// Files rsync restored from the pristine tree (and touched).
    pub restored: usize,
    /// Patched files written because their content changed.
    pub written: usize,
    pub deleted: usize,
}

/// Makes `src` the pristine tree plus `applied`, changing as little as
/// possible.
pub fn prepare(
    pristine: &Path,
    src: &Path,
    applied: &Applied,
    log: &Log,
) -> anyhow::Result<Prepared> {
    let empty = std::fs::read_dir(src).map_or(true, |mut d| d.next().is_none());
    let mut prepared = Prepared::default();
    if empty {
        let _ = std::fs::remove_dir(src);
        if let Some(parent) = src.parent() {
            std::fs::create_dir_all(parent)?;
        }
        process::cmd("cp")
            .arg("-al")
            .arg(pristine)
            .arg(src)
            .output(RSYNC_TIMEOUT, log)
            .context("link the pristine source")?;
        prepared.linked = true;
    }
    let out = if prepared.linked {
        // Already the pristine tree; the series' files come below.
        String::new()
    } else {
        std::fs::create_dir_all(src)?;
        // Files the series decides about are left to us, not rsync, so that
        // an unchanged patched file keeps its mtime.
        let exclude = src
            .parent()
            .context("src has a parent")?
            .join("rsync-exclude");
        let mut list = std::fs::File::create(&exclude)?;
        for path in applied.files.keys() {
            writeln!(list, "/{}", escape_pattern(path))?;
        }
        drop(list);
        let mut cmd = process::cmd("rsync");
        cmd.args(["-a", "--delete", "--itemize-changes"])
            .arg(format!("--exclude-from={}", exclude.display()))
            .arg(format!("{}/", pristine.display()))
            .arg(format!("{}/", src.display()));
        cmd.output(RSYNC_TIMEOUT, log)
            .context("copy the pristine source")?
    };
    let now = SystemTime::now();
    for rel in received_files(&out) {
        touch(&src.join(rel), now)?;
        prepared.restored += 1;
    }
    let (written, deleted) = write_files(src, applied)?;
    prepared.written = written;
    prepared.deleted = deleted;
    Ok(prepared)
}

/// Writes the series' files of `applied` into a tree that already holds
/// everything else (the same source with another mutant): how many files
/// were written or deleted.
pub fn write_series(src: &Path, applied: &Applied) -> anyhow::Result<usize> {
    let (written, deleted) = write_files(src, applied)?;
    Ok(written + deleted)
}

/// Each file of `applied` written where its content differs (deleted where
/// the series deletes it): (written, deleted).
fn write_files(src: &Path, applied: &Applied) -> anyhow::Result<(usize, usize)> {
    let (mut written, mut deleted) = (0, 0);
    for (rel, state) in &applied.files {
        let path = src.join(rel);
        match state {
            None => {
                if path.symlink_metadata().is_ok() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("remove {}", path.display()))?;
                    deleted += 1;
                }
            }
            Some(state) => {
                let same = std::fs::read(&path)
                    .map(|d| d == state.data)
                    .unwrap_or(false);
                if !same {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    // A fresh file (not an overwrite in place) so that hard
                    // links into the pristine tree can never be changed.
                    let _ = std::fs::remove_file(&path);
                    std::fs::write(&path, &state.data)
                        .with_context(|| format!("write {}", path.display()))?;
                    written += 1;
                }
                if let Some(exec) = state.executable {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if exec { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                }
            }
        }
    }
    Ok((written, deleted))
}

/// rsync filter patterns treat `*?[` specially; a backslash quotes them.
fn escape_pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Regular files rsync sent, from `--itemize-changes` output
/// (`>f+++++++++ path`, `>f.st...... path`).
fn received_files(itemized: &str) -> Vec<&str> {
    itemized
        .lines()
        .filter(|l| l.starts_with(">f") && l.len() > 12)
        .map(|l| &l[12..])
        .collect()
}

fn touch(path: &Path, when: SystemTime) -> anyhow::Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.set_modified(when)
        .with_context(|| format!("set mtime of {}", path.display()))?;
    Ok(())
}

/// A key over a kernel tree's content. For a git tree: HEAD, `git diff
/// HEAD` and every untracked (not ignored) file; otherwise every file.
pub fn tree_key(path: &Path, log: &Log) -> anyhow::Result<ContentKey> {
    let mut key = KeyBuilder::new();
    if path.join(".git").exists() {
        super::require_tool("git")?;
        let git = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
            // --no-optional-locks: do not even refresh the user's index.
            let io = Io {
                stdout: Stdout::Keep,
                ..Io::log(log)
            };
            let done = process::cmd("git")
                .arg("--no-optional-locks")
                .arg("-C")
                .arg(path)
                .args(args)
                .run(GIT_TIMEOUT, io)?
                .check()?;
            Ok(done.stdout)
        };
        log.line(&format!("# keying git tree {}", path.display()));
        key.bytes("head", &git(&["rev-parse", "HEAD"])?);
        key.bytes(
            "diff",
            &git(&["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"])?,
        );
        let untracked = git(&["ls-files", "--others", "--exclude-standard", "-z"])?;
        for rel in untracked.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let rel = String::from_utf8_lossy(rel).into_owned();
            let file = path.join(&rel);
            key.str("untracked", &rel);
            match std::fs::symlink_metadata(&file) {
                Ok(m) if m.file_type().is_symlink() => {
                    key.str("link", &std::fs::read_link(&file)?.to_string_lossy());
                }
                Ok(_) => {
                    key.file("content", &file)?;
                }
                Err(_) => {}
            }
        }
    } else {
        log.line(&format!(
            "# hashing every file of {} (not a git tree)",
            path.display()
        ));
        key.tree("tree", path, &|_| false)?;
    }
    Ok(key.finish())
}

/// Checks that `path` is a kernel source tree.
pub fn check_kernel_tree(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::fs::canonicalize(path)
        .map_err(|e| Error::infra(format!("kernel tree {}: {e}", path.display())))?;
    if !abs.join("Makefile").is_file() || !abs.join("scripts/kconfig/merge_config.sh").is_file() {
        return Err(Error::infra(format!(
            "{} is not a kernel source tree (no Makefile or scripts/kconfig/merge_config.sh)",
            abs.display()
        ))
        .into());
    }
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::super::apply::FileState;
    use super::*;

    #[test]
    fn rsync_itemized_output_yields_received_files() {
        let out = "cd+++++++++ drivers/new/\n>f+++++++++ drivers/new/x.c\n>f..t...... Makefile\n\
                   *deleting   drivers/old.c\n.d..t...... drivers/\ncL+++++++++ link -> x\n";
        assert_eq!(received_files(out), ["drivers/new/x.c", "Makefile"]);
        assert_eq!(escape_pattern("a/b[1]*.c"), "a/b\\[1]\\*.c");
    }

    /// An empty src prepared from a small pristine tree: hard links, the
    /// patched file a copy, the pristine tree as it was. Returns (pristine,
    /// src, log).
    fn linked_tree(dir: &Path) -> (PathBuf, PathBuf, Log) {
        use std::os::unix::fs::MetadataExt;
        let pristine = dir.join("pristine");
        std::fs::create_dir_all(pristine.join("drivers")).unwrap();
        std::fs::write(pristine.join("drivers/a.c"), "int a;\n").unwrap();
        std::fs::write(pristine.join("drivers/b.c"), "int b;\n").unwrap();
        std::fs::write(pristine.join("gone.c"), "int gone;\n").unwrap();
        let log = Log::create(&dir.join("kernel.log")).unwrap();
        let mut applied = Applied::default();
        applied.files.insert(
            "drivers/a.c".into(),
            Some(FileState {
                data: b"int a = 1;\n".to_vec(),
                executable: None,
            }),
        );
        applied.files.insert("gone.c".into(), None);
        let src = dir.join("work/src");
        let prepared = prepare(&pristine, &src, &applied, &log).unwrap();
        assert!(prepared.linked);
        assert_eq!((prepared.written, prepared.deleted), (1, 1));
        assert_eq!(
            std::fs::read_to_string(src.join("drivers/a.c")).unwrap(),
            "int a = 1;\n"
        );
        assert!(!src.join("gone.c").exists());
        // The untouched file is the pristine inode; the patched one is not,
        // and the pristine tree is as it was.
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&src.join("drivers/b.c")),
            ino(&pristine.join("drivers/b.c"))
        );
        assert_ne!(
            ino(&src.join("drivers/a.c")),
            ino(&pristine.join("drivers/a.c"))
        );
        assert_eq!(
            std::fs::read_to_string(pristine.join("drivers/a.c")).unwrap(),
            "int a;\n"
        );
        assert!(pristine.join("gone.c").exists());
        (pristine, src, log)
    }

    #[test]
    fn an_empty_src_is_linked_and_patched_files_never_write_through_to_pristine() {
        let dir = tempfile::tempdir().unwrap();
        linked_tree(dir.path());
    }

    /// A later series (rsync over the linked tree) restores a.c and gone.c
    /// and patches b.c; pristine stays as it was.
    #[test]
    #[ignore = "needs rsync (cargo xtask deps installs it): run by cargo xtask test"]
    fn a_second_series_over_a_linked_tree_leaves_pristine_unchanged() {
        crate::testing::program("rsync");
        let dir = tempfile::tempdir().unwrap();
        let (pristine, src, log) = linked_tree(dir.path());
        let mut next = Applied::default();
        next.files.insert(
            "drivers/b.c".into(),
            Some(FileState {
                data: b"int b = 2;\n".to_vec(),
                executable: None,
            }),
        );
        let again = prepare(&pristine, &src, &next, &log).unwrap();
        assert!(!again.linked);
        assert_eq!(
            std::fs::read_to_string(src.join("drivers/a.c")).unwrap(),
            "int a;\n"
        );
        assert_eq!(
            std::fs::read_to_string(src.join("drivers/b.c")).unwrap(),
            "int b = 2;\n"
        );
        assert!(src.join("gone.c").exists());
        assert_eq!(
            std::fs::read_to_string(pristine.join("drivers/b.c")).unwrap(),
            "int b;\n"
        );
        assert_eq!(
            std::fs::read_to_string(pristine.join("drivers/a.c")).unwrap(),
            "int a;\n"
        );
    }

    #[test]
    #[ignore = "needs git (cargo xtask deps installs it): run by cargo xtask test"]
    fn git_tree_keys_follow_head_changes_and_untracked_files_only() {
        crate::testing::program("git");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let log = Log::create(&root.join("log/kernel.log")).unwrap();
        let git = |args: &[&str]| {
            let ok = process::cmd("git")
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@example.invalid",
                    "-C",
                ])
                .arg(root.join("t"))
                .args(args)
                .run(Duration::from_secs(60), Io::quiet())
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        };
        let tree = root.join("t");
        std::fs::create_dir_all(tree.join("drivers")).unwrap();
        std::fs::write(tree.join("drivers/a.c"), "int a;\n").unwrap();
        std::fs::write(tree.join(".gitignore"), "*.o\n").unwrap();
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "base"]);
        let key = || tree_key(&tree, &log).unwrap();
        let k0 = key();
        assert_eq!(key(), k0);
        // Build products (ignored) do not count; mtimes do not count.
        std::fs::write(tree.join("drivers/a.o"), "obj").unwrap();
        std::fs::write(tree.join("drivers/a.c"), "int a;\n").unwrap();
        assert_eq!(key(), k0);
        // An edit does, and undoing it restores the key.
        std::fs::write(tree.join("drivers/a.c"), "int b;\n").unwrap();
        let k1 = key();
        assert_ne!(k1, k0);
        std::fs::write(tree.join("drivers/a.c"), "int a;\n").unwrap();
        assert_eq!(key(), k0);
        // A new file, then its content.
        std::fs::write(tree.join("drivers/new.c"), "x").unwrap();
        let k2 = key();
        assert_ne!(k2, k0);
        std::fs::write(tree.join("drivers/new.c"), "y").unwrap();
        assert_ne!(key(), k2);
        std::fs::remove_file(tree.join("drivers/new.c")).unwrap();
        // A commit of the same content changes HEAD, and so the key.
        git(&["commit", "-q", "--allow-empty", "-m", "empty"]);
        assert_ne!(key(), k0);
    }
}
