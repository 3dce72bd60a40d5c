//! What `cargo xtask mutants` measures: how each mutant of the patch under
//! test ended (`Verdict`), how each scenario's trial on it ended (`Cell`),
//! and the report: the kill matrix, the counts and each survivor's diff.
//!
//! The mutants themselves are `kernel::mutate`'s; building them and running
//! the trials is `xtask`'s loop over `pipeline` and nextest.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::kernel::mutate::Mutant;
use crate::outcome::{ExitCode, Failure, Outcome};

/// What became of a mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// At least one scenario had a finding.
    Killed,
    /// Every scenario ended as accepted.
    Survived,
    /// Its object code is the baseline's: no scenario can tell them apart,
    /// so none was run.
    Equivalent,
    /// The build failed.
    NotCompiled,
    /// No finding, but a trial could not run or left no result: neither
    /// killed nor survived.
    Undecided,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Killed => "killed",
            Verdict::Survived => "survived",
            Verdict::Equivalent => "equivalent",
            Verdict::NotCompiled => "not compiled",
            Verdict::Undecided => "undecided",
        }
    }

    /// From the trials on a mutant that was built and differs from the
    /// baseline: a finding kills; all held (or skipped) survives.
    pub fn of_trials(cells: &BTreeMap<String, Cell>) -> Verdict {
        if cells.values().any(|c| *c == Cell::Killed) {
            Verdict::Killed
        } else if !cells.is_empty() && cells.values().all(|c| c.held()) {
            Verdict::Survived
        } else {
            Verdict::Undecided
        }
    }
}

/// How one scenario's trial on one kernel ended: a cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cell {
    Killed,
    Held,
    Skipped,
    Infrastructure,
    /// The trial left no result.
    Missing,
}

impl Cell {
    /// A trial that left a result (one that left none is `Missing`).
    pub fn of(outcome: Outcome) -> Cell {
        match outcome {
            Outcome::Pass | Outcome::Known => Cell::Held,
            Outcome::Skip => Cell::Skipped,
            Outcome::Fail(Failure::Finding) => Cell::Killed,
            Outcome::Fail(Failure::Infrastructure) => Cell::Infrastructure,
        }
    }

    /// Ended as the snapshots say (or did not apply).
    pub fn held(self) -> bool {
        matches!(self, Cell::Held | Cell::Skipped)
    }

    fn mark(self) -> char {
        match self {
            Cell::Killed => 'K',
            Cell::Held => '.',
            Cell::Skipped => '-',
            Cell::Infrastructure => 'I',
            Cell::Missing => '?',
        }
    }
}

/// A mutant's record in `mutants.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(flatten)]
    pub mutant: Mutant,
    pub verdict: Verdict,
    /// Scenario → how its trial ended (empty when no trial ran).
    pub scenarios: BTreeMap<String, Cell>,
    /// The build came from the cache.
    pub build_cached: bool,
    pub build_s: f64,
    pub trials_s: f64,
    /// The build error's last lines, for a mutant that did not compile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_error: Option<String>,
    pub diff: String,
}

impl Record {
    /// `killed by 3 of 23`, or the verdict.
    pub fn line(&self) -> String {
        match self.verdict {
            Verdict::Killed => format!(
                "killed by {} of {}",
                self.scenarios
                    .values()
                    .filter(|c| **c == Cell::Killed)
                    .count(),
                self.scenarios.len()
            ),
            v => v.word().to_string(),
        }
    }
}

/// The run's exit code: 2 when a mutant is undecided (a trial could not
/// run), else 1 when one survived (the suite missed it), else 0.
pub fn exit_code(records: &[Record]) -> ExitCode {
    let count = |v: Verdict| records.iter().filter(|r| r.verdict == v).count();
    crate::outcome::mutation_exit_code(count(Verdict::Survived), count(Verdict::Undecided))
}

/// `and-or 1, delete 20, …`: how many mutants each operator made.
pub fn by_operator(mutants: &[Mutant]) -> String {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for m in mutants {
        *n.entry(m.operator).or_default() += 1;
    }
    n.iter()
        .map(|(op, k)| format!("{op} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kill matrix (a row per mutant, a column per scenario, numbered with
/// a legend), each scenario's kills, the counts, the builds, and every
/// survivor with its diff.
pub fn report(records: &[Record], scenarios: &[String], wall: Duration) -> String {
    let mut out = String::new();
    let count = |v: Verdict| records.iter().filter(|r| r.verdict == v).count();
    out.push_str(
        "kill matrix (K killed, . held, - skipped, I infrastructure, ? no result; \
         a blank row: no trial ran):\n",
    );
    for (i, s) in scenarios.iter().enumerate() {
        out.push_str(&format!("  {:>2} {s}\n", i + 1));
    }
    let width = records
        .iter()
        .map(|r| r.mutant.id.len())
        .max()
        .unwrap_or(0)
        .max("mutant".len());
    let header: String = (1..=scenarios.len()).map(|i| format!("{i:>3}")).collect();
    out.push_str(&format!("{:width$} {header}  verdict\n", "mutant"));
    for r in records {
        let row: String = scenarios
            .iter()
            .map(|s| match r.scenarios.get(s) {
                Some(c) => format!("{:>3}", c.mark()),
                None => "   ".to_string(),
            })
            .collect();
        out.push_str(&format!(
            "{:width$} {row}  {}\n",
            r.mutant.id,
            r.verdict.word()
        ));
    }
    let kills: String = scenarios
        .iter()
        .map(|s| {
            let k = records
                .iter()
                .filter(|r| r.scenarios.get(s) == Some(&Cell::Killed))
                .count();
            format!("{k:>3}")
        })
        .collect();
    out.push_str(&format!("{:width$} {kills}\n", "kills"));
    let (killed, survived) = (count(Verdict::Killed), count(Verdict::Survived));
    out.push_str(&format!(
        "\n{} mutants: {killed} killed, {survived} survived, {} equivalent, {} not compiled, \
         {} undecided; mutation score {}; wall time {}\n",
        records.len(),
        count(Verdict::Equivalent),
        count(Verdict::NotCompiled),
        count(Verdict::Undecided),
        match killed + survived {
            0 => "n/a".to_string(),
            decided => format!(
                "{:.0} % (killed of killed + survived)",
                100.0 * killed as f64 / decided as f64
            ),
        },
        minutes(wall),
    ));
    let built: Vec<&Record> = records
        .iter()
        .filter(|r| r.verdict != Verdict::NotCompiled)
        .collect();
    let fresh: Vec<&&Record> = built.iter().filter(|r| !r.build_cached).collect();
    out.push_str(&format!(
        "builds: {} reused from the cache, {} built ({:.0} s in all); trials {:.0} s in all\n",
        built.len() - fresh.len(),
        fresh.len(),
        fresh.iter().fold(0.0, |s, r| s + r.build_s),
        records.iter().fold(0.0, |s, r| s + r.trials_s)
    ));
    for r in records.iter().filter(|r| r.verdict == Verdict::Survived) {
        out.push_str(&format!("\nsurvived: {}\n{}", r.mutant.id, r.diff));
    }
    for r in records.iter().filter(|r| r.verdict == Verdict::Undecided) {
        let why: Vec<String> = r
            .scenarios
            .iter()
            .filter(|(_, c)| !c.held() && **c != Cell::Killed)
            .map(|(s, c)| format!("{s} ({c:?})"))
            .collect();
        out.push_str(&format!(
            "\nundecided: {}: {}\n",
            r.mutant.id,
            why.join(", ")
        ));
    }
    for r in records.iter().filter(|r| r.verdict == Verdict::NotCompiled) {
        out.push_str(&format!(
            "\nnot compiled: {}\n{}{}\n",
            r.mutant.id,
            r.diff,
            r.build_error.as_deref().unwrap_or("")
        ));
    }
    out
}

/// `12m05s`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::apply::{Applied, FileState};

    fn mutants() -> Vec<Mutant> {
        let new = "int f(int a)\n{\n\tif (a == 1)\n\t\treturn -EINVAL;\n\treturn 0;\n}\n";
        let old = "int f(int a)\n{\n\treturn 0;\n}\n";
        let mut applied = Applied::default();
        applied.files.insert(
            "x/f.c".into(),
            Some(FileState {
                data: new.as_bytes().to_vec(),
                executable: None,
            }),
        );
        let pristine = BTreeMap::from([("x/f.c".to_string(), Some(old.to_string()))]);
        crate::kernel::mutate::generate(&applied, &pristine)
    }

    fn record(m: &Mutant, verdict: Verdict, cells: &[Cell]) -> Record {
        Record {
            mutant: m.clone(),
            verdict,
            scenarios: ["a-scenario", "b-scenario"]
                .iter()
                .zip(cells)
                .map(|(s, c)| (s.to_string(), *c))
                .collect(),
            build_cached: verdict == Verdict::Equivalent,
            build_s: 8.0,
            trials_s: if cells.is_empty() { 0.0 } else { 40.0 },
            build_error: (verdict == Verdict::NotCompiled).then(|| "error: x".into()),
            diff: m.diff(),
        }
    }

    #[test]
    fn a_finding_kills_all_held_survives_anything_else_is_undecided() {
        let cells = |c: &[Cell]| -> BTreeMap<String, Cell> {
            c.iter()
                .enumerate()
                .map(|(i, c)| (i.to_string(), *c))
                .collect()
        };
        use Cell::*;
        assert_eq!(
            Verdict::of_trials(&cells(&[Held, Killed, Infrastructure])),
            Verdict::Killed
        );
        assert_eq!(
            Verdict::of_trials(&cells(&[Held, Skipped])),
            Verdict::Survived
        );
        assert_eq!(
            Verdict::of_trials(&cells(&[Held, Missing])),
            Verdict::Undecided
        );
        assert_eq!(
            Verdict::of_trials(&cells(&[Infrastructure])),
            Verdict::Undecided
        );
        assert_eq!(Verdict::of_trials(&cells(&[])), Verdict::Undecided);
        assert_eq!(Cell::of(Outcome::FINDING), Killed, "a finding is a kill");
        assert_eq!(Cell::of(Outcome::Known), Held);
    }

    #[test]
    fn the_report_has_the_matrix_counts_and_each_survivors_diff() {
        let m = mutants();
        assert_eq!(
            by_operator(&m),
            "const+1 1, const-1 1, delete 1, eq-ne 1, errno-0 1, negate 1"
        );
        let records = vec![
            record(&m[0], Verdict::Killed, &[Cell::Killed, Cell::Held]),
            record(&m[1], Verdict::Survived, &[Cell::Held, Cell::Skipped]),
            record(&m[2], Verdict::Equivalent, &[]),
            record(&m[3], Verdict::NotCompiled, &[]),
        ];
        let scenarios = vec!["a-scenario".to_string(), "b-scenario".to_string()];
        let text = report(&records, &scenarios, Duration::from_secs(125));
        let id = |i: usize| m[i].id.as_str();
        assert!(
            text.contains("   1 a-scenario\n   2 b-scenario\n"),
            "{text}"
        );
        let row = |i: usize, cells: &str, verdict: &str| {
            let width = records.iter().map(|r| r.mutant.id.len()).max().unwrap();
            format!("{:width$} {cells}  {verdict}\n", id(i))
        };
        assert!(text.contains(&row(0, "  K  .", "killed")), "{text}");
        assert!(text.contains(&row(1, "  .  -", "survived")), "{text}");
        assert!(text.contains(&row(2, "      ", "equivalent")), "{text}");
        assert!(
            text.contains(
                "4 mutants: 1 killed, 1 survived, 1 equivalent, 1 not compiled, 0 undecided; \
             mutation score 50 % (killed of killed + survived); wall time 2m05s\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("builds: 1 reused from the cache, 2 built (16 s in all)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\nsurvived: {}\n{}", id(1), m[1].diff())),
            "{text}"
        );
        assert!(!text.contains(&format!("survived: {}", id(0))), "{text}");
        assert!(text.contains(&format!("not compiled: {}", id(3))) && text.contains("error: x"));
        assert_eq!(exit_code(&records), ExitCode::Finding);
        assert_eq!(exit_code(&records[..1]), ExitCode::Pass);
        // Nothing built: 0 s, not -0 s (an empty f64 sum is -0.0).
        let cached = record(&m[2], Verdict::Equivalent, &[]);
        let text = report(std::slice::from_ref(&cached), &scenarios, Duration::ZERO);
        assert!(
            text.contains("1 reused from the cache, 0 built (0 s in all)"),
            "{text}"
        );
        let undecided = record(&m[0], Verdict::Undecided, &[Cell::Held, Cell::Missing]);
        assert_eq!(
            exit_code(std::slice::from_ref(&undecided)),
            ExitCode::Infrastructure
        );
        let text = report(&[undecided], &scenarios, Duration::ZERO);
        assert!(
            text.contains(&format!("undecided: {}: b-scenario (Missing)", id(0))),
            "{text}"
        );
    }
}
