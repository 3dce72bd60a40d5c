//! The scenario file format (`scenarios/<name>.toml`) and its parser.
//!
//! The parser keeps source positions: every error names `file:line:col` of
//! the key or value at fault, and says what was expected. Steps are
//! `msi_protocol::Step` (agent steps) or [`HostStep`] (steps the host
//! performs through QMP), each with an optional [`Expect`].
//!
//! serde's derive for internally tagged enums (`op = "..."`, `kind = "..."`)
//! buffers the table before it picks the variant, so the TOML deserializer's
//! spans are lost by the time a field fails. The parser therefore works on
//! toml's spanned document (`DeTable`) and, when a table does not
//! deserialize, finds the key at fault itself (see [`locate`]).

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use msi_protocol::{HexU64, Step};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A position in a scenario file (1-based line and column, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file as the user should see it (relative to the project when possible).
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

impl std::error::Error for ScenarioError {}

impl From<ScenarioError> for crate::Error {
    fn from(e: ScenarioError) -> crate::Error {
        crate::Error::infra(e.to_string())
    }
}

/// One scenario, as read from its file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file stem (`default-window`).
    pub name: String,
    /// The file as given.
    pub path: PathBuf,
    /// The file as messages show it.
    pub display_path: String,
    pub description: String,
    pub reviewer_finding: Option<String>,
    pub requires: Vec<String>,
    pub requires_pos: Pos,
    pub machine: MachineSpec,
    pub steps: Vec<ScenarioStep>,
}

/// `[machine]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    #[serde(default = "default_machine")]
    pub machine: String,
    #[serde(default)]
    pub smmu_stage: Option<String>,
    #[serde(default = "default_smp")]
    pub smp: u32,
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    #[serde(default)]
    pub hugepages: u32,
    /// Default: one edu, `edu0` (the spec's example values are the defaults).
    #[serde(default = "default_devices")]
    pub devices: Vec<DeviceSpec>,
    /// Ids bound to vfio-pci by `/init`; `None`: every edu device.
    #[serde(default)]
    pub vfio: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub trace: bool,
    /// Where each key of the table was (for validation messages).
    #[serde(skip)]
    pub positions: Vec<(String, Pos)>,
    /// Where each device entry was.
    #[serde(skip)]
    pub device_positions: Vec<Pos>,
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec {
            machine: default_machine(),
            smmu_stage: None,
            smp: default_smp(),
            memory_mb: default_memory(),
            hugepages: 0,
            devices: default_devices(),
            vfio: None,
            trace: true,
            positions: Vec::new(),
            device_positions: Vec::new(),
        }
    }
}

impl MachineSpec {
    fn pos_of(&self, key: &str) -> Option<Pos> {
        self.positions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| *p)
    }

    /// The ids bound to vfio-pci at boot.
    pub fn vfio_ids(&self) -> Vec<String> {
        match &self.vfio {
            Some(ids) => ids.clone(),
            None => self
                .devices
                .iter()
                .filter(|d| !matches!(d, DeviceSpec::E1000e { .. }))
                .flat_map(|d| d.ids())
                .collect(),
        }
    }
}

fn default_machine() -> String {
    "virt".into()
}
fn default_devices() -> Vec<DeviceSpec> {
    vec![DeviceSpec::Edu {
        id: "edu0".into(),
        dma_mask: None,
    }]
}
fn default_smp() -> u32 {
    2
}
fn default_memory() -> u32 {
    1024
}
fn yes() -> bool {
    true
}

/// A device of `[machine].devices` (and of `hotplug` steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum DeviceSpec {
    /// QEMU `edu`.
    #[serde(rename = "edu")]
    Edu {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dma_mask: Option<HexU64>,
    },
    /// Two edu functions of one slot (one iommu group).
    #[serde(rename = "edu-pair")]
    EduPair {
        ids: [String; 2],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dma_mask: Option<HexU64>,
    },
    /// Intel 82574L, MSI-X.
    #[serde(rename = "e1000e")]
    E1000e { id: String },
}

impl DeviceSpec {
    /// The ids of the PCI functions this entry makes.
    pub fn ids(&self) -> Vec<String> {
        match self {
            DeviceSpec::Edu { id, .. } | DeviceSpec::E1000e { id } => vec![id.clone()],
            DeviceSpec::EduPair { ids, .. } => ids.to_vec(),
        }
    }

    /// The QEMU device the vm stage places.
    pub fn to_vm(&self) -> crate::vm::Device {
        match self {
            DeviceSpec::Edu { id, dma_mask } => crate::vm::Device::Edu {
                id: id.clone(),
                dma_mask: dma_mask.map(HexU64::get),
            },
            DeviceSpec::EduPair { ids, dma_mask } => crate::vm::Device::EduPairMultifunction {
                ids: ids.clone(),
                dma_mask: dma_mask.map(HexU64::get),
            },
            DeviceSpec::E1000e { id } => crate::vm::Device::E1000e { id: id.clone() },
        }
    }
}

/// Steps the host performs (QMP), not the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostStep {
    /// Plug a device into a free hotplug port; the guest rescans and binds
    /// it to vfio-pci.
    Hotplug { device: DeviceSpec },
    /// Unplug a device and wait for QEMU's `DEVICE_DELETED`.
    Unplug { device: String },
    /// Sleep on the host.
    HostSleep { ms: u64 },
    /// Upload the kernel's own iommufd kselftest (cross-built from the same
    /// source tree by `cargo xtask test`) and run it in the guest; the
    /// result is its KTAP totals and the names of failed tests.
    Kselftest {
        #[serde(default = "default_kselftest_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_kselftest_timeout_ms() -> u64 {
    300_000
}

/// The op names of host steps.
pub const HOST_OPS: [&str; 4] = ["hotplug", "unplug", "host_sleep", "kselftest"];

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Agent(Step),
    Host(HostStep),
}

impl Action {
    pub fn op(&self) -> &'static str {
        match self {
            Action::Agent(s) => s.op(),
            Action::Host(HostStep::Hotplug { .. }) => "hotplug",
            Action::Host(HostStep::Unplug { .. }) => "unplug",
            Action::Host(HostStep::HostSleep { .. }) => "host_sleep",
            Action::Host(HostStep::Kselftest { .. }) => "kselftest",
        }
    }

    /// The device ids this step names (its `device`, or a hotplugged device's ids).
    pub fn device_ids(&self) -> Vec<String> {
        match self {
            Action::Agent(step) => match step_device(step) {
                Some(d) => vec![d],
                None => Vec::new(),
            },
            Action::Host(HostStep::Hotplug { device }) => device.ids(),
            Action::Host(HostStep::Unplug { device }) => vec![device.clone()],
            Action::Host(HostStep::HostSleep { .. } | HostStep::Kselftest { .. }) => Vec::new(),
        }
    }
}

/// The `device` field of an agent step, if it has one.
pub fn step_device(step: &Step) -> Option<String> {
    match serde_json::to_value(step) {
        Ok(v) => v.get("device").and_then(|d| d.as_str()).map(str::to_owned),
        Err(_) => None,
    }
}

/// Expected outcomes of a step; every given key must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<HexU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iova: Option<HexU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msi_address: Option<HexU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msi_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_completed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_data_matches: Option<bool>,
}

/// A step's `expect` table: common keys plus variant-dependent ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(flatten)]
    pub common: ExpectFields,
    /// Only on kernels that have `IOMMU_OPTION_SW_MSI_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_sw_msi: Option<ExpectFields>,
    /// Only on kernels that lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_sw_msi: Option<ExpectFields>,
}

impl Expect {
    /// The checks that apply on a kernel with or without the option.
    pub fn for_variant(&self, has_sw_msi: bool) -> Vec<&ExpectFields> {
        let extra = if has_sw_msi {
            self.with_sw_msi.as_ref()
        } else {
            self.without_sw_msi.as_ref()
        };
        std::iter::once(&self.common).chain(extra).collect()
    }

    fn all(&self) -> impl Iterator<Item = &ExpectFields> {
        std::iter::once(&self.common)
            .chain(self.with_sw_msi.as_ref())
            .chain(self.without_sw_msi.as_ref())
    }
}

/// One `[[step]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioStep {
    /// 1-based, in file order.
    pub index: usize,
    /// Where its table starts.
    pub pos: Pos,
    pub action: Action,
    pub expect: Option<Expect>,
    pub expect_pos: Pos,
    /// `open_device` without `bdf`: the executor fills it from the placement.
    pub bdf_from_placement: bool,
}

/// The keys of an `expect` table.
pub const EXPECT_KEYS: [&str; 11] = [
    "ok",
    "errno",
    "value",
    "iova",
    "interrupts",
    "msi_address",
    "msi_enabled",
    "dma_completed",
    "dma_data_matches",
    "with_sw_msi",
    "without_sw_msi",
];

/// Requirements the harness knows (see SCENARIO-SPEC.md).
pub const KNOWN_REQUIREMENTS: [&str; 5] = [
    "sw_msi_option",
    "nest_parent",
    "edu",
    "e1000e",
    "pcie-pci-bridge",
];

/// The keys of a scenario file's top level.
const TOP_KEYS: [&str; 5] = [
    "description",
    "reviewer_finding",
    "requires",
    "machine",
    "step",
];

/// Maps byte offsets to line/column.
struct Source<'a> {
    file: String,
    text: &'a str,
}

impl Source<'_> {
    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line,
            col: before[line_start..].chars().count() + 1,
        }
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: self.file.clone(),
            pos: self.pos(span.start),
            message: message.into(),
        }
    }
}

/// How a path is shown in messages: relative to the project root if inside it.
pub fn display_path(path: &Path) -> String {
    let root = crate::cache::project_root();
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    };
    abs.strip_prefix(&root)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

impl Scenario {
    /// Reads and parses `path` (the scenario is named after its file stem).
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = display_path(path);
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: shown.clone(),
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read the file: {e}"),
        })?;
        Scenario::parse(path, &shown, &text)
    }

    /// Parses `text` (the contents of `path`, shown as `shown` in messages)
    /// and validates it.
    pub fn parse(path: &Path, shown: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let src = Source {
            file: shown.to_string(),
            text,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let doc = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            src.err(span, format!("invalid TOML: {}", e.message().trim_end()))
        })?;
        let doc_span = doc.span();
        let doc = doc.into_inner();
        for (k, _) in doc.iter() {
            if !TOP_KEYS.contains(&k.get_ref().as_ref()) {
                return Err(src.err(
                    k.span(),
                    format!(
                        "unknown top-level key `{}`, expected one of {}",
                        k.get_ref(),
                        list(&TOP_KEYS)
                    ),
                ));
            }
        }
        let get = |key: &str| doc.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v);

        let description = match get("description") {
            Some(v) => v
                .get_ref()
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| src.err(v.span(), "`description` must be a string"))?,
            None => {
                return Err(src.err(
                    doc_span.start..doc_span.start,
                    "missing `description` (say what the scenario checks)",
                ))
            }
        };
        let reviewer_finding = match get("reviewer_finding") {
            Some(v) => Some(v.get_ref().as_str().map(str::to_owned).ok_or_else(|| {
                src.err(v.span(), "`reviewer_finding` must be a string like \"B1\"")
            })?),
            None => None,
        };
        let (requires, requires_pos) = match get("requires") {
            Some(v) => (
                deserialize::<Vec<String>>(&src, v, "requires")?,
                src.pos(v.span().start),
            ),
            None => (Vec::new(), Pos::default()),
        };
        let machine = match get("machine") {
            Some(v) => parse_machine(&src, v)?,
            None => MachineSpec::default(),
        };
        let mut steps = Vec::new();
        match get("step") {
            Some(v) => {
                let Some(arr) = v.get_ref().as_array() else {
                    return Err(src.err(
                        v.span(),
                        "`step` must be an array of tables: write each step as `[[step]]`",
                    ));
                };
                for (i, item) in arr.iter().enumerate() {
                    steps.push(parse_step(&src, item, i + 1)?);
                }
            }
            None => {
                return Err(src.err(
                    doc_span.end..doc_span.end,
                    "no steps: add at least one `[[step]]` table",
                ))
            }
        }
        let scenario = Scenario {
            name,
            path: path.to_path_buf(),
            display_path: shown.to_string(),
            description,
            reviewer_finding,
            requires,
            requires_pos,
            machine,
            steps,
        };
        scenario.validate()?;
        Ok(scenario)
    }

    fn err_at(&self, pos: Pos, message: String) -> ScenarioError {
        ScenarioError {
            file: self.display_path.clone(),
            pos,
            message: format!("scenario {}: {message}", self.name),
        }
    }

    /// Cross-field rules: names, device ids, values that only make sense
    /// together. The first violation is returned.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let m = &self.machine;
        let at = |key: &str| m.pos_of(key).unwrap_or_default();
        if !is_kebab(&self.name) {
            return Err(self.err_at(
                Pos { line: 1, col: 1 },
                format!("file name `{}` must be kebab-case ([a-z0-9-])", self.name),
            ));
        }
        if !matches!(m.machine.as_str(), "virt" | "virt-9.0") {
            return Err(self.err_at(
                at("machine"),
                format!(
                    "[machine].machine = {:?}: expected \"virt\" or \"virt-9.0\"",
                    m.machine
                ),
            ));
        }
        if let Some(s) = &m.smmu_stage {
            if !matches!(s.as_str(), "nested" | "1" | "2") {
                return Err(self.err_at(
                    at("smmu_stage"),
                    format!("[machine].smmu_stage = {s:?}: expected \"nested\", \"1\" or \"2\""),
                ));
            }
        }
        if m.smp == 0 || m.smp > 8 {
            return Err(self.err_at(
                at("smp"),
                format!("[machine].smp = {}: expected 1..=8", m.smp),
            ));
        }
        if m.memory_mb < 256 {
            return Err(self.err_at(
                at("memory_mb"),
                format!(
                    "[machine].memory_mb = {}: expected at least 256",
                    m.memory_mb
                ),
            ));
        }
        for r in &self.requires {
            if !KNOWN_REQUIREMENTS.contains(&r.as_str()) {
                return Err(self.err_at(
                    self.requires_pos,
                    format!(
                        "unknown requirement {r:?} in `requires`, expected one of {}",
                        list(&KNOWN_REQUIREMENTS)
                    ),
                ));
            }
        }
        let mut known = BTreeSet::new();
        for (i, d) in m.devices.iter().enumerate() {
            let pos = m
                .device_positions
                .get(i)
                .copied()
                .unwrap_or_else(|| at("devices"));
            for id in d.ids() {
                check_id(&id).map_err(|e| self.err_at(pos, format!("[machine].devices: {e}")))?;
                if !known.insert(id.clone()) {
                    return Err(self.err_at(
                        pos,
                        format!("[machine].devices: device id `{id}` is used twice"),
                    ));
                }
            }
        }
        if let Some(vfio) = &m.vfio {
            for id in vfio {
                let Some(d) = m.devices.iter().find(|d| d.ids().contains(id)) else {
                    return Err(self.err_at(
                        at("vfio"),
                        format!(
                            "[machine].vfio names `{id}`, which is not in [machine].devices ({})",
                            names(&known)
                        ),
                    ));
                };
                if matches!(d, DeviceSpec::E1000e { .. }) {
                    // The SSH NIC is virtio; e1000e is a device under test and may be bound.
                }
            }
        }
        let mut plugged = known.clone();
        for step in &self.steps {
            let ctx = |msg: String| {
                self.err_at(
                    step.pos,
                    format!("step {} ({}): {msg}", step.index, step.action.op()),
                )
            };
            match &step.action {
                Action::Host(HostStep::Hotplug { device }) => {
                    if matches!(device, DeviceSpec::EduPair { .. }) {
                        return Err(ctx(
                            "edu pairs cannot be hotplugged; plug single devices".into()
                        ));
                    }
                    for id in device.ids() {
                        check_id(&id).map_err(&ctx)?;
                        if !plugged.insert(id.clone()) {
                            return Err(ctx(format!("device id `{id}` already exists")));
                        }
                    }
                }
                action => {
                    for id in action.device_ids() {
                        if !plugged.contains(&id) {
                            return Err(ctx(format!(
                                "device `{id}` is not in [machine].devices nor hotplugged before this step (known: {})",
                                names(&plugged)
                            )));
                        }
                    }
                }
            }
            if let Some(expect) = &step.expect {
                let op = step.action.op();
                let ectx = |msg: String| {
                    self.err_at(
                        step.expect_pos,
                        format!("step {} ({op}): expect: {msg}", step.index),
                    )
                };
                for f in expect.all() {
                    if let Some(name) = &f.errno {
                        if msi_protocol::errno_number(name).is_none() {
                            return Err(ectx(format!(
                                "unknown errno name {name:?} (e.g. \"EOPNOTSUPP\", \"EINVAL\")"
                            )));
                        }
                        if f.ok == Some(true) {
                            return Err(ectx(
                                "`ok = true` and `errno` contradict each other".into(),
                            ));
                        }
                    }
                    let only = [
                        ("value", f.value.is_some(), "option_get"),
                        ("iova", f.iova.is_some(), "ioas_map"),
                        ("interrupts", f.interrupts.is_some(), "wait_interrupts"),
                        ("msi_address", f.msi_address.is_some(), "msi_config"),
                        ("msi_enabled", f.msi_enabled.is_some(), "msi_config"),
                        ("dma_completed", f.dma_completed.is_some(), "edu_dma"),
                        ("dma_data_matches", f.dma_data_matches.is_some(), "edu_dma"),
                    ];
                    for (key, given, needs) in only {
                        if given && op != needs {
                            return Err(ectx(format!("`{key}` applies only to `{needs}` steps")));
                        }
                    }
                    if matches!(step.action, Action::Host(_))
                        && (f.errno.is_some() || f.ok == Some(false))
                    {
                        return Err(ectx("host steps either work or fail the trial; only agent steps have an errno".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The scenario's description, first line only (for tables).
    pub fn summary(&self) -> &str {
        self.description.lines().next().unwrap_or_default().trim()
    }
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Device ids become QEMU `id=`s and agent object names.
fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(format!(
            "device id {id:?} must match [A-Za-z][A-Za-z0-9_.-]*"
        ));
    }
    if id == "net0" || (id.starts_with("hp") && id[2..].bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("device id `{id}` is reserved by the harness"));
    }
    Ok(())
}

fn names(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_machine(src: &Source, v: &Spanned<DeValue>) -> Result<MachineSpec, ScenarioError> {
    let Some(table) = v.get_ref().as_table() else {
        return Err(src.err(v.span(), "`machine` must be a table: `[machine]`"));
    };
    // Devices first, one by one, so that an error points into its entry.
    let mut devices = Vec::new();
    let mut device_positions = Vec::new();
    if let Some((_, devs)) = table.iter().find(|(k, _)| k.get_ref() == "devices") {
        if let Some(arr) = devs.get_ref().as_array() {
            for item in arr.iter() {
                devices.push(deserialize(src, item, "[machine].devices")?);
                device_positions.push(src.pos(item.span().start));
            }
        }
    }
    let mut spec: MachineSpec = deserialize(src, v, "[machine]")?;
    spec.positions = table
        .iter()
        .map(|(k, _)| (k.get_ref().to_string(), src.pos(k.span().start)))
        .collect();
    if !devices.is_empty() {
        spec.devices = devices;
        spec.device_positions = device_positions;
    }
    Ok(spec)
}

fn parse_step(
    src: &Source,
    item: &Spanned<DeValue>,
    index: usize,
) -> Result<ScenarioStep, ScenarioError> {
    let ctx = format!("step {index}");
    let Some(table) = item.get_ref().as_table() else {
        return Err(src.err(item.span(), format!("{ctx}: a step must be a table")));
    };
    let op_entry = table.iter().find(|(k, _)| k.get_ref() == "op");
    let Some((_, op_value)) = op_entry else {
        return Err(src.err(
            item.span(),
            format!("{ctx}: missing `op`, expected one of {}", list(&all_ops())),
        ));
    };
    let Some(op) = op_value.get_ref().as_str() else {
        return Err(src.err(op_value.span(), format!("{ctx}: `op` must be a string")));
    };
    let ctx = format!("step {index} ({op})");
    let ops = all_ops();
    if !ops.contains(&op) {
        return Err(src.err(
            op_value.span(),
            format!("{ctx}: unknown op `{op}`, expected one of {}", list(&ops)),
        ));
    }
    // `expect` is ours, the rest is the step itself.
    let rest = table.clone();
    let expect_entry = rest
        .iter()
        .find(|(k, _)| k.get_ref() == "expect")
        .map(|(k, v)| (k.clone(), v.clone()));
    let mut rest: DeTable = rest
        .iter()
        .filter(|(k, _)| k.get_ref() != "expect")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (expect, expect_pos) = match &expect_entry {
        Some((k, v)) => (
            Some(
                deserialize::<Expect>(src, v, &format!("{ctx}: expect")).map_err(|mut e| {
                    // `flatten` keeps serde from listing the known keys.
                    if e.message.contains("unknown field") && !e.message.contains("expected") {
                        e.message
                            .push_str(&format!(", expected one of {}", list(&EXPECT_KEYS)));
                    }
                    e
                })?,
            ),
            src.pos(k.span().start),
        ),
        None => (None, Pos::default()),
    };
    let mut bdf_from_placement = false;
    if op == "open_device" && !rest.iter().any(|(k, _)| k.get_ref() == "bdf") {
        // Filled in from the VM's placement at run time.
        bdf_from_placement = true;
        rest.insert(
            Spanned::new(item.span(), "bdf".into()),
            Spanned::new(item.span(), DeValue::String("".into())),
        );
    }
    let rest_value = Spanned::new(item.span(), DeValue::Table(rest));
    let action = if HOST_OPS.contains(&op) {
        Action::Host(deserialize(src, &rest_value, &ctx)?)
    } else {
        Action::Agent(deserialize(src, &rest_value, &ctx)?)
    };
    Ok(ScenarioStep {
        index,
        pos: src.pos(item.span().start),
        action,
        expect,
        expect_pos,
        bdf_from_placement,
    })
}

/// Every op a step may name: the agent's, then the host's.
pub fn all_ops() -> Vec<&'static str> {
    let mut ops = agent_ops();
    ops.extend(HOST_OPS);
    ops
}

/// The agent's ops, as `msi_protocol::Step` knows them (read from serde's
/// own "expected one of" list, so it cannot go stale).
pub fn agent_ops() -> Vec<&'static str> {
    static OPS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    OPS.get_or_init(|| {
        let msg = match serde_json::from_str::<Step>(r#"{"op":"\u0000"}"#) {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        let list = msg.split("expected one of").nth(1).unwrap_or_default();
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
            .collect()
    })
    .clone()
}

/// Deserializes `v` into `T`, turning a failure into an error at the key or
/// value at fault.
fn deserialize<T: DeserializeOwned>(
    src: &Source,
    v: &Spanned<DeValue>,
    ctx: &str,
) -> Result<T, ScenarioError> {
    let first = match try_de::<T>(v) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let (span, message) = locate::<T>(v, &first);
    Err(src.err(span, format!("{ctx}: {message}")))
}

fn try_de<T: DeserializeOwned>(v: &Spanned<DeValue>) -> Result<T, toml::de::Error> {
    let mut owned = v.clone();
    owned.get_mut().make_owned();
    T::deserialize(toml::de::ValueDeserializer::from(owned))
}

/// Finds the key or value of table `v` that `err` is about.
///
/// - `unknown field `x``: the key `x`;
/// - `unknown variant `x``: the value `x` (an unknown `kind`);
/// - `missing field `x``: the table itself;
/// - anything else (a bad value): the key whose removal changes the error,
///   since serde reports the first bad field it meets;
/// - toml's own span, when it is narrower than the table.
fn locate<T: DeserializeOwned>(
    v: &Spanned<DeValue>,
    err: &toml::de::Error,
) -> (Range<usize>, String) {
    let msg = err.message().trim_end().to_string();
    let table_span = v.span();
    let Some(table) = v.get_ref().as_table() else {
        return (err.span().unwrap_or(table_span), msg);
    };
    let quoted = |prefix: &str| -> Option<String> {
        let rest = msg.strip_prefix(prefix)?;
        let rest = rest.strip_prefix('`')?;
        Some(rest.split('`').next()?.to_string())
    };
    if let Some(field) = quoted("unknown field ") {
        if let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref() == field.as_str()) {
            return (k.span(), msg);
        }
    }
    if let Some(variant) = quoted("unknown variant ") {
        if let Some((_, val)) = table
            .iter()
            .find(|(_, val)| val.get_ref().as_str() == Some(variant.as_str()))
        {
            return (val.span(), msg);
        }
    }
    if msg.starts_with("missing field ") {
        return (table_span, msg);
    }
    if let Some(span) = err.span() {
        if span != table_span && span.start >= table_span.start && span.end <= table_span.end {
            return (span, msg);
        }
    }
    for (k, val) in table.iter() {
        // Without its tag, any tagged enum fails differently: not a clue.
        if matches!(k.get_ref().as_ref(), "op" | "kind") {
            continue;
        }
        let without: DeTable = table
            .iter()
            .filter(|(k2, _)| k2.get_ref() != k.get_ref())
            .map(|(k2, v2)| (k2.clone(), v2.clone()))
            .collect();
        let changed = match try_de::<T>(&Spanned::new(table_span.clone(), DeValue::Table(without)))
        {
            Ok(_) => true,
            Err(e) => e.message().trim_end() != msg,
        };
        if changed {
            return (val.span(), format!("`{}`: {msg}", k.get_ref()));
        }
    }
    (table_span, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("scenarios/x.toml"), "scenarios/x.toml", text)
    }

    const HEAD: &str =
        "description = \"d\"\n[machine]\ndevices = [{ kind = \"edu\", id = \"edu0\" }]\n";

    #[test]
    fn good_file_parses_with_defaults() {
        let s = parse(&format!(
            "{HEAD}[[step]]\nop = \"open_device\"\ndevice = \"edu0\"\n[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\nvalue = \"0x10000000\"\nexpect = {{ with_sw_msi = {{ ok = true }}, without_sw_msi = {{ errno = \"EOPNOTSUPP\" }} }}\n[[step]]\nop = \"host_sleep\"\nms = 10\n"
        ))
        .unwrap();
        assert_eq!(s.name, "x");
        assert_eq!(s.machine.smp, 2);
        assert_eq!(s.machine.vfio_ids(), vec!["edu0".to_string()]);
        assert!(s.steps[0].bdf_from_placement);
        assert_eq!(s.steps[1].pos, Pos { line: 7, col: 1 });
        let e = s.steps[1].expect.as_ref().unwrap();
        assert_eq!(e.for_variant(false)[1].errno.as_deref(), Some("EOPNOTSUPP"));
        assert_eq!(
            s.steps[2].action,
            Action::Host(HostStep::HostSleep { ms: 10 })
        );
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\n    valu = 1\n"
        ))
        .unwrap_err();
        assert_eq!(e.pos, Pos { line: 7, col: 5 }, "{e}");
        assert!(
            e.to_string().starts_with(
                "scenarios/x.toml:7:5: step 1 (option_set): unknown field `valu`, expected one of"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_op_lists_the_valid_ones() {
        let e = parse(&format!("{HEAD}[[step]]\nop = \"attach_device\"\n")).unwrap_err();
        assert_eq!(e.pos, Pos { line: 5, col: 6 }, "{e}");
        assert!(
            e.message
                .contains("unknown op `attach_device`, expected one of `open_device`"),
            "{e}"
        );
        assert!(e.message.contains("`hotplug`"), "{e}");
    }

    #[test]
    fn bad_value_points_at_the_value() {
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"wait_interrupts\"\ndevice = \"edu0\"\ncount = \"many\"\ntimeout_ms = 10\n"
        ))
        .unwrap_err();
        assert_eq!(e.pos, Pos { line: 7, col: 9 }, "{e}");
        assert!(e.message.contains("`count`"), "{e}");
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"option_set\"\noption = \"sw_msi_start\"\nvalue = \"0xZZ\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.pos, Pos { line: 7, col: 9 }, "{e}");
    }

    #[test]
    fn missing_field_and_bad_expect_and_device() {
        let e = parse(&format!("{HEAD}[[step]]\nop = \"bind\"\n")).unwrap_err();
        assert!(e.message.contains("missing field `device`"), "{e}");
        assert_eq!(e.pos.line, 4, "{e}");
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ erno = \"EINVAL\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.pos, Pos { line: 7, col: 12 }, "{e}");
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu9\"\n"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("scenario x: step 1 (bind): device `edu9` is not in [machine].devices"),
            "{e}"
        );
        let e = parse("description = \"d\"\n[machine]\ndevices = [{ kind = \"edux\", id = \"a\" }]\n[[step]]\nop = \"sleep\"\nms = 1\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 21 }, "{e}");
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ interrupts = 1 }}\n"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("`interrupts` applies only to `wait_interrupts`"),
            "{e}"
        );
        let e = parse(&format!(
            "{HEAD}[[step]]\nop = \"bind\"\ndevice = \"edu0\"\nexpect = {{ errno = \"ENOPE\" }}\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("unknown errno name"), "{e}");
    }

    /// Each malformed fixture yields exactly the error its first line
    /// names (`# expect-error: LINE:COL: message prefix`).
    #[test]
    fn malformed_fixtures_give_one_positioned_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios");
        let files = crate::scenario::discover(&dir).unwrap();
        assert!(files.len() >= 5, "fixtures missing in {}", dir.display());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let want = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect-error: "))
                .unwrap_or_else(|| panic!("{} lacks its expect-error line", f.display()));
            let shown = format!("fixtures/{}", f.file_name().unwrap().to_str().unwrap());
            let err = Scenario::parse(&f, &shown, &text).unwrap_err().to_string();
            let want = format!("{shown}:{want}");
            assert!(err.starts_with(&want), "\n got: {err}\nwant: {want}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn toml_syntax_errors_are_positioned() {
        let e = parse("description = \"d\"\n[[step]\nop = 1\n").unwrap_err();
        assert_eq!(e.pos.line, 2, "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
        let e = parse("descriptio = \"d\"\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 1, col: 1 }, "{e}");
        assert!(
            e.message.contains("unknown top-level key `descriptio`"),
            "{e}"
        );
    }
}
