//! The agent's uAPI checked against each kernel's exported headers.
//!
//! `msi-uapi` holds the structures and constants the agent passes to
//! iommufd and VFIO, and tables of their layouts generated from the same
//! definitions. Here those tables become C `_Static_assert`s (size, offset
//! and size of every field, value of every constant) that the cross compiler
//! checks against the kernel's exported `include` directory, with
//! `-nostdinc` so only those headers are seen. A mismatch fails the kernel
//! stage, naming the field or constant; it is an infrastructure error (the
//! harness would probe the wrong bytes), not a finding.
//!
//! A constant that a patch under test adds (`Presence::Optional`, e.g.
//! `IOMMU_OPTION_SW_MSI_START`) is checked in a translation unit of its own:
//! gcc's "undeclared" error there means the kernel does not have it, which is
//! recorded in the [`UapiReport`]; a different value is still a mismatch.
//! Enumerators are not macros, so `#ifdef` cannot tell the two apart.
//!
//! All units go to one gcc process (about 0.1 s), so the check runs for
//! cached kernels too. Only after a mismatch, a second unit makes gcc print
//! the kernel's value of each number (as an array size in a diagnostic), so
//! the error says what the headers have instead. The generated files and
//! gcc's log stay in the run's artifact directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use msi_uapi::{Constant, Presence, CONSTANTS, STRUCTS};

use super::KernelBuild;
use crate::error::Error;
use crate::event::{Reporter, Stage};
use crate::process::{self, Io, Log};

/// What a kernel's headers say about the agent's uAPI, beyond "it matches".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UapiReport {
    /// The optional constants (added by a patch) these headers define, by C
    /// name, in `msi_uapi::CONSTANTS` order.
    pub defined_optional: Vec<&'static str>,
}

impl UapiReport {
    /// Whether the headers define the optional constant `c_name`.
    pub fn defines(&self, c_name: &str) -> bool {
        self.defined_optional.contains(&c_name)
    }
}

/// The main translation unit: required constants and every structure.
pub const MAIN_FILE: &str = "uapi-check.c";
/// Run only after a mismatch, to say what the kernel has instead.
pub const REVEAL_FILE: &str = "uapi-reveal.c";
/// The tag that starts every assertion message, for finding them in gcc's
/// output.
const TAG: &str = "msi-uapi: ";
const COMPILER: &str = "aarch64-linux-gnu-gcc";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs [`check`] on `build`'s headers and records the result in it; the
/// kernel stage calls this for fresh and cached builds alike.
pub(super) fn checked(
    mut build: KernelBuild,
    reporter: &dyn Reporter,
    run_dir: &Path,
) -> anyhow::Result<KernelBuild> {
    let work_dir = run_dir.join(format!("uapi-check-{}", build.name));
    build.uapi = check(&build.headers, &work_dir)?;
    reporter.line(Stage::Kernel, summary(&build.uapi));
    Ok(build)
}

/// Compiles the agent's layout and value assertions against the exported
/// headers in `include_dir`; `work_dir` receives the C files and gcc's log.
pub fn check(include_dir: &Path, work_dir: &Path) -> anyhow::Result<UapiReport> {
    crate::deps::require_tool(COMPILER)?;
    std::fs::create_dir_all(work_dir)?;
    let optional: Vec<&Constant> = CONSTANTS
        .iter()
        .filter(|c| c.presence == Presence::Optional)
        .collect();
    let mut files = vec![MAIN_FILE.to_string()];
    write_file(&work_dir.join(MAIN_FILE), &main_unit())?;
    for c in &optional {
        let name = probe_file(c);
        write_file(&work_dir.join(&name), &probe_unit(c))?;
        files.push(name);
    }
    let log = Log::create(&work_dir.join("gcc.log"))?;
    let done = gcc_syntax_check(include_dir, work_dir, &files, &log)?;
    let verdict = classify(&done.stderr, &optional);
    let where_ = format!(
        "headers {}, check {}, log {}",
        include_dir.display(),
        work_dir.join(MAIN_FILE).display(),
        log.path().display()
    );
    if !verdict.problems.is_empty() {
        let problems = with_kernel_values(&verdict.problems, include_dir, work_dir, &log);
        return Err(Error::infra(format!(
            "the agent's uAPI does not match this kernel's headers: {} ({where_})\n\
             the agent's definitions are in guest-images/uapi/src/lib.rs; gcc said:\n{}",
            problems.join("; "),
            stderr_tail(&done.stderr, 20)
        ))
        .into());
    }
    // A failed gcc must be explained by the probes of absent constants
    // alone; one that failed without saying why is not a pass.
    if !done.status.success() && (verdict.unexplained || verdict.absent.is_empty()) {
        return Err(Error::infra(format!(
            "the uAPI check did not compile against this kernel's headers ({where_}): {}",
            stderr_tail(&done.stderr, 20)
        ))
        .into());
    }
    Ok(UapiReport {
        defined_optional: optional
            .iter()
            .filter(|c| !verdict.absent.contains(&c.c_name))
            .map(|c| c.c_name)
            .collect(),
    })
}

/// The C file of [`check_dialect`].
pub const DIALECT_FILE: &str = "uapi-dialect.c";

/// The C file that asserts a dialect's option ids against the headers.
pub fn dialect_unit(dialect: &super::Dialect) -> String {
    let mut c = preamble(["linux/iommufd.h"].into());
    for (name, value) in dialect.option_ids() {
        writeln!(
            c,
            "_Static_assert({name} == {value}, \"{TAG}dialect {d} says {name} = {value}\");",
            d = dialect.name
        )
        .unwrap();
    }
    c
}

/// Checks that the kernel's headers give the SW_MSI options the ids that
/// `dialect` (the variant's declaration in `kernels.toml`) says: option ids
/// are data, since respins and other series reuse them.
pub fn check_dialect(
    include_dir: &Path,
    work_dir: &Path,
    dialect: &super::Dialect,
) -> anyhow::Result<()> {
    crate::deps::require_tool(COMPILER)?;
    std::fs::create_dir_all(work_dir)?;
    write_file(&work_dir.join(DIALECT_FILE), &dialect_unit(dialect))?;
    let log = Log::create(&work_dir.join("gcc-dialect.log"))?;
    let done = gcc_syntax_check(include_dir, work_dir, &[DIALECT_FILE.into()], &log)?;
    if done.status.success() {
        return Ok(());
    }
    let said: Vec<&str> = done
        .stderr
        .iter()
        .filter_map(|l| {
            l.split_once(TAG)
                .map(|(_, m)| m.trim_end_matches(['"', '\'', ')', ';']))
        })
        .collect();
    let what = if said.is_empty() {
        stderr_tail(&done.stderr, 10)
    } else {
        format!("{}: the headers disagree", said.join("; "))
    };
    Err(Error::infra(format!(
        "SW_MSI dialect {} does not fit this kernel's <linux/iommufd.h> ({}): {what} \
         (fix `[dialect.{}]` in kernel-configs/kernels.toml or the variant's `sw_msi`)",
        dialect.name,
        include_dir.display(),
        dialect.name
    ))
    .into())
}

/// `aarch64-linux-gnu-gcc -fsyntax-only` of `files` in `work_dir`, seeing
/// no headers but those in `include_dir`, diagnostics plain and in English.
fn gcc_syntax_check(
    include_dir: &Path,
    work_dir: &Path,
    files: &[String],
    log: &Log,
) -> anyhow::Result<process::Finished> {
    let mut gcc = process::cmd("aarch64-linux-gnu-gcc");
    gcc.args(["-fsyntax-only", "-nostdinc", "-std=gnu11"])
        .arg("-fdiagnostics-plain-output")
        .arg("-I")
        .arg(include_dir)
        .args(files)
        .current_dir(work_dir)
        .env("LC_ALL", "C");
    gcc.run(TIMEOUT, Io::log(log))
}

/// The last `n` lines of gcc's diagnostics.
fn stderr_tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `problems` with the kernel's value where [`reveal_unit`] can show it
/// ("is at offset 12 in the agent, 16 in linux/iommufd.h"); as they are when
/// it cannot (a missing name has no value).
fn with_kernel_values(
    problems: &[String],
    include_dir: &Path,
    work_dir: &Path,
    log: &Log,
) -> Vec<String> {
    let items = items();
    let values = write_file(&work_dir.join(REVEAL_FILE), &reveal_unit(&items))
        .and_then(|()| gcc_syntax_check(include_dir, work_dir, &[REVEAL_FILE.into()], log))
        .map(|done| revealed(&done.stderr))
        .unwrap_or_default();
    problems
        .iter()
        .map(|p| {
            items
                .iter()
                .enumerate()
                .find(|(_, item)| item.message() == *p)
                .and_then(|(i, item)| Some(item.mismatch(*values.get(&i)?)))
                .unwrap_or_else(|| p.clone())
        })
        .collect()
}

/// The kernel stage's line about the check.
pub fn summary(report: &UapiReport) -> String {
    let mut text = format!(
        "uapi: the agent's {} structures and {} constants match the headers",
        STRUCTS.len(),
        CONSTANTS
            .iter()
            .filter(|c| c.presence == Presence::Required || report.defines(c.c_name))
            .count()
    );
    let (defined, absent): (Vec<&str>, Vec<&str>) = CONSTANTS
        .iter()
        .filter(|c| c.presence == Presence::Optional)
        .map(|c| c.c_name)
        .partition(|n| report.defines(n));
    if !defined.is_empty() {
        write!(text, "; defined: {}", defined.join(", ")).unwrap();
    }
    if !absent.is_empty() {
        write!(text, "; not defined: {}", absent.join(", ")).unwrap();
    }
    text
}

/// One number the agent relies on: a C expression over the headers and
/// the value the agent compiled for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// A C integer expression: `__builtin_offsetof(struct iommu_option, val64)`.
    pub expr: String,
    pub value: u64,
    /// The subject of the sentence: `struct iommu_option.val64 is at offset`.
    pub what: String,
    /// What follows a value: `" bytes"` or nothing.
    pub unit: &'static str,
    pub header: &'static str,
    /// The optional constant this is, if it is one.
    pub optional: Option<&'static str>,
}

impl Item {
    /// The assertion's message: true of the agent, false of the kernel.
    pub fn message(&self) -> String {
        format!(
            "{} {}{} in the agent, not in {}",
            self.what, self.value, self.unit, self.header
        )
    }

    /// The mismatch with the kernel's value, once known.
    pub fn mismatch(&self, kernel: u64) -> String {
        format!(
            "{} {}{} in the agent, {kernel}{} in {}",
            self.what, self.value, self.unit, self.unit, self.header
        )
    }
}

/// Every number checked, from msi-uapi's tables: each structure's size,
/// each field's offset and size, each constant's value.
pub fn items() -> Vec<Item> {
    let mut items = Vec::new();
    for s in STRUCTS {
        let ty = format!("struct {}", s.c_name);
        let item = |expr: String, value: usize, what: String, unit| Item {
            expr,
            value: value as u64,
            what,
            unit,
            header: s.header,
            optional: None,
        };
        items.push(item(
            format!("sizeof({ty})"),
            s.size,
            format!("{ty} is"),
            " bytes",
        ));
        for f in s.fields {
            let field = format!("{ty}.{}", f.c_name);
            items.push(item(
                format!("__builtin_offsetof({ty}, {})", f.c_name),
                f.offset,
                format!("{field} is at offset"),
                "",
            ));
            items.push(item(
                format!("sizeof((({ty} *)0)->{})", f.c_name),
                f.size,
                format!("{field} is"),
                " bytes",
            ));
        }
    }
    for k in CONSTANTS {
        items.push(Item {
            expr: k.c_name.to_string(),
            value: k.value,
            what: format!("{} is", k.c_name),
            unit: "",
            header: k.header,
            optional: (k.presence == Presence::Optional).then_some(k.c_name),
        });
    }
    items
}

/// The C file that checks every structure and every required constant.
pub fn main_unit() -> String {
    let mut c = preamble(all_headers());
    for item in items().iter().filter(|i| i.optional.is_none()) {
        assert_line(&mut c, item);
    }
    c
}

/// The C file that checks one optional constant on its own, so that its
/// absence shows as an "undeclared" error in this file only.
pub fn probe_unit(constant: &Constant) -> String {
    let mut c = preamble([constant.header].into());
    for item in items()
        .iter()
        .filter(|i| i.optional == Some(constant.c_name))
    {
        assert_line(&mut c, item);
    }
    c
}

/// The C file that makes gcc print the kernel's value of every item, as
/// the array size in a diagnostic about line `REVEAL_FIRST_LINE + index`:
/// `initialization of 'char (*)[16]' from 'int'`.
pub fn reveal_unit(items: &[Item]) -> String {
    let mut c = preamble(all_headers());
    for (i, item) in items.iter().enumerate() {
        writeln!(c, "char (*msi_uapi_reveal_{i})[{}] = 1;", item.expr).unwrap();
    }
    c
}

fn reveal_first_line() -> usize {
    preamble(all_headers()).lines().count() + 1
}

/// The kernel's values that `reveal_unit`'s diagnostics show, by item index.
pub fn revealed(stderr: &[String]) -> BTreeMap<usize, u64> {
    let re = regex::Regex::new(&format!(
        r"^{}:(\d+):\d+: (?:warning|error): initialization of 'char \(\*\)\[(\d+)\]'",
        regex::escape(REVEAL_FILE)
    ))
    .expect("valid regex");
    let first = reveal_first_line();
    stderr
        .iter()
        .filter_map(|line| {
            let c = re.captures(line)?;
            let index = c[1].parse::<usize>().ok()?.checked_sub(first)?;
            Some((index, c[2].parse().ok()?))
        })
        .collect()
}

/// The probe's file name.
fn probe_file(constant: &Constant) -> String {
    format!("uapi-probe-{}.c", constant.c_name)
}

fn all_headers() -> BTreeSet<&'static str> {
    STRUCTS
        .iter()
        .map(|s| s.header)
        .chain(CONSTANTS.iter().map(|c| c.header))
        .collect()
}

fn preamble(headers: BTreeSet<&str>) -> String {
    let mut c = String::from(
        "/* Generated by msi-harness (harness/src/kernel/uapi_check.rs) from the\n \
         * tables of msi-uapi (guest-images/uapi): the agent's view of the uAPI. */\n\
         #include <linux/types.h>\n",
    );
    for h in headers {
        writeln!(c, "#include <{h}>").unwrap();
    }
    c
}

fn assert_line(c: &mut String, item: &Item) {
    writeln!(
        c,
        "_Static_assert((unsigned long long)({}) == {}ULL, \"{TAG}{}\");",
        item.expr,
        item.value,
        item.message()
    )
    .unwrap();
}

/// What gcc's diagnostics say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Each mismatch, said for a person, in gcc's order, without repeats.
    pub problems: Vec<String>,
    /// The optional constants whose probe found them undeclared.
    pub absent: Vec<&'static str>,
    /// An error that is neither a mismatch nor an absent optional constant
    /// (a header that does not compile, say).
    pub unexplained: bool,
}

/// Reads gcc's stderr (`-fdiagnostics-plain-output`, `LC_ALL=C`).
pub fn classify(stderr: &[String], optional: &[&Constant]) -> Verdict {
    let mut verdict = Verdict::default();
    for line in stderr {
        let Some((file, message)) = error_of(line) else {
            continue;
        };
        let probe = optional.iter().find(|c| probe_file(c) == file);
        if let Some(c) = probe {
            if undeclared(message) == Some(c.c_name) {
                if !verdict.absent.contains(&c.c_name) {
                    verdict.absent.push(c.c_name);
                }
                continue;
            }
            if verdict.absent.contains(&c.c_name) && is_follow_on(message) {
                continue;
            }
        }
        match problem(message) {
            Some(p) => {
                if !verdict.problems.contains(&p) {
                    verdict.problems.push(p);
                }
            }
            None if is_follow_on(message) && !verdict.problems.is_empty() => {}
            None => verdict.unexplained = true,
        }
    }
    verdict
}

/// `FILE:LINE:COL: error: MESSAGE` (or `fatal error:`) → (FILE, MESSAGE).
fn error_of(line: &str) -> Option<(&str, &str)> {
    let (head, message) = line
        .split_once(": error: ")
        .or_else(|| line.split_once(": fatal error: "))?;
    let file = head.split(':').next()?;
    Some((file, message))
}

/// A diagnostic that only repeats an earlier error.
fn is_follow_on(message: &str) -> bool {
    message.starts_with("expression in static assertion is not an integer")
}

/// The name in `'NAME' undeclared here (not in a function)`.
fn undeclared(message: &str) -> Option<&str> {
    let rest = message.strip_prefix('\'')?;
    let (name, after) = rest.split_once('\'')?;
    after.starts_with(" undeclared").then_some(name)
}

/// A mismatch named for a person: one of our assertion messages, or the
/// error gcc gives when a name the agent uses is missing.
fn problem(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("static assertion failed: \"") {
        let text = rest.strip_suffix('"').unwrap_or(rest);
        return text.strip_prefix(TAG).map(str::to_string);
    }
    if let Some(name) = undeclared(message) {
        return Some(format!("{name} is not defined in this kernel's headers"));
    }
    // 'struct iommu_option' has no member named 'object_id'; did you mean …
    if let Some(rest) = message.strip_prefix('\'') {
        if let Some((ty, after)) = rest.split_once("' has no member named '") {
            let member = after.split('\'').next().unwrap_or(after);
            return Some(format!(
                "{ty} has no member {member} in this kernel's headers"
            ));
        }
    }
    for prefix in [
        "invalid application of 'sizeof' to incomplete type '",
        "invalid use of undefined type '",
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let ty = rest.split('\'').next().unwrap_or(rest);
            return Some(format!("{ty} is not defined in this kernel's headers"));
        }
    }
    None
}

/// Writes a generated file; they are rewritten on every run, so a plain
/// write is enough (nothing reads them across runs).
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| {
        anyhow::Error::from(Error::infra(format!(
            "cannot write {}: {e}",
            path.display()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn optional() -> Vec<&'static Constant> {
        CONSTANTS
            .iter()
            .filter(|c| c.presence == Presence::Optional)
            .collect()
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_main_unit_asserts_every_field_and_required_constant() {
        let c = main_unit();
        assert!(
            c.contains(
                "#include <linux/types.h>\n#include <linux/iommufd.h>\n#include <linux/vfio.h>\n"
            ),
            "{c}"
        );
        for line in [
            r#"_Static_assert((unsigned long long)(sizeof(struct iommu_option)) == 24ULL, "msi-uapi: struct iommu_option is 24 bytes in the agent, not in linux/iommufd.h");"#,
            r#"_Static_assert((unsigned long long)(__builtin_offsetof(struct iommu_option, object_id)) == 12ULL, "msi-uapi: struct iommu_option.object_id is at offset 12 in the agent, not in linux/iommufd.h");"#,
            r#"_Static_assert((unsigned long long)(sizeof(((struct iommu_option *)0)->__reserved)) == 2ULL, "msi-uapi: struct iommu_option.__reserved is 2 bytes in the agent, not in linux/iommufd.h");"#,
            r#"_Static_assert((unsigned long long)(__builtin_offsetof(struct vfio_device_bind_iommufd, token_uuid_ptr)) == 16ULL, "msi-uapi: struct vfio_device_bind_iommufd.token_uuid_ptr is at offset 16 in the agent, not in linux/vfio.h");"#,
            r#"_Static_assert((unsigned long long)(IOMMU_OPTION) == 15239ULL, "msi-uapi: IOMMU_OPTION is 15239 in the agent, not in linux/iommufd.h");"#,
            r#"_Static_assert((unsigned long long)(IOMMU_OPTION_HUGE_PAGES) == 1ULL, "msi-uapi: IOMMU_OPTION_HUGE_PAGES is 1 in the agent, not in linux/iommufd.h");"#,
        ] {
            assert!(c.contains(line), "missing {line}\nin\n{c}");
        }
        let fields: usize = STRUCTS.iter().map(|s| s.fields.len()).sum();
        let required = CONSTANTS
            .iter()
            .filter(|k| k.presence == Presence::Required)
            .count();
        assert_eq!(
            c.matches("_Static_assert(").count(),
            STRUCTS.len() + 2 * fields + required
        );
        // Optional constants are only in their probes.
        assert!(!c.contains("IOMMU_OPTION_SW_MSI_START"), "{c}");
    }

    #[test]
    fn an_optional_constant_has_a_probe_of_its_own() {
        let start = optional()
            .into_iter()
            .find(|c| c.c_name == "IOMMU_OPTION_SW_MSI_START")
            .unwrap();
        let c = probe_unit(start);
        assert!(c.ends_with("\n#include <linux/types.h>\n#include <linux/iommufd.h>\n_Static_assert((unsigned long long)(IOMMU_OPTION_SW_MSI_START) == 2ULL, \"msi-uapi: IOMMU_OPTION_SW_MSI_START is 2 in the agent, not in linux/iommufd.h\");\n"), "{c}");
        assert_eq!(probe_file(start), "uapi-probe-IOMMU_OPTION_SW_MSI_START.c");
    }

    #[test]
    fn gcc_errors_name_the_field_and_the_constant() {
        // As gcc 12 prints them for a kernel that moved a field, renumbered
        // an option and dropped a constant.
        let stderr = lines(
            "uapi-check.c:52:1: error: static assertion failed: \"msi-uapi: struct iommu_option.object_id is at offset 12 in the agent, not in linux/iommufd.h\"\n\
             uapi-check.c:80:16: error: 'IOMMU_OPTION_HUGE_PAGES' undeclared here (not in a function); did you mean 'IOMMU_OPTION_OP_GET'?\n\
             uapi-check.c:80:16: error: expression in static assertion is not an integer\n\
             uapi-check.c:60:5: error: 'struct iommu_hwpt_alloc' has no member named 'fault_id'; did you mean 'dev_id'?\n\
             uapi-check.c:61:5: error: 'struct iommu_hwpt_alloc' has no member named 'fault_id'; did you mean 'dev_id'?\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_START.c:5:1: error: static assertion failed: \"msi-uapi: IOMMU_OPTION_SW_MSI_START is 2 in the agent, not in linux/iommufd.h\"\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_SIZE.c:5:37: error: 'IOMMU_OPTION_SW_MSI_SIZE' undeclared here (not in a function)\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_SIZE.c:5:16: error: expression in static assertion is not an integer",
        );
        let v = classify(&stderr, &optional());
        assert_eq!(
            v.problems,
            [
                "struct iommu_option.object_id is at offset 12 in the agent, not in linux/iommufd.h",
                "IOMMU_OPTION_HUGE_PAGES is not defined in this kernel's headers",
                "struct iommu_hwpt_alloc has no member fault_id in this kernel's headers",
                "IOMMU_OPTION_SW_MSI_START is 2 in the agent, not in linux/iommufd.h",
            ]
        );
        assert_eq!(v.absent, ["IOMMU_OPTION_SW_MSI_SIZE"]);
        assert!(!v.unexplained);
    }

    #[test]
    fn absent_optional_constants_are_not_problems() {
        let stderr = lines(
            "uapi-probe-IOMMU_OPTION_SW_MSI_START.c:5:37: error: 'IOMMU_OPTION_SW_MSI_START' undeclared here (not in a function); did you mean 'IOMMU_OPTION_OP_SET'?\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_START.c:5:16: error: expression in static assertion is not an integer\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_SIZE.c:5:37: error: 'IOMMU_OPTION_SW_MSI_SIZE' undeclared here (not in a function)\n\
             uapi-probe-IOMMU_OPTION_SW_MSI_SIZE.c:5:16: error: expression in static assertion is not an integer",
        );
        let v = classify(&stderr, &optional());
        assert_eq!(
            v,
            Verdict {
                problems: vec![],
                absent: vec!["IOMMU_OPTION_SW_MSI_START", "IOMMU_OPTION_SW_MSI_SIZE"],
                unexplained: false,
            }
        );
        let report = UapiReport {
            defined_optional: vec![],
        };
        assert!(summary(&report)
            .ends_with("; not defined: IOMMU_OPTION_SW_MSI_START, IOMMU_OPTION_SW_MSI_SIZE"));
    }

    #[test]
    fn other_errors_are_unexplained_not_absent() {
        // A probe that fails for another reason says nothing about the
        // constant; a missing header is no mismatch we can name.
        let stderr = lines(
            "uapi-probe-IOMMU_OPTION_SW_MSI_START.c:3:10: fatal error: linux/iommufd.h: No such file or directory\n\
             compilation terminated.",
        );
        let v = classify(&stderr, &optional());
        assert!(
            v.problems.is_empty() && v.absent.is_empty() && v.unexplained,
            "{v:?}"
        );
        let stderr = lines("uapi-check.c:4:1: error: expected ';' before 'struct'");
        assert!(classify(&stderr, &optional()).unexplained);
    }

    #[test]
    fn the_kernel_values_are_read_from_the_reveal_diagnostics() {
        let items = items();
        let c = reveal_unit(&items);
        let first = reveal_first_line();
        let line_of = |expr: &str| {
            let i = items.iter().position(|i| i.expr == expr).unwrap();
            assert_eq!(
                c.lines().nth(first + i - 1).unwrap(),
                format!("char (*msi_uapi_reveal_{i})[{expr}] = 1;")
            );
            (i, first + i)
        };
        let (offset, offset_line) = line_of("__builtin_offsetof(struct iommu_option, object_id)");
        let (start, start_line) = line_of("IOMMU_OPTION_SW_MSI_START");
        let (huge, huge_line) = line_of("IOMMU_OPTION_HUGE_PAGES");
        // gcc 12 warns (-Wint-conversion); gcc 14 makes it an error.
        let stderr = lines(&format!(
            "uapi-reveal.c:{offset_line}:81: warning: initialization of 'char (*)[16]' from 'int' makes pointer from integer without a cast [-Wint-conversion]\n\
             uapi-reveal.c:{start_line}:40: error: initialization of 'char (*)[3]' from 'int' makes pointer from integer without a cast [-Wint-conversion]\n\
             uapi-reveal.c:{huge_line}:27: error: 'IOMMU_OPTION_HUGE_PAGES' undeclared here (not in a function)"
        ));
        let values = revealed(&stderr);
        assert_eq!(values, BTreeMap::from([(offset, 16), (start, 3)]));
        assert!(!values.contains_key(&huge));
        assert_eq!(
            items[offset].mismatch(16),
            "struct iommu_option.object_id is at offset 12 in the agent, 16 in linux/iommufd.h"
        );
        assert_eq!(
            items[0].mismatch(9),
            "struct iommu_destroy is 8 bytes in the agent, 9 bytes in linux/iommufd.h"
        );
    }

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uapi/include")
    }

    /// A copy of the fixture headers with `edits` (old, new) applied to
    /// `linux/iommufd.h`.
    fn patched_fixture(edits: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = vec![fixture()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let to = dir.path().join(p.strip_prefix(fixture()).unwrap());
                if p.is_dir() {
                    std::fs::create_dir_all(&to).unwrap();
                    dirs.push(p);
                } else {
                    std::fs::copy(&p, &to).unwrap();
                }
            }
        }
        let header = dir.path().join("linux/iommufd.h");
        let mut text = std::fs::read_to_string(&header).unwrap();
        for (old, new) in edits {
            assert_eq!(text.matches(old).count(), 1, "{old:?} in the fixture");
            text = text.replace(old, new);
        }
        std::fs::write(&header, text).unwrap();
        dir
    }

    #[test]
    #[ignore = "needs aarch64-linux-gnu-gcc (cargo xtask test runs it)"]
    fn the_fixture_headers_match_the_agent() {
        let work = tempfile::tempdir().unwrap();
        let report = check(&fixture(), work.path()).unwrap();
        assert_eq!(
            report.defined_optional,
            ["IOMMU_OPTION_SW_MSI_START", "IOMMU_OPTION_SW_MSI_SIZE"]
        );
    }

    #[test]
    #[ignore = "needs aarch64-linux-gnu-gcc (cargo xtask test runs it)"]
    fn headers_without_the_patch_pass_and_say_so() {
        let headers = patched_fixture(&[
            ("\tIOMMU_OPTION_SW_MSI_START = 2,\n", ""),
            ("\tIOMMU_OPTION_SW_MSI_SIZE = 3,\n", ""),
        ]);
        let work = tempfile::tempdir().unwrap();
        let report = check(headers.path(), work.path()).unwrap();
        assert_eq!(report, UapiReport::default());
    }

    #[test]
    #[ignore = "needs aarch64-linux-gnu-gcc (cargo xtask test runs it)"]
    fn a_renamed_field_and_a_dropped_constant_fail_by_name() {
        let headers = patched_fixture(&[
            ("\t__u32 fault_id;\n", "\t__u32 fault;\n"),
            ("\tIOMMU_HWPT_DATA_NONE = 0,\n", ""),
        ]);
        let work = tempfile::tempdir().unwrap();
        let msg = format!("{:#}", check(headers.path(), work.path()).unwrap_err());
        for part in [
            "struct iommu_hwpt_alloc has no member fault_id in this kernel's headers",
            "IOMMU_HWPT_DATA_NONE is not defined in this kernel's headers",
        ] {
            assert!(msg.contains(part), "missing {part:?} in\n{msg}");
        }
    }

    #[test]
    #[ignore = "needs aarch64-linux-gnu-gcc (cargo xtask test runs it)"]
    fn a_renumbered_option_and_a_moved_field_fail_by_name() {
        let headers = patched_fixture(&[
            (
                "\tIOMMU_OPTION_SW_MSI_START = 2,\n\tIOMMU_OPTION_SW_MSI_SIZE = 3,\n",
                "\tIOMMU_OPTION_SW_MSI_SIZE = 2,\n\tIOMMU_OPTION_SW_MSI_START = 3,\n",
            ),
            (
                "\t__u16 op;\n\t__u16 __reserved;\n\t__u32 object_id;\n",
                "\t__u16 op;\n\t__u16 __reserved;\n\t__u32 __reserved2;\n\t__u32 object_id;\n",
            ),
        ]);
        let work = tempfile::tempdir().unwrap();
        let err = check(headers.path(), work.path()).unwrap_err();
        assert_eq!(
            crate::outcome::exit_code_of(&err),
            crate::ExitCode::Infrastructure
        );
        let msg = format!("{err:#}");
        for part in [
            "the agent's uAPI does not match this kernel's headers: ",
            "struct iommu_option is 24 bytes in the agent, 32 bytes in linux/iommufd.h; ",
            "struct iommu_option.object_id is at offset 12 in the agent, 16 in linux/iommufd.h; ",
            "struct iommu_option.val64 is at offset 16 in the agent, 24 in linux/iommufd.h; ",
            "IOMMU_OPTION_SW_MSI_START is 2 in the agent, 3 in linux/iommufd.h; ",
            "IOMMU_OPTION_SW_MSI_SIZE is 3 in the agent, 2 in linux/iommufd.h (headers ",
            // gcc's own output is kept.
            "error: static assertion failed: \"msi-uapi: struct iommu_option.object_id is at offset 12 in the agent, not in linux/iommufd.h\"",
        ] {
            assert!(msg.contains(part), "missing {part:?} in\n{msg}");
        }
        eprintln!("{msg}");
    }
}
