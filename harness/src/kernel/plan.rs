//! The build plan: what a kernel build is made of (source, patch series,
//! config fragments, toolchain) and the content keys computed from it.

use std::path::{Path, PathBuf};

use crate::cache::{self, ContentKey, KeyBuilder};
use crate::error::Error;
use crate::process::Log;

use super::make::toolchain_version;
use super::variants::{self, SourceSpec};
use super::{kconfig, patch, source, tree, ARCH, CROSS_COMPILE, KERNEL_STEP_VERSION, TARGET};

/// What to build.
#[derive(Debug, Clone, Copy)]
pub enum KernelSource<'a> {
    /// A variant of `kernel-configs/kernels.toml`, by name.
    Variant(&'a str),
    /// A local kernel tree, built as it is (never modified).
    Tree { path: &'a Path },
}

/// Optional changes to what a variant builds.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions<'a> {
    /// A patch file or mbox that replaces the variant's patch directory.
    pub series: Option<&'a Path>,
}

/// What the cache key is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs {
    /// The source archive's sha256, or a local tree's content key.
    pub source: String,
    /// Each patch file's bytes, in order.
    pub patches: Vec<Vec<u8>>,
    /// Each fragment's settings ([`kconfig::canonical`]: comments do not
    /// count), in merge order.
    pub fragments: Vec<Vec<u8>>,
    /// First line of `aarch64-linux-gnu-gcc --version`.
    pub toolchain: String,
}

impl KeyInputs {
    /// The key of the patched source (and so of its uapi headers).
    pub fn source_key(&self) -> ContentKey {
        let mut k = KeyBuilder::new();
        k.str("step", &KERNEL_STEP_VERSION.to_string())
            .str("source", &self.source);
        k.str("patches", &self.patches.len().to_string());
        for p in &self.patches {
            k.bytes("patch", p);
        }
        k.finish()
    }

    /// The key of the configured source.
    pub(super) fn config_key(&self) -> ContentKey {
        let mut k = KeyBuilder::new();
        k.str("tree", &self.source_key().0);
        k.str("fragments", &self.fragments.len().to_string());
        for f in &self.fragments {
            k.bytes("fragment", f);
        }
        k.str("toolchain", &self.toolchain).str("arch", ARCH);
        k.finish()
    }

    /// The key of the built kernel.
    pub fn build_key(&self) -> ContentKey {
        KeyBuilder::new()
            .str("config", &self.config_key().0)
            .str("cross", CROSS_COMPILE)
            .str("target", TARGET)
            .finish()
    }
}

/// Everything resolved before anything is built.
pub(super) struct Plan {
    pub(super) name: String,
    /// A variant's source spec, or `None` for a local tree.
    pub(super) spec: Option<SourceSpec>,
    /// The local tree, for tree builds.
    pub(super) tree: Option<PathBuf>,
    pub(super) patches: Vec<patch::Patch>,
    pub(super) fragments: Vec<PathBuf>,
    pub(super) requests: Vec<kconfig::Request>,
    pub(super) inputs: KeyInputs,
    /// Series files, for metadata.
    pub(super) series_files: Vec<PathBuf>,
}

/// The series files of a patch directory: `*.patch`, in name order.
pub fn series_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            Error::infra(format!(
                "cannot read patch directory {}: {e}",
                dir.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "patch") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and parses series files; a mangled mail or malformed patch is an
/// error naming the file.
fn read_series(files: &[PathBuf]) -> anyhow::Result<(Vec<patch::Patch>, Vec<Vec<u8>>)> {
    let mut patches = Vec::new();
    let mut bytes = Vec::new();
    for f in files {
        let data = std::fs::read(f)
            .map_err(|e| Error::infra(format!("cannot read patch {}: {e}", f.display())))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        patches.extend(patch::parse(&name, &data).map_err(|e| Error::infra(e.to_string()))?);
        bytes.push(data);
    }
    Ok((patches, bytes))
}

pub(super) fn plan(source: KernelSource, options: BuildOptions, log: &Log) -> anyhow::Result<Plan> {
    let root = cache::project_root();
    let file = variants::load_file(&variants::kernels_toml(&root))?;
    let toolchain = toolchain_version(log)?;
    let (name, spec, tree, series_files, fragments, source_id) = match source {
        KernelSource::Variant(wanted) => {
            let Some(v) = file.variants.iter().find(|v| v.name == wanted) else {
                let names: Vec<&str> = file.variants.iter().map(|v| v.name.as_str()).collect();
                return Err(Error::infra(format!(
                    "no kernel variant `{wanted}` in kernel-configs/kernels.toml (variants: {})",
                    names.join(", ")
                ))
                .into());
            };
            let series = match (options.series, &v.patches) {
                // A directory is a series directory like the variants' own.
                (Some(s), _) if s.is_dir() => series_files(s)?,
                (Some(s), _) => vec![s.to_path_buf()],
                // A variant's `patches` is a series directory or one file
                // (an mbox as archived).
                (None, Some(dir)) if dir.is_dir() => series_files(dir)?,
                (None, Some(file)) => vec![file.clone()],
                (None, None) => Vec::new(),
            };
            match &v.source {
                SourceSpec::Tree { path, .. } => {
                    if options.series.is_some() {
                        return Err(Error::infra("a tree is built as it is: --series needs a variant with a downloaded source").into());
                    }
                    let path = tree::check_kernel_tree(path)?;
                    let key = tree::tree_key(&path, log)?;
                    (
                        v.name.clone(),
                        None,
                        Some(path),
                        series,
                        v.fragments.clone(),
                        key.0,
                    )
                }
                spec => {
                    let sha = source::source_sha256(spec)?;
                    (
                        v.name.clone(),
                        Some(spec.clone()),
                        None,
                        series,
                        v.fragments.clone(),
                        sha,
                    )
                }
            }
        }
        KernelSource::Tree { path } => {
            if options.series.is_some() {
                return Err(Error::infra("--series cannot be combined with --kernel-tree: the tree is built as it is, never modified").into());
            }
            let path = tree::check_kernel_tree(path)?;
            let key = tree::tree_key(&path, log)?;
            let base = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let where_ = KeyBuilder::new()
                .str("path", &path.to_string_lossy())
                .finish();
            let name = format!("tree-{base}-{}", &where_.0[..8]);
            (
                name,
                None,
                Some(path),
                Vec::new(),
                file.default_fragments.clone(),
                key.0,
            )
        }
    };
    let (patches, patch_bytes) = read_series(&series_files)?;
    let mut requests = Vec::new();
    let mut fragment_bytes = Vec::new();
    for f in &fragments {
        let settings = kconfig::read_fragment(f)?;
        fragment_bytes.push(kconfig::canonical(&settings).into_bytes());
        requests.extend(settings);
    }
    Ok(Plan {
        name,
        spec,
        tree,
        patches,
        fragments,
        requests,
        inputs: KeyInputs {
            source: source_id,
            patches: patch_bytes,
            fragments: fragment_bytes,
            toolchain,
        },
        series_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            source: "fdf4".into(),
            patches: vec![b"patch one\n".to_vec(), b"patch two\n".to_vec()],
            fragments: vec![b"CONFIG_PCI=y\n".to_vec()],
            toolchain: "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0".into(),
        }
    }

    #[test]
    fn keys_change_when_and_only_when_an_input_changes() {
        let base = inputs();
        assert_eq!(base.build_key(), inputs().build_key());
        assert_eq!(base.source_key(), inputs().source_key());
        let variants: Vec<(&str, KeyInputs, bool)> = vec![
            (
                "source",
                KeyInputs {
                    source: "fdf5".into(),
                    ..inputs()
                },
                true,
            ),
            (
                "patch line",
                KeyInputs {
                    patches: vec![b"patch one\n".to_vec(), b"patch 2\n".to_vec()],
                    ..inputs()
                },
                true,
            ),
            (
                "patch order",
                KeyInputs {
                    patches: vec![b"patch two\n".to_vec(), b"patch one\n".to_vec()],
                    ..inputs()
                },
                true,
            ),
            (
                "no patches",
                KeyInputs {
                    patches: vec![],
                    ..inputs()
                },
                true,
            ),
            (
                "fragment",
                KeyInputs {
                    fragments: vec![b"CONFIG_PCI=n\n".to_vec()],
                    ..inputs()
                },
                false,
            ),
            (
                "toolchain",
                KeyInputs {
                    toolchain: "gcc 13".into(),
                    ..inputs()
                },
                false,
            ),
        ];
        for (what, changed, source_too) in variants {
            assert_ne!(
                changed.build_key(),
                base.build_key(),
                "{what} must change the build key"
            );
            assert_eq!(
                changed.source_key() != base.source_key(),
                source_too,
                "{what}: source key"
            );
        }
    }

    #[test]
    fn series_dir_keys_follow_patch_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0002-b.patch"), "b").unwrap();
        std::fs::write(dir.path().join("0001-a.patch"), "a").unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        std::fs::write(dir.path().join("original-mail.eml"), "mail").unwrap();
        let files = series_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["0001-a.patch", "0002-b.patch"]);
        let key = |files: &[PathBuf]| {
            let bytes = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            KeyInputs {
                patches: bytes,
                ..inputs()
            }
            .build_key()
        };
        let k1 = key(&files);
        std::fs::write(dir.path().join("README.md"), "other notes").unwrap();
        assert_eq!(key(&series_files(dir.path()).unwrap()), k1);
        std::fs::write(dir.path().join("0002-b.patch"), "B").unwrap();
        assert_ne!(key(&series_files(dir.path()).unwrap()), k1);
    }
}
