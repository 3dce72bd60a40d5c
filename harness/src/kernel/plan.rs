//! The build plan: what a kernel build is made of (source, patch series,
//! config fragments, toolchain) and the content keys computed from it.

use std::path::{Path, PathBuf};

use crate::cache::{self, ContentKey, KeyBuilder};
use crate::error::Error;
use crate::process::Log;

use super::make::toolchain_version;
use super::mutate::Mutant;
use super::patch::series::{self, SeriesSpec};
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
    /// A mail, mbox or directory of them (`PATH[:NUMBERS]`,
    /// [`series::SeriesSpec`]) that replaces the variant's series.
    pub series: Option<&'a Path>,
    /// patch(1)'s fuzz: up to this many context lines at each end of a hunk
    /// may be ignored; 0 (the default) applies strictly.
    pub fuzz: u32,
    /// Build in the variant's mutants tree (`cargo xtask mutants`).
    pub mutation: Mutation<'a>,
}

/// Whether, and how, a build changes one line of the series' result.
#[derive(Debug, Clone, Copy, Default)]
pub enum Mutation<'a> {
    /// The variant as it is, in its own work directory.
    #[default]
    None,
    /// The variant as it is, built in its mutants tree
    /// (`kernel/work/<variant>.mutants`): what each mutant's object files
    /// are compared with.
    Baseline,
    /// The variant with one line changed, built in its mutants tree.
    Mutant(&'a Mutant),
}

impl Mutation<'_> {
    /// What goes into the build key: `None` for a normal build, so that
    /// its keys stay what they were.
    fn key(&self) -> Option<String> {
        match self {
            Mutation::None => None,
            Mutation::Baseline => Some("baseline".into()),
            Mutation::Mutant(m) => Some(format!("mutant\n{}", m.key())),
        }
    }
}

/// What the cache key is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs {
    /// The source archive's sha256, or a local tree's content key.
    pub source: String,
    /// Each patch file's bytes, in order.
    pub patches: Vec<Vec<u8>>,
    /// The patches picked from them (`4,8-9`), when not all.
    pub pick: Option<String>,
    /// The fuzz the series is applied with.
    pub fuzz: u32,
    /// Each fragment's settings ([`kconfig::canonical`]: comments do not
    /// count), in merge order.
    pub fragments: Vec<Vec<u8>>,
    /// First line of `aarch64-linux-gnu-gcc --version`.
    pub toolchain: String,
    /// [`Mutation::key`]: a mutant changes a `.c` line only, so it is in
    /// the tree and build keys but not the source key (the uapi headers
    /// are the variant's) nor the configuration's (no reconfiguring).
    pub mutation: Option<String>,
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
        // Added only when set, so that the keys of strict, whole series
        // stay what they were.
        if let Some(pick) = &self.pick {
            k.str("pick", pick);
        }
        if self.fuzz > 0 {
            k.str("fuzz", &self.fuzz.to_string());
        }
        k.finish()
    }

    /// What the work tree holds: the patched source, with the mutation.
    pub(super) fn tree_key(&self) -> ContentKey {
        match &self.mutation {
            None => self.source_key(),
            Some(m) => KeyBuilder::new()
                .str("source", &self.source_key().0)
                .str("mutation", m)
                .finish(),
        }
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
        let mut k = KeyBuilder::new();
        k.str("config", &self.config_key().0)
            .str("cross", CROSS_COMPILE)
            .str("target", TARGET);
        if let Some(m) = &self.mutation {
            k.str("mutation", m);
        }
        k.finish()
    }
}

/// Everything resolved before anything is built.
pub(super) struct Plan {
    pub(super) name: String,
    /// The directory under `kernel/work` it is built in: the name, or
    /// `<name>.mutants` for a mutation.
    pub(super) work_name: String,
    /// A variant's source spec, or `None` for a local tree.
    pub(super) spec: Option<SourceSpec>,
    /// The local tree, for tree builds.
    pub(super) tree: Option<PathBuf>,
    pub(super) patches: Vec<patch::Patch>,
    /// How each patch is numbered in reports (`09/13`).
    pub(super) labels: Vec<String>,
    /// What reading the series skipped or noticed.
    pub(super) notes: Vec<String>,
    pub(super) fuzz: u32,
    pub(super) fragments: Vec<PathBuf>,
    pub(super) requests: Vec<kconfig::Request>,
    pub(super) inputs: KeyInputs,
    /// Series files, for metadata.
    pub(super) series_files: Vec<PathBuf>,
}

/// Reads a series; every problem is bad input.
fn read_series(spec: Option<SeriesSpec>) -> anyhow::Result<Option<series::Series>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    Ok(Some(
        series::read(&spec).map_err(|e| Error::infra(e.to_string()))?,
    ))
}

/// The work directory (`kernel/work/<name>`, holding `build/`) of a tree
/// build. A tree that is itself `kernel/work/<name>/src` (a bisect's
/// checkout) builds in `kernel/work/<name>/build`: the same layout as a
/// variant's, so ccache (based at the work root) hits on the objects of a
/// variant built from the same source. Any other tree gets a directory of
/// its own, named by its path.
pub fn tree_work_name(path: &Path, work_root: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "src") {
        if let Some(dir) = path.parent() {
            if dir.parent() == Some(work_root) {
                if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                    return name.to_string();
                }
            }
        }
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let where_ = KeyBuilder::new()
        .str("path", &path.to_string_lossy())
        .finish();
    format!("tree-{base}-{}", &where_.0[..8])
}

pub(super) fn plan(source: KernelSource, options: BuildOptions, log: &Log) -> anyhow::Result<Plan> {
    let root = cache::project_root();
    let file = variants::load_file(&variants::kernels_toml(&root))?;
    let toolchain = toolchain_version(log)?;
    let (name, spec, tree, series, fragments, source_id) = match source {
        KernelSource::Variant(wanted) => {
            let v = &file.variant(wanted)?;
            // `--series`, else the variant's `patches`: a series directory
            // or one file (an mbox as archived).
            let series = match (options.series, &v.patches) {
                (Some(s), _) => Some(SeriesSpec::parse(s).map_err(Error::infra)?),
                (None, Some(path)) => Some(SeriesSpec {
                    path: path.clone(),
                    pick: None,
                }),
                (None, None) => None,
            };
            match &v.source {
                SourceSpec::Tree { path, .. } => {
                    if !matches!(options.mutation, Mutation::None) {
                        return Err(Error::infra("a tree is built as it is: mutants need a variant with a downloaded source").into());
                    }
                    if options.series.is_some() || options.fuzz > 0 {
                        return Err(Error::infra("a tree is built as it is: --series and --fuzz need a variant with a downloaded source").into());
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
            if options.series.is_some()
                || options.fuzz > 0
                || !matches!(options.mutation, Mutation::None)
            {
                return Err(Error::infra("--series and --fuzz cannot be combined with --kernel-tree: the tree is built as it is, never modified").into());
            }
            let path = tree::check_kernel_tree(path)?;
            let key = tree::tree_key(&path, log)?;
            let work_root = cache::cache_root()?.join("kernel/work");
            let work_root = std::fs::canonicalize(&work_root).unwrap_or(work_root);
            let name = tree_work_name(&path, &work_root);
            (
                name,
                None,
                Some(path),
                None,
                file.default_fragments.clone(),
                key.0,
            )
        }
    };
    let pick = series
        .as_ref()
        .and_then(|s| s.pick.as_ref())
        .map(|p| p.to_string());
    let series = read_series(series)?;
    let (patches, labels, notes, series_files, patch_bytes) = match series {
        Some(s) => (s.patches, s.labels, s.notes, s.files, s.bytes),
        None => Default::default(),
    };
    let mut requests = Vec::new();
    let mut fragment_bytes = Vec::new();
    for f in &fragments {
        let settings = kconfig::read_fragment(f)?;
        fragment_bytes.push(kconfig::canonical(&settings).into_bytes());
        requests.extend(settings);
    }
    let work_name = match options.mutation {
        Mutation::None => name.clone(),
        _ => format!("{name}.mutants"),
    };
    Ok(Plan {
        work_name,
        name,
        spec,
        tree,
        patches,
        labels,
        notes,
        fuzz: options.fuzz,
        fragments,
        requests,
        inputs: KeyInputs {
            source: source_id,
            patches: patch_bytes,
            pick,
            fuzz: options.fuzz,
            fragments: fragment_bytes,
            toolchain,
            mutation: options.mutation.key(),
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
            pick: None,
            fuzz: 0,
            fragments: vec![b"CONFIG_PCI=y\n".to_vec()],
            toolchain: "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0".into(),
            mutation: None,
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
                "pick",
                KeyInputs {
                    pick: Some("2".into()),
                    ..inputs()
                },
                true,
            ),
            (
                "fuzz",
                KeyInputs {
                    fuzz: 1,
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
        let mutated = KeyInputs {
            mutation: Some("mutant\nx.c\n3\n;".into()),
            ..inputs()
        };
        // A mutant is its own build and tree, on the variant's source
        // (headers) and configuration.
        assert_ne!(mutated.build_key(), base.build_key());
        assert_ne!(mutated.tree_key(), base.tree_key());
        assert_eq!(base.tree_key(), base.source_key());
        assert_eq!(mutated.source_key(), base.source_key());
        assert_eq!(mutated.config_key(), base.config_key());
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
        let files = series::files_of(dir.path()).unwrap();
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
        assert_eq!(key(&series::files_of(dir.path()).unwrap()), k1);
        std::fs::write(dir.path().join("0002-b.patch"), "B").unwrap();
        assert_ne!(key(&series::files_of(dir.path()).unwrap()), k1);
    }
}
