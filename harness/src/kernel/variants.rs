//! `kernel-configs/kernels.toml`: named kernel variants as plain data.
//!
//! A `[source.NAME]` table says where a kernel source comes from and pins the
//! checksum of what is downloaded; a `[[variant]]` names a source, a patch
//! series directory and config fragments. Unknown keys are errors, and every
//! error points at `file:line:col`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dialect::Dialect;
use toml::Spanned;

use crate::error::Error;

/// Where a kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The upstream tarball (`file`) of a Debian source package, fetched
    /// through a private apt configuration from `suite`'s deb-src.
    DebianSource {
        name: String,
        package: String,
        version: String,
        suite: String,
        file: String,
        sha256: String,
    },
    /// A binary package (e.g. `linux-source-7.2`) whose `.deb` holds the
    /// source tarball at `member`.
    DebianBinary {
        name: String,
        package: String,
        version: String,
        suite: String,
        member: String,
        sha256: String,
    },
    /// A tarball on disk; `sha256`, when given, is checked.
    Tarball {
        name: String,
        path: PathBuf,
        sha256: Option<String>,
    },
    /// A kernel tree on disk, built as it is (never modified).
    Tree { name: String, path: PathBuf },
}

impl SourceSpec {
    pub fn name(&self) -> &str {
        match self {
            SourceSpec::DebianSource { name, .. }
            | SourceSpec::DebianBinary { name, .. }
            | SourceSpec::Tarball { name, .. }
            | SourceSpec::Tree { name, .. } => name,
        }
    }
}

/// A named kernel to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub source: SourceSpec,
    /// The patch series directory (its `*.patch` files, in name order).
    pub patches: Option<PathBuf>,
    /// Config fragments, in merge order (absolute paths).
    pub fragments: Vec<PathBuf>,
    /// How the kernel speaks IOMMU_OPTION_SW_MSI_*; `None`: it has no such
    /// options.
    pub sw_msi: Option<Dialect>,
    /// The debug flavour built on top (`NAME+FLAVOUR`), if any.
    pub flavour: Option<String>,
    /// A flavour's: which of its kernel reports the snapshots record with
    /// signatures; `None` (no flavour): none, first lines only.
    pub report_scope: Option<ReportScope>,
    /// The variant whose accepted snapshots this kernel is compared with,
    /// when not its own (a test-only series that plants bugs in a subject
    /// is judged against the subject's snapshots; flavoured alike).
    pub compare_as: Option<String>,
    /// Whether the nightly matrix builds and tests it (`nightly = false`:
    /// a test-only series, run by hand or with a flavour).
    pub nightly: bool,
}

impl Variant {
    /// The name of the snapshots this kernel is compared with.
    pub fn snapshots(&self) -> &str {
        self.compare_as.as_deref().unwrap_or(&self.name)
    }
}

/// `[flavour.NAME]`: a debug build of any variant (`VARIANT+NAME`), its
/// fragments merged after the variant's own, cached on its own key (the
/// fragments are part of the build key) and symbol-checked like them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavour {
    pub name: String,
    pub description: String,
    pub fragments: Vec<PathBuf>,
    /// Which of the kernel's reports its snapshots record.
    pub report_scope: ReportScope,
    /// The variants the nightly matrix runs this flavour of (those that
    /// have its snapshots).
    pub nightly: Vec<String>,
}

/// The parsed file: variants, and the fragments `--kernel-tree` builds use.
#[derive(Debug, Clone)]
pub struct KernelsFile {
    pub variants: Vec<Variant>,
    pub default_fragments: Vec<PathBuf>,
    /// `[selftest.libcap]`: the arm64 libcap-dev the iommufd kselftest
    /// links statically.
    pub selftest_libcap: Option<PinnedDeb>,
    /// `[dialect.NAME]`, by name.
    pub dialects: BTreeMap<String, Dialect>,
    /// `[flavour.NAME]`, by name.
    pub flavours: BTreeMap<String, Flavour>,
}

/// Which reports a kernel's snapshot records: those naming a function of
/// the code under test, by the flavour's patterns (`iommufd_*`, `*msi*`).
/// KCSAN samples accesses all over the kernel, so its reports of the
/// scheduler's or the page cache's races turn up at random in any step;
/// they are kept in the artifacts (`kernel-reports.txt`), not in the
/// snapshot. Empty: every report counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReportScope(pub Vec<String>);

impl ReportScope {
    /// Whether a function name matches one of the patterns (`*` at either
    /// end is any text).
    pub fn names(&self, function: &str) -> bool {
        self.0
            .iter()
            .any(|p| match (p.strip_prefix('*'), p.strip_suffix('*')) {
                (Some(rest), _) if rest.ends_with('*') => {
                    function.contains(&rest[..rest.len() - 1])
                }
                (Some(rest), _) => function.ends_with(rest),
                (None, Some(prefix)) => function.starts_with(prefix),
                (None, None) => function == p,
            })
    }
}

/// The separator of a flavoured variant's name: `sw-msi-rfcv2+kcsan`.
pub const FLAVOUR_SEPARATOR: char = '+';

impl KernelsFile {
    /// The variant `name`, which may carry a flavour (`VARIANT+FLAVOUR`).
    pub fn variant(&self, name: &str) -> Result<Variant, Error> {
        let (base, flavour) = match name.split_once(FLAVOUR_SEPARATOR) {
            Some((b, f)) => (b, Some(f)),
            None => (name, None),
        };
        let Some(v) = self.variants.iter().find(|v| v.name == base) else {
            let names: Vec<&str> = self.variants.iter().map(|v| v.name.as_str()).collect();
            return Err(Error::infra(format!(
                "no kernel variant `{base}` in kernel-configs/kernels.toml (variants: {})",
                names.join(", ")
            )));
        };
        let Some(flavour) = flavour else {
            return Ok(v.clone());
        };
        let Some(f) = self.flavours.get(flavour) else {
            return Err(Error::infra(format!(
                "no flavour `{flavour}` in kernel-configs/kernels.toml (flavours: {}); \
                 a flavoured variant is named VARIANT{FLAVOUR_SEPARATOR}FLAVOUR",
                self.flavours.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let mut out = v.clone();
        out.name = name.to_string();
        out.description = format!("{} ({} flavour: {})", v.description, f.name, f.description);
        out.fragments.extend(f.fragments.iter().cloned());
        out.flavour = Some(f.name.clone());
        out.report_scope = Some(f.report_scope.clone());
        out.compare_as = v
            .compare_as
            .as_ref()
            .map(|c| format!("{c}{FLAVOUR_SEPARATOR}{}", f.name));
        Ok(out)
    }

    /// The kernels of the nightly matrix, in file order: every variant not
    /// marked `nightly = false`, then each flavour of the variants its
    /// `nightly` names (`sw-msi-rfcv2+lockdep`).
    pub fn nightly(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .variants
            .iter()
            .filter(|v| v.nightly)
            .map(|v| v.name.clone())
            .collect();
        for f in self.flavours.values() {
            out.extend(
                f.nightly
                    .iter()
                    .map(|v| format!("{v}{FLAVOUR_SEPARATOR}{}", f.name)),
            );
        }
        out
    }

    /// Whether `name` is a variant or a flavoured variant.
    pub fn knows(&self, name: &str) -> bool {
        self.variant(name).is_ok()
    }
}

/// An arm64 Debian package pinned by version and the sha256 of its `.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedDeb {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelftest {
    libcap: Option<PinnedDeb>,
}

/// Where `kernels.toml` lives in a checkout.
pub fn kernels_toml(project_root: &Path) -> PathBuf {
    project_root.join("kernel-configs/kernels.toml")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Fragments for every variant that lists none, and for `--kernel-tree`.
    fragments: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    source: BTreeMap<String, Spanned<RawSource>>,
    #[serde(default)]
    variant: Vec<Spanned<RawVariant>>,
    selftest: Option<RawSelftest>,
    #[serde(default)]
    dialect: BTreeMap<String, Dialect>,
    #[serde(default)]
    flavour: BTreeMap<String, Spanned<RawFlavour>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlavour {
    description: String,
    fragments: Vec<Spanned<String>>,
    #[serde(default)]
    report_scope: Vec<String>,
    /// The variants the nightly matrix runs this flavour of.
    #[serde(default)]
    nightly: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Spanned<String>,
    package: Option<String>,
    version: Option<String>,
    suite: Option<String>,
    file: Option<String>,
    member: Option<String>,
    path: Option<String>,
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    source: Spanned<String>,
    patches: Option<Spanned<String>>,
    fragments: Option<Vec<Spanned<String>>>,
    /// The name of its `[dialect.NAME]`.
    sw_msi: Option<Spanned<String>>,
    /// The variant whose snapshots it is compared with.
    compare_as: Option<Spanned<String>>,
    /// In the nightly matrix (default true).
    nightly: Option<bool>,
}

/// Reads the project's `kernel-configs/kernels.toml`.
pub fn load_variants(project_root: &Path) -> anyhow::Result<Vec<Variant>> {
    Ok(load_file(&kernels_toml(project_root))?.variants)
}

/// Reads a `kernels.toml`; relative paths are relative to its directory.
pub fn load_file(path: &Path) -> anyhow::Result<KernelsFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::infra(format!("cannot read {}: {e}", path.display())))?;
    parse(path, &text).map_err(Into::into)
}

/// `file:line:col` of a byte offset.
fn position(file: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    format!("{}:{line}:{col}", file.display())
}

/// Parses `text` (the content of `file`).
pub fn parse(file: &Path, text: &str) -> Result<KernelsFile, Error> {
    let at = |span: std::ops::Range<usize>, msg: String| {
        Error::infra(format!("{}: {msg}", position(file, text, span.start)))
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => at(span, msg),
            None => Error::infra(format!("{}: {msg}", file.display())),
        }
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            dir.join(p)
        }
    };
    let fragment_list = |list: &[Spanned<String>]| -> Result<Vec<PathBuf>, Error> {
        list.iter()
            .map(|f| {
                let p = resolve(f.get_ref());
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(at(
                        f.span(),
                        format!("config fragment {} does not exist", p.display()),
                    ))
                }
            })
            .collect()
    };
    let default_fragments = fragment_list(raw.fragments.get_ref())?;
    let dialects: BTreeMap<String, Dialect> = raw
        .dialect
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                Dialect {
                    name: name.clone(),
                    ..d.clone()
                },
            )
        })
        .collect();

    let mut sources = BTreeMap::new();
    for (name, spanned) in &raw.source {
        let span = spanned.span();
        let s = spanned.get_ref();
        let kind = s.kind.get_ref().as_str();
        let need = |field: &str, v: &Option<String>| -> Result<String, Error> {
            v.clone().ok_or_else(|| {
                at(
                    span.clone(),
                    format!("source `{name}` of kind `{kind}` needs `{field}`"),
                )
            })
        };
        let refuse = |fields: &[(&str, bool)]| -> Result<(), Error> {
            match fields.iter().find(|(_, present)| *present) {
                Some((field, _)) => Err(at(
                    span.clone(),
                    format!("source `{name}` of kind `{kind}` takes no `{field}`"),
                )),
                None => Ok(()),
            }
        };
        let sha256 = match &s.sha256 {
            Some(sha) => {
                let v = sha.get_ref();
                if v.len() != 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(at(
                        sha.span(),
                        format!("`sha256` must be 64 lowercase hex digits, not `{v}`"),
                    ));
                }
                Some(v.clone())
            }
            None => None,
        };
        let need_sha = || {
            sha256.clone().ok_or_else(|| {
                at(
                    span.clone(),
                    format!("source `{name}` is downloaded: pin its `sha256`"),
                )
            })
        };
        let spec = match kind {
            "debian-source" => {
                refuse(&[("member", s.member.is_some()), ("path", s.path.is_some())])?;
                SourceSpec::DebianSource {
                    name: name.clone(),
                    package: need("package", &s.package)?,
                    version: need("version", &s.version)?,
                    suite: need("suite", &s.suite)?,
                    file: need("file", &s.file)?,
                    sha256: need_sha()?,
                }
            }
            "debian-binary" => {
                refuse(&[("file", s.file.is_some()), ("path", s.path.is_some())])?;
                SourceSpec::DebianBinary {
                    name: name.clone(),
                    package: need("package", &s.package)?,
                    version: need("version", &s.version)?,
                    suite: need("suite", &s.suite)?,
                    member: need("member", &s.member)?,
                    sha256: need_sha()?,
                }
            }
            "tarball" | "tree" => {
                refuse(&[
                    ("package", s.package.is_some()),
                    ("version", s.version.is_some()),
                    ("suite", s.suite.is_some()),
                    ("file", s.file.is_some()),
                    ("member", s.member.is_some()),
                ])?;
                let path = resolve(&need("path", &s.path)?);
                if kind == "tree" {
                    refuse(&[("sha256", sha256.is_some())])?;
                    SourceSpec::Tree { name: name.clone(), path }
                } else {
                    SourceSpec::Tarball { name: name.clone(), path, sha256 }
                }
            }
            other => {
                return Err(at(
                    s.kind.span(),
                    format!(
                        "unknown source kind `{other}` (expected debian-source, debian-binary, tarball or tree)"
                    ),
                ))
            }
        };
        sources.insert(name.clone(), spec);
    }

    let mut variants: Vec<Variant> = Vec::new();
    for spanned in &raw.variant {
        let v = spanned.get_ref();
        let name = v.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || name.starts_with('.')
        {
            return Err(at(
                v.name.span(),
                format!("variant name `{name}` must be letters, digits, '.', '_' or '-'"),
            ));
        }
        if variants.iter().any(|other| other.name == *name) {
            return Err(at(
                v.name.span(),
                format!("variant `{name}` is defined twice"),
            ));
        }
        let source = sources.get(v.source.get_ref()).cloned().ok_or_else(|| {
            let known: Vec<&str> = sources.keys().map(String::as_str).collect();
            at(
                v.source.span(),
                format!(
                    "unknown source `{}` (defined: {})",
                    v.source.get_ref(),
                    known.join(", ")
                ),
            )
        })?;
        let patches = match &v.patches {
            Some(p) => {
                let dir = resolve(p.get_ref());
                if !dir.exists() {
                    return Err(at(
                        p.span(),
                        format!("patch series {} does not exist", dir.display()),
                    ));
                }
                if matches!(source, SourceSpec::Tree { .. }) {
                    return Err(at(
                        p.span(),
                        "a `tree` source is built as it is and never modified: it takes no patches"
                            .into(),
                    ));
                }
                Some(dir)
            }
            None => None,
        };
        let fragments = match &v.fragments {
            Some(list) => fragment_list(list)?,
            None => default_fragments.clone(),
        };
        let sw_msi = match &v.sw_msi {
            Some(d) => Some(dialects.get(d.get_ref()).cloned().ok_or_else(|| {
                at(
                    d.span(),
                    format!(
                        "no [dialect.{}] in this file (dialects: {})",
                        d.get_ref(),
                        dialects.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        variants.push(Variant {
            name: name.clone(),
            description: v.description.clone(),
            source,
            patches,
            fragments,
            sw_msi,
            flavour: None,
            report_scope: None,
            compare_as: v.compare_as.as_ref().map(|c| c.get_ref().clone()),
            nightly: v.nightly.unwrap_or(true),
        });
    }
    for spanned in &raw.variant {
        let v = spanned.get_ref();
        if let Some(c) = &v.compare_as {
            let target = variants.iter().find(|o| o.name == *c.get_ref());
            match target {
                None => {
                    return Err(at(
                        c.span(),
                        format!("compare_as: no variant `{}` in this file", c.get_ref()),
                    ))
                }
                Some(t) if t.compare_as.is_some() || t.name == *v.name.get_ref() => {
                    return Err(at(
                        c.span(),
                        format!(
                            "compare_as: `{}` must be a variant compared with its own snapshots",
                            c.get_ref()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let mut flavours = BTreeMap::new();
    for (name, spanned) in &raw.flavour {
        let f = spanned.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(at(
                spanned.span(),
                format!("flavour name `{name}` must be letters, digits, '_' or '-'"),
            ));
        }
        flavours.insert(
            name.clone(),
            Flavour {
                name: name.clone(),
                description: f.description.clone(),
                fragments: fragment_list(&f.fragments)?,
                report_scope: ReportScope(f.report_scope.clone()),
                nightly: f
                    .nightly
                    .iter()
                    .map(|v| {
                        if variants.iter().any(|o| o.name == *v.get_ref()) {
                            Ok(v.get_ref().clone())
                        } else {
                            Err(at(
                                v.span(),
                                format!(
                                    "flavour `{name}`: nightly names no variant `{}`",
                                    v.get_ref()
                                ),
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            },
        );
    }
    Ok(KernelsFile {
        variants,
        default_fragments,
        selftest_libcap: raw.selftest.and_then(|s| s.libcap),
        dialects,
        flavours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.config"), "CONFIG_PCI=y\n").unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        dir
    }

    const GOOD: &str = r#"
fragments = ["base.config"]

[source."linux-1.0"]
kind = "debian-source"
package = "linux"
version = "1.0-1"
suite = "trixie-backports"
file = "linux_1.0.orig.tar.xz"
sha256 = "fdf4c4d487c95b17a41cb38003faef86669e532a44fe702eb31a3390b6a60cca"

[[variant]]
name = "plain-1.0"
source = "linux-1.0"

[[variant]]
name = "patched-1.0"
description = "with p"
source = "linux-1.0"
patches = "p"
"#;

    #[test]
    fn variants_resolve_sources_patches_and_fragments() {
        let dir = setup();
        let file = dir.path().join("kernels.toml");
        let parsed = parse(&file, GOOD).unwrap();
        assert_eq!(parsed.variants.len(), 2);
        let v = &parsed.variants[1];
        assert_eq!(v.name, "patched-1.0");
        assert_eq!(v.patches.as_deref(), Some(dir.path().join("p").as_path()));
        assert_eq!(v.fragments, vec![dir.path().join("base.config")]);
        assert!(
            matches!(&v.source, SourceSpec::DebianSource { version, .. } if version == "1.0-1")
        );
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let dir = setup();
        let file = dir.path().join("kernels.toml");
        let shown = file.display().to_string();
        let typo = GOOD.replace("patches = \"p\"", "patchez = \"p\"");
        let err = parse(&file, &typo).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{shown}:20:1: unknown field `patchez`")),
            "{err}"
        );
        let bad_source = GOOD.replace(
            "source = \"linux-1.0\"\npatches",
            "source = \"linux-9\"\npatches",
        );
        let err = parse(&file, &bad_source).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{shown}:19:10: unknown source `linux-9` (defined: linux-1.0)")
        );
        let bad_sha = GOOD.replace("sha256 = \"fdf4", "sha256 = \"FDF4");
        let err = parse(&file, &bad_sha).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{shown}:10:10: `sha256` must be 64 lowercase hex")),
            "{err}"
        );
        let no_frag = GOOD.replace("[\"base.config\"]", "[\"missing.config\"]");
        let err = parse(&file, &no_frag).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{shown}:2:14: config fragment ")),
            "{err}"
        );
        let no_file = GOOD.replace("file = \"linux_1.0.orig.tar.xz\"\n", "");
        let err = parse(&file, &no_file).unwrap_err().to_string();
        assert!(
            err.contains("source `linux-1.0` of kind `debian-source` needs `file`"),
            "{err}"
        );
    }

    #[test]
    fn the_project_file_parses() {
        let root = crate::cache::project_root();
        let variants = load_variants(&root).unwrap();
        let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        for want in ["upstream-6.18", "sw-msi-rfcv2", "sw-msi-rfcv2-7.2"] {
            assert!(names.contains(&want), "{names:?}");
        }
    }

    #[test]
    fn a_flavoured_name_is_its_variant_with_the_flavour_fragments_after_its_own() {
        let dir = setup();
        std::fs::write(
            dir.path().join("lockdep.config"),
            "CONFIG_PROVE_LOCKING=y\n",
        )
        .unwrap();
        let text = format!(
            "{GOOD}\n[[variant]]\nname = \"planted\"\nsource = \"linux-1.0\"\ncompare_as = \"patched-1.0\"\n\n[flavour.lockdep]\ndescription = \"d\"\nfragments = [\"lockdep.config\"]\nreport_scope = [\"iommufd_*\"]\n"
        );
        let f = parse(&dir.path().join("kernels.toml"), &text).unwrap();
        let v = f.variant("patched-1.0+lockdep").unwrap();
        assert_eq!(v.name, "patched-1.0+lockdep");
        assert_eq!(v.flavour.as_deref(), Some("lockdep"));
        let names: Vec<_> = v
            .fragments
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["base.config", "lockdep.config"]);
        assert_eq!(v.snapshots(), "patched-1.0+lockdep");
        assert!(v.report_scope.unwrap().names("iommufd_option"));
        // A planted series is judged against its subject's flavour.
        assert_eq!(
            f.variant("planted+lockdep").unwrap().snapshots(),
            "patched-1.0+lockdep"
        );
        assert_eq!(f.variant("planted").unwrap().snapshots(), "patched-1.0");
        let err = f.variant("patched-1.0+kasan").unwrap_err().to_string();
        assert!(
            err.contains("no flavour `kasan`") && err.contains("lockdep"),
            "{err}"
        );
        assert!(!f.knows("nope+lockdep"));
    }

    #[test]
    fn the_nightly_matrix_is_every_variant_not_opted_out_then_the_flavours_it_names() {
        let dir = setup();
        std::fs::write(dir.path().join("k.config"), "CONFIG_KASAN=y\n").unwrap();
        let flavour = "[flavour.kasan]\ndescription = \"d\"\nfragments = [\"k.config\"]\n";
        let text = format!(
            "{GOOD}\n[[variant]]\nname = \"planted\"\nsource = \"linux-1.0\"\nnightly = false\n\n{flavour}nightly = [\"patched-1.0\"]\n"
        );
        let f = parse(&dir.path().join("kernels.toml"), &text).unwrap();
        assert_eq!(
            f.nightly(),
            ["plain-1.0", "patched-1.0", "patched-1.0+kasan"]
        );
        let bad = format!("{GOOD}\n{flavour}nightly = [\"nope\"]\n");
        let err = parse(&dir.path().join("kernels.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kernels.toml:") && err.contains("nightly names no variant `nope`"),
            "{err}"
        );
    }

    #[test]
    fn the_projects_nightly_matrix_holds_the_default_suite() {
        let f = load_file(&kernels_toml(&crate::cache::project_root())).unwrap();
        let nightly = f.nightly();
        for v in ["upstream-6.18", "sw-msi-rfcv2", "sw-msi-v2"] {
            assert!(nightly.iter().any(|n| n == v), "{nightly:?}");
        }
        // Every entry is a kernel the harness can build.
        for n in &nightly {
            assert!(f.knows(n), "{n}");
        }
    }
}
