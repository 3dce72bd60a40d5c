//! `msi-agent`: the guest side of msi-harness. It performs scenario steps
//! with real iommufd/VFIO ioctls and edu register accesses, and reports what
//! it sees; a failing call is a result, never a crash.
//!
//! ```text
//! msi-agent serve [--verbose]   JSON lines on stdin/stdout (see msi-protocol)
//! msi-agent run STEP_JSON...    perform steps in one session, print each result
//! msi-agent version             print agent and protocol versions
//! ```

mod concurrent;
mod device;
mod kmsg;
mod observe;
mod session;
mod sys;
mod uapi;

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use msi_protocol::{Request, Response, Step, StepResult, PROTOCOL_VERSION};

use crate::session::Session;

const USAGE: &str = "usage: msi-agent serve [--verbose] | run STEP_JSON... | version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve"] => serve(false),
        ["serve", "--verbose" | "-v"] => serve(true),
        ["run", steps @ ..] if !steps.is_empty() => run(steps),
        ["version" | "--version"] => {
            println!(
                "msi-agent {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("msi-agent: {USAGE}");
            ExitCode::from(2)
        }
    }
}

/// What to do after answering a request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Exit(u8),
}

/// The protocol state machine of `serve`, apart from I/O so tests can drive it.
#[derive(Debug, Default)]
struct Server {
    greeted: bool,
    session: Session,
}

impl Server {
    fn handle(&mut self, line: &str) -> (Response, Next) {
        let request = match serde_json::from_str::<Request>(line) {
            Ok(request) => request,
            Err(e) if self.greeted => {
                return (
                    Response::Error {
                        message: format!("bad request: {e}"),
                    },
                    Next::Continue,
                );
            }
            Err(e) => {
                return (
                    Response::Error {
                        message: format!("bad hello: {e}"),
                    },
                    Next::Exit(2),
                )
            }
        };
        match request {
            Request::Hello { version } if version != PROTOCOL_VERSION => (
                Response::Error {
                    message: format!(
                        "protocol version mismatch: harness speaks {version}, agent speaks {PROTOCOL_VERSION} \
                         (rebuild the image with the harness's msi-agent)"
                    ),
                },
                Next::Exit(2),
            ),
            Request::Hello { .. } => {
                self.greeted = true;
                let response = Response::Hello {
                    version: PROTOCOL_VERSION,
                    kernel_release: sys::kernel_release(),
                    agent: env!("CARGO_PKG_VERSION").to_owned(),
                };
                (response, Next::Continue)
            }
            Request::Shutdown {} => (Response::Shutdown {}, Next::Exit(0)),
            Request::Step(_) if !self.greeted => {
                (Response::Error { message: "the first request must be hello".into() }, Next::Exit(2))
            }
            Request::Step(step) => (Response::Step(self.session.run(&step)), Next::Continue),
        }
    }
}

fn serve(verbose: bool) -> ExitCode {
    let mut server = Server::default();
    let mut out = io::stdout().lock();
    for (number, line) in io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("msi-agent: reading stdin: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (response, next) = server.handle(&line);
        let json = match serde_json::to_string(&response) {
            Ok(json) => json,
            Err(e) => {
                eprintln!(
                    "msi-agent: encoding the answer to request {}: {e}",
                    number + 1
                );
                return ExitCode::from(2);
            }
        };
        if verbose || matches!(response, Response::Error { .. }) {
            eprintln!("msi-agent: {} → {json}", line.trim());
        }
        if let Err(e) = writeln!(out, "{json}").and_then(|()| out.flush()) {
            // The harness went away; nobody is left to answer.
            eprintln!("msi-agent: writing stdout: {e}");
            return ExitCode::from(1);
        }
        if let Next::Exit(code) = next {
            return ExitCode::from(code);
        }
    }
    ExitCode::SUCCESS
}

fn run(steps: &[&str]) -> ExitCode {
    let parsed: Result<Vec<Step>, String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::from_str(s).map_err(|e| format!("step {}: {e}: {s}", i + 1)))
        .collect();
    let steps = match parsed {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("msi-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let mut session = Session::default();
    let mut all_ok = true;
    for step in &steps {
        let result = session.run(step);
        all_ok &= matches!(result, StepResult::Ok(_));
        match serde_json::to_string(&result) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("msi-agent: encoding a result: {e}"),
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use msi_protocol::StepValue;

    use super::*;

    #[test]
    fn hello_first_then_steps_then_shutdown() {
        let mut server = Server::default();
        let (hello, next) =
            server.handle(&format!(r#"{{"hello":{{"version":{PROTOCOL_VERSION}}}}}"#));
        assert!(
            matches!(
                hello,
                Response::Hello {
                    version: PROTOCOL_VERSION,
                    ..
                }
            ),
            "{hello:?}"
        );
        assert_eq!(next, Next::Continue);
        let (step, next) = server.handle(r#"{"step":{"op":"sleep","ms":0}}"#);
        assert_eq!(
            (step, next),
            (
                Response::Step(StepResult::Ok(StepValue::Done)),
                Next::Continue
            )
        );
        let (bad, next) = server.handle(r#"{"step":{"op":"nap"}}"#);
        assert!(
            matches!(bad, Response::Error { ref message } if message.contains("unknown variant `nap`"))
        );
        assert_eq!(next, Next::Continue);
        assert_eq!(
            server.handle(r#"{"shutdown":{}}"#),
            (Response::Shutdown {}, Next::Exit(0))
        );
    }

    #[test]
    fn version_mismatch_is_an_error_and_exit() {
        let (response, next) = Server::default().handle(r#"{"hello":{"version":999}}"#);
        assert!(
            matches!(response, Response::Error { ref message } if message.contains("harness speaks 999"))
        );
        assert_eq!(next, Next::Exit(2));
    }

    #[test]
    fn a_step_before_hello_is_refused() {
        let (response, next) = Server::default().handle(r#"{"step":{"op":"sleep","ms":0}}"#);
        assert_eq!(
            response,
            Response::Error {
                message: "the first request must be hello".into()
            }
        );
        assert_eq!(next, Next::Exit(2));
        assert_eq!(Server::default().handle("nonsense").1, Next::Exit(2));
    }
}
