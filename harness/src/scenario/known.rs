//! Known findings: a failed expectation that is understood (a regression
//! of a respin, reported upstream, not fixed yet), declared with its reason
//! in `scenarios/known-findings/<variant>.toml`, scoped to variant, scenario
//! and step:
//!
//! ```toml
//! [[finding]]
//! scenario = "start-zero"
//! step = 5
//! reason = "v2 reserves [0, 1 MB) but ..."
//! ```
//!
//! A trial whose only failures are declared ones ends as
//! [`crate::outcome::Outcome::Known`] (exit 0) and says which; a declared
//! finding that did not happen is itself a finding, so a fix is noticed and
//! the declaration removed. Expectations are never weakened instead: the
//! scenario keeps saying what is correct.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;

/// One declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFinding {
    pub scenario: String,
    /// The step number, as the snapshot numbers steps.
    pub step: usize,
    pub reason: String,
    /// `file:line:col` of the declaration, for messages.
    pub at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    finding: Vec<Spanned<RawFinding>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFinding {
    scenario: String,
    step: usize,
    reason: String,
}

/// Where `variant`'s declarations live, next to the scenarios.
pub fn file_for(scenarios_dir: &Path, variant: &str) -> PathBuf {
    scenarios_dir
        .join("known-findings")
        .join(format!("{variant}.toml"))
}

/// The declarations for `variant` (none when it has no file).
pub fn load(scenarios_dir: &Path, variant: &str) -> Result<Vec<KnownFinding>, Error> {
    let path = file_for(scenarios_dir, variant);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::infra(format!("cannot read {}: {e}", path.display()))),
    };
    parse(&super::display_path(&path), &text)
}

/// Parses one file; `name` names it in messages.
pub fn parse(name: &str, text: &str) -> Result<Vec<KnownFinding>, Error> {
    let at = |offset: usize| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        format!("{name}:{line}:{col}")
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let pos = e.span().map(|s| at(s.start)).unwrap_or_else(|| name.into());
        Error::infra(format!("{pos}: {}", e.message().trim()))
    })?;
    let mut out: Vec<KnownFinding> = Vec::new();
    for f in raw.finding {
        let here = at(f.span().start);
        let f = f.into_inner();
        if f.reason.trim().is_empty() {
            return Err(Error::infra(format!(
                "{here}: a known finding needs its `reason` (what the kernel did and why)"
            )));
        }
        if let Some(dup) = out
            .iter()
            .find(|k| k.scenario == f.scenario && k.step == f.step)
        {
            return Err(Error::infra(format!(
                "{here}: {} step {} is declared twice (first at {})",
                f.scenario, f.step, dup.at
            )));
        }
        out.push(KnownFinding {
            scenario: f.scenario,
            step: f.step,
            reason: f.reason.trim().to_string(),
            at: here,
        });
    }
    Ok(out)
}

/// A failed expectation, with the step it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedExpectation {
    pub step: usize,
    pub message: String,
}

/// How a trial's failed expectations stand against the declarations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// Failures no declaration covers: findings.
    pub unexplained: Vec<String>,
    /// Failures a declaration covers, each said with its reason.
    pub known: Vec<String>,
    /// Declarations for this scenario whose step did not fail: the finding
    /// stopped happening.
    pub gone: Vec<String>,
}

/// Sorts `failures` of `scenario` into known and unexplained, and finds the
/// declarations that no longer happen.
pub fn judge(scenario: &str, failures: &[FailedExpectation], known: &[KnownFinding]) -> Judged {
    let mine: Vec<&KnownFinding> = known.iter().filter(|k| k.scenario == scenario).collect();
    let mut judged = Judged::default();
    for f in failures {
        match mine.iter().find(|k| k.step == f.step) {
            Some(k) => judged.known.push(format!(
                "known finding ({}): {}; {}",
                k.at, f.message, k.reason
            )),
            None => judged.unexplained.push(f.message.clone()),
        }
    }
    for k in mine {
        if !failures.iter().any(|f| f.step == k.step) {
            judged.gone.push(format!(
                "the known finding declared at {} (step {}) no longer happens: every expectation \
                 of that step held; if the kernel is fixed, remove the declaration",
                k.at, k.step
            ));
        }
    }
    judged
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[[finding]]\nscenario = \"s\"\nstep = 3\nreason = \"why\"\n";

    fn failure(step: usize) -> FailedExpectation {
        FailedExpectation {
            step,
            message: format!("s.toml:1:1: step {step} (x): expected ok"),
        }
    }

    #[test]
    fn declared_failures_are_known_others_are_findings_and_fixed_ones_are_loud() {
        let known = parse("k.toml", FILE).unwrap();
        assert_eq!(known[0].at, "k.toml:1:1");
        let j = judge("s", &[failure(3), failure(4)], &known);
        assert_eq!(j.unexplained, ["s.toml:1:1: step 4 (x): expected ok"]);
        assert_eq!(j.known.len(), 1);
        assert!(j.known[0].contains("why"), "{:?}", j.known);
        assert!(j.gone.is_empty());
        let j = judge("s", &[], &known);
        assert!(j.gone[0].contains("no longer happens"), "{j:?}");
        // Another scenario's declarations do not apply.
        assert_eq!(judge("t", &[failure(3)], &known).unexplained.len(), 1);
    }

    #[test]
    fn bad_declarations_are_errors_with_positions() {
        let e = parse(
            "k.toml",
            "[[finding]]\nscenario = \"s\"\nstep = 3\nreason = \" \"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("k.toml:1:1: a known finding needs its `reason`"),
            "{e}"
        );
        let e = parse("k.toml", &format!("{FILE}{FILE}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("declared twice (first at k.toml:1:1)"), "{e}");
        let e = parse("k.toml", "[[finding]]\nscenario = \"s\"\nstepp = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("k.toml:3:1: unknown field `stepp`"), "{e}");
    }
}
