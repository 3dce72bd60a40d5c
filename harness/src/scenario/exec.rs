//! Runs one scenario on one kernel variant: a fresh VM, one agent session,
//! every step in order with its observations, then shutdown.
//!
//! Placement is worked out before boot (the vm stage's `plan` is a pure
//! function of the config and the QEMU's capabilities), so `/init` is told
//! the BDFs of exactly the scenario's vfio devices and never the SSH NIC.
//! Every wait has a deadline: the agent's answer to each step (the step's
//! own timeout plus a margin), boot, hotplug, shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use msi_protocol::{
    ObjectRef, OptionId, Request, Response, Step, StepResult, StepValue, PROTOCOL_VERSION,
};

use super::inputs::{Inputs, KernelInput};
use super::model::{
    Action, DeviceSpec, ExpectFields, HostStep, MachineType, Requirement, Scenario, ScenarioStep,
    SmmuStageSpec,
};
use crate::guest::saved::StartMode;
use crate::vm::{self, Machine, SmmuStage, TraceCursor, Vm, VmConfig};
use crate::Error;

/// The agent command in the guest.
pub const AGENT_COMMAND: &str = "/bin/msi-agent serve";

/// Extra time on top of a step's own timeout for the agent's answer to
/// cross SSH on a loaded TCG guest.
const ANSWER_MARGIN: Duration = Duration::from_secs(20);

/// How the run ended.
#[derive(Debug, Clone)]
pub enum Completion {
    /// The scenario ran to the end (expectations may still have failed).
    Ran(Box<Execution>),
    /// Not applicable on this variant or QEMU.
    Skipped { reason: String },
}

/// Where a device of the scenario was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub id: String,
    pub bdf: String,
    pub requester_id: u16,
}

/// A scenario that ran.
#[derive(Debug, Clone)]
pub struct Execution {
    /// `uname -r` as the agent reported it.
    pub kernel_release: String,
    /// The QEMU machine actually used.
    pub machine: String,
    pub devices: Vec<Placed>,
    /// What the console said before the first step, raw.
    pub boot_console: Vec<String>,
    pub steps: Vec<StepRecord>,
    /// One sentence per expectation that did not hold, with its step.
    pub expectation_failures: Vec<super::known::FailedExpectation>,
    /// A step the agent could not perform, or a protocol error: the scenario
    /// stopped there (the trial fails as infrastructure).
    pub aborted: Option<String>,
    /// Kernel lines that could not be attributed to the step that caused
    /// them (a barrier missed its deadline): the trial fails as
    /// infrastructure, since its snapshot may be wrong through no fault of
    /// the kernel.
    pub attribution_problems: Vec<String>,
    pub interrupts_delivered: u64,
    pub msi_addresses: Vec<String>,
    /// The guest was started from its saved machine, not booted.
    pub restored: bool,
}

/// One executed step, as it happened: what was sent, what came back, and
/// what the host saw meanwhile, raw (the snapshot stage normalises it).
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: usize,
    /// The step as sent (defaults filled in).
    pub request: serde_json::Value,
    pub expect: Option<serde_json::Value>,
    pub result: StepOutput,
    /// QEMU's trace events of the step.
    pub trace: Vec<vm::TraceEvent>,
    /// The console lines attributed to the step.
    pub console: Vec<String>,
    /// Requester id → device id of the scenario's devices at the time of
    /// the step (hotplug adds to it).
    pub devices_by_rid: BTreeMap<u16, String>,
}

/// What answered a step.
#[derive(Debug, Clone)]
pub enum StepOutput {
    Agent(StepResult),
    /// A host step's result (`{"ok": ...}`).
    Host(serde_json::Value),
    /// The agent's answer was not a step result: the scenario stopped.
    ProtocolError(String),
}

/// Runs `scenario` on `variant`, artifacts in `run_dir`.
pub async fn run(
    scenario: &Scenario,
    variant: &str,
    kernel: &KernelInput,
    inputs: &Inputs,
    run_dir: &Path,
) -> anyhow::Result<Completion> {
    if let Some(reason) = missing_requirement(scenario, kernel)? {
        return Ok(Completion::Skipped { reason });
    }
    let mut cfg = vm_config(scenario, kernel, inputs, run_dir);
    let caps = vm::caps_of(&cfg).await?;
    for req in &scenario.requires {
        if req.qemu_device().is_some_and(|d| !caps.devices.contains(d)) {
            return Ok(Completion::Skipped {
                reason: format!(
                    "requires QEMU device `{req}`, which {} lacks",
                    caps.version_line
                ),
            });
        }
    }
    let plan = match vm::qemu::plan(&cfg, &caps) {
        Ok(p) => p,
        Err(vm::qemu::PlanError::Unsupported(u)) => {
            return Ok(Completion::Skipped { reason: u.reason })
        }
        Err(e) => {
            return Err(Error::infra(format!("scenario {}: vm config: {e}", scenario.name)).into())
        }
    };
    let vfio_ids = scenario.machine.vfio_ids();
    let mut vfio = Vec::new();
    for id in &vfio_ids {
        let Some(d) = plan
            .devices
            .iter()
            .find(|d| &d.id == id && !d.infrastructure)
        else {
            return Err(Error::infra(format!(
                "scenario {}: vfio device `{id}` was not placed",
                scenario.name
            ))
            .into());
        };
        vfio.push(d.bdf.to_string());
    }
    crate::guest::bind_vfio(
        &mut cfg,
        vfio,
        (scenario.machine.hugepages > 0).then_some(scenario.machine.hugepages),
    );

    let started = match inputs.start {
        StartMode::Saved => crate::guest::saved::start(cfg).await,
        StartMode::Cold => Vm::boot(cfg).await,
    };
    let vm = match started {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(reason) = vm::skip_reason(&e) {
                return Ok(Completion::Skipped { reason });
            }
            return Err(e.context(format!("scenario {} on {variant}: boot", scenario.name)));
        }
    };
    let result = drive(scenario, kernel, &vm).await;
    let down = vm.shutdown().await;
    let exec = result?;
    down.context("vm shutdown")?;
    Ok(Completion::Ran(Box::new(exec)))
}

fn missing_requirement(
    scenario: &Scenario,
    kernel: &KernelInput,
) -> anyhow::Result<Option<String>> {
    for req in &scenario.requires {
        match req {
            Requirement::SwMsiOption if !kernel.has_sw_msi => {
                return Ok(Some(format!(
                    "requires sw_msi_option: {} has no IOMMU_OPTION_SW_MSI_*",
                    kernel.label
                )))
            }
            Requirement::NestParent => {
                let config = std::fs::read_to_string(&kernel.config)
                    .with_context(|| format!("read kernel config {}", kernel.config.display()))?;
                if !config.lines().any(|l| l == "CONFIG_ARM_SMMU_V3_IOMMUFD=y") {
                    return Ok(Some(format!(
                        "requires nest_parent: {} lacks CONFIG_ARM_SMMU_V3_IOMMUFD",
                        kernel.label
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The VM for `scenario`: the harness's guest with the scenario's machine
/// (the command line's vfio list is filled in once devices are placed).
pub fn vm_config(
    scenario: &Scenario,
    kernel: &KernelInput,
    inputs: &Inputs,
    run_dir: &Path,
) -> VmConfig {
    let m = &scenario.machine;
    let mut cfg = crate::guest::config(
        &kernel.image,
        &inputs.initramfs,
        &inputs.ssh_private_key,
        run_dir,
    );
    cfg.machine = match m.machine {
        MachineType::Virt => Machine::Virt,
        other => Machine::Versioned(other.name().to_string()),
    };
    cfg.iommu = vm::Iommu::SmmuV3(match m.smmu_stage {
        Some(SmmuStageSpec::Nested) => SmmuStage::Nested,
        Some(SmmuStageSpec::Stage1) => SmmuStage::Stage1,
        Some(SmmuStageSpec::Stage2) => SmmuStage::Stage2,
        None => SmmuStage::MachineDefault,
    });
    cfg.smp = m.smp;
    cfg.memory_mb = m.memory_mb;
    cfg.devices = m.devices.iter().map(DeviceSpec::to_vm).collect();
    cfg.hotplug_ports = scenario
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Host(HostStep::Hotplug { .. })))
        .count() as u32;
    if !m.trace {
        cfg.trace_events.clear();
    }
    cfg.caps = inputs.qemu.clone();
    cfg
}

/// How long a step waits for the kernel to report the SMMU events the
/// step caused (see [`Runner::observe`]); measured: well under 100 ms.
const SMMU_REPORT_DEADLINE: Duration = Duration::from_secs(3);

/// How long a step waits for the agent's step-end marker on the console
/// after the agent answered; it is normally there already.
const STEP_MARKER_DEADLINE: Duration = Duration::from_secs(5);

/// The console line of the agent's step-end marker (`[  12.3] msi-agent: step end`).
fn is_step_end(line: &str) -> bool {
    line.trim_end().ends_with(msi_protocol::STEP_END_MARKER)
        && line
            .trim_end()
            .strip_suffix(msi_protocol::STEP_END_MARKER)
            .is_some_and(|head| head.is_empty() || head.ends_with("] "))
}

/// Console lines in which the arm-smmu-v3 driver decodes an event
/// (`arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: …`): the last
/// line of its report of one event.
fn decoded_smmu_events(lines: &[vm::ConsoleLine]) -> usize {
    lines
        .iter()
        .filter(|l| l.text.contains("arm-smmu-v3") && l.text.contains(": event: "))
        .count()
}

/// Per-run state while the steps go.
struct Runner<'a> {
    vm: &'a Vm,
    trace: TraceCursor,
    console: vm::ConsoleCursor,
    /// Requester id → device id, of the scenario's devices.
    rids: BTreeMap<u16, String>,
    bdfs: BTreeMap<String, String>,
    hotplugged: u32,
    /// The hotplug port of each device plugged in and not yet unplugged.
    ports: BTreeMap<String, u32>,
    /// Unplugs started with `wait = false`, by device.
    unplugging: BTreeMap<String, vm::PendingUnplug>,
    /// The kernel's iommufd kselftest binary, for `kselftest` steps.
    selftest: Option<&'a Path>,
    /// SMMU events queued in earlier steps whose kernel report has not
    /// reached the console yet.
    owed_smmu_reports: usize,
    /// How this kernel speaks the SW_MSI options.
    sw_msi: Option<&'a crate::kernel::Dialect>,
}

async fn drive(scenario: &Scenario, kernel: &KernelInput, vm: &Vm) -> anyhow::Result<Execution> {
    let mut runner = Runner {
        vm,
        trace: TraceCursor::default(),
        console: vm::ConsoleCursor::default(),
        rids: BTreeMap::new(),
        bdfs: BTreeMap::new(),
        hotplugged: 0,
        ports: BTreeMap::new(),
        unplugging: BTreeMap::new(),
        selftest: kernel.iommufd_selftest.as_deref(),
        owed_smmu_reports: 0,
        sw_msi: kernel.sw_msi.as_ref(),
    };
    let mut devices = Vec::new();
    for d in vm.devices().iter().filter(|d| !d.infrastructure) {
        runner.rids.insert(d.requester_id, d.id.clone());
        runner.bdfs.insert(d.id.clone(), d.bdf.to_string());
        devices.push(Placed {
            id: d.id.clone(),
            bdf: d.bdf.to_string(),
            requester_id: d.requester_id,
        });
    }
    let boot_console = vm
        .console_since(&mut runner.console)
        .into_iter()
        .map(|l| l.text)
        .collect();
    // Boot traffic (the NIC's, the kernel's own DMA) is not the scenario's.
    let _ = vm.traces_since(&mut runner.trace, None)?;

    let mut session = vm.open_session(AGENT_COMMAND).await?;
    let hello = serde_json::to_string(&Request::Hello {
        version: PROTOCOL_VERSION,
    })?;
    let line = session
        .request_line(&hello, Duration::from_secs(20))
        .await?;
    let kernel_release = match serde_json::from_str::<Response>(&line) {
        Ok(Response::Hello {
            version,
            kernel_release,
            ..
        }) if version == PROTOCOL_VERSION => kernel_release,
        Ok(other) => {
            return Err(Error::infra(format!(
                "agent handshake: expected hello version {PROTOCOL_VERSION}, got {other:?}"
            ))
            .into())
        }
        Err(e) => {
            return Err(
                Error::infra(format!("agent handshake: unreadable answer {line:?}: {e}")).into(),
            )
        }
    };
    if kernel_release != kernel.release {
        return Err(Error::infra(format!(
            "the guest runs kernel {kernel_release}, but {} should be {}",
            kernel.label, kernel.release
        ))
        .into());
    }

    // A `dmesg` step shows what the kernel said during the scenario, not
    // the whole boot log: read (and drop) what is there before step 1.
    let baseline = serde_json::to_string(&Request::Step(Step::Dmesg {}))?;
    session
        .request_line(&baseline, Duration::from_secs(20))
        .await?;
    // Its step-end marker must not close step 1.
    let _ = runner.observe(0, true).await?;

    let mut exec = Execution {
        kernel_release,
        machine: vm.machine().to_string(),
        devices,
        boot_console,
        steps: Vec::new(),
        expectation_failures: Vec::new(),
        aborted: None,
        attribution_problems: Vec::new(),
        interrupts_delivered: 0,
        msi_addresses: Vec::new(),
        restored: vm.boot_timings().restored,
    };
    let mut addresses = BTreeSet::new();
    for step in &scenario.steps {
        let (request, result, agent_result) = match &step.action {
            Action::Agent(s) => {
                let s = runner.fill(step, s)?;
                let request = serde_json::to_value(&s)?;
                let line = serde_json::to_string(&Request::Step(s.clone()))?;
                let answer = session
                    .request_line(&line, step_timeout(&s))
                    .await
                    .with_context(|| step_at(scenario, step))?;
                match serde_json::from_str::<Response>(&answer) {
                    Ok(Response::Step(r)) => (request, StepOutput::Agent(r.clone()), Some(r)),
                    Ok(Response::Error { message }) => {
                        exec.aborted = Some(format!(
                            "step {} ({}): the agent refused the request: {message}",
                            step.index,
                            s.op()
                        ));
                        (request, StepOutput::ProtocolError(message), None)
                    }
                    Ok(other) => {
                        exec.aborted = Some(format!(
                            "step {} ({}): unexpected answer {other:?}",
                            step.index,
                            s.op()
                        ));
                        (
                            request,
                            StepOutput::ProtocolError(format!("{other:?}")),
                            None,
                        )
                    }
                    Err(e) => {
                        exec.aborted = Some(format!(
                            "step {} ({}): unreadable answer {answer:?}: {e}",
                            step.index,
                            s.op()
                        ));
                        (request, StepOutput::ProtocolError(e.to_string()), None)
                    }
                }
            }
            Action::Host(h) => {
                let request = serde_json::to_value(h)?;
                let result = runner
                    .host_step(h)
                    .await
                    .with_context(|| step_at(scenario, step))?;
                (request, StepOutput::Host(result), None)
            }
        };
        let last = step.index == scenario.steps.len();
        if last {
            // Kernel messages can trail the answer that caused them.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (trace, console, problems) = runner
            .observe(step.index, matches!(step.action, Action::Agent(_)))
            .await?;
        exec.attribution_problems.extend(problems);
        if let Some(r) = &agent_result {
            if let StepResult::AgentError { message } = r {
                exec.aborted.get_or_insert_with(|| {
                    format!(
                        "step {} ({}): the agent could not perform it: {message}",
                        step.index,
                        step.action.op()
                    )
                });
            }
            match r {
                StepResult::Ok(StepValue::Interrupts(n)) => exec.interrupts_delivered += n,
                StepResult::Ok(StepValue::MsiConfig(c)) if c.enabled => {
                    addresses.insert(c.address.to_string());
                }
                StepResult::Ok(StepValue::MsixTable(t)) => {
                    addresses.extend(t.live().map(|e| e.address.to_string()));
                }
                _ => {}
            }
            if let Some(expect) = &step.expect {
                for fields in expect.for_variant(dialect_name(kernel)) {
                    for failure in check(fields, r) {
                        exec.expectation_failures
                            .push(super::known::FailedExpectation {
                                step: step.index,
                                message: format!(
                                    "{}:{}:{}: step {} ({}): {failure}",
                                    scenario.display_path,
                                    step.expect_pos.line,
                                    step.expect_pos.col,
                                    step.index,
                                    step.action.op()
                                ),
                            });
                    }
                }
            }
        }
        exec.steps.push(StepRecord {
            step: step.index,
            request,
            expect: step.expect.as_ref().map(serde_json::to_value).transpose()?,
            result,
            trace,
            console,
            devices_by_rid: runner.rids.clone(),
        });
        if exec.aborted.is_some() {
            break;
        }
    }
    exec.msi_addresses = addresses.into_iter().collect();
    let bye = serde_json::to_string(&Request::Shutdown {})?;
    let _ = session.request_line(&bye, Duration::from_secs(5)).await;
    Ok(exec)
}

/// The name `expect.dialect.NAME` tables are chosen by; `Some("")` for a
/// kernel with the options but no declared dialect (only `with_sw_msi`
/// applies), `None` for one without them.
fn dialect_name(kernel: &KernelInput) -> Option<&str> {
    match &kernel.sw_msi {
        Some(d) => Some(d.name.as_str()),
        None => kernel.has_sw_msi.then_some(""),
    }
}

/// Addresses a "this device's MSI window" option step the way `dialect`
/// speaks: its object (the context, or the device), its option id, and the
/// SIZE in its unit (scenarios write MiB). Kernels without the options get
/// msi-uapi's ids on object 0, and answer EOPNOTSUPP.
fn window_step(
    step: &mut Step,
    device: &str,
    dialect: Option<&crate::kernel::Dialect>,
) -> Result<(), String> {
    use crate::kernel::dialect::Scope;
    let (option, object, value) = match step {
        Step::OptionSet {
            option,
            object,
            value,
        } => (option, object, Some(value)),
        Step::OptionGet { option, object } => (option, object, None),
        // A raw op's value is sent as written: it is a probe, not a SIZE.
        Step::OptionOp { option, object, .. } => (option, object, None),
        _ => return Ok(()),
    };
    let Some(d) = dialect else {
        *object = ObjectRef::Id(0);
        return Ok(());
    };
    *object = match d.scope {
        Scope::Context => ObjectRef::Id(0),
        Scope::Device => ObjectRef::Name(device.to_string()),
    };
    let is_size = *option == OptionId::SwMsiSize;
    *option = OptionId::from_id(if is_size {
        d.size_option
    } else {
        d.start_option
    });
    if let (true, Some(value)) = (is_size, value) {
        value.0 = d.size_unit.value_of_mib(value.0).ok_or_else(|| {
            format!(
                "a SIZE of {:#x} MiB does not fit dialect {}'s unit",
                value.0, d.name
            )
        })?;
    }
    Ok(())
}

impl Runner<'_> {
    /// The step with defaults only the executor knows (the device's BDF).
    fn fill(&self, step: &ScenarioStep, s: &Step) -> anyhow::Result<Step> {
        let mut s = s.clone();
        if step.bdf_from_placement {
            if let Step::OpenDevice { device, bdf } = &mut s {
                *bdf = self.bdfs.get(device.as_str()).cloned().ok_or_else(|| {
                    Error::infra(format!(
                        "step {}: device `{device}` has no placement",
                        step.index
                    ))
                })?;
            }
        }
        if let Some(device) = &step.sw_msi_device {
            let at = |e: String| Error::infra(format!("step {}: {e}", step.index));
            if let Step::Concurrent { branches, .. } = &mut s {
                for b in branches.iter_mut() {
                    for branch_step in b.steps.iter_mut() {
                        if matches!(branch_step, Step::OptionSet { option, .. } | Step::OptionGet { option, .. } if super::expand::is_window_option(*option))
                        {
                            window_step(branch_step, device, self.sw_msi).map_err(at)?;
                        }
                    }
                }
            } else {
                window_step(&mut s, device, self.sw_msi).map_err(at)?;
            }
        }
        Ok(s)
    }

    /// What the host saw during the step just answered, and anything that
    /// makes its attribution doubtful.
    ///
    /// Two barriers close a step. The agent writes a marker to the kernel
    /// log after the step's system calls returned and before it answers
    /// (`msi_protocol::STEP_END_MARKER`); the console prints the kernel log
    /// in order, so every line those calls printed comes before the marker.
    /// The kernel's report of an SMMU event is not printed by those calls:
    /// its event-queue thread prints it (a header line, then the decoded
    /// event) some time later. QEMU writes its trace as the device acts, so
    /// the trace is complete when the agent answers and says how many
    /// events the SMMU queued; the step waits, bounded, until the console
    /// holds a decoded line for each. A report that misses that deadline
    /// and turns up in a later step is reported as late (the trial fails as
    /// infrastructure), not silently counted in the wrong step.
    async fn observe(
        &mut self,
        step: usize,
        agent_step: bool,
    ) -> anyhow::Result<(Vec<vm::TraceEvent>, Vec<String>, Vec<String>)> {
        let mut problems = Vec::new();
        let events = self.vm.traces_since(&mut self.trace, None)?;
        let mut lines = if agent_step {
            let (lines, found) = self
                .vm
                .console_until(&mut self.console, is_step_end, STEP_MARKER_DEADLINE)
                .await;
            if !found {
                problems.push(format!(
                    "step {step}: the agent's step-end marker did not reach the console within {} s, so the step's kernel lines cannot be told from the next step's",
                    STEP_MARKER_DEADLINE.as_secs()
                ));
            }
            lines
        } else {
            self.vm.console_since(&mut self.console)
        };
        let queued = events
            .iter()
            .filter(|e| matches!(e.kind, vm::TraceKind::SmmuRecordEvent { .. }))
            .count();
        let deadline = Instant::now() + SMMU_REPORT_DEADLINE;
        while decoded_smmu_events(&lines) < queued + self.owed_smmu_reports
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            lines.extend(self.vm.console_since(&mut self.console));
        }
        let decoded = decoded_smmu_events(&lines);
        if self.owed_smmu_reports > 0 && decoded > queued {
            let late = (decoded - queued).min(self.owed_smmu_reports);
            problems.push(format!(
                "step {step}: {late} kernel report(s) of SMMU events queued in an earlier step arrived only now (after {} s): kernel lines arrived too late to be attributed to the step that caused them",
                SMMU_REPORT_DEADLINE.as_secs()
            ));
            self.owed_smmu_reports -= late;
        }
        self.owed_smmu_reports += queued.saturating_sub(decoded);
        let lines = lines
            .into_iter()
            .map(|l| l.text)
            .filter(|t| !is_step_end(t))
            .collect();
        Ok((events, lines, problems))
    }

    async fn host_step(&mut self, h: &HostStep) -> anyhow::Result<serde_json::Value> {
        match h {
            HostStep::HostSleep { ms } => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Ok(serde_json::json!({ "ok": "done" }))
            }
            HostStep::Kselftest { timeout_ms } => {
                let binary = self.selftest.ok_or_else(|| {
                    crate::Error::infra(
                        "no iommufd kselftest was built for this kernel (inputs.json has none)",
                    )
                })?;
                let data =
                    std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
                let t = Instant::now();
                self.vm
                    .upload(data, "/tmp/iommufd", 0o755, Duration::from_secs(60))
                    .await?;
                let uploaded = t.elapsed();
                let t = Instant::now();
                let out = self
                    .vm
                    .exec("/tmp/iommufd", Duration::from_millis(*timeout_ms))
                    .await?;
                // Where a kselftest trial's time goes (the rest is the start).
                let _ = std::fs::write(
                    self.vm.run_dir().join("kselftest-iommufd.times"),
                    format!(
                        "upload {:.2} s\nselftest {:.2} s\n",
                        uploaded.as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    ),
                );
                let stdout = out.stdout_str();
                let totals = crate::ktap::parse_ktap(&stdout);
                // The totals and failed test names are deterministic; the
                // run's full output is kept in the trial's artifacts.
                std::fs::write(
                    self.vm.run_dir().join("kselftest-iommufd.ktap"),
                    stdout.as_bytes(),
                )?;
                Ok(serde_json::json!({ "ok": {
                    "kselftest": {
                        "planned": totals.planned,
                        "pass": totals.pass,
                        "fail": totals.fail,
                        "skip": totals.skip,
                        "xfail": totals.xfail,
                        "xpass": totals.xpass,
                        "error": totals.error,
                        "failed_tests": crate::ktap::failed_tests(&stdout),
                    }
                } }))
            }
            HostStep::Unplug { device, wait } => {
                let (Some(port), Some(bdf)) = (self.ports.get(device), self.bdfs.get(device))
                else {
                    return Err(crate::Error::infra(format!(
                        "unplug {device}: only a hotplugged device can be unplugged (the root bus has no hotplug)"
                    ))
                    .into());
                };
                if *wait {
                    self.vm
                        .unplug(device, *port, bdf, Duration::from_secs(20))
                        .await?;
                    self.ports.remove(device);
                    return Ok(serde_json::json!({ "ok": "done" }));
                }
                let (pending, blocked) = self
                    .vm
                    .request_unplug(device, *port, bdf, Duration::from_secs(10))
                    .await?;
                self.unplugging.insert(device.clone(), pending);
                Ok(match blocked {
                    Some(line) => serde_json::json!({ "ok": { "blocked": line } }),
                    None => serde_json::json!({ "ok": "removed" }),
                })
            }
            HostStep::WaitUnplugged { device } => {
                let Some(pending) = self.unplugging.remove(device) else {
                    return Err(crate::Error::infra(format!(
                        "wait_unplugged {device}: no unplug of it was started"
                    ))
                    .into());
                };
                self.vm
                    .wait_unplugged(pending, Duration::from_secs(20))
                    .await?;
                self.ports.remove(device);
                Ok(serde_json::json!({ "ok": "done" }))
            }
            HostStep::Hotplug { device } => {
                let placed = self.vm.hotplug(&device.to_vm(), self.hotplugged).await?;
                self.ports.insert(placed.id.clone(), self.hotplugged);
                self.hotplugged += 1;
                let bdf = placed.bdf.to_string();
                self.rids.insert(placed.requester_id, placed.id.clone());
                self.bdfs.insert(placed.id.clone(), bdf.clone());
                let q = vm::sh_quote(&bdf);
                // The guest may not notice by itself (pciehp); bind edu to
                // vfio-pci as /init does for boot-time devices.
                let mut script = format!(
                    "echo 1 > /sys/bus/pci/rescan; i=0; while [ ! -e /sys/bus/pci/devices/{q} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; [ -e /sys/bus/pci/devices/{q} ] || {{ echo 'device did not appear' >&2; exit 1; }}"
                );
                if matches!(device, DeviceSpec::Edu { .. }) {
                    script.push_str(&format!(
                        "; echo vfio-pci > /sys/bus/pci/devices/{q}/driver_override; echo {q} > /sys/bus/pci/drivers_probe; i=0; while [ ! -d /sys/bus/pci/devices/{q}/vfio-dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ls /sys/bus/pci/devices/{q}/vfio-dev"
                    ));
                }
                let out = self.vm.exec_ok(&script, Duration::from_secs(30)).await?;
                Ok(
                    serde_json::json!({ "ok": { "bdf": bdf, "requester_id": format!("{:#x}", placed.requester_id), "vfio_dev": out.stdout_str().trim() } }),
                )
            }
        }
    }
}

/// Where a step stands in its file, for errors: `file:line:col: step N (op)`.
fn step_at(scenario: &Scenario, step: &ScenarioStep) -> String {
    format!(
        "{}:{}:{}: step {} ({})",
        scenario.display_path,
        step.pos.line,
        step.pos.col,
        step.index,
        step.action.op()
    )
}

/// How long the agent may take to answer `step`.
fn step_timeout(step: &Step) -> Duration {
    let own = match step {
        Step::WaitInterrupts { timeout_ms, .. } | Step::EduDma { timeout_ms, .. } => {
            Duration::from_millis(*timeout_ms)
        }
        Step::Sleep { ms } => Duration::from_millis(*ms),
        // The longest branch, at a generous 20 ms per ioctl (an attach
        // under a KASAN or KCSAN kernel on TCG takes a few).
        Step::Concurrent {
            duration_ms: Some(ms),
            ..
        } => Duration::from_millis(*ms).max(Duration::from_secs(10)),
        Step::Concurrent {
            iterations,
            branches,
            ..
        } => branches
            .iter()
            .map(|b| {
                let calls = u64::from(b.iterations.unwrap_or(*iterations)) * b.steps.len() as u64;
                Duration::from_millis(20 * calls)
            })
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(10)),
        _ => Duration::from_secs(10),
    };
    own + ANSWER_MARGIN
}

/// The expectations of `fields` that `result` breaks, one sentence each.
pub fn check(fields: &ExpectFields, result: &StepResult) -> Vec<String> {
    let got = serde_json::to_string(result).unwrap_or_default();
    let mut out = Vec::new();
    let mut fail = |what: String| out.push(format!("expected {what}, got {got}"));
    if let Some(ok) = fields.ok {
        if ok != matches!(result, StepResult::Ok(_)) {
            fail(if ok {
                "success".into()
            } else {
                "a failure".into()
            });
        }
    }
    if let Some(name) = &fields.errno {
        if !matches!(result, StepResult::Err(e) if &e.name == name) {
            fail(format!("errno {name}"));
        }
    }
    let value = match result {
        StepResult::Ok(v) => Some(v),
        _ => None,
    };
    if let Some(want) = fields.value {
        if !matches!(value, Some(StepValue::Value(v)) if *v == want) {
            fail(format!("value {want}"));
        }
    }
    if let Some(want) = fields.iova {
        if !matches!(value, Some(StepValue::Iova(v)) if *v == want) {
            fail(format!("iova {want}"));
        }
    }
    if let Some(want) = fields.interrupts {
        if !matches!(value, Some(StepValue::Interrupts(n)) if *n == want) {
            fail(format!("{want} interrupts"));
        }
    }
    // On an MSI-X table the address is every live entry's (and there must
    // be one): one doorbell serves all vectors.
    if let Some(want) = fields.msi_address {
        let holds = match value {
            Some(StepValue::MsiConfig(c)) => c.address == want,
            Some(StepValue::MsixTable(t)) => {
                t.live().next().is_some() && t.live().all(|e| e.address == want)
            }
            _ => false,
        };
        if !holds {
            fail(format!("msi address {want}"));
        }
    }
    if let Some(want) = fields.msi_enabled {
        let holds = match value {
            Some(StepValue::MsiConfig(c)) => c.enabled == want,
            Some(StepValue::MsixTable(t)) => t.enabled == want,
            _ => false,
        };
        if !holds {
            fail(format!("msi enabled = {want}"));
        }
    }
    if let Some(want) = fields.dma_completed {
        if !matches!(value, Some(StepValue::Dma(d)) if d.completed == want) {
            fail(format!("dma completed = {want}"));
        }
    }
    if let Some(want) = fields.dma_data_matches {
        if !matches!(value, Some(StepValue::Dma(d)) if d.data_matches == Some(want)) {
            fail(format!("dma data matches = {want}"));
        }
    }
    out
}

/// `artifacts_dir/<scenario>@<variant>` (emptied first: one trial, one run).
pub fn trial_dir(inputs: &Inputs, scenario: &str, variant: &str) -> anyhow::Result<PathBuf> {
    let dir = inputs.artifacts_dir.join(format!("{scenario}@{variant}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Wall time helper for results.
pub fn seconds_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_decoded_smmu_event_lines_count_as_reported_events() {
        let line = |t: &str| vm::ConsoleLine {
            t: Duration::ZERO,
            text: t.to_string(),
        };
        let lines = [
            line("[    5.1] arm-smmu-v3 9050000.smmuv3: event 0x10 received:"),
            line("[    5.1] arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: 0000:00:02.0 sid: 0x10 ssid: 0x0 iova: 0x4000040 ipa: 0x0"),
            line("[    5.2] arm-smmu-v3 9050000.smmuv3: event 0x10 received:"),
            line("[    5.2] vfio-pci 0000:00:02.0: event: not from the smmu"),
        ];
        assert_eq!(decoded_smmu_events(&lines), 1);
    }

    use super::*;

    fn dialect(
        scope: crate::kernel::dialect::Scope,
        unit: crate::kernel::dialect::SizeUnit,
    ) -> crate::kernel::Dialect {
        crate::kernel::Dialect {
            name: "d".into(),
            description: String::new(),
            scope,
            size_unit: unit,
            start_option: 7,
            size_option: 8,
        }
    }

    #[test]
    fn a_window_step_is_addressed_as_the_dialect_speaks() {
        use crate::kernel::dialect::{Scope, SizeUnit};
        let set_size = Step::OptionSet {
            option: OptionId::SwMsiSize,
            object: ObjectRef::Id(0),
            value: msi_protocol::HexU64(2),
        };
        // No dialect: msi-uapi's ids on object 0 (the kernel says EOPNOTSUPP).
        let mut s = set_size.clone();
        window_step(&mut s, "edu0", None).unwrap();
        assert_eq!(s, set_size);
        // Per context, ids as declared.
        let mut s = set_size.clone();
        window_step(
            &mut s,
            "edu0",
            Some(&dialect(Scope::Context, SizeUnit::MiB)),
        )
        .unwrap();
        assert_eq!(
            s,
            Step::OptionSet {
                option: OptionId::Raw(8),
                object: ObjectRef::Id(0),
                value: msi_protocol::HexU64(2),
            }
        );
        // Per device, SIZE in bytes.
        let mut s = set_size.clone();
        window_step(
            &mut s,
            "edu0",
            Some(&dialect(Scope::Device, SizeUnit::Bytes)),
        )
        .unwrap();
        assert_eq!(
            s,
            Step::OptionSet {
                option: OptionId::Raw(8),
                object: ObjectRef::Name("edu0".into()),
                value: msi_protocol::HexU64(2 << 20),
            }
        );
        let mut get = Step::OptionGet {
            option: OptionId::SwMsiStart,
            object: ObjectRef::Id(0),
        };
        window_step(&mut get, "b", Some(&dialect(Scope::Device, SizeUnit::MiB))).unwrap();
        assert_eq!(
            get,
            Step::OptionGet {
                option: OptionId::Raw(7),
                object: ObjectRef::Name("b".into()),
            }
        );
    }
    use msi_protocol::{ErrnoError, HexU64, MsiConfig, MsixEntry, MsixTable};

    /// A scenario boots the harness's guest (`crate::guest`), the one
    /// `cargo xtask boot` and `shell` boot: same trace events, boot
    /// deadline, SSH and command-line contract.
    #[test]
    fn a_scenario_boots_the_harness_guest() {
        let s = Scenario::parse(
            Path::new("x.toml"),
            "x.toml",
            "description = \"d\"\n[machine]\ntrace = true\n[[step]]\nop = \"sleep\"\nms = 1\n",
        )
        .unwrap();
        let kernel = KernelInput {
            image: "/k/Image".into(),
            headers: "/k/include".into(),
            config: "/k/config".into(),
            release: "6.18.15".into(),
            has_sw_msi: true,
            sw_msi: None,
            label: "v".into(),
            iommufd_selftest: None,
            selector: String::new(),
            mutant: None,
            report_scope: None,
        };
        let inputs = Inputs {
            kernels: Default::default(),
            initramfs: "/i/initramfs".into(),
            ssh_private_key: "/i/key".into(),
            results_dir: "/r".into(),
            artifacts_dir: "/a".into(),
            start: Default::default(),
            qemu: None,
        };
        let got = vm_config(&s, &kernel, &inputs, Path::new("/run"));
        let want = crate::guest::config(
            Path::new("/k/Image"),
            Path::new("/i/initramfs"),
            Path::new("/i/key"),
            Path::new("/run"),
        );
        assert_eq!(got.trace_events, want.trace_events);
        assert_eq!(got.boot_timeout, want.boot_timeout);
        assert_eq!(got.ssh, want.ssh);
        assert_eq!(got.append, want.append);
        assert_eq!((&got.kernel, &got.initrd), (&want.kernel, &want.initrd));
    }

    #[test]
    fn expectations_are_checked() {
        let eop = StepResult::Err(ErrnoError::new(95, "IOMMU_OPTION"));
        let f = ExpectFields {
            errno: Some("EOPNOTSUPP".into()),
            ..Default::default()
        };
        assert!(check(&f, &eop).is_empty());
        let f = ExpectFields {
            ok: Some(true),
            ..Default::default()
        };
        assert_eq!(check(&f, &eop).len(), 1);
        let cfg = StepResult::Ok(StepValue::MsiConfig(MsiConfig {
            enabled: true,
            address: HexU64(0x1000_0040),
            data: HexU64(0),
            vectors: 1,
            max_vectors: 1,
        }));
        let f = ExpectFields {
            msi_address: Some(HexU64(0x0800_0040)),
            msi_enabled: Some(true),
            ..Default::default()
        };
        let fails = check(&f, &cfg);
        assert_eq!(fails.len(), 1);
        assert!(
            fails[0].starts_with("expected msi address 0x8000040, got {\"ok\""),
            "{}",
            fails[0]
        );
    }

    #[test]
    fn an_msix_address_is_every_live_entrys() {
        let entry = |vector, address, masked| MsixEntry {
            vector,
            address: HexU64(address),
            data: HexU64(vector.into()),
            masked,
        };
        let table = |entries| {
            StepResult::Ok(StepValue::MsixTable(MsixTable {
                enabled: true,
                function_masked: false,
                table_size: 3,
                bar: 3,
                offset: HexU64(0),
                entries,
            }))
        };
        let f = ExpectFields {
            msi_address: Some(HexU64(0x0800_0040)),
            msi_enabled: Some(true),
            ..Default::default()
        };
        // A masked entry's stale address does not count.
        let one_doorbell = table(vec![
            entry(0, 0x0800_0040, false),
            entry(1, 0x0800_0040, false),
            entry(2, 0, true),
        ]);
        assert!(check(&f, &one_doorbell).is_empty());
        let split = table(vec![
            entry(0, 0x0800_0040, false),
            entry(1, 0x1000_0040, false),
        ]);
        assert_eq!(check(&f, &split).len(), 1);
        let none_live = table(vec![entry(0, 0x0800_0040, true)]);
        assert_eq!(check(&f, &none_live).len(), 1);
    }
}
