//! What `cargo xtask bench` measures, as library code: each figure is a
//! set of repetitions (min, median, max), taken in one run so that ratios
//! between figures mean something on a noisy machine. Nothing here asserts
//! a time; the figures are printed and written as JSON (`bench.json` in the
//! run's artifacts) for later runs to be compared with.
//!
//! - the floor: plain QEMU booting the kernel to the first line of `/init`
//!   (`vm::floor`);
//! - the harness's cold start: QEMU start to the agent answering `hello`
//!   over SSH, as a trial's guest starts with `--cold-boot`;
//! - the start from a saved machine (`guest::saved`), to the same point;
//! - one typical scenario trial, both ways.
//!
//! The suite figures (one VM at a time, several at once) are whole nextest
//! runs, which `xtask` starts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::guest::saved::StartMode;
use crate::scenario::Inputs;
use crate::vm::{self, Device, Vm, VmConfig};

/// One measured quantity, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    /// What was timed, from where to where.
    pub what: String,
    pub samples_s: Vec<f64>,
}

impl Figure {
    pub fn new(name: &str, what: &str) -> Figure {
        Figure {
            name: name.into(),
            what: what.into(),
            samples_s: Vec::new(),
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples_s.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// The middle sample (the mean of the two middle ones for an even count).
    pub fn median(&self) -> f64 {
        let s = self.sorted();
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    /// `name  median (min–max, n=…)  what`.
    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>8.3} s  (min {:.3}, max {:.3}, n={})  {}",
            self.name,
            self.median(),
            self.min(),
            self.max(),
            self.samples_s.len(),
            self.what
        )
    }
}

/// A ratio of two figures' medians.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub numerator: String,
    pub denominator: String,
    pub value: f64,
}

impl Ratio {
    pub fn of(name: &str, a: &Figure, b: &Figure) -> Ratio {
        Ratio {
            name: name.into(),
            numerator: a.name.clone(),
            denominator: b.name.clone(),
            value: a.median() / b.median(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>8.2}   ({} ÷ {}, medians)",
            self.name, self.value, self.numerator, self.denominator
        )
    }
}

/// Everything one bench run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub variant: String,
    pub repetitions: usize,
    pub jobs: u32,
    pub figures: Vec<Figure>,
    pub ratios: Vec<Ratio>,
    /// Counts and facts that are not times (e.g. scenarios that cold-boot).
    pub notes: Vec<String>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        crate::cache::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// The guest a typical trial starts: the variant's kernel, one `edu`
/// bound to vfio-pci, the run's QEMU probe.
pub fn typical_guest(inputs: &Inputs, variant: &str, run_dir: &Path) -> anyhow::Result<VmConfig> {
    let kernel = inputs
        .kernels
        .get(variant)
        .with_context(|| format!("variant {variant} is not in the inputs"))?;
    let mut cfg = crate::guest::with_devices(
        &kernel.image,
        &inputs.initramfs,
        &inputs.ssh_private_key,
        vec![Device::Edu {
            id: "edu0".into(),
            dma_mask: None,
        }],
        run_dir,
    )?;
    cfg.caps = inputs.qemu.clone();
    Ok(cfg)
}

/// Plain QEMU to the first line `/init` prints, `reps` times.
pub fn floor(inputs: &Inputs, variant: &str, reps: usize) -> anyhow::Result<Figure> {
    let kernel = inputs
        .kernels
        .get(variant)
        .with_context(|| format!("variant {variant} is not in the inputs"))?;
    let mut f = Figure::new(
        "floor",
        "plain qemu -kernel -initrd (no SMMU, devices, QMP or SSH) → first line of /init",
    );
    let append = crate::image::kernel_cmdline(&Default::default());
    for _ in 0..reps {
        let t = vm::floor::boot_to_line(
            Path::new(vm::QEMU),
            &kernel.image,
            &inputs.initramfs,
            &append,
            "msi-init: ",
            Duration::from_secs(90),
        )?;
        f.samples_s.push(t.as_secs_f64());
    }
    Ok(f)
}

/// Starts `cfg` as a trial would (`mode`) and waits for the agent's
/// answer to `hello`; returns the guest and the time from QEMU's start.
pub async fn start_to_agent(cfg: VmConfig, mode: StartMode) -> anyhow::Result<(Vm, Duration)> {
    let vm = match mode {
        StartMode::Saved => crate::guest::saved::start(cfg).await?,
        StartMode::Cold => Vm::boot(cfg).await?,
    };
    let mut session = vm
        .open_session(crate::scenario::exec::AGENT_COMMAND)
        .await?;
    let hello = serde_json::to_string(&msi_protocol::Request::Hello {
        version: msi_protocol::PROTOCOL_VERSION,
    })?;
    session
        .request_line(&hello, Duration::from_secs(20))
        .await
        .context("agent hello")?;
    let took = vm.started_at().elapsed();
    Ok((vm, took))
}

/// Two figures of `reps` starts of `cfg` in `mode`: to SSH login (the
/// guest's own boot timings) and to the agent's answer.
pub async fn starts(
    cfg: &VmConfig,
    mode: StartMode,
    reps: usize,
    label: &str,
) -> anyhow::Result<(Figure, Figure)> {
    let how = match mode {
        StartMode::Saved => "from the saved machine (-incoming), put-back of edu's config",
        StartMode::Cold => "a full boot",
    };
    let mut ssh = Figure::new(
        &format!("{label} → ssh"),
        &format!("qemu start → SSH login, {how}"),
    );
    let mut agent = Figure::new(
        &format!("{label} → agent"),
        &format!("qemu start → agent answered hello, {how}"),
    );
    for i in 0..reps {
        let mut cfg = cfg.clone();
        cfg.run_dir = cfg.run_dir.join(format!("{}-{i}", label.replace(' ', "-")));
        let (vm, t) = start_to_agent(cfg, mode).await?;
        ssh.samples_s.push(vm.boot_timings().total().as_secs_f64());
        agent.samples_s.push(t.as_secs_f64());
        vm.shutdown().await?;
    }
    Ok((ssh, agent))
}

/// `reps` runs of one scenario trial in `mode` (a pass each, or an error).
pub fn trial(
    file: &Path,
    variant: &str,
    inputs: &Inputs,
    mode: StartMode,
    reps: usize,
) -> anyhow::Result<Figure> {
    let name = crate::scenario::name_of(file);
    let mut inputs = inputs.clone();
    inputs.start = mode;
    let label = mode.name();
    let mut f = Figure::new(
        &format!("trial {label}"),
        &format!("{name}@{variant}, whole trial (start, steps, snapshot), {label} start"),
    );
    for _ in 0..reps {
        let t = Instant::now();
        let r = crate::trial::run(file, variant, &inputs);
        if r.outcome != crate::outcome::Outcome::Pass {
            anyhow::bail!(
                "{name}@{variant} did not pass in the bench: {}",
                crate::trial::failure_message(&r)
            );
        }
        f.samples_s.push(t.elapsed().as_secs_f64());
    }
    Ok(f)
}
