//! `cargo xtask`: the msi-harness command line.
//!
//! A thin layer in the style of rust-analyzer's xtask: flags are parsed in
//! `flags`, each verb lives in its own module and calls into the `harness`
//! library, which holds all pipeline logic. Errors are mapped to the exit
//! codes defined in `harness::error`: 0 pass, 1 a finding, 2 infrastructure.

mod bench;
mod bisect;
mod boot;
mod bundle;
mod compare;
mod flags;
mod kernel;
mod merge;
mod mutants;
mod test;

use std::process::ExitCode;

use clap::Parser;
use harness::event::TermReporter;

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    let reporter = TermReporter::new();
    let result = match flags.command {
        flags::Command::Deps(cmd) => cmd.run(&reporter),
        flags::Command::Kernel(cmd) => cmd.run(&reporter),
        flags::Command::Image(cmd) => cmd.run(&reporter),
        flags::Command::Boot(cmd) => cmd.run(&reporter),
        flags::Command::Shell(cmd) => cmd.run(&reporter),
        flags::Command::Test(cmd) => cmd.run(&reporter),
        flags::Command::Bless(cmd) => cmd.bless(&reporter),
        flags::Command::Compare(cmd) => cmd.run(&reporter),
        flags::Command::Bench(cmd) => cmd.run(&reporter),
        flags::Command::Mutants(cmd) => cmd.run(&reporter),
        flags::Command::Matrix(cmd) => cmd.run(),
        flags::Command::Merge(cmd) => cmd.run(),
        flags::Command::Bundle(cmd) => cmd.run(),
        flags::Command::Bisect(cmd) => cmd.run(&reporter),
    };
    match result {
        Ok(code) => ExitCode::from(code.code() as u8),
        Err(err) => {
            let code = harness::outcome::exit_code_of(&err);
            eprintln!("error: {err:#}");
            ExitCode::from(code.code() as u8)
        }
    }
}

/// A runtime for the verbs that drive a VM (tokio lives only there).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
