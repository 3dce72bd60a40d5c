//! Config fragments, and checking that what they ask for stuck.
//!
//! Kconfig silently drops a symbol whose dependencies are not met (or that
//! does not exist on this kernel), so after `olddefconfig` every request of
//! every fragment is compared with the final `.config`; the build fails
//! naming each symbol that did not stick and the fragment line that asked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// One `CONFIG_X=v` (or `# CONFIG_X is not set`) line of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub symbol: String,
    /// `None` for `# CONFIG_X is not set`.
    pub value: Option<String>,
    pub fragment: PathBuf,
    pub line: usize,
}

/// What the final `.config` says about a symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Not mentioned at all: no such symbol, or hidden by unmet dependencies.
    Absent,
    NotSet,
    Value(String),
}

/// Reads a fragment's requests; any other non-comment line is an error.
pub fn read_fragment(path: &Path) -> anyhow::Result<Vec<Request>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::infra(format!(
            "cannot read config fragment {}: {e}",
            path.display()
        ))
    })?;
    parse_fragment(path, &text).map_err(Into::into)
}

fn parse_fragment(path: &Path, text: &str) -> Result<Vec<Request>, Error> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let request = |symbol: &str, value: Option<String>| Request {
            symbol: symbol.to_string(),
            value,
            fragment: path.to_path_buf(),
            line: i + 1,
        };
        if let Some(sym) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            if is_symbol(sym) {
                out.push(request(sym, None));
                continue;
            }
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((sym, value)) if is_symbol(sym) && !value.is_empty() => {
                out.push(request(sym, Some(value.to_string())));
            }
            _ => {
                return Err(Error::infra(format!(
                    "{}:{}: not a config line: `{raw}` (expected CONFIG_NAME=value or `# CONFIG_NAME is not set`)",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// A fragment's settings without comments or blank lines: what the cache
/// key covers, since nothing else of a fragment reaches the `.config`.
pub fn canonical(requests: &[Request]) -> String {
    let mut out = String::new();
    for r in requests {
        match &r.value {
            Some(v) => out.push_str(&format!("{}={v}\n", r.symbol)),
            None => out.push_str(&format!("# {} is not set\n", r.symbol)),
        }
    }
    out
}

fn is_symbol(s: &str) -> bool {
    s.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Reads a `.config`: symbol to value (`None`: "is not set").
pub fn parse_config(text: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(sym) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(sym.to_string(), None);
        } else if let Some((sym, value)) = line.split_once('=') {
            if is_symbol(sym) {
                out.insert(sym.to_string(), Some(value.to_string()));
            }
        }
    }
    out
}

/// The requests the final config does not honour. When several fragments
/// set one symbol, the last one wins (as in `merge_config.sh`) and only it
/// is checked.
pub fn unmet<'r>(requests: &'r [Request], final_config: &str) -> Vec<(&'r Request, Found)> {
    let config = parse_config(final_config);
    let mut last: BTreeMap<&str, &Request> = BTreeMap::new();
    for r in requests {
        last.insert(&r.symbol, r);
    }
    let mut out: Vec<(&Request, Found)> = last
        .into_values()
        .filter_map(|r| {
            let found = match config.get(&r.symbol) {
                None => Found::Absent,
                Some(None) => Found::NotSet,
                Some(Some(v)) => Found::Value(v.clone()),
            };
            let ok = match (&r.value, &found) {
                (Some(want), Found::Value(have)) => want == have,
                (None, Found::NotSet | Found::Absent) => true,
                _ => false,
            };
            (!ok).then_some((r, found))
        })
        .collect();
    out.sort_by(|a, b| (&a.0.fragment, a.0.line).cmp(&(&b.0.fragment, b.0.line)));
    out
}

/// The error for symbols that did not stick, one line each.
pub fn unmet_message(unmet: &[(&Request, Found)], root: &Path) -> String {
    let mut msg = format!(
        "{} config symbol{} did not stick in the final .config:",
        unmet.len(),
        if unmet.len() == 1 { "" } else { "s" }
    );
    for (r, found) in unmet {
        let wanted = match &r.value {
            Some(v) => format!("{}={v}", r.symbol),
            None => format!("{} unset", r.symbol),
        };
        let frag = r.fragment.strip_prefix(root).unwrap_or(&r.fragment);
        let got = match found {
            Found::Absent => {
                "absent (no such symbol in this kernel, or its dependencies are not met)"
                    .to_string()
            }
            Found::NotSet => "is not set (its dependencies are not met?)".to_string(),
            Found::Value(v) => format!("is {}={v}", r.symbol),
        };
        let _ = write!(
            msg,
            "\n    {wanted} (asked by {}:{}): {got}",
            frag.display(),
            r.line
        );
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_that_do_not_stick_are_named_with_their_fragment() {
        let frag = Path::new("/p/kernel-configs/iommu.config");
        let text = "# comment\nCONFIG_PCI=y\nCONFIG_ARM_SMMU_V3=y\n\nCONFIG_NOPE=y\n# CONFIG_DEBUG_KERNEL is not set\nCONFIG_HZ=250\n";
        let requests = parse_fragment(frag, text).unwrap();
        assert_eq!(requests.len(), 5);
        let config =
            "CONFIG_PCI=y\n# CONFIG_ARM_SMMU_V3 is not set\nCONFIG_DEBUG_KERNEL=y\nCONFIG_HZ=250\n";
        let unmet = unmet(&requests, config);
        let names: Vec<&str> = unmet.iter().map(|(r, _)| r.symbol.as_str()).collect();
        assert_eq!(
            names,
            ["CONFIG_ARM_SMMU_V3", "CONFIG_NOPE", "CONFIG_DEBUG_KERNEL"]
        );
        let msg = unmet_message(&unmet, Path::new("/p"));
        assert!(
            msg.starts_with("3 config symbols did not stick in the final .config:"),
            "{msg}"
        );
        assert!(
            msg.contains("CONFIG_NOPE=y (asked by kernel-configs/iommu.config:5): absent"),
            "{msg}"
        );
        assert!(msg
            .contains("CONFIG_ARM_SMMU_V3=y (asked by kernel-configs/iommu.config:3): is not set"));
        assert!(msg.contains("CONFIG_DEBUG_KERNEL unset (asked by kernel-configs/iommu.config:6): is CONFIG_DEBUG_KERNEL=y"));
    }

    #[test]
    fn canonical_form_ignores_comments_and_blank_lines() {
        let a = parse_fragment(
            Path::new("a"),
            "# why\nCONFIG_X=y\n\n# CONFIG_Y is not set\n",
        )
        .unwrap();
        let b = parse_fragment(
            Path::new("b"),
            "CONFIG_X=y\n# other words\n# CONFIG_Y is not set\n",
        )
        .unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), "CONFIG_X=y\n# CONFIG_Y is not set\n");
        let c = parse_fragment(Path::new("c"), "CONFIG_X=m\n# CONFIG_Y is not set\n").unwrap();
        assert_ne!(canonical(&a), canonical(&c));
    }

    #[test]
    fn later_fragments_override_and_bad_lines_are_errors() {
        let a = parse_fragment(Path::new("a.config"), "CONFIG_X=y\n").unwrap();
        let b = parse_fragment(Path::new("b.config"), "CONFIG_X=m\n").unwrap();
        let all: Vec<Request> = a.into_iter().chain(b).collect();
        assert!(unmet(&all, "CONFIG_X=m\n").is_empty());
        let err = parse_fragment(Path::new("c.config"), "CONFIG_X=y\nPCI=y\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("c.config:2: not a config line: `PCI=y`"),
            "{err}"
        );
    }
}
