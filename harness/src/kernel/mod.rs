//! The kernel stage: source → patch series → config fragments → arm64
//! `Image` and uapi headers.
//!
//! A variant of `kernel-configs/kernels.toml` (or a local tree) is built out
//! of tree with ccache, and the result is cached under a key over everything
//! that goes in: the source checksum, the patches' bytes, the fragments, the
//! cross compiler's version and [`KERNEL_STEP_VERSION`]. Asking again with
//! nothing changed runs no `make` at all.
//!
//! Cache layout (under [`crate::cache::cache_root`]):
//! - `downloads/<sha256>-<file>`: fetched sources (see [`source`]);
//! - `kernel/pristine/<sha16>/`: an extracted source, never modified;
//! - `kernel/work/<variant>/{src,build}`: the patched tree and the `O=`
//!   directory, reused across builds of the variant so changes rebuild
//!   incrementally; `src.key`/`config.key` say what they currently hold;
//! - `kernel/out/<key16>/{Image,config,metadata.json}`: finished builds;
//! - `kernel/headers/<source+patch key16>/include`: exported uapi headers;
//! - `ccache/`: shared by all variants (`CCACHE_BASEDIR` is the work root
//!   and every variant has the same `build`→`src` layout, so a file
//!   compiled for one variant is a hit for the others).

pub mod apply;
pub mod kconfig;
pub mod patch;
pub mod selftest;
pub mod source;
pub mod tree;
pub mod uapi_check;
pub mod variants;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cache::{self, ContentKey, KeyBuilder};
use crate::error::Error;
use crate::event::{Reporter, Stage};
pub use uapi_check::UapiReport;
pub use variants::{load_variants, SourceSpec, Variant};

use crate::process::{self, Cmd, Io, Log, Stream};

/// Bumped whenever this module changes how a kernel is built, so that old
/// cache entries are not mistaken for new ones.
pub const KERNEL_STEP_VERSION: u32 = 2;

const ARCH: &str = "arm64";
const CROSS_COMPILE: &str = "aarch64-linux-gnu-";
const COMPILER: &str = "aarch64-linux-gnu-gcc";
const TARGET: &str = "Image";
/// A cold build takes 12-15 min on 2 cores; allow slow machines plenty.
const MAKE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
const CONFIG_TIMEOUT: Duration = Duration::from_secs(600);

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

/// A built kernel.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// The variant name (or `tree-<dir>` for a local tree).
    pub name: String,
    pub image: PathBuf,
    pub config: PathBuf,
    /// The exported uapi headers' `include` directory.
    pub headers: PathBuf,
    /// The source tree the kernel was built from: a variant's
    /// `kernel/work/<variant>/src` or the local tree itself (read only).
    pub source_tree: PathBuf,
    pub key: ContentKey,
    /// True when nothing was built: the cache had it.
    pub cached: bool,
    /// `make kernelrelease`, e.g. `6.18.15`.
    pub release: String,
    /// The build log in the run's artifact directory (`None` when cached).
    pub log: Option<PathBuf>,
    /// What the agent's uAPI check found in `headers` (filled in by
    /// [`build_with`] once the build is found or made).
    pub uapi: UapiReport,
}

/// Builds (or finds in the cache) a kernel; the full log goes to `run_dir`.
pub fn build(
    source: KernelSource,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    build_with(source, BuildOptions::default(), reporter, run_dir)
}

/// [`build`] with options (`--series`).
pub fn build_with(
    source: KernelSource,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    let started = Instant::now();
    let mut what = match source {
        KernelSource::Variant(name) => name.to_string(),
        KernelSource::Tree { path } => format!("tree {}", path.display()),
    };
    if let Some(series) = options.series {
        what.push_str(&format!(" with series {}", series.display()));
    }
    reporter.start(Stage::Kernel, &what);
    let result = build_inner(source, options, reporter, run_dir)
        .and_then(|b| uapi_check::checked(b, reporter, run_dir));
    if let Ok(b) = &result {
        let how = if b.cached { "cached" } else { "built" };
        reporter.line(
            Stage::Kernel,
            format!("{how}: {} ({})", b.image.display(), b.release),
        );
    }
    reporter.end(Stage::Kernel, &what, result.is_ok(), started.elapsed());
    result
}

/// What [`check_series`] found.
#[derive(Debug, Clone)]
pub struct SeriesCheck {
    /// The extracted, unmodified source the series was applied to.
    pub pristine: PathBuf,
    pub patches: usize,
    /// Every file the series changes, creates or deletes.
    pub files: Vec<String>,
}

/// Fetches and extracts a variant's source and applies its series (or
/// `options.series`) in memory, without building: "does this apply?".
pub fn check_series(
    source: KernelSource,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<SeriesCheck> {
    let log = Log::create(&run_dir.join("kernel-check-series.log"))?;
    let plan = plan(source, options, &log)?;
    let Some(spec) = &plan.spec else {
        return Err(
            Error::infra("a local tree is built as it is: there is no series to check").into(),
        );
    };
    let pristine = source::ensure_pristine(spec, reporter, &log)?;
    let applied = apply_to(&plan.patches, &pristine)?;
    Ok(SeriesCheck {
        pristine,
        patches: plan.patches.len(),
        files: applied.files.keys().cloned().collect(),
    })
}

/// Applies a series in memory on top of an extracted source.
fn apply_to(patches: &[patch::Patch], pristine: &Path) -> anyhow::Result<apply::Applied> {
    let read = |rel: &str| -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(pristine.join(rel)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    Ok(apply::apply_series(patches, &read).map_err(|e| Error::infra(e.to_string()))?)
}

pub(crate) use crate::deps::require_tool;

/// The tools every build needs (their packages: [`crate::deps::PROGRAMS`]).
const BUILD_TOOLS: &[&str] = &[
    "make", COMPILER, "gcc", "ccache", "flex", "bison", "bc", "tar", "xz", "rsync",
];

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
    fn config_key(&self) -> ContentKey {
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
struct Plan {
    name: String,
    /// A variant's source spec, or `None` for a local tree.
    spec: Option<SourceSpec>,
    /// The local tree, for tree builds.
    tree: Option<PathBuf>,
    patches: Vec<patch::Patch>,
    fragments: Vec<PathBuf>,
    requests: Vec<kconfig::Request>,
    inputs: KeyInputs,
    /// Series files, for metadata.
    series_files: Vec<PathBuf>,
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

fn toolchain_version(log: &Log) -> anyhow::Result<String> {
    let out = process::cmd(COMPILER)
        .arg("--version")
        .output(Duration::from_secs(60), log)?;
    Ok(out.lines().next().unwrap_or_default().trim().to_string())
}

fn plan(source: KernelSource, options: BuildOptions, log: &Log) -> anyhow::Result<Plan> {
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
                (None, Some(dir)) => series_files(dir)?,
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

/// What is stored next to a finished build.
#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    name: String,
    key: String,
    source_key: String,
    release: String,
    source: String,
    series: Vec<String>,
    fragments: Vec<String>,
    toolchain: String,
    step_version: u32,
}

/// What a variant's last full build compiled, for the progress estimate.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stats {
    full_build_cc: u64,
}

fn build_inner(
    source: KernelSource,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    for program in BUILD_TOOLS {
        require_tool(program)?;
    }
    let cache_root = cache::cache_root()?;
    let log_path = run_dir.join(format!(
        "kernel-{}.log",
        match source {
            KernelSource::Variant(n) => n.to_string(),
            KernelSource::Tree { .. } => "tree".to_string(),
        }
    ));
    let log = Log::create(&log_path)?;
    let plan = plan(source, options, &log)?;
    let key = plan.inputs.build_key();
    let source_key = plan.inputs.source_key();
    let out_dir = cache_root.join("kernel/out").join(key.short());
    let headers_dir = cache_root.join("kernel/headers").join(source_key.short());
    let work = cache_root.join("kernel/work").join(&plan.name);
    let source_tree = plan.tree.clone().unwrap_or_else(|| work.join("src"));
    if let Some(found) = cached(&plan, &key, &out_dir, &headers_dir, &source_tree) {
        return Ok(found);
    }

    std::fs::create_dir_all(&work)?;
    let _lock = lock(&work.join("lock"), reporter)?;
    // Another process may have finished the same build while we waited.
    if let Some(found) = cached(&plan, &key, &out_dir, &headers_dir, &source_tree) {
        return Ok(found);
    }
    let src = match (&plan.spec, &plan.tree) {
        (Some(spec), _) => prepare_variant_tree(&plan, spec, &work, &source_key, reporter, &log)?,
        (None, Some(tree)) => tree.clone(),
        (None, None) => anyhow::bail!("plan without a source"),
    };
    let build = work.join("build");
    std::fs::create_dir_all(&build)?;
    let make = Make {
        src: src.clone(),
        build: build.clone(),
        cache_root: cache_root.clone(),
        stats_log: log_path.with_extension("ccache-stats"),
    };
    let _ = std::fs::remove_file(&make.stats_log);

    // Configure, unless the build dir already holds this configuration.
    let config_key = plan.inputs.config_key();
    let config_key_file = work.join("config.key");
    let configured = std::fs::read_to_string(&config_key_file).ok().as_deref()
        == Some(config_key.0.as_str())
        && build.join(".config").is_file();
    if !configured {
        let _ = std::fs::remove_file(&config_key_file);
        reporter.line(
            Stage::Kernel,
            "configuring: allnoconfig + fragments + olddefconfig",
        );
        make.run(&["allnoconfig"], &log, CONFIG_TIMEOUT, None)?;
        let mut merge = process::cmd("sh");
        merge
            .arg(src.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&build)
            .arg(build.join(".config"))
            .args(&plan.fragments)
            .current_dir(&build)
            .env_remove("KCONFIG_CONFIG");
        let done = merge.run(CONFIG_TIMEOUT, Io::log(&log))?;
        if !done.status.success() {
            return Err(Error::infra(format!(
                "merge_config.sh failed: {} (log: {})",
                done.tail(10),
                log.path().display()
            ))
            .into());
        }
        make.run(&["olddefconfig"], &log, CONFIG_TIMEOUT, None)?;
    }
    let final_config = std::fs::read_to_string(build.join(".config"))
        .with_context(|| format!("read {}", build.join(".config").display()))?;
    let unmet = kconfig::unmet(&plan.requests, &final_config);
    if !unmet.is_empty() {
        return Err(Error::infra(kconfig::unmet_message(&unmet, &cache::project_root())).into());
    }
    if !configured {
        cache::write_atomic(&config_key_file, config_key.0.as_bytes())?;
    }

    // Build.
    let stats_file = work.join("stats.json");
    let stats: Stats = std::fs::read(&stats_file)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let fresh = !build.join("vmlinux").exists();
    // A full build's object count: this variant's last one, else another
    // variant's (they share most of their configuration).
    let expected = if fresh {
        Some(stats.full_build_cc)
            .filter(|n| *n > 0)
            .or_else(|| other_full_build_cc(&work))
    } else {
        None
    };
    reporter.line(
        Stage::Kernel,
        format!(
            "make {TARGET} ({}; log {})",
            if fresh { "full build" } else { "incremental" },
            log.path().display()
        ),
    );
    let cc = make.run(&[TARGET], &log, MAKE_TIMEOUT, Some((reporter, expected)))?;
    let counts = std::fs::read_to_string(&make.stats_log)
        .map(|t| CcacheCounts::parse(&t))
        .unwrap_or_default();
    reporter.line(Stage::Kernel, format!("ccache: {counts}"));
    if fresh {
        let data = serde_json::to_vec(&Stats { full_build_cc: cc })?;
        cache::write_atomic(&stats_file, &data)?;
    }

    // Headers, once per source+patches.
    if !headers_dir.join("include").is_dir() {
        reporter.line(
            Stage::Kernel,
            "exporting uapi headers (make headers_install)",
        );
        let tmp = headers_dir.with_file_name(format!(
            "{}.tmp-{}",
            source_key.short(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        make.run(
            &[
                "headers_install",
                &format!("INSTALL_HDR_PATH={}", tmp.display()),
            ],
            &log,
            CONFIG_TIMEOUT,
            None,
        )?;
        publish(&tmp, &headers_dir, &headers_dir.join("include"))?;
    }

    // Store the result.
    let release = std::fs::read_to_string(build.join("include/config/kernel.release"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let tmp_out = out_dir.with_file_name(format!("{}.tmp-{}", key.short(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_out);
    std::fs::create_dir_all(&tmp_out)?;
    std::fs::copy(
        build.join("arch/arm64/boot").join(TARGET),
        tmp_out.join(TARGET),
    )
    .context("copy the built Image")?;
    std::fs::copy(build.join(".config"), tmp_out.join("config"))?;
    let meta = Metadata {
        name: plan.name.clone(),
        key: key.0.clone(),
        source_key: source_key.0.clone(),
        release: release.clone(),
        source: match (&plan.spec, &plan.tree) {
            (Some(spec), _) => format!("{} ({})", spec.name(), plan.inputs.source),
            (None, Some(t)) => format!("tree {} ({})", t.display(), plan.inputs.source),
            _ => String::new(),
        },
        series: plan
            .series_files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        fragments: plan
            .fragments
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        toolchain: plan.inputs.toolchain.clone(),
        step_version: KERNEL_STEP_VERSION,
    };
    cache::write_atomic(
        &tmp_out.join("metadata.json"),
        &serde_json::to_vec_pretty(&meta)?,
    )?;
    publish(&tmp_out, &out_dir, &out_dir.join("metadata.json"))?;
    Ok(KernelBuild {
        name: plan.name,
        image: out_dir.join(TARGET),
        config: out_dir.join("config"),
        headers: headers_dir.join("include"),
        source_tree: src,
        key,
        cached: false,
        release,
        log: Some(log_path),
        uapi: UapiReport::default(),
    })
}

/// The object count of any other variant's last full build.
fn other_full_build_cc(work: &Path) -> Option<u64> {
    let parent = work.parent()?;
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let data = std::fs::read(e.path().join("stats.json")).ok()?;
            let stats: Stats = serde_json::from_slice(&data).ok()?;
            (stats.full_build_cc > 0).then_some(stats.full_build_cc)
        })
}

/// The finished build for `key`, if the cache has all of it.
fn cached(
    plan: &Plan,
    key: &ContentKey,
    out_dir: &Path,
    headers_dir: &Path,
    source_tree: &Path,
) -> Option<KernelBuild> {
    let meta: Metadata =
        serde_json::from_slice(&std::fs::read(out_dir.join("metadata.json")).ok()?).ok()?;
    let complete = meta.key == key.0
        && out_dir.join(TARGET).is_file()
        && out_dir.join("config").is_file()
        && headers_dir.join("include").is_dir();
    complete.then(|| KernelBuild {
        name: plan.name.clone(),
        image: out_dir.join(TARGET),
        config: out_dir.join("config"),
        headers: headers_dir.join("include"),
        source_tree: source_tree.to_path_buf(),
        key: key.clone(),
        cached: true,
        release: meta.release,
        log: None,
        uapi: UapiReport::default(),
    })
}

/// Makes `work/src` the pristine source plus the series, unless it already
/// is (`src.key`).
fn prepare_variant_tree(
    plan: &Plan,
    spec: &SourceSpec,
    work: &Path,
    source_key: &ContentKey,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<PathBuf> {
    let pristine = source::ensure_pristine(spec, reporter, log)?;
    let src = work.join("src");
    let key_file = work.join("src.key");
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(source_key.0.as_str())
        && src.is_dir()
    {
        return Ok(src);
    }
    let applied = apply_to(&plan.patches, &pristine)?;
    if !plan.patches.is_empty() {
        reporter.line(
            Stage::Kernel,
            format!(
                "{} patches apply cleanly ({} files)",
                plan.patches.len(),
                applied.files.len()
            ),
        );
    }
    let _ = std::fs::remove_file(&key_file);
    let started = Instant::now();
    let prepared = tree::prepare(&pristine, &src, &applied, log)?;
    if prepared.linked {
        // Objects in an old build dir could be newer than these sources
        // (hard links keep the pristine mtimes) and would not be rebuilt.
        let build = work.join("build");
        if build.exists() {
            std::fs::remove_dir_all(&build)
                .with_context(|| format!("remove {}", build.display()))?;
        }
        let _ = std::fs::remove_file(work.join("config.key"));
    }
    reporter.line(
        Stage::Kernel,
        format!(
            "source tree ready in {:.0}s: {}{} files restored, {} patched files written, {} deleted",
            started.elapsed().as_secs_f64(),
            if prepared.linked { "linked to the pristine tree, " } else { "" },
            prepared.restored,
            prepared.written,
            prepared.deleted
        ),
    );
    cache::write_atomic(&key_file, source_key.0.as_bytes())?;
    Ok(src)
}

/// An exclusive lock on a work directory; waits (with a deadline) while
/// another build of the same variant runs.
/// Moves a finished `tmp` directory to `dest`. When another process got
/// there first (`done` exists) its copy is kept: both hold the same content.
fn publish(tmp: &Path, dest: &Path, done: &Path) -> anyhow::Result<()> {
    if done.exists() {
        let _ = std::fs::remove_dir_all(tmp);
        return Ok(());
    }
    // An incomplete leftover of a killed run.
    let _ = std::fs::remove_dir_all(dest);
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if done.exists() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("move {} to {}", tmp.display(), dest.display())),
    }
}

pub(crate) fn lock(path: &Path, reporter: &dyn Reporter) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let started = Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    reporter.line(
                        Stage::Kernel,
                        format!("waiting for another build holding {}", path.display()),
                    );
                    said = true;
                }
                if started.elapsed() > MAKE_TIMEOUT {
                    return Err(Error::infra(format!(
                        "{} stayed locked by another build for too long",
                        path.display()
                    ))
                    .into());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).context(format!("lock {}", path.display()))
            }
        }
    }
}

/// `make` with the harness's fixed arguments and ccache environment.
struct Make {
    src: PathBuf,
    build: PathBuf,
    cache_root: PathBuf,
    /// ccache's per-compile log for this build (`CCACHE_STATSLOG`), read
    /// into [`CcacheCounts`]; ccache's own counters are shared by all
    /// builds and processes.
    stats_log: PathBuf,
}

/// What ccache did for one build's compiles.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CcacheCounts {
    /// Hits found from the source and its includes' hashes alone.
    pub direct: u64,
    /// Hits that needed the preprocessor to run first.
    pub preprocessed: u64,
    pub misses: u64,
}

impl CcacheCounts {
    /// Counts from a `CCACHE_STATSLOG` file: a `# file` line, then one line
    /// per statistic, for each compile.
    pub fn parse(log: &str) -> CcacheCounts {
        let mut c = CcacheCounts::default();
        for line in log.lines().map(str::trim) {
            match line {
                "direct_cache_hit" => c.direct += 1,
                "preprocessed_cache_hit" => c.preprocessed += 1,
                "cache_miss" => c.misses += 1,
                _ => {}
            }
        }
        c
    }
}

impl std::fmt::Display for CcacheCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} direct hits, {} preprocessed hits, {} misses",
            self.direct, self.preprocessed, self.misses
        )
    }
}

impl Make {
    fn command(&self, targets: &[&str]) -> Cmd {
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut cmd = process::cmd("make");
        cmd.arg("-C")
            .arg(&self.src)
            .arg(format!("O={}", self.build.display()))
            .arg(format!("ARCH={ARCH}"))
            .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
            .arg(format!("CC=ccache {COMPILER}"))
            // A git tree not at a clean tag would otherwise get a `+` in its
            // release (scripts/setlocalversion), and every snapshot that
            // holds the release would differ from a tarball build's.
            .arg("LOCALVERSION=")
            .arg(format!("-j{jobs}"))
            .args(targets)
            .env("CCACHE_DIR", self.cache_root.join("ccache"))
            .env("CCACHE_BASEDIR", self.cache_root.join("kernel/work"))
            .env("CCACHE_NOHASHDIR", "1")
            .env("CCACHE_MAXSIZE", "5G")
            // Prepared trees get every mtime set to "now", and ccache's
            // direct mode distrusts an include file newer than the compile's
            // start: without this a second variant hits only after running
            // the preprocessor (4 min instead of 1). Nothing edits a tree
            // while it builds.
            .env("CCACHE_SLOPPINESS", "include_file_mtime,include_file_ctime")
            .env("CCACHE_STATSLOG", &self.stats_log)
            .env_remove("KCONFIG_CONFIG")
            .env_remove("KBUILD_OUTPUT");
        cmd
    }

    /// Runs make; counts compiled objects (" CC " lines) for the progress
    /// bar and returns their number. On failure the error carries the
    /// compiler's error lines.
    fn run(
        &self,
        targets: &[&str],
        log: &Log,
        timeout: Duration,
        progress: Option<(&dyn Reporter, Option<u64>)>,
    ) -> anyhow::Result<u64> {
        let cmd = self.command(targets);
        let mut cc = 0u64;
        let mut errors = ErrorLines::default();
        let mut on_line = |stream: Stream, line: &str| {
            if stream == Stream::Stdout && line.contains(" CC ") {
                cc += 1;
                match progress {
                    Some((reporter, Some(expected))) => {
                        reporter.progress(Stage::Kernel, cc, Some(expected.max(cc)))
                    }
                    // Without an estimate, a line every so often is enough.
                    Some((reporter, None)) if cc.is_multiple_of(50) => {
                        reporter.progress(Stage::Kernel, cc, None)
                    }
                    _ => {}
                }
            }
            errors.push(line);
        };
        let io = Io {
            on_line: Some(&mut on_line),
            ..Io::log(log)
        };
        let done = cmd.run(timeout, io)?;
        if !done.status.success() {
            let mut lines = errors.finish();
            if lines.is_empty() {
                lines = done.stderr[done.stderr.len().saturating_sub(15)..].to_vec();
            }
            return Err(Error::infra(format!(
                "make {} failed ({}):\n{}\nfull log: {}",
                targets.join(" "),
                done.status,
                lines.join("\n"),
                log.path().display()
            ))
            .into());
        }
        Ok(cc)
    }
}

/// The lines of make output worth showing after a failure: compiler and
/// linker errors with their source excerpts, then make's first `***` line
/// (all of them, up to a few, when there is no compiler error: "source tree
/// is not clean" and the like).
#[derive(Default)]
struct ErrorLines {
    compiler: Vec<String>,
    make: Vec<String>,
    /// Excerpt lines still to keep after an error line.
    excerpt: usize,
}

impl ErrorLines {
    const MAX: usize = 40;

    fn push(&mut self, line: &str) {
        if line.contains("***") {
            if !line.contains("Waiting for unfinished jobs") && self.make.len() < 10 {
                self.make.push(line.to_string());
            }
            self.excerpt = 0;
            return;
        }
        if self.compiler.len() >= Self::MAX {
            return;
        }
        let is_error = line.contains("error:")
            || line.contains("undefined reference")
            || line.contains("No rule to make target");
        if is_error {
            // Paths are relative to the build directory; make them relative
            // to the source tree.
            self.compiler
                .push(line.strip_prefix("../src/").unwrap_or(line).to_string());
            self.excerpt = 3;
        } else if self.excerpt > 0 && line.contains('|') {
            self.compiler.push(line.to_string());
            self.excerpt -= 1;
        } else {
            self.excerpt = 0;
        }
    }

    fn finish(self) -> Vec<String> {
        let mut out = self.compiler;
        let make_lines = if out.is_empty() { self.make.len() } else { 1 };
        out.extend(self.make.into_iter().take(make_lines));
        out
    }
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
    fn ccache_stats_log_is_counted_per_compile() {
        let log = "# a.c\ncache_miss\ndirect_cache_miss\npreprocessed_cache_miss\n\
                   # b.c\ndirect_cache_hit\nlocal_storage_hit\n\
                   # c.c\ndirect_cache_miss\npreprocessed_cache_hit\n";
        let c = CcacheCounts::parse(log);
        assert_eq!(
            c,
            CcacheCounts {
                direct: 1,
                preprocessed: 1,
                misses: 1
            }
        );
        assert_eq!(
            c.to_string(),
            "1 direct hits, 1 preprocessed hits, 1 misses"
        );
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

    /// The stage's promise, end to end: needs the cross toolchain and, on
    /// a cold cache, network and minutes of compiling.
    #[test]
    #[ignore = "builds two kernels (cross toolchain; network and minutes on a cold cache): run by cargo xtask test"]
    fn patched_variant_exports_sw_msi_options_and_reruns_from_cache() {
        crate::testing::host_tools();
        let run_dir = tempfile::tempdir().unwrap();
        let quiet = crate::event::Quiet;
        let header =
            |b: &KernelBuild| std::fs::read_to_string(b.headers.join("linux/iommufd.h")).unwrap();
        let patched = build(
            KernelSource::Variant("sw-msi-rfcv2"),
            &quiet,
            run_dir.path(),
        )
        .unwrap();
        assert!(patched.image.is_file());
        assert!(header(&patched).contains("\tIOMMU_OPTION_SW_MSI_START = 2,\n"));
        assert!(header(&patched).contains("\tIOMMU_OPTION_SW_MSI_SIZE = 3,\n"));
        let upstream = build(
            KernelSource::Variant("upstream-6.18"),
            &quiet,
            run_dir.path(),
        )
        .unwrap();
        assert!(!header(&upstream).contains("IOMMU_OPTION_SW_MSI"));
        assert_ne!(patched.key, upstream.key);
        let started = Instant::now();
        let again = build(
            KernelSource::Variant("sw-msi-rfcv2"),
            &quiet,
            run_dir.path(),
        )
        .unwrap();
        // `cached` means no make was started; the time is measured, not
        // asserted (machines are noisy).
        assert!(again.cached && again.key == patched.key);
        eprintln!(
            "cached rebuild check: {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }

    #[test]
    fn compiler_errors_are_kept_with_their_excerpt() {
        let mut e = ErrorLines::default();
        for l in [
            "  CC      drivers/iommu/iommufd/ioas.o",
            "../src/drivers/iommu/iommufd/ioas.c:630:9: error: 'x' undeclared (first use in this function)",
            "  630 |         x = 1;",
            "      |         ^",
            "  CC      other.o",
            "make[6]: *** [../src/scripts/Makefile.build:287: drivers/iommu/iommufd/ioas.o] Error 1",
            "make[4]: *** Waiting for unfinished jobs....",
            "make[5]: *** [../src/scripts/Makefile.build:544: drivers/iommu/iommufd] Error 2",
        ] {
            e.push(l);
        }
        let lines = e.finish();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("drivers/iommu/iommufd/ioas.c:630:9: error: 'x' undeclared"));
        assert!(lines[2].ends_with('^'));
        assert!(lines[3].starts_with("make[6]: ***"));
        let mut e = ErrorLines::default();
        e.push("***");
        e.push("*** The source tree is not clean, please run 'make ARCH=arm64 mrproper'");
        assert_eq!(e.finish().len(), 2);
    }
}
