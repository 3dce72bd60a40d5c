//! Running `make`: the harness's fixed arguments and ccache environment,
//! config fragment merging, the cross compiler's version, ccache's counts
//! for one build, the progress estimate, and the error lines kept from a
//! failed build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Cmd, Io, Log, Stream};

use super::{ARCH, COMPILER, CONFIG_TIMEOUT, CROSS_COMPILE};

pub(super) fn toolchain_version(log: &Log) -> anyhow::Result<String> {
    let out = process::cmd(COMPILER)
        .arg("--version")
        .output(Duration::from_secs(60), log)?;
    Ok(out.lines().next().unwrap_or_default().trim().to_string())
}

/// What a variant's last full build compiled, for the progress estimate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Stats {
    pub(super) full_build_cc: u64,
}

/// The object count of any other variant's last full build.
pub(super) fn other_full_build_cc(work: &Path) -> Option<u64> {
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

/// `make` with the harness's fixed arguments and ccache environment.
pub(super) struct Make {
    pub(super) src: PathBuf,
    pub(super) build: PathBuf,
    pub(super) cache_root: PathBuf,
    /// ccache's per-compile log for this build (`CCACHE_STATSLOG`), read
    /// into [`CcacheCounts`]; ccache's own counters are shared by all
    /// builds and processes.
    pub(super) stats_log: PathBuf,
}

/// What ccache did for one build's compiles.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CcacheCounts {
    /// Hits found from the source and its includes' hashes alone.
    pub direct: u64,
    /// Hits that needed the preprocessor to run first.
    pub preprocessed: u64,
    pub misses: u64,
    /// Of the hits, those served by the remote storage (shared between
    /// machines, [`REMOTE_ENV`]).
    pub remote: u64,
}

/// A ccache `remote_storage` URL (`http://127.0.0.1:8080/ccache`,
/// `redis://…`) shared by several machines' kernel builds; unset, ccache
/// uses its local cache only.
pub const REMOTE_ENV: &str = "MSI_HARNESS_CCACHE_REMOTE";

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
                "remote_storage_hit" => c.remote += 1,
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
        )?;
        if self.remote > 0 {
            write!(f, " ({} hits from the remote storage)", self.remote)?;
        }
        Ok(())
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
        match std::env::var(REMOTE_ENV) {
            Ok(url) if !url.is_empty() => {
                cmd.env("CCACHE_REMOTE_STORAGE", url);
            }
            // Only ours: a CCACHE_REMOTE_STORAGE of the caller's environment
            // would make a build depend on a server nobody named here.
            _ => {
                cmd.env_remove("CCACHE_REMOTE_STORAGE");
            }
        }
        cmd
    }

    /// Merges config fragments into the build directory's `.config` with
    /// the tree's `scripts/kconfig/merge_config.sh`.
    pub(super) fn merge_config(&self, fragments: &[PathBuf], log: &Log) -> anyhow::Result<()> {
        let mut merge = process::cmd("sh");
        merge
            .arg(self.src.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&self.build)
            .arg(self.build.join(".config"))
            .args(fragments)
            .current_dir(&self.build)
            .env_remove("KCONFIG_CONFIG");
        let done = merge.run(CONFIG_TIMEOUT, Io::log(log))?;
        if !done.status.success() {
            return Err(Error::infra(format!(
                "merge_config.sh failed: {} (log: {})",
                done.tail(10),
                log.path().display()
            ))
            .into());
        }
        Ok(())
    }

    /// Runs make; counts compiled objects (" CC " lines) for the progress
    /// bar and returns their number. On failure the error carries the
    /// compiler's error lines.
    pub(super) fn run(
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
                misses: 1,
                remote: 0
            }
        );
        assert_eq!(
            c.to_string(),
            "1 direct hits, 1 preprocessed hits, 1 misses"
        );
        let remote = CcacheCounts::parse("# d.c\ndirect_cache_hit\nremote_storage_hit\n");
        assert_eq!(
            remote.to_string(),
            "1 direct hits, 0 preprocessed hits, 0 misses (1 hits from the remote storage)"
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
