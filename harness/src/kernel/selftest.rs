//! The kernel's own iommufd kselftest (`tools/testing/selftests/iommu`),
//! cross-built for the guest, and the reading of its KTAP output.
//!
//! The test binary is built from the same source tree as the kernel it
//! runs on (its mock-domain ioctls come from the kernel's private
//! `iommufd_test.h`, which changes with the kernel) against that kernel's
//! exported uapi headers. It is compiled with one `gcc` call rather than
//! the selftest Makefile: the Makefile would write into the source tree,
//! which may be a user's own, and one static binary is all the guest needs.
//! The output goes to `kernel/selftest/<key16>/iommufd` under the cache
//! root, keyed by everything the compiler reads, so an unchanged input runs
//! no compiler at all.
//!
//! The test links libcap (it drops `CAP_IPC_LOCK`); the arm64 static
//! library is fetched once with `apt-get download libcap-dev:arm64` and
//! unpacked in the cache (no root, no host package changes), and its
//! `.deb`'s sha256 is part of the key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::variants::PinnedDeb;
use super::{require_tool, toolchain_version, KernelBuild, COMPILER};
use crate::cache::{self, KeyBuilder};
use crate::error::Error;
use crate::event::{Reporter, Stage};
pub use crate::ktap::{failed_tests, parse_ktap, KtapTotals};
use crate::process::{self, Io, Log};

/// Bumped whenever this module changes how the selftest is built.
pub const SELFTEST_STEP_VERSION: u32 = 2;

/// The files of the source tree the compiler reads (checked against its
/// dependency output after each build).
const SOURCES: &[&str] = &[
    "tools/testing/selftests/iommu/iommufd.c",
    "tools/testing/selftests/iommu/iommufd_utils.h",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "drivers/iommu/iommufd/iommufd_test.h",
];
const MAIN: &str = "tools/testing/selftests/iommu/iommufd.c";
const SELFTESTS_DIR: &str = "tools/testing/selftests";

/// The selftest Makefile's flags (`lib.mk` adds `-D_GNU_SOURCE=`), plus
/// `-static`: the guest has no arm64 glibc.
const CFLAGS: &[&str] = &[
    "-static",
    "-Wall",
    "-O2",
    "-Wno-unused-function",
    "-D_GNU_SOURCE=",
];

/// Where the cross glibc's static archive lives on Debian.
const STATIC_LIBC: &str = "/usr/aarch64-linux-gnu/lib/libc.a";
const LIBCAP_ARCHIVE: &str = "usr/lib/aarch64-linux-gnu/libcap.a";
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds (or finds in the cache) the `iommufd` selftest binary for the
/// kernel `build`, statically linked for arm64. The compiler's output goes
/// to `run_dir/selftest-iommufd.log`.
pub fn build_iommufd_selftest(
    build: &KernelBuild,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let what = format!("iommufd selftest for {}", build.name);
    reporter.start(Stage::Kernel, &what);
    let result = build_inner(build, reporter, run_dir);
    if let Ok((path, cached)) = &result {
        let how = if *cached { "cached" } else { "built" };
        reporter.line(Stage::Kernel, format!("{how}: {}", path.display()));
    }
    reporter.end(Stage::Kernel, &what, result.is_ok(), started.elapsed());
    result.map(|(path, _)| path)
}

fn build_inner(
    build: &KernelBuild,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<(PathBuf, bool)> {
    require_tool(COMPILER)?;
    if !Path::new(STATIC_LIBC).is_file() {
        return Err(Error::infra(format!(
            "{STATIC_LIBC} is missing: install the Debian package `libc6-dev-arm64-cross` \
             (the selftest is linked statically)"
        ))
        .into());
    }
    let cache_root = cache::cache_root()?;
    let base = cache_root.join("kernel/selftest");
    std::fs::create_dir_all(&base)?;
    let log = Log::create(&run_dir.join("selftest-iommufd.log"))?;
    let toolchain = toolchain_version(&log)?;
    let kernels_toml = super::variants::kernels_toml(&cache::project_root());
    let pin = super::variants::load_file(&kernels_toml)?
        .selftest_libcap
        .ok_or_else(|| {
            Error::infra(format!(
                "{} has no [selftest.libcap] pin (package, version, sha256)",
                kernels_toml.display()
            ))
        })?;
    let libcap = ensure_libcap(&base, &pin, reporter, &log)?;

    let mut key = KeyBuilder::new();
    key.str("step", &SELFTEST_STEP_VERSION.to_string())
        .str("toolchain", &toolchain)
        .str("cflags", &CFLAGS.join(" "))
        .str("libcap", &libcap.deb_sha256);
    for rel in SOURCES {
        key.file(rel, &build.source_tree.join(rel))
            .map_err(|e| Error::infra(format!("{e:#}")))?;
    }
    key.tree("headers", &build.headers, &|_| false)?;
    let key = key.finish();
    let dir = base.join(key.short());
    let binary = dir.join("iommufd");
    if binary.is_file() {
        return Ok((binary, true));
    }
    let _lock = super::lock(&base.join("lock"), reporter)?;
    if binary.is_file() {
        return Ok((binary, true));
    }
    // The cache key covers exactly the files the compiler reads, so a hit
    // above is right even when the variant's shared work tree has since
    // been prepared with another series; a compile must not read such a tree.
    check_source_tree(build)?;

    let tmp = base.join(format!("{}.tmp-{}", key.short(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    reporter.line(
        Stage::Kernel,
        format!(
            "compiling {MAIN} from {} (log {})",
            build.source_tree.display(),
            log.path().display()
        ),
    );
    let mut cc = process::cmd(COMPILER);
    cc.args(CFLAGS)
        // As lib.mk adds since 7.x (`-I$(top_srcdir)/tools/testing/selftests`):
        // iommufd_utils.h there includes "kselftest_harness.h" from above
        // its own directory. Older trees find it relative to the includer.
        .arg("-I")
        .arg(build.source_tree.join(SELFTESTS_DIR))
        .arg("-isystem")
        .arg(&build.headers)
        .arg("-isystem")
        .arg(libcap.root.join("usr/include"))
        .arg("-MD")
        .arg("-MF")
        .arg(tmp.join("iommufd.d"))
        .arg(build.source_tree.join(MAIN))
        .arg("-o")
        .arg(tmp.join("iommufd"))
        .arg(format!(
            "-L{}",
            libcap.root.join("usr/lib/aarch64-linux-gnu").display()
        ))
        .arg("-lcap")
        // Plain ASCII quotes in diagnostics, whatever the user's locale.
        .env("LC_ALL", "C")
        // Object files and temporaries stay out of the source tree.
        .current_dir(&tmp);
    let done = cc.run(COMPILE_TIMEOUT, Io::log(&log))?;
    if !done.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::infra(format!(
            "the iommufd selftest of {} did not compile:\n{}\n(log: {})",
            build.source_tree.display(),
            compiler_errors(&done.stderr).join("\n"),
            log.path().display()
        ))
        .into());
    }
    // The key covers SOURCES only; a newer selftest that reads more files
    // of the tree must be noticed, not silently cached.
    let deps = std::fs::read_to_string(tmp.join("iommufd.d")).unwrap_or_default();
    let unkeyed = unkeyed_sources(&deps, &build.source_tree);
    if !unkeyed.is_empty() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::infra(format!(
            "the iommufd selftest reads source files the cache key does not cover: {} \
             (add them to kernel::selftest::SOURCES)",
            unkeyed.join(", ")
        ))
        .into());
    }
    super::publish(&tmp, &dir, &binary)?;
    Ok((binary, false))
}

/// A variant's work tree is shared by every build of the variant: make
/// sure it still holds the source this kernel was built from.
fn check_source_tree(build: &KernelBuild) -> anyhow::Result<()> {
    let main = build.source_tree.join(MAIN);
    if !main.is_file() {
        return Err(Error::infra(format!(
            "{} has no {MAIN}: the iommufd selftest is built from the kernel's own source tree",
            build.source_tree.display()
        ))
        .into());
    }
    // `kernel/work/<variant>/src.key` holds the source key; the headers
    // directory is named after its first 16 digits.
    let Some(work) = build.source_tree.parent() else {
        return Ok(());
    };
    let Ok(held) = std::fs::read_to_string(work.join("src.key")) else {
        return Ok(()); // a local tree: built as it is
    };
    let wanted = build
        .headers
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !held.trim().starts_with(&wanted) {
        return Err(Error::infra(format!(
            "{} now holds another source than kernel {} was built from (the variant was \
             built since with another series); build that kernel again first",
            build.source_tree.display(),
            build.name
        ))
        .into());
    }
    Ok(())
}

/// Files of the source tree named in a make-style dependency file that
/// [`SOURCES`] does not list.
fn unkeyed_sources(deps: &str, tree: &Path) -> Vec<String> {
    let keyed: Vec<PathBuf> = SOURCES.iter().map(|s| normalize(&tree.join(s))).collect();
    let tree = normalize(tree);
    let mut out = Vec::new();
    for word in deps.split_whitespace() {
        let word = word.trim_end_matches(':');
        if word == "\\" || word.is_empty() {
            continue;
        }
        let p = normalize(Path::new(word));
        if p.starts_with(&tree) && !keyed.contains(&p) {
            let shown = p.strip_prefix(&tree).unwrap_or(&p).display().to_string();
            if !out.contains(&shown) {
                out.push(shown);
            }
        }
    }
    out
}

/// Resolves `..` lexically (the compiler reports `iommu/../kselftest.h`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The compiler's diagnostics worth showing: error and warning lines with
/// the source excerpt after them, and linker failures; at most 20 lines.
pub fn compiler_errors(stderr: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut context = 0;
    for line in stderr {
        let is_error = line.contains(": error:")
            || line.contains("undefined reference")
            || line.contains("cannot find -l")
            || line.contains("fatal error:")
            || line.contains("collect2:");
        if is_error {
            out.push(line.clone());
            context = 3;
        } else if context > 0 && (line.starts_with(' ') || line.contains('|')) {
            out.push(line.clone());
            context -= 1;
        } else {
            context = 0;
        }
        if out.len() >= 20 {
            break;
        }
    }
    if out.is_empty() {
        out = stderr[stderr.len().saturating_sub(10)..].to_vec();
    }
    out
}

struct Libcap {
    root: PathBuf,
    deb_sha256: String,
}

/// The unpacked arm64 libcap-dev of `pin`, fetched on first use and
/// checked against its sha256; cached per checksum.
fn ensure_libcap(
    base: &Path,
    pin: &PinnedDeb,
    reporter: &dyn Reporter,
    log: &Log,
) -> anyhow::Result<Libcap> {
    let dir = base.join(format!(
        "libcap-{}",
        &pin.sha256[..pin.sha256.len().min(16)]
    ));
    let marker = dir.join("deb.sha256");
    let ready = |dir: &Path| -> Option<Libcap> {
        let sha = std::fs::read_to_string(dir.join("deb.sha256")).ok()?;
        let root = dir.join("root");
        (sha.trim() == pin.sha256 && root.join(LIBCAP_ARCHIVE).is_file()).then(|| Libcap {
            root,
            deb_sha256: sha.trim().to_string(),
        })
    };
    if let Some(found) = ready(&dir) {
        return Ok(found);
    }
    let _lock = super::lock(&base.join("libcap.lock"), reporter)?;
    if let Some(found) = ready(&dir) {
        return Ok(found);
    }
    require_tool("apt-get")?;
    require_tool("dpkg")?;
    let wanted = format!("{}:arm64={}", pin.package, pin.version);
    reporter.line(
        Stage::Kernel,
        format!("fetching {wanted} (the selftest links libcap statically)"),
    );
    let tmp = base.join(format!("libcap.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // apt drops to its `_apt` user to download when it can; let it write here.
    let _ = std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let fetched = process::cmd("apt-get")
        .args(["download", "-q", &wanted])
        .current_dir(&tmp)
        .run(FETCH_TIMEOUT, Io::log(log))?;
    if !fetched.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::infra(format!(
            "`apt-get download {wanted}` failed: {} (the host needs the arm64 architecture \
             and its package lists: `cargo xtask deps`; if the archive dropped this version, \
             update [selftest.libcap] in kernel-configs/kernels.toml from \
             `apt-cache madison {}:arm64`)",
            fetched.tail(5),
            pin.package
        ))
        .into());
    }
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {wanted} left no .deb behind"))?;
    let sha = cache::sha256_file(&deb)?;
    if sha != pin.sha256 {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::infra(format!(
            "{wanted}: the archive's .deb has sha256 {sha}, kernel-configs/kernels.toml pins {}",
            pin.sha256
        ))
        .into());
    }
    process::cmd("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(tmp.join("root"))
        .output(FETCH_TIMEOUT, log)?;
    if !tmp.join("root").join(LIBCAP_ARCHIVE).is_file() {
        return Err(Error::infra(format!("{} has no {LIBCAP_ARCHIVE}", deb.display())).into());
    }
    std::fs::remove_file(&deb)?;
    cache::write_atomic(&tmp.join("deb.sha256"), sha.as_bytes())?;
    super::publish(&tmp, &dir, &marker)?;
    ready(&dir).with_context(|| format!("{} is incomplete", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_files_outside_the_key_are_found() {
        let tree = Path::new("/k/src");
        let deps = "iommufd: /k/src/tools/testing/selftests/iommu/iommufd.c \\\n \
            /k/src/tools/testing/selftests/iommu/../kselftest_harness.h \\\n \
            /k/src/tools/testing/selftests/iommu/../../../../drivers/iommu/iommufd/iommufd_test.h \\\n \
            /k/src/tools/include/linux/bits.h /usr/aarch64-linux-gnu/include/stdio.h \\\n \
            /h/include/linux/iommufd.h\n";
        assert_eq!(
            unkeyed_sources(deps, tree),
            ["tools/include/linux/bits.h".to_string()]
        );
    }

    #[test]
    fn compiler_errors_keep_the_excerpt() {
        let stderr: Vec<String> = [
            "/k/iommufd.c: In function 'foo':",
            "/k/iommufd.c:12:5: error: 'x' undeclared (first use in this function)",
            "   12 |     x = 1;",
            "      |     ^",
            "/k/iommufd.c:13:1: warning: unused",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let lines = compiler_errors(&stderr);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("error: 'x' undeclared"));
    }

    /// A tree whose selftest does not compile: the error names the line
    /// and the log. Needs the cross toolchain and a built kernel's headers.
    #[test]
    #[ignore = "needs the cross toolchain and a built kernel: run by cargo xtask test"]
    fn compile_failure_names_the_line_and_the_log() {
        crate::testing::host_tools();
        let run_dir = tempfile::tempdir().unwrap();
        let quiet = crate::event::Quiet;
        let kernel = super::super::build(
            super::super::KernelSource::Variant("sw-msi-rfcv2"),
            &quiet,
            run_dir.path(),
        )
        .unwrap();
        // A copy of the files the compiler reads, one of them broken.
        let tree = tempfile::tempdir().unwrap();
        for rel in SOURCES {
            let to = tree.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(kernel.source_tree.join(rel), &to).unwrap();
        }
        let main = tree.path().join(MAIN);
        let text = std::fs::read_to_string(&main).unwrap();
        // A unique marker keeps this from ever hitting a cached build.
        let marker = format!("{}", std::process::id());
        std::fs::write(
            &main,
            format!("{text}\nint broken_{marker}(void) {{ return undeclared_{marker}; }}\n"),
        )
        .unwrap();
        let broken = KernelBuild {
            source_tree: tree.path().to_path_buf(),
            ..kernel
        };
        let err = build_iommufd_selftest(&broken, &quiet, run_dir.path()).unwrap_err();
        let msg = format!("{err:#}");
        assert_eq!(
            crate::outcome::exit_code_of(&err),
            crate::ExitCode::Infrastructure
        );
        assert!(
            msg.contains(&format!("error: 'undeclared_{marker}' undeclared")),
            "{msg}"
        );
        assert!(msg.contains("selftest-iommufd.log"), "{msg}");
        eprintln!("{msg}");
    }

    /// The selftest of each variant kernel of the inputs builds, and a
    /// second build is the cached one. That it passes in the guest is the
    /// `kselftest-iommufd` scenario's trial on each variant (its snapshot
    /// holds the totals and failed tests), which starts the guest the same
    /// way as every trial: running it here too would only boot it again.
    #[test]
    #[ignore = "needs the cross toolchain and built kernels: run by cargo xtask test"]
    fn iommufd_selftest_builds_for_each_kernel_and_is_cached() {
        let inputs = crate::testing::inputs();
        let run_dir = cache::new_run_dir("selftest").unwrap();
        let quiet = crate::event::Quiet;
        let mut checked = 0;
        for (variant, input) in &inputs.kernels {
            // A local tree standing in for a variant is not rebuilt here: its
            // selftest is the one `cargo xtask test` built.
            if input.label != *variant {
                let binary = input.iommufd_selftest.clone().unwrap_or_else(|| {
                    panic!("{variant}: {} has no selftest in the inputs", input.label)
                });
                assert!(binary.is_file(), "{}", binary.display());
                checked += 1;
                continue;
            }
            let kernel = super::super::build(
                super::super::KernelSource::Variant(variant),
                &quiet,
                &run_dir,
            )
            .unwrap();
            let started = Instant::now();
            let binary = build_iommufd_selftest(&kernel, &quiet, &run_dir).unwrap();
            let build_time = started.elapsed();
            let started = Instant::now();
            let again = build_iommufd_selftest(&kernel, &quiet, &run_dir).unwrap();
            assert_eq!(again, binary);
            eprintln!(
                "{variant}: selftest {} in {:.1} s, again (cached) in {:.3} s",
                binary.display(),
                build_time.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            assert_eq!(
                inputs.kernels[variant].iommufd_selftest.as_deref(),
                Some(binary.as_path()),
                "{variant}: the trials run the selftest built here"
            );
            checked += 1;
        }
        assert!(checked > 0, "the inputs hold no kernel");
    }
}
