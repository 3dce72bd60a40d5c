//! `bundle`: one trial of a run packed for a person to replay.

use harness::ExitCode;

use crate::flags;

impl flags::Bundle {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let run = match self.run {
            Some(r) => r,
            None => harness::bundle::find_run(&harness::cache::runs_root(), &self.trial)?,
        };
        let out = self
            .out
            .unwrap_or_else(|| harness::cache::project_root().join("target/msi-harness/bundles"));
        let b = harness::bundle::write(&run, &self.trial, &out)?;
        println!(
            "{}: {} requests, {:.1} MB, from {}",
            b.path.display(),
            b.requests,
            b.bytes as f64 / 1e6,
            run.display()
        );
        if !b.host_steps.is_empty() {
            println!("  not replayed (host steps): {}", b.host_steps.join(", "));
        }
        println!(
            "replay: tar -xzf {} && ./{}/replay.sh",
            b.path.display(),
            b.trial
        );
        Ok(ExitCode::Pass)
    }
}
