//! `guest-images/image.toml`: the initramfs described as data.
//!
//! Parsing is strict (unknown keys are errors) and every error names
//! `file:line:col`, because a typo in a pinned version or a mode should stop
//! the build with a pointer to the line, not produce a subtly different guest.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;

/// The parsed description.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Debian architecture of every package (`arm64`).
    pub arch: String,
    /// Absolute paths dropped, with everything below them, from every
    /// unpacked package.
    pub exclude: Vec<String>,
    pub packages: Vec<Package>,
    pub dirs: Vec<Dir>,
    pub files: Vec<File>,
    pub symlinks: Vec<Symlink>,
    pub devices: Vec<Device>,
}

/// A Debian package pinned by version and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub mode: u32,
    pub content: Content,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Inline in image.toml.
    Text(String),
    /// A file next to image.toml (relative path).
    Source(String),
    /// Made by the image stage.
    Generated(Generated),
}

/// Files the image stage makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generated {
    /// The cross-built guest agent.
    Agent,
    /// The public half of the per-image SSH key.
    AuthorizedKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub mode: u32,
    pub major: u32,
    pub minor: u32,
}

impl Spec {
    /// Parses image.toml text; `file` is the name used in error messages.
    pub fn parse(text: &str, file: &str) -> anyhow::Result<Spec> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| location(text, s.start))
                .unwrap_or_default();
            Error::infra(format!("{file}{at}: {}", e.message().trim_end()))
        })?;
        let fail = |span: Option<Range<usize>>, msg: String| -> anyhow::Error {
            let at = span.map(|s| location(text, s.start)).unwrap_or_default();
            Error::infra(format!("{file}{at}: {msg}")).into()
        };
        raw.validate(&fail)
    }

    /// Every file named by `source = "..."`, relative to image.toml's dir.
    pub fn sources(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter_map(|f| match &f.content {
                Content::Source(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// `:line:col` (1-based) of a byte offset.
fn location(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{col}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    image: RawImage,
    #[serde(default)]
    package: Vec<RawPackage>,
    #[serde(default)]
    dir: Vec<RawDir>,
    #[serde(default)]
    file: Vec<RawFile>,
    #[serde(default)]
    symlink: Vec<RawSymlink>,
    #[serde(default)]
    device: Vec<RawDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    arch: Spanned<String>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: Spanned<String>,
    version: Spanned<String>,
    sha256: Spanned<String>,
    /// Why the guest needs it: documentation only.
    #[allow(dead_code)]
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    path: Spanned<String>,
    mode: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    mode: Spanned<u32>,
    text: Option<String>,
    source: Option<Spanned<String>>,
    generated: Option<Generated>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymlink {
    path: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    path: Spanned<String>,
    kind: Spanned<String>,
    mode: Spanned<u32>,
    major: u32,
    minor: u32,
}

type Fail<'a> = dyn Fn(Option<Range<usize>>, String) -> anyhow::Error + 'a;

impl RawSpec {
    fn validate(self, fail: &Fail<'_>) -> anyhow::Result<Spec> {
        let arch = self.image.arch;
        if arch.get_ref().is_empty()
            || !arch
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(fail(
                Some(arch.span()),
                format!("invalid Debian architecture {:?}", arch.get_ref()),
            ));
        }
        let mut exclude = Vec::new();
        for e in self.image.exclude {
            exclude.push(abs_path(&e, fail)?);
        }

        let mut packages = Vec::new();
        let mut seen = BTreeMap::new();
        for p in self.package {
            let name = p.name.get_ref();
            let name_ok = name.len() >= 2
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !name_ok {
                return Err(fail(
                    Some(p.name.span()),
                    format!("invalid Debian package name {name:?}"),
                ));
            }
            if seen.insert(name.clone(), ()).is_some() {
                return Err(fail(
                    Some(p.name.span()),
                    format!("package {name} is listed twice"),
                ));
            }
            let version = p.version.get_ref();
            if version.is_empty() || version.contains(char::is_whitespace) || version.contains('=')
            {
                return Err(fail(
                    Some(p.version.span()),
                    format!("invalid version {version:?} for {name}"),
                ));
            }
            let sha = p.sha256.get_ref();
            if sha.len() != 64
                || !sha
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                return Err(fail(
                    Some(p.sha256.span()),
                    format!("sha256 of {name} must be 64 lowercase hex digits, got {sha:?}"),
                ));
            }
            packages.push(Package {
                name: name.clone(),
                version: version.clone(),
                sha256: sha.clone(),
            });
        }

        let mut paths = BTreeMap::new();
        let mut claim = |path: &Spanned<String>| -> anyhow::Result<String> {
            let p = abs_path(path, fail)?;
            if paths.insert(p.clone(), ()).is_some() {
                return Err(fail(
                    Some(path.span()),
                    format!("{} is declared twice", path.get_ref()),
                ));
            }
            Ok(p)
        };

        let mut dirs = Vec::new();
        for d in self.dir {
            dirs.push(Dir {
                path: claim(&d.path)?,
                mode: mode(&d.mode, fail)?,
            });
        }

        let mut files = Vec::new();
        let mut generated = BTreeMap::new();
        for f in self.file {
            let path = claim(&f.path)?;
            let content = match (f.text, f.source, f.generated) {
                (Some(t), None, None) => Content::Text(t),
                (None, Some(s), None) => {
                    let rel = s.get_ref();
                    if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                        return Err(fail(
                            Some(s.span()),
                            format!("source {rel:?} must be a path inside guest-images/"),
                        ));
                    }
                    Content::Source(rel.clone())
                }
                (None, None, Some(g)) => {
                    if generated.insert(format!("{g:?}"), ()).is_some() {
                        return Err(fail(
                            Some(f.path.span()),
                            format!("generated = {g:?} appears twice"),
                        ));
                    }
                    Content::Generated(g)
                }
                _ => {
                    return Err(fail(
                        Some(f.path.span()),
                        format!(
                            "{} needs exactly one of text, source, generated",
                            f.path.get_ref()
                        ),
                    ))
                }
            };
            files.push(File {
                path,
                mode: mode(&f.mode, fail)?,
                content,
            });
        }
        for (g, what) in [
            (Generated::Agent, "agent"),
            (Generated::AuthorizedKeys, "authorized-keys"),
        ] {
            if !files.iter().any(|f| f.content == Content::Generated(g)) {
                return Err(fail(
                    None,
                    format!("no [[file]] with generated = \"{what}\": the harness needs it in every image"),
                ));
            }
        }

        let mut symlinks = Vec::new();
        for s in self.symlink {
            let path = claim(&s.path)?;
            if s.target.get_ref().is_empty() || s.target.get_ref().contains('\0') {
                return Err(fail(
                    Some(s.target.span()),
                    "symlink target must not be empty".to_string(),
                ));
            }
            symlinks.push(Symlink {
                path,
                target: s.target.into_inner(),
            });
        }

        let mut devices = Vec::new();
        for d in self.device {
            if d.kind.get_ref() != "char" {
                return Err(fail(
                    Some(d.kind.span()),
                    format!(
                        "unsupported device kind {:?}: only \"char\"",
                        d.kind.get_ref()
                    ),
                ));
            }
            devices.push(Device {
                path: claim(&d.path)?,
                mode: mode(&d.mode, fail)?,
                major: d.major,
                minor: d.minor,
            });
        }

        Ok(Spec {
            arch: arch.into_inner(),
            exclude,
            packages,
            dirs,
            files,
            symlinks,
            devices,
        })
    }
}

/// An absolute, normalised guest path, returned without its leading `/`.
fn abs_path(p: &Spanned<String>, fail: &Fail<'_>) -> anyhow::Result<String> {
    let s = p.get_ref();
    let rel = s.strip_prefix('/').unwrap_or("");
    if rel.is_empty()
        || rel.ends_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(fail(
            Some(p.span()),
            format!("{s:?} must be an absolute, normalised path like \"/etc/passwd\""),
        ));
    }
    Ok(rel.to_string())
}

fn mode(m: &Spanned<u32>, fail: &Fail<'_>) -> anyhow::Result<u32> {
    let v = *m.get_ref();
    if v > 0o7777 {
        return Err(fail(
            Some(m.span()),
            format!("mode {v:#o} has bits beyond 0o7777 (write modes as 0o755)"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[image]
arch = "arm64"
exclude = ["/usr/share"]

[[package]]
name = "busybox-static"
version = "1:1.35.0-4+deb12u1+b1"
sha256 = "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5"
why = "the shell"

[[dir]]
path = "/root"
mode = 0o700

[[file]]
path = "/init"
mode = 0o755
source = "init"

[[file]]
path = "/etc/passwd"
mode = 0o644
text = "root:x:0:0:root:/root:/bin/sh\n"

[[file]]
path = "/bin/msi-agent"
mode = 0o755
generated = "agent"

[[file]]
path = "/root/.ssh/authorized_keys"
mode = 0o600
generated = "authorized-keys"

[[symlink]]
path = "/bin/sh"
target = "busybox"

[[device]]
path = "/dev/console"
kind = "char"
mode = 0o600
major = 5
minor = 1
"#;

    fn err(text: &str) -> String {
        Spec::parse(text, "image.toml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_spec_parses() {
        let s = Spec::parse(MINIMAL, "image.toml").unwrap();
        assert_eq!(s.arch, "arm64");
        assert_eq!(s.exclude, vec!["usr/share"]);
        assert_eq!(s.packages[0].version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(
            s.dirs,
            vec![Dir {
                path: "root".into(),
                mode: 0o700
            }]
        );
        assert_eq!(s.files[0].content, Content::Source("init".into()));
        assert_eq!(s.files[2].content, Content::Generated(Generated::Agent));
        assert_eq!(s.sources(), vec!["init"]);
        assert_eq!(s.devices[0].major, 5);
    }

    #[test]
    fn unknown_keys_point_at_the_line() {
        let text = MINIMAL.replace("why = \"the shell\"", "why = \"the shell\"\nsha265 = \"x\"");
        let e = err(&text);
        assert!(
            e.starts_with("image.toml:11:1: unknown field `sha265`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = err(&MINIMAL.replace("732c9135", "732C9135"));
        assert!(
            e.starts_with("image.toml:9:10: sha256 of busybox-static must be 64 lowercase hex"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("mode = 0o700", "mode = 0o70000"));
        assert!(e.starts_with("image.toml:14:8: mode 0o70000"), "{e}");
        let e = err(&MINIMAL.replace("path = \"/root\"", "path = \"root\""));
        assert!(
            e.starts_with("image.toml:13:8: \"root\" must be an absolute"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("source = \"init\"", "source = \"../init\""));
        assert!(e.contains(":19:10: source \"../init\""), "{e}");
        let e = err(&MINIMAL.replace("kind = \"char\"", "kind = \"block\""));
        assert!(e.contains("unsupported device kind \"block\""), "{e}");
    }

    #[test]
    fn duplicates_and_ambiguous_files_are_refused() {
        let e = err(&MINIMAL.replace("path = \"/bin/sh\"", "path = \"/init\""));
        assert!(e.contains("/init is declared twice"), "{e}");
        let text = MINIMAL.replace("source = \"init\"", "source = \"init\"\ntext = \"x\"");
        assert!(err(&text).contains("/init needs exactly one of text, source, generated"));
        let text = format!("{MINIMAL}\n[[package]]\nname = \"busybox-static\"\nversion = \"1\"\nsha256 = \"{}\"\nwhy = \"\"\n", "0".repeat(64));
        assert!(err(&text).contains("package busybox-static is listed twice"));
    }

    #[test]
    fn generated_files_are_required() {
        let text = MINIMAL.replace("generated = \"agent\"", "text = \"\"");
        assert!(err(&text).contains("no [[file]] with generated = \"agent\""));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let e = err("[image]\narch = arm64\n");
        assert!(e.starts_with("image.toml:2:8: "), "{e}");
        let e = err("[image]\n");
        assert!(e.contains("missing field `arch`"), "{e}");
    }
}
