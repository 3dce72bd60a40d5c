//! The scenario model: what a scenario file means once it is read.
//!
//! Everything here is typed: the machine type, the SMMU stage and the
//! requirements are enums whose names are the file's words, each list of
//! allowed names generated with its enum; steps are `msi_protocol::Step`
//! (agent steps) or [`HostStep`] (the host's, through QMP), each with an
//! optional [`Expect`]. A [`Scenario`]'s steps are flat: preludes, repeats
//! and compound steps are already expanded (see [`super::expand`]), so the
//! executor and the snapshots see exactly the steps that run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use msi_protocol::{HexU64, Step};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub requires: Vec<Requirement>,
    pub machine: MachineSpec,
    /// Every step that runs, in order (preludes, repeats and compound
    /// steps expanded).
    pub steps: Vec<ScenarioStep>,
}

impl Scenario {
    /// The scenario's description, first line only (for tables).
    pub fn summary(&self) -> &str {
        self.description.lines().next().unwrap_or_default().trim()
    }
}

/// A name that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}, expected one of {}",
            self.what,
            self.given,
            list(self.allowed)
        )
    }
}

impl std::error::Error for UnknownName {}

/// `` `a`, `b`, `c` ``.
pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An enum of names: the variants, their file names and the list of
/// allowed names are written once, here, so they cannot drift. Generates
/// `ALL`, `NAMES`, `name()`, `Display`, `FromStr` (an [`UnknownName`]
/// listing the allowed names) and serde as the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The name a scenario file uses.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        given: s.to_owned(),
                        allowed: $name::NAMES,
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_enum! {
    /// `[machine].machine`: the QEMU machine type.
    pub enum MachineType ("machine type") {
        /// QEMU's newest `virt`.
        Virt = "virt",
        /// `virt-9.0`, for behaviour that changed since.
        Virt9_0 = "virt-9.0",
    }
}

named_enum! {
    /// `[machine].smmu_stage`: the SMMUv3 translation stages QEMU offers
    /// (absent: the machine's default).
    pub enum SmmuStageSpec ("SMMU stage") {
        Nested = "nested",
        Stage1 = "1",
        Stage2 = "2",
    }
}

named_enum! {
    /// An entry of `requires`: what a kernel or QEMU must have for the
    /// scenario to apply; without it the trial is skipped, saying why.
    pub enum Requirement ("requirement") {
        /// The kernel has `IOMMU_OPTION_SW_MSI_*`.
        SwMsiOption = "sw_msi_option",
        /// The kernel has `CONFIG_ARM_SMMU_V3_IOMMUFD` (nest-parent HWPTs).
        NestParent = "nest_parent",
        /// QEMU has the `edu` device.
        Edu = "edu",
        /// QEMU has the `e1000e` device.
        E1000e = "e1000e",
        /// QEMU has the `pcie-pci-bridge` device.
        PciePciBridge = "pcie-pci-bridge",
    }
}

impl Requirement {
    /// The QEMU device this requirement asks for, if it is one.
    pub fn qemu_device(self) -> Option<&'static str> {
        match self {
            Requirement::Edu | Requirement::E1000e | Requirement::PciePciBridge => {
                Some(self.name())
            }
            Requirement::SwMsiOption | Requirement::NestParent => None,
        }
    }
}

named_enum! {
    /// `prelude`: a named set-up that runs before the file's steps. Each
    /// expands to plain steps (see [`Prelude::steps`]), which the snapshot
    /// lists like any other.
    pub enum Prelude ("prelude") {
        /// Every device of `[machine].devices` opened, then every device
        /// bound to the session's iommufd, then IOAS `ioas0` allocated.
        Bound = "bound",
        /// `bound`, then every device attached to `ioas0`.
        Attached = "attached",
    }
}

impl Prelude {
    /// The IOAS the preludes allocate.
    pub const IOAS: &'static str = "ioas0";

    /// The steps, for `devices` (in `[machine].devices` order). Each
    /// `open_device` takes its BDF from the placement.
    pub fn steps(self, devices: &[String]) -> Vec<Step> {
        let mut steps: Vec<Step> = devices
            .iter()
            .map(|d| Step::OpenDevice {
                device: d.clone(),
                bdf: String::new(),
            })
            .collect();
        steps.extend(devices.iter().map(|d| Step::Bind { device: d.clone() }));
        steps.push(Step::IoasAlloc {
            ioas: Prelude::IOAS.into(),
        });
        if self == Prelude::Attached {
            steps.extend(devices.iter().map(|d| Step::Attach {
                device: d.clone(),
                pt: Prelude::IOAS.into(),
            }));
        }
        steps
    }
}

/// `[machine]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    #[serde(default = "default_machine")]
    pub machine: MachineType,
    #[serde(default)]
    pub smmu_stage: Option<SmmuStageSpec>,
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
    pub(crate) fn pos_of(&self, key: &str) -> Option<Pos> {
        self.positions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| *p)
    }

    /// The ids of `[machine].devices`, in order.
    pub fn device_ids(&self) -> Vec<String> {
        self.devices.iter().flat_map(DeviceSpec::ids).collect()
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

fn default_machine() -> MachineType {
    MachineType::Virt
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
    /// Unplug a hotplugged device and wait for QEMU's `DEVICE_DELETED`
    /// (the guest lets go of it only once nothing holds it open: close it
    /// first). With `wait = false` the unplug is only started: the step
    /// answers once the guest has removed the device or vfio-pci has said
    /// it is blocked on its user (the line it logged), so the agent can
    /// still act on the device (`close_device`, as a VMM would when told);
    /// `wait_unplugged` then waits for the end.
    Unplug {
        device: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Wait for the end of an unplug started with `wait = false`.
    WaitUnplugged { device: String },
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

impl HostStep {
    /// The op names of host steps, in declaration order (a test checks them
    /// against serde's and [`HostStep::op`]).
    pub const OPS: [&'static str; 5] = [
        "hotplug",
        "unplug",
        "wait_unplugged",
        "host_sleep",
        "kselftest",
    ];

    pub fn op(&self) -> &'static str {
        match self {
            HostStep::Hotplug { .. } => "hotplug",
            HostStep::Unplug { .. } => "unplug",
            HostStep::WaitUnplugged { .. } => "wait_unplugged",
            HostStep::HostSleep { .. } => "host_sleep",
            HostStep::Kselftest { .. } => "kselftest",
        }
    }
}

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
            Action::Host(h) => h.op(),
        }
    }

    /// The device ids this step names (its `device`, or a hotplugged device's ids).
    pub fn device_ids(&self) -> Vec<String> {
        match self {
            Action::Agent(step) => step.device().map(str::to_owned).into_iter().collect(),
            Action::Host(HostStep::Hotplug { device }) => device.ids(),
            Action::Host(HostStep::Unplug { device, .. } | HostStep::WaitUnplugged { device }) => {
                vec![device.clone()]
            }
            Action::Host(HostStep::HostSleep { .. } | HostStep::Kselftest { .. }) => Vec::new(),
        }
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

impl ExpectFields {
    /// The keys, in declaration order (a test checks them against what
    /// serde writes for a table with every key set).
    pub const KEYS: [&'static str; 9] = [
        "ok",
        "errno",
        "value",
        "iova",
        "interrupts",
        "msi_address",
        "msi_enabled",
        "dma_completed",
        "dma_data_matches",
    ];
}

/// A step's `expect` table: common keys plus variant-dependent ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(flatten)]
    pub common: ExpectFields,
    /// Only on kernels that have `IOMMU_OPTION_SW_MSI_*`, unless their
    /// dialect has its own table below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_sw_msi: Option<ExpectFields>,
    /// Only on kernels that lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_sw_msi: Option<ExpectFields>,
    /// `dialect.NAME = { … }`: on kernels of SW_MSI dialect NAME (see
    /// `[dialect.NAME]` in kernels.toml), instead of `with_sw_msi`: what is
    /// correct in that dialect, where it says something else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dialect: BTreeMap<String, ExpectFields>,
}

impl Expect {
    /// The keys of an `expect` table: [`ExpectFields::KEYS`], then the
    /// per-variant tables.
    pub const VARIANT_KEYS: [&'static str; 3] = ["with_sw_msi", "without_sw_msi", "dialect"];

    /// Every key an `expect` table may have.
    pub fn keys() -> Vec<&'static str> {
        let mut keys = ExpectFields::KEYS.to_vec();
        keys.extend(Expect::VARIANT_KEYS);
        keys
    }

    /// The checks that apply on a kernel of SW_MSI dialect `dialect`
    /// (`None`: a kernel without the options).
    pub fn for_variant(&self, dialect: Option<&str>) -> Vec<&ExpectFields> {
        let extra = match dialect {
            Some(d) => self.dialect.get(d).or(self.with_sw_msi.as_ref()),
            None => self.without_sw_msi.as_ref(),
        };
        std::iter::once(&self.common).chain(extra).collect()
    }

    /// This table with `over`'s tables in place of its own where `over`
    /// has them (a compound step's `expect` over its default).
    pub fn overridden_by(mut self, over: &Expect) -> Expect {
        if over.common != ExpectFields::default() {
            self.common = over.common.clone();
        }
        if over.with_sw_msi.is_some() {
            self.with_sw_msi = over.with_sw_msi.clone();
        }
        if over.without_sw_msi.is_some() {
            self.without_sw_msi = over.without_sw_msi.clone();
        }
        for (k, v) in &over.dialect {
            self.dialect.insert(k.clone(), v.clone());
        }
        self
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &ExpectFields> {
        std::iter::once(&self.common)
            .chain(self.with_sw_msi.as_ref())
            .chain(self.without_sw_msi.as_ref())
            .chain(self.dialect.values())
    }
}

/// One step that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioStep {
    /// 1-based, in run order (the snapshot's step number).
    pub index: usize,
    /// Where it is written: its `[[step]]` table, or the construct it came
    /// from (the `prelude` value, the table inside a `repeat`, the compound
    /// step's table).
    pub pos: Pos,
    /// How it came from a construct (`prelude `bound`, step 2`), empty for a
    /// step written as it runs.
    pub via: String,
    pub action: Action,
    pub expect: Option<Expect>,
    pub expect_pos: Pos,
    /// `open_device` without `bdf`: the executor fills it from the placement.
    pub bdf_from_placement: bool,
    /// An `option_set`/`option_get` of a SW_MSI option written without
    /// `object` (or a `set_window`): the device whose MSI window it is. The
    /// executor picks the object and option id through the variant's
    /// dialect; a step with `object` is sent as written (a raw probe).
    pub sw_msi_device: Option<String>,
}

impl ScenarioStep {
    /// `step 7 (bind)`, or `step 7 (bind, from prelude `bound`, step 2)`.
    pub fn label(&self) -> String {
        if self.via.is_empty() {
            format!("step {} ({})", self.index, self.action.op())
        } else {
            format!(
                "step {} ({}, from {})",
                self.index,
                self.action.op(),
                self.via
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_keys_are_what_serde_writes() {
        let every = ExpectFields {
            ok: Some(true),
            errno: Some("EINVAL".into()),
            value: Some(HexU64(1)),
            iova: Some(HexU64(1)),
            interrupts: Some(1),
            msi_address: Some(HexU64(1)),
            msi_enabled: Some(true),
            dma_completed: Some(true),
            dma_data_matches: Some(true),
        };
        let json = serde_json::to_value(&every).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(|k| &**k).collect();
        let mut want = ExpectFields::KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        let all = Expect {
            common: every.clone(),
            with_sw_msi: Some(every.clone()),
            without_sw_msi: Some(every.clone()),
            dialect: BTreeMap::from([("v2".to_string(), every)]),
        };
        let json = serde_json::to_value(&all).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(|k| &**k).collect();
        let mut want = Expect::keys();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn host_ops_are_every_variant_in_order() {
        let all = [
            HostStep::Hotplug {
                device: DeviceSpec::E1000e { id: "n".into() },
            },
            HostStep::Unplug {
                device: "n".into(),
                wait: false,
            },
            HostStep::WaitUnplugged { device: "n".into() },
            HostStep::HostSleep { ms: 1 },
            HostStep::Kselftest { timeout_ms: 1 },
        ];
        for (step, name) in all.iter().zip(HostStep::OPS) {
            assert_eq!(step.op(), name);
            assert_eq!(serde_json::to_value(step).unwrap()["op"], name);
        }
        let err = serde_json::from_str::<HostStep>(r#"{"op":"no_such_op"}"#)
            .unwrap_err()
            .to_string();
        for name in HostStep::OPS {
            assert!(err.contains(&format!("`{name}`")), "{err}");
        }
        assert_eq!(
            err.matches('`').count(),
            2 * (HostStep::OPS.len() + 1),
            "{err}"
        );
    }

    #[test]
    fn named_enums_parse_their_names_and_list_them_otherwise() {
        for m in MachineType::ALL {
            assert_eq!(m.name().parse::<MachineType>(), Ok(*m));
        }
        assert_eq!("2".parse::<SmmuStageSpec>(), Ok(SmmuStageSpec::Stage2));
        let e = "3".parse::<SmmuStageSpec>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown SMMU stage \"3\", expected one of `nested`, `1`, `2`"
        );
        assert_eq!(Requirement::Edu.qemu_device(), Some("edu"));
        assert_eq!(Requirement::SwMsiOption.qemu_device(), None);
    }

    #[test]
    fn preludes_expand_per_device() {
        let devs = ["a".to_string(), "b".to_string()];
        let ops: Vec<String> = Prelude::Attached
            .steps(&devs)
            .iter()
            .map(|s| format!("{} {}", s.op(), s.device().unwrap_or("-")))
            .collect();
        assert_eq!(
            ops,
            [
                "open_device a",
                "open_device b",
                "bind a",
                "bind b",
                "ioas_alloc -",
                "attach a",
                "attach b"
            ]
        );
    }
}
