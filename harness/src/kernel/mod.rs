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
mod check;
pub mod dialect;
pub mod kconfig;
mod make;
pub mod mutate;
pub mod patch;
mod plan;
pub mod selftest;
pub mod source;
mod store;
pub mod tree;
pub mod uapi_check;
pub mod variants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cache::{self, ContentKey};
use crate::error::Error;
use crate::event::{Reporter, Stage};
pub use check::{patches_n, PatchRecord, PatchState};
pub use dialect::Dialect;
pub use make::CcacheCounts;
use make::{other_full_build_cc, toolchain_version, Make, Stats};
use plan::{plan, Plan};
pub use plan::{tree_work_name, BuildOptions, KernelSource, KeyInputs, Mutation};
pub(crate) use store::lock;
pub use store::{build_facts, BuildFacts};
use store::{cached, publish, Metadata};
pub use uapi_check::UapiReport;
pub use variants::{load_variants, ReportScope, SourceSpec, Variant};

use crate::process::Log;

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
    /// The series as applied: one record per patch.
    pub patches: Vec<PatchRecord>,
    /// The fuzz it was applied with (0: strict).
    pub fuzz: u32,
    /// For a build in a mutants tree: the sha256 of the object file of
    /// each `.c` file the series writes (`drivers/x.c` → hash of `x.o`), so
    /// a mutant whose code is the baseline's is known to be equivalent.
    pub objects: BTreeMap<String, String>,
}

/// Builds (or finds in the cache) a kernel; the full log goes to `run_dir`.
pub fn build(
    source: KernelSource,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    build_with(source, BuildOptions::default(), reporter, run_dir)
}

/// [`build`] with options (`--series`, `--fuzz`).
pub fn build_with(
    source: KernelSource,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    let started = Instant::now();
    let what = describe(source, options);
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

/// `upstream-6.18 with series x.mbox:9, fuzz 1`.
fn describe(source: KernelSource, options: BuildOptions) -> String {
    let mut what = match source {
        KernelSource::Variant(name) => name.to_string(),
        KernelSource::Tree { path } => format!("tree {}", path.display()),
    };
    if let Some(series) = options.series {
        what.push_str(&format!(" with series {}", series.display()));
    }
    if options.fuzz > 0 {
        what.push_str(&format!(", fuzz {}", options.fuzz));
    }
    match options.mutation {
        Mutation::None => {}
        Mutation::Baseline => what.push_str(" (mutants tree, unmutated)"),
        Mutation::Mutant(m) => what.push_str(&format!(" mutant {}", m.id)),
    }
    what
}

/// What [`check_series`] found: the series applies.
#[derive(Debug, Clone)]
pub struct SeriesCheck {
    /// The extracted, unmodified source the series was applied to.
    pub pristine: PathBuf,
    /// One record per patch (applies or already applied).
    pub patches: Vec<PatchRecord>,
    /// Every file the series changes, creates or deletes.
    pub files: Vec<String>,
    /// What each of them becomes.
    pub applied: apply::Applied,
    pub fuzz: u32,
}

/// Fetches and extracts a variant's source and applies its series (or
/// `options.series`) in memory patch by patch, without building: "does
/// this apply?". Each patch is reported; a stale one makes the error.
pub fn check_series(
    source: KernelSource,
    options: BuildOptions,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<SeriesCheck> {
    let started = Instant::now();
    let what = format!("{} (check only)", describe(source, options));
    reporter.start(Stage::Kernel, &what);
    let result = check_inner(source, options, reporter, run_dir);
    reporter.end(Stage::Kernel, &what, result.is_ok(), started.elapsed());
    result
}

fn check_inner(
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
    report_notes(&plan, reporter);
    let (pristine, checked) = check_on_pristine(&plan, spec, reporter, &log)?;
    Ok(SeriesCheck {
        pristine,
        patches: checked.records,
        files: checked.applied.files.keys().cloned().collect(),
        applied: checked.applied,
        fuzz: plan.fuzz,
    })
}

/// What reading the series skipped or noticed.
fn report_notes(plan: &Plan, reporter: &dyn Reporter) {
    for note in &plan.notes {
        reporter.line(Stage::Kernel, format!("series: {note}"));
    }
}

/// The plan's series checked patch by patch on the extracted, unmodified
/// source of `spec` (fetched and extracted first if needed).
fn check_on_pristine(
    plan: &Plan,
    spec: &SourceSpec,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<(PathBuf, check::Checked)> {
    let pristine = source::ensure_pristine(spec, reporter, log)?;
    let checked = check::check(
        &plan.patches,
        &plan.labels,
        plan.fuzz,
        &pristine,
        spec.name(),
        reporter,
        log,
    )?;
    Ok((pristine, checked))
}

pub(crate) use crate::deps::require_tool;

/// The tools every build needs (their packages: [`crate::deps::PROGRAMS`]).
const BUILD_TOOLS: &[&str] = &[
    "make", COMPILER, "gcc", "ccache", "flex", "bison", "bc", "tar", "xz", "rsync",
];

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
    report_notes(&plan, reporter);
    let key = plan.inputs.build_key();
    let source_key = plan.inputs.source_key();
    let out_dir = cache_root.join("kernel/out").join(key.short());
    let headers_dir = cache_root.join("kernel/headers").join(source_key.short());
    let work = cache_root.join("kernel/work").join(&plan.work_name);
    let source_tree = plan.tree.clone().unwrap_or_else(|| work.join("src"));
    if let Some(mut found) = cached(&plan, &key, &out_dir, &headers_dir, &source_tree) {
        let mut checked_now = false;
        // An entry written before builds kept their patches: check them now
        // on the pristine source, if it is still there (nothing is fetched
        // for this).
        if found.patches.is_empty() && !plan.patches.is_empty() {
            if let Some(pristine) = plan.spec.as_ref().and_then(source::extracted) {
                let quiet = crate::event::Quiet;
                if let Ok(c) = check::check(
                    &plan.patches,
                    &plan.labels,
                    plan.fuzz,
                    &pristine,
                    plan.spec.as_ref().map_or("", |s| s.name()),
                    &quiet,
                    &log,
                ) {
                    found.patches = c.records;
                    checked_now = true;
                }
            }
        }
        report_cached_series(&found, checked_now, reporter);
        return Ok(found);
    }

    // The series, patch by patch, on the pristine source: before the work
    // directory's lock (another build of the variant may hold it for many
    // minutes) and before any make, so a stale patch fails in seconds.
    let checked = match &plan.spec {
        Some(spec) if !plan.patches.is_empty() => {
            Some(check_on_pristine(&plan, spec, reporter, &log)?.1)
        }
        _ => None,
    };

    std::fs::create_dir_all(&work)?;
    let _lock = lock(&work.join("lock"), reporter)?;
    // Another process may have finished the same build while we waited.
    if let Some(found) = cached(&plan, &key, &out_dir, &headers_dir, &source_tree) {
        return Ok(found);
    }
    let src = match (&plan.spec, &plan.tree) {
        (Some(spec), _) => {
            let mut applied = checked
                .as_ref()
                .map(|c| c.applied.clone())
                .unwrap_or_default();
            if let Mutation::Mutant(m) = options.mutation {
                m.apply(&mut applied)
                    .map_err(|e| Error::infra(format!("{e:#}")))?;
            }
            let keys = TreeKeys {
                source: &source_key,
                tree: &plan.inputs.tree_key(),
            };
            prepare_variant_tree(spec, &applied, &work, keys, reporter, &log)?
        }
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
        make.merge_config(&plan.fragments, &log)?;
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

    let objects = match options.mutation {
        Mutation::None => BTreeMap::new(),
        _ => object_hashes(&build, checked.as_ref().map(|c| &c.applied)),
    };

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
        patches: checked
            .as_ref()
            .map(|c| c.records.clone())
            .unwrap_or_default(),
        fuzz: plan.fuzz,
        objects,
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
        patches: meta.patches,
        fuzz: meta.fuzz,
        objects: meta.objects,
    })
}

/// The sha256 of the object built from each `.c` file of `applied`.
fn object_hashes(build: &Path, applied: Option<&apply::Applied>) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    for (path, state) in applied.map(|a| a.files.iter()).into_iter().flatten() {
        let Some(stem) = path.strip_suffix(".c") else {
            continue;
        };
        if state.is_none() {
            continue;
        }
        let object = build.join(format!("{stem}.o"));
        if let Ok(data) = std::fs::read(&object) {
            out.insert(path.clone(), hex::encode(sha2::Sha256::digest(&data)));
        }
    }
    out
}

/// A cached build's series, as its metadata recorded it (or as checked
/// now, for an entry older than the records).
fn report_cached_series(build: &KernelBuild, checked_now: bool, reporter: &dyn Reporter) {
    if build.patches.is_empty() {
        return;
    }
    for r in &build.patches {
        reporter.line(Stage::Kernel, format!("  {}", r.line()));
    }
    reporter.line(
        Stage::Kernel,
        format!(
            "series: {}, {}{}",
            check::patches_n(build.patches.len()),
            if checked_now {
                "checked now on the pristine source (the cached build's metadata predates per-patch records)"
            } else {
                "as recorded with the cached build"
            },
            if build.fuzz > 0 {
                format!(" (fuzz {})", build.fuzz)
            } else {
                String::new()
            }
        ),
    );
}

/// What a work tree is to hold: the patched source (`src.base`) and that
/// with a mutation, if any (`src.key`).
#[derive(Clone, Copy)]
struct TreeKeys<'a> {
    source: &'a ContentKey,
    tree: &'a ContentKey,
}

/// Makes `work/src` the pristine source plus the series (`applied`, from
/// the check, a mutant's line included), unless it already is (`src.key`).
/// A tree that holds the same patched source with another mutation
/// (`src.base`) only gets the series' files rewritten: no rsync of the
/// whole tree per mutant.
fn prepare_variant_tree(
    spec: &SourceSpec,
    applied: &apply::Applied,
    work: &Path,
    keys: TreeKeys,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<PathBuf> {
    let pristine = source::ensure_pristine(spec, reporter, log)?;
    let src = work.join("src");
    let key_file = work.join("src.key");
    let base_file = work.join("src.base");
    let holds = |file: &Path, key: &ContentKey| {
        std::fs::read_to_string(file).ok().as_deref() == Some(key.0.as_str())
    };
    if holds(&key_file, keys.tree) && src.is_dir() {
        return Ok(src);
    }
    let _ = std::fs::remove_file(&key_file);
    let started = Instant::now();
    if holds(&base_file, keys.source) && src.is_dir() {
        let written = tree::write_series(&src, applied)?;
        reporter.line(
            Stage::Kernel,
            format!("source tree ready: {written} of the series' files rewritten"),
        );
        cache::write_atomic(&key_file, keys.tree.0.as_bytes())?;
        return Ok(src);
    }
    let _ = std::fs::remove_file(&base_file);
    let prepared = tree::prepare(&pristine, &src, applied, log)?;
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
    cache::write_atomic(&base_file, keys.source.0.as_bytes())?;
    cache::write_atomic(&key_file, keys.tree.0.as_bytes())?;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
