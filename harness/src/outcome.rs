//! How things end, and the exit code each ending deserves: the one place
//! where 0, 1 and 2 are decided.
//!
//! - [`Failure`] is why something failed: the kernel's behaviour (a
//!   finding) or the harness's inability to do its job (infrastructure).
//!   [`crate::Error`] carries one; any other error is infrastructure.
//! - [`Outcome`] is how one trial ended; it is what a trial's result file
//!   records.
//! - [`TestRun`] is how a whole `cargo xtask test` ended: every trial's
//!   outcome, what nextest said about the other tests, the scenario files
//!   that did not parse. [`TestRun::exit_code`] turns it into the process's
//!   exit code.
//!
//! Infrastructure wins over findings: the findings of a run whose harness
//! broke somewhere are not trustworthy, and "nothing was found" must never
//! be said of a run that could not look.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::error::Failure;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything ran and every expectation held.
    Pass = 0,
    /// The system under test misbehaved: a snapshot mismatch, a failed
    /// expectation, a kernel WARN, BUG or panic.
    Finding = 1,
    /// The harness could not do its job: bad input, a missing tool, a build
    /// failure, QEMU dying, a timeout, a test binary that does not build.
    Infrastructure = 2,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The worse of two: infrastructure over finding over pass.
    pub fn worst(self, other: ExitCode) -> ExitCode {
        self.max(other)
    }
}

impl Failure {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Failure::Finding => ExitCode::Finding,
            Failure::Infrastructure => ExitCode::Infrastructure,
        }
    }
}

/// The failure an `anyhow::Error` stands for: the kind of the first
/// [`crate::Error`] in its chain, else infrastructure (an error nobody
/// classified is the harness's, never the kernel's).
pub fn failure_of(err: &anyhow::Error) -> Failure {
    err.chain()
        .find_map(|e| e.downcast_ref::<crate::Error>())
        .map(|e| e.kind)
        .unwrap_or(Failure::Infrastructure)
}

/// The exit code a command that stopped with `err` ends with.
pub fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    failure_of(err).exit_code()
}

/// How a `cargo xtask compare` ended. Differences between two kernels are
/// what the reviewer asked for, never findings: a comparison that could
/// compare every scenario passes. A scenario it could not compare (a trial
/// that failed to run, a result or observations file that is missing or
/// unreadable) leaves the reviewer without an answer: infrastructure.
pub fn comparison_exit_code(incomparable_scenarios: usize) -> ExitCode {
    if incomparable_scenarios == 0 {
        ExitCode::Pass
    } else {
        ExitCode::Infrastructure
    }
}

/// How a `cargo xtask mutants` run ended. A mutant no scenario killed is
/// a finding about the suite (a blind spot, or an equivalent mutant the
/// object check could not see); one whose trials could not all run
/// decides nothing: infrastructure, which wins, as nothing is known of it.
pub fn mutation_exit_code(survived: usize, undecided: usize) -> ExitCode {
    if undecided > 0 {
        ExitCode::Infrastructure
    } else if survived > 0 {
        ExitCode::Finding
    } else {
        ExitCode::Pass
    }
}

/// How a `cargo xtask bisect` ended. A named first bad commit is a
/// finding (the regression is real and located), as a failing test of that
/// commit is; a range whose skipped commits leave it open, or a `--bad`
/// that does not fail, located nothing: infrastructure.
pub fn bisect_exit_code(first_bad_named: bool) -> ExitCode {
    if first_bad_named {
        ExitCode::Finding
    } else {
        ExitCode::Infrastructure
    }
}

/// How one trial ended. Serialised as one word: `pass`, `known`, `skip`,
/// `finding`, `infrastructure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Outcome {
    Pass,
    /// Everything held but findings declared as known (understood,
    /// reported, not fixed yet: `scenarios/known-findings/<variant>.toml`), each of
    /// which happened as declared.
    Known,
    /// Not applicable to this kernel or QEMU (the reason is recorded).
    Skip,
    Fail(Failure),
}

impl Outcome {
    pub const FINDING: Outcome = Outcome::Fail(Failure::Finding);
    pub const INFRASTRUCTURE: Outcome = Outcome::Fail(Failure::Infrastructure);

    pub fn word(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Known => "known",
            Outcome::Skip => "skip",
            Outcome::Fail(Failure::Finding) => "finding",
            Outcome::Fail(Failure::Infrastructure) => "infrastructure",
        }
    }

    pub fn failed(self) -> bool {
        matches!(self, Outcome::Fail(_))
    }

    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Pass | Outcome::Known | Outcome::Skip => ExitCode::Pass,
            Outcome::Fail(f) => f.exit_code(),
        }
    }
}

impl From<Outcome> for &'static str {
    fn from(o: Outcome) -> &'static str {
        o.word()
    }
}

impl TryFrom<String> for Outcome {
    type Error = String;
    fn try_from(s: String) -> Result<Outcome, String> {
        [
            Outcome::Pass,
            Outcome::Known,
            Outcome::Skip,
            Outcome::FINDING,
            Outcome::INFRASTRUCTURE,
        ]
        .into_iter()
        .find(|o| o.word() == s)
        .ok_or_else(|| {
            format!("unknown outcome `{s}`: expected pass, known, skip, finding or infrastructure")
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What the test runner (nextest) reported about the run as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestsEnd {
    /// Every test it ran passed.
    Passed,
    /// Some tests failed; these are the failing tests that are *not*
    /// scenario trials with a result file (unit tests, VM tests of the
    /// harness, scenario trials that died before recording their result).
    Failed { unexplained: Vec<String> },
    /// The tests did not run: a test binary did not build, nextest could
    /// not start, or it wrote no report.
    DidNotRun { why: String },
}

/// How a whole `cargo xtask test` ended.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The outcome of every scenario trial that wrote a result file.
    pub trials: Vec<Outcome>,
    pub tests: TestsEnd,
    /// Scenario files that do not parse (bad input).
    pub malformed_scenarios: usize,
}

impl TestRun {
    /// 0 when every trial passed or was skipped and every other test
    /// passed; 1 when the only failures are findings; 2 when anything could
    /// not run or failed for a reason that is not the kernel's behaviour.
    pub fn exit_code(&self) -> ExitCode {
        let trials = self
            .trials
            .iter()
            .fold(ExitCode::Pass, |c, o| c.worst(o.exit_code()));
        let tests = match &self.tests {
            TestsEnd::Passed => ExitCode::Pass,
            // Failing trials explain a failed run; anything else failing is
            // not a finding about the kernel.
            TestsEnd::Failed { unexplained } if unexplained.is_empty() => {
                if self.trials.iter().any(|o| o.failed()) {
                    ExitCode::Pass
                } else {
                    // nextest says something failed and nothing says what.
                    ExitCode::Infrastructure
                }
            }
            TestsEnd::Failed { .. } | TestsEnd::DidNotRun { .. } => ExitCode::Infrastructure,
        };
        let input = if self.malformed_scenarios > 0 {
            ExitCode::Infrastructure
        } else {
            ExitCode::Pass
        };
        trials.worst(tests).worst(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn an_error_is_infrastructure_unless_classified_anywhere_in_its_chain() {
        let e: anyhow::Error = crate::Error::finding("snapshot mismatch").into();
        let e = e.context("scenario default-window");
        assert_eq!(exit_code_of(&e), ExitCode::Finding);
        let e = anyhow::anyhow!("io").context("boot");
        assert_eq!(exit_code_of(&e), ExitCode::Infrastructure);
        let r: anyhow::Result<()> = Err(crate::Error::infra("no qemu")).context("deps");
        assert_eq!(exit_code_of(&r.unwrap_err()), ExitCode::Infrastructure);
    }

    #[test]
    fn differences_are_information_and_missing_data_is_infrastructure() {
        assert_eq!(comparison_exit_code(0), ExitCode::Pass);
        assert_eq!(comparison_exit_code(1), ExitCode::Infrastructure);
    }

    #[test]
    fn outcomes_are_one_word_in_result_files() {
        for o in [
            Outcome::Pass,
            Outcome::Skip,
            Outcome::FINDING,
            Outcome::INFRASTRUCTURE,
        ] {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.word()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
        }
        let err = serde_json::from_str::<Outcome>("\"fail\"").unwrap_err();
        assert!(err.to_string().contains("unknown outcome `fail`"), "{err}");
    }

    fn run(trials: &[Outcome], tests: TestsEnd, malformed: usize) -> ExitCode {
        TestRun {
            trials: trials.to_vec(),
            tests,
            malformed_scenarios: malformed,
        }
        .exit_code()
    }

    fn failed(names: &[&str]) -> TestsEnd {
        TestsEnd::Failed {
            unexplained: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    use Outcome::{Pass, Skip};
    const FINDING: Outcome = Outcome::FINDING;
    const INFRA: Outcome = Outcome::INFRASTRUCTURE;

    /// Every way a run can end, and its exit code.
    #[test]
    fn each_way_a_run_ends_has_one_exit_code() {
        use ExitCode as X;
        let cases: Vec<(&str, ExitCode)> = vec![
            ("all passed", run(&[Pass, Pass], TestsEnd::Passed, 0)),
            ("passes and skips", run(&[Pass, Skip], TestsEnd::Passed, 0)),
            ("no trials at all", run(&[], TestsEnd::Passed, 0)),
            ("a finding", run(&[Pass, FINDING], failed(&[]), 0)),
            ("two findings", run(&[FINDING, FINDING], failed(&[]), 0)),
            (
                "an infrastructure trial",
                run(&[Pass, INFRA], failed(&[]), 0),
            ),
            (
                "a finding and an infrastructure trial",
                run(&[FINDING, INFRA], failed(&[]), 0),
            ),
            (
                "a failing unit test, trials pass",
                run(&[Pass], failed(&["harness::vm::tests::x"]), 0),
            ),
            (
                "a failing unit test beside a finding",
                run(&[FINDING], failed(&["harness::cache::tests::y"]), 0),
            ),
            (
                "a trial that died before its result file",
                run(
                    &[Pass],
                    failed(&["harness::scenarios default-window@upstream-6.18"]),
                    0,
                ),
            ),
            (
                "nextest failed, nothing says what",
                run(&[Pass], failed(&[]), 0),
            ),
            (
                "a test binary does not build",
                run(
                    &[],
                    TestsEnd::DidNotRun {
                        why: "cargo nextest exited 101 and wrote no JUnit report".into(),
                    },
                    0,
                ),
            ),
            (
                "a scenario file does not parse",
                run(&[Pass], failed(&["harness::scenarios parse:bad"]), 1),
            ),
            (
                "a scenario file does not parse, beside a finding",
                run(&[FINDING], failed(&["harness::scenarios parse:bad"]), 1),
            ),
        ];
        let want = [
            X::Pass,
            X::Pass,
            X::Pass,
            X::Finding,
            X::Finding,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
            X::Infrastructure,
        ];
        assert_eq!(cases.len(), want.len());
        for ((what, got), want) in cases.iter().zip(want) {
            assert_eq!(*got, want, "{what}");
        }
    }
}
