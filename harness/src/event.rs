//! The typed stream of what the pipeline is doing.
//!
//! Every stage reports through a [`Reporter`]: a start, lines and progress,
//! an end with its outcome and duration. The terminal UI in `xtask` and the
//! run's log file are both consumers, so what a person sees and what is kept
//! cannot drift apart.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// The pipeline's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Deps,
    Kernel,
    Image,
    Vm,
    Scenario,
    Snapshot,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Deps => "deps",
            Stage::Kernel => "kernel",
            Stage::Image => "image",
            Stage::Vm => "vm",
            Stage::Scenario => "scenario",
            Stage::Snapshot => "snapshot",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage began working on `what` (a variant, an image, a scenario).
    Start { stage: Stage, what: String },
    /// A line worth showing a person.
    Line { stage: Stage, text: String },
    /// `done` of `total` units (objects compiled, files fetched); `total` is
    /// an estimate where the stage cannot know it.
    Progress {
        stage: Stage,
        done: u64,
        total: Option<u64>,
    },
    /// A stage finished `what`; `ok` is false when it failed.
    End {
        stage: Stage,
        what: String,
        ok: bool,
        elapsed: Duration,
    },
}

/// A consumer of [`Event`]s.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
}

impl dyn Reporter + '_ {
    pub fn start(&self, stage: Stage, what: impl Into<String>) {
        self.event(Event::Start {
            stage,
            what: what.into(),
        });
    }

    pub fn line(&self, stage: Stage, text: impl Into<String>) {
        self.event(Event::Line {
            stage,
            text: text.into(),
        });
    }

    pub fn progress(&self, stage: Stage, done: u64, total: Option<u64>) {
        self.event(Event::Progress { stage, done, total });
    }

    pub fn end(&self, stage: Stage, what: impl Into<String>, ok: bool, elapsed: Duration) {
        self.event(Event::End {
            stage,
            what: what.into(),
            ok,
            elapsed,
        });
    }
}

/// Prints events to stderr, one line each; progress is redrawn in place on
/// a terminal and thinned out to every 10% elsewhere (CI logs).
pub struct TermReporter {
    state: Mutex<TermState>,
    is_tty: bool,
}

struct TermState {
    last_percent: Option<u64>,
    progress_shown: bool,
}

impl TermReporter {
    pub fn new() -> TermReporter {
        use std::io::IsTerminal;
        TermReporter {
            state: Mutex::new(TermState {
                last_percent: None,
                progress_shown: false,
            }),
            is_tty: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for TermReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for TermReporter {
    fn event(&self, event: Event) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        if st.progress_shown && !matches!(event, Event::Progress { .. }) {
            let _ = writeln!(err);
            st.progress_shown = false;
        }
        match event {
            Event::Start { stage, what } => {
                st.last_percent = None;
                let _ = writeln!(err, "=> {:<8} {what}", stage.name());
            }
            Event::Line { stage, text } => {
                let _ = writeln!(err, "   {:<8} {text}", stage.name());
            }
            Event::Progress { stage, done, total } => {
                let text = match total {
                    Some(t) if t > 0 => {
                        let pct = (done * 100 / t).min(99);
                        if !self.is_tty {
                            if st.last_percent.is_some_and(|p| pct < p + 10) {
                                return;
                            }
                            st.last_percent = Some(pct);
                        }
                        format!("{done}/{t} ({pct}%)")
                    }
                    _ => format!("{done}"),
                };
                if self.is_tty {
                    let _ = write!(err, "\r   {:<8} {text}\x1b[K", stage.name());
                    st.progress_shown = true;
                } else {
                    let _ = writeln!(err, "   {:<8} {text}", stage.name());
                }
            }
            Event::End {
                stage,
                what,
                ok,
                elapsed,
            } => {
                let verdict = if ok { "done" } else { "FAILED" };
                let _ = writeln!(
                    err,
                    "<= {:<8} {what}: {verdict} in {:.1}s",
                    stage.name(),
                    elapsed.as_secs_f64()
                );
            }
        }
    }
}

/// Discards everything (library tests).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event) {}
}
