//! From a file's `[[step]]` tables to the flat list of steps that run.
//!
//! The constructs that keep a scenario short expand here, at parse time,
//! into the same plain steps a file could spell out, so the executor and
//! the snapshots never see them:
//!
//! - `prelude = "bound"` / `"attached"`: the common set-up (see
//!   [`Prelude::steps`]), first;
//! - `device` may be left out of a step when the scenario has exactly one
//!   device (and hotplugs none);
//! - compound steps ([`Compound`]): `raise_and_wait`, `enable_msi`, `set_window`;
//! - `repeat = N` with `steps = [...]`: the body N times, with `{expr}` in
//!   its strings evaluated for the index `i` = 0, 1, …, N - 1 (see [`template`]).
//!
//! Every expanded step keeps a position in the file (the construct's) and
//! says where it came from ([`ScenarioStep::via`]).

use std::borrow::Cow;

use msi_protocol::{HexU64, IrqKind, ObjectRef, OptionId, Step, DEFAULT_WAIT_TIMEOUT_MS};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::model::{
    list, Action, Expect, ExpectFields, HostStep, MachineSpec, Pos, Prelude, ScenarioError,
    ScenarioStep,
};
use super::source::{deserialize, Source};

/// A step that stands for several plain steps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Compound {
    /// `edu_raise`, `wait_interrupts` (for `count` interrupts, at most
    /// `timeout_ms`; the compound's `expect` is the wait's), `edu_ack`.
    RaiseAndWait {
        device: String,
        #[serde(default = "one")]
        count: u64,
        #[serde(default = "default_wait_timeout_ms")]
        timeout_ms: u64,
    },
    /// `bus_master` (on), then `msi_enable` with `vectors` on `irq` (MSI
    /// unless it says `msix`); the compound's `expect` is the enable's.
    EnableMsi {
        device: String,
        #[serde(default = "one_u32")]
        vectors: u32,
        #[serde(default)]
        irq: IrqKind,
    },
    /// Set the MSI window of `device`: `option_set sw_msi_start = start`,
    /// then `option_set sw_msi_size = size` (in MiB, as the uAPI documents
    /// it), addressed through the variant's dialect; each expected to work
    /// on kernels with the option and to fail with EOPNOTSUPP on kernels
    /// without it, unless the compound's `expect` says otherwise.
    SetWindow {
        device: String,
        start: HexU64,
        #[serde(default = "one_hex")]
        size: HexU64,
    },
}

fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn one_hex() -> HexU64 {
    HexU64(1)
}
fn default_wait_timeout_ms() -> u64 {
    DEFAULT_WAIT_TIMEOUT_MS
}

impl Compound {
    /// The compound ops, in declaration order (a test checks them).
    pub const OPS: [&'static str; 3] = ["raise_and_wait", "enable_msi", "set_window"];
    /// The compound ops that act on a device.
    pub const DEVICE_OPS: [&'static str; 3] = ["raise_and_wait", "enable_msi", "set_window"];

    pub fn op(&self) -> &'static str {
        match self {
            Compound::RaiseAndWait { .. } => "raise_and_wait",
            Compound::EnableMsi { .. } => "enable_msi",
            Compound::SetWindow { .. } => "set_window",
        }
    }

    /// The plain steps, and which of them carries the compound's `expect`
    /// (`None`: the compound takes no `expect`; each step has its own).
    fn expand(&self) -> (Vec<(Step, Option<Expect>)>, Option<usize>) {
        match self {
            Compound::RaiseAndWait {
                device,
                count,
                timeout_ms,
            } => (
                vec![
                    (
                        Step::EduRaise {
                            device: device.clone(),
                            value: 1,
                        },
                        None,
                    ),
                    (
                        Step::WaitInterrupts {
                            device: device.clone(),
                            vector: 0,
                            count: *count,
                            timeout_ms: *timeout_ms,
                            at_least: false,
                        },
                        None,
                    ),
                    (
                        Step::EduAck {
                            device: device.clone(),
                            value: 1,
                        },
                        None,
                    ),
                ],
                Some(1),
            ),
            Compound::EnableMsi {
                device,
                vectors,
                irq,
            } => (
                vec![
                    (
                        Step::BusMaster {
                            device: device.clone(),
                            enable: true,
                        },
                        None,
                    ),
                    (
                        Step::MsiEnable {
                            device: device.clone(),
                            vectors: *vectors,
                            irq: *irq,
                        },
                        None,
                    ),
                ],
                Some(1),
            ),
            Compound::SetWindow { start, size, .. } => {
                let option = |option, value| Step::OptionSet {
                    option,
                    object: ObjectRef::default(),
                    value,
                };
                (
                    vec![
                        (
                            option(OptionId::SwMsiStart, *start),
                            Some(works_with_option()),
                        ),
                        (
                            option(OptionId::SwMsiSize, *size),
                            Some(works_with_option()),
                        ),
                    ],
                    None,
                )
            }
        }
    }
}

/// `expect = { with_sw_msi = { ok = true }, without_sw_msi = { errno = "EOPNOTSUPP" } }`.
fn works_with_option() -> Expect {
    Expect {
        common: ExpectFields::default(),
        with_sw_msi: Some(ExpectFields {
            ok: Some(true),
            ..ExpectFields::default()
        }),
        without_sw_msi: Some(ExpectFields {
            errno: Some("EOPNOTSUPP".into()),
            ..ExpectFields::default()
        }),
        dialect: Default::default(),
    }
}

/// The most iterations a `repeat` may have.
pub const MAX_REPEAT: u64 = 1000;

/// Builds the flat step list of one file.
pub(crate) struct Expander<'s> {
    src: &'s Source<'s>,
    devices: Vec<String>,
    /// The device a step may leave out, or why there is none.
    default_device: Result<String, String>,
    steps: Vec<ScenarioStep>,
}

impl<'s> Expander<'s> {
    /// `items` are the file's `[[step]]` tables (scanned for hotplugs, which
    /// make the only-device default ambiguous).
    pub(crate) fn new(
        src: &'s Source<'s>,
        machine: &MachineSpec,
        items: &[Spanned<DeValue>],
    ) -> Expander<'s> {
        let devices = machine.device_ids();
        let default_device = if items.iter().any(hotplugs) {
            Err("the scenario hotplugs devices".to_string())
        } else if let [only] = devices.as_slice() {
            Ok(only.clone())
        } else {
            Err(format!(
                "the scenario has {} devices ({})",
                devices.len(),
                devices
                    .iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        Expander {
            src,
            devices,
            default_device,
            steps: Vec::new(),
        }
    }

    pub(crate) fn finish(self) -> Vec<ScenarioStep> {
        self.steps
    }

    /// The prelude's steps, positioned at the `prelude` value.
    pub(crate) fn prelude(&mut self, prelude: Prelude, pos: Pos) {
        for (k, step) in prelude.steps(&self.devices).into_iter().enumerate() {
            let bdf_from_placement =
                matches!(&step, Step::OpenDevice { bdf, .. } if bdf.is_empty());
            self.push(
                pos,
                format!("prelude `{prelude}`, step {}", k + 1),
                Action::Agent(step),
                None,
                Pos::default(),
                Fill {
                    bdf_from_placement,
                    sw_msi_device: None,
                },
            );
        }
    }

    /// One `[[step]]` table of the file: a step, a compound step or a repeat.
    pub(crate) fn file_step(&mut self, item: &Spanned<DeValue>) -> Result<(), ScenarioError> {
        match item.get_ref().as_table() {
            Some(t) if t.iter().any(|(k, _)| k.get_ref() == "repeat") => self.repeat(item),
            _ => self.step(item, String::new()),
        }
    }

    fn next_index(&self) -> usize {
        self.steps.len() + 1
    }

    fn push(
        &mut self,
        pos: Pos,
        via: String,
        action: Action,
        expect: Option<Expect>,
        expect_pos: Pos,
        fill: Fill,
    ) {
        let Fill {
            bdf_from_placement,
            sw_msi_device,
        } = fill;
        self.steps.push(ScenarioStep {
            index: self.next_index(),
            pos,
            via,
            action,
            expect,
            expect_pos,
            bdf_from_placement,
            sw_msi_device,
        });
    }

    /// `repeat = N` and `steps = [...]`: the body N times, its templates
    /// evaluated for each `i`.
    fn repeat(&mut self, item: &Spanned<DeValue>) -> Result<(), ScenarioError> {
        let src = self.src;
        let ctx = format!("step {} (repeat)", self.next_index());
        let table = item.get_ref().as_table().expect("a table");
        let mut count = None;
        let mut body = None;
        for (k, v) in table.iter() {
            match k.get_ref().as_ref() {
                "repeat" => count = Some(v),
                "steps" => body = Some(v),
                other => {
                    return Err(src.err(
                        k.span(),
                        format!(
                            "{ctx}: unknown key `{other}`, expected `repeat` (the count) and `steps` (the body)"
                        ),
                    ))
                }
            }
        }
        let count_value = count.expect("checked by the caller");
        let count = count_value
            .get_ref()
            .as_integer()
            .and_then(|n| i64::from_str_radix(n.as_str(), n.radix()).ok())
            .filter(|n| (1..=MAX_REPEAT as i64).contains(n))
            .ok_or_else(|| {
                src.err(
                    count_value.span(),
                    format!("{ctx}: `repeat` must be an integer in 1..={MAX_REPEAT} (the number of iterations)"),
                )
            })? as u64;
        let Some(body) = body else {
            return Err(src.err(
                item.span(),
                format!(
                    "{ctx}: missing `steps`, the body: `steps = [{{ op = \"...\", ... }}, ...]`"
                ),
            ));
        };
        let Some(body_items) = body.get_ref().as_array().filter(|a| !a.is_empty()) else {
            return Err(src.err(
                body.span(),
                format!("{ctx}: `steps` must be a non-empty array of step tables"),
            ));
        };
        for b in body_items.iter() {
            if let Some(t) = b.get_ref().as_table() {
                if let Some((k, _)) = t.iter().find(|(k, _)| k.get_ref() == "repeat") {
                    return Err(src.err(
                        k.span(),
                        format!("{ctx}: a repeat cannot hold another repeat"),
                    ));
                }
            }
        }
        for i in 0..count {
            for (k, b) in body_items.iter().enumerate() {
                let via = format!("repeat i = {i} of 0..{count}, body step {}", k + 1);
                let mut replacements = Vec::new();
                template::collect(src, b, i, &mut replacements).map_err(|mut e| {
                    e.message = format!("step {} ({via}): {}", self.next_index(), e.message);
                    e
                })?;
                let literals: Vec<String> = replacements
                    .iter()
                    .map(|r| match r {
                        template::Replacement::Number(n) => n.to_string(),
                        template::Replacement::Text(_) => String::new(),
                    })
                    .collect();
                let instance = template::substitute(b, &mut replacements.iter().zip(&literals));
                self.step(&instance, via)?;
            }
        }
        Ok(())
    }

    /// One step table (agent, host or compound), `via` saying where it
    /// came from when it is inside a construct.
    fn step(&mut self, item: &Spanned<DeValue>, via: String) -> Result<(), ScenarioError> {
        let src = self.src;
        let index = self.next_index();
        let from = |op: &str| {
            if via.is_empty() {
                format!("step {index} ({op})")
            } else {
                format!("step {index} ({op}, from {via})")
            }
        };
        let Some(table) = item.get_ref().as_table() else {
            return Err(src.err(
                item.span(),
                format!("{}: a step must be a table", from("?")),
            ));
        };
        let ops = all_ops();
        let Some((_, op_value)) = table.iter().find(|(k, _)| k.get_ref() == "op") else {
            return Err(src.err(
                item.span(),
                format!(
                    "{}: missing `op`, expected one of {} (or `repeat`)",
                    from("?"),
                    list(&ops)
                ),
            ));
        };
        let Some(op) = op_value.get_ref().as_str() else {
            return Err(src.err(
                op_value.span(),
                format!("{}: `op` must be a string", from("?")),
            ));
        };
        let ctx = from(op);
        if !ops.contains(&op) {
            return Err(src.err(
                op_value.span(),
                format!("{ctx}: unknown op `{op}`, expected one of {}", list(&ops)),
            ));
        }
        // `expect` is ours, the rest is the step itself.
        let expect_entry = table.iter().find(|(k, _)| k.get_ref() == "expect");
        let mut rest: DeTable = table
            .iter()
            .filter(|(k, _)| k.get_ref() != "expect")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (expect, expect_pos) = match expect_entry {
            Some((k, v)) => (
                Some(
                    deserialize::<Expect>(src, v, &format!("{ctx}: expect")).map_err(|mut e| {
                        // `flatten` keeps serde from listing the known keys.
                        if e.message.contains("unknown field") && !e.message.contains("expected") {
                            e.message
                                .push_str(&format!(", expected one of {}", list(&Expect::keys())));
                        }
                        e
                    })?,
                ),
                src.pos(k.span().start),
            ),
            None => (None, Pos::default()),
        };
        let has = |rest: &DeTable, key: &str| rest.iter().any(|(k, _)| k.get_ref() == key);
        let takes_device = Step::DEVICE_OPS.contains(&op) || Compound::DEVICE_OPS.contains(&op);
        if takes_device && !has(&rest, "device") {
            match &self.default_device {
                Ok(d) => {
                    rest.insert(
                        Spanned::new(item.span(), "device".into()),
                        Spanned::new(item.span(), DeValue::String(Cow::Owned(d.clone()))),
                    );
                }
                Err(why) => {
                    return Err(src.err(
                        item.span(),
                        format!("{ctx}: `device` left out, but {why}: name the device"),
                    ))
                }
            }
        }
        let mut bdf_from_placement = false;
        if op == "open_device" && !has(&rest, "bdf") {
            // Filled in from the VM's placement at run time.
            bdf_from_placement = true;
            rest.insert(
                Spanned::new(item.span(), "bdf".into()),
                Spanned::new(item.span(), DeValue::String("".into())),
            );
        }
        // An option step without `object` means "this device's window": its
        // `device` (or the only device) is ours, not the agent's.
        let mut window_device = None;
        // A `concurrent` step's SW_MSI option steps are its device's window.
        let option_op = matches!(op, "option_set" | "option_get" | "option_op");
        if (option_op || op == "concurrent") && !has(&rest, "object") {
            let given = rest
                .iter()
                .find(|(k, _)| k.get_ref() == "device")
                .map(|(k, v)| (k.clone(), v.clone()));
            window_device = match given {
                Some((k, v)) => {
                    rest.remove(&k);
                    match v.get_ref().as_str() {
                        Some(d) => Some(d.to_string()),
                        None => {
                            return Err(src.err(v.span(), format!("{ctx}: `device` must be a device name")))
                        }
                    }
                }
                None => match &self.default_device {
                    Ok(d) => Some(d.clone()),
                    Err(why) => {
                        return Err(src.err(
                            item.span(),
                            format!("{ctx}: `device` left out, but {why}: name the device whose MSI window it is (or give `object` for a raw probe)"),
                        ))
                    }
                },
            };
        } else if option_op {
            if let Some((k, _)) = rest.iter().find(|(k, _)| k.get_ref() == "device") {
                return Err(src.err(
                    k.span(),
                    format!("{ctx}: `device` and `object` both given: with `object` the step is sent as written (a raw probe); leave `object` out to address the device's window"),
                ));
            }
        }
        let pos = src.pos(item.span().start);
        let rest_value = Spanned::new(item.span(), DeValue::Table(rest));
        if Compound::OPS.contains(&op) {
            let compound: Compound = deserialize(src, &rest_value, &ctx)?;
            let (parts, carries_expect) = compound.expand();
            // `set_window`'s own `expect` is laid over the default of both
            // of its steps (say `dialect.v2 = { errno = "EBUSY" }` and keep
            // the rest).
            let window_device = match &compound {
                Compound::SetWindow { device, .. } => Some(device.clone()),
                _ => None,
            };
            if carries_expect.is_none() && expect.is_some() && window_device.is_none() {
                return Err(src.err(
                    expect_entry.expect("expect given").0.span(),
                    format!(
                        "{ctx}: `{op}` takes no `expect` (each of its steps has its own); write its steps out to expect something else"
                    ),
                ));
            }
            let via = if via.is_empty() {
                format!("`{op}` at step {index}")
            } else {
                format!("{via}, `{op}`")
            };
            for (k, (step, own_expect)) in parts.into_iter().enumerate() {
                let (e, e_pos) = match (&window_device, &expect) {
                    (Some(_), Some(over)) => {
                        (own_expect.map(|own| own.overridden_by(over)), expect_pos)
                    }
                    _ if carries_expect == Some(k) => (expect.clone(), expect_pos),
                    _ => (own_expect, pos),
                };
                self.push(
                    pos,
                    via.clone(),
                    Action::Agent(step),
                    e,
                    e_pos,
                    Fill {
                        bdf_from_placement: false,
                        sw_msi_device: window_device.clone(),
                    },
                );
            }
            return Ok(());
        }
        let action = if HostStep::OPS.contains(&op) {
            Action::Host(deserialize(src, &rest_value, &ctx)?)
        } else {
            Action::Agent(deserialize(src, &rest_value, &ctx)?)
        };
        let sw_msi_device = match (&action, window_device) {
            (
                Action::Agent(
                    Step::OptionSet { option, .. }
                    | Step::OptionGet { option, .. }
                    | Step::OptionOp { option, .. },
                ),
                Some(d),
            )
                if is_window_option(*option) =>
            {
                Some(d)
            }
            (Action::Agent(Step::Concurrent { .. }), d) => d,
            (_, Some(_)) => {
                return Err(src.err(
                    item.span(),
                    format!("{ctx}: `device` on an `{op}` applies only to the SW_MSI options (sw_msi_start, sw_msi_size) written without `object`"),
                ))
            }
            (_, None) => None,
        };
        self.push(
            pos,
            via,
            action,
            expect,
            expect_pos,
            Fill {
                bdf_from_placement,
                sw_msi_device,
            },
        );
        Ok(())
    }
}

/// What the executor fills in at run time (see [`ScenarioStep`]).
struct Fill {
    bdf_from_placement: bool,
    sw_msi_device: Option<String>,
}

/// The options whose object and id the dialect decides.
pub(crate) fn is_window_option(option: OptionId) -> bool {
    matches!(option, OptionId::SwMsiStart | OptionId::SwMsiSize)
}

/// Every op a step may name: the agent's, the host's, then the compounds.
pub fn all_ops() -> Vec<&'static str> {
    let mut ops = Step::OPS.to_vec();
    ops.extend(HostStep::OPS);
    ops.extend(Compound::OPS);
    ops
}

/// Whether a `[[step]]` table (or a repeat's body) hotplugs a device.
fn hotplugs(item: &Spanned<DeValue>) -> bool {
    let Some(t) = item.get_ref().as_table() else {
        return false;
    };
    t.iter().any(|(k, v)| match k.get_ref().as_ref() {
        "op" => v.get_ref().as_str() == Some("hotplug"),
        "steps" => v
            .get_ref()
            .as_array()
            .is_some_and(|a| a.iter().any(hotplugs)),
        _ => false,
    })
}

/// `{expr}` in the strings of a repeat's body.
///
/// A string that is exactly one `{expr}` becomes the number `expr`
/// evaluates to (an integer, or a `"0x…"` string above `i64::MAX`, which
/// TOML integers cannot hold); in any other string each `{expr}` is
/// replaced by its value in decimal (`"ioas{i}"` → `"ioas3"`). `expr` is
/// `+`, `-`, `*` and parentheses over `i` and integers (decimal or `0x`
/// hex, `_` separators allowed), in u64 with overflow an error.
pub(crate) mod template {
    use std::borrow::Cow;

    use toml::de::{DeArray, DeTable, DeValue};
    use toml::Spanned;

    use super::super::model::ScenarioError;
    use super::super::source::Source;

    /// What a template string becomes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Replacement {
        Number(u64),
        Text(String),
    }

    /// The replacements for the template strings of `v` at index `i`, in
    /// the order [`substitute`] visits them.
    pub(crate) fn collect(
        src: &Source,
        v: &Spanned<DeValue>,
        i: u64,
        out: &mut Vec<Replacement>,
    ) -> Result<(), ScenarioError> {
        match v.get_ref() {
            DeValue::String(s) if s.contains(['{', '}']) => {
                let r = render(s, i).map_err(|e| {
                    src.err(
                        v.span(),
                        format!("template {:?} at i = {i}: {e}", s.as_ref()),
                    )
                })?;
                out.push(r);
            }
            DeValue::Table(t) => {
                for (_, x) in t.iter() {
                    collect(src, x, i, out)?;
                }
            }
            DeValue::Array(a) => {
                for x in a.iter() {
                    collect(src, x, i, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `v` with each template string replaced (by [`collect`]'s results,
    /// each with the decimal text of a number to parse as a TOML integer).
    pub(crate) fn substitute<'a>(
        v: &Spanned<DeValue<'a>>,
        repl: &mut dyn Iterator<Item = (&Replacement, &'a String)>,
    ) -> Spanned<DeValue<'a>> {
        let value = match v.get_ref() {
            DeValue::String(s) if s.contains(['{', '}']) => match repl.next() {
                Some((Replacement::Text(t), _)) => DeValue::String(Cow::Owned(t.clone())),
                Some((Replacement::Number(n), literal)) => {
                    if i64::try_from(*n).is_ok() {
                        DeValue::parse(literal)
                            .map(Spanned::into_inner)
                            .unwrap_or_else(|_| DeValue::String(Cow::Owned(format!("{n:#x}"))))
                    } else {
                        DeValue::String(Cow::Owned(format!("{n:#x}")))
                    }
                }
                None => v.get_ref().clone(),
            },
            DeValue::Table(t) => {
                let mut out = DeTable::new();
                for (k, x) in t.iter() {
                    out.insert(k.clone(), substitute(x, repl));
                }
                DeValue::Table(out)
            }
            DeValue::Array(a) => {
                let mut out = DeArray::new();
                for x in a.iter() {
                    out.push(substitute(x, repl));
                }
                DeValue::Array(out)
            }
            other => other.clone(),
        };
        Spanned::new(v.span(), value)
    }

    /// One template string at index `i`.
    pub(crate) fn render(s: &str, i: u64) -> Result<Replacement, String> {
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            if !inner.contains(['{', '}']) {
                return eval(inner, i).map(Replacement::Number);
            }
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("`}` without its `{`".into());
            }
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or("`{` without its `}`")?;
            out.push_str(&eval(&after[..close], i)?.to_string());
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(Replacement::Text(out))
    }

    /// Evaluates `expr` for index `i`.
    pub(crate) fn eval(expr: &str, i: u64) -> Result<u64, String> {
        let mut p = Parser {
            s: expr.as_bytes(),
            at: 0,
            i,
        };
        let v = p.sum()?;
        p.blank();
        if p.at != p.s.len() {
            return Err(format!(
                "unexpected `{}` in `{expr}`",
                &expr[p.at..p.at + 1]
            ));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        at: usize,
        i: u64,
    }

    impl Parser<'_> {
        fn blank(&mut self) {
            while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
                self.at += 1;
            }
        }

        fn peek(&mut self) -> Option<u8> {
            self.blank();
            self.s.get(self.at).copied()
        }

        fn sum(&mut self) -> Result<u64, String> {
            let mut v = self.product()?;
            while let Some(op @ (b'+' | b'-')) = self.peek() {
                self.at += 1;
                let r = self.product()?;
                v = if op == b'+' {
                    v.checked_add(r).ok_or("the sum overflows 64 bits")?
                } else {
                    v.checked_sub(r).ok_or("the difference is negative")?
                };
            }
            Ok(v)
        }

        fn product(&mut self) -> Result<u64, String> {
            let mut v = self.atom()?;
            while self.peek() == Some(b'*') {
                self.at += 1;
                let r = self.atom()?;
                v = v.checked_mul(r).ok_or("the product overflows 64 bits")?;
            }
            Ok(v)
        }

        fn atom(&mut self) -> Result<u64, String> {
            match self.peek() {
                Some(b'(') => {
                    self.at += 1;
                    let v = self.sum()?;
                    if self.peek() != Some(b')') {
                        return Err("`(` without its `)`".into());
                    }
                    self.at += 1;
                    Ok(v)
                }
                Some(b'i') => {
                    self.at += 1;
                    if self
                        .s
                        .get(self.at)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    {
                        return Err("the only name is `i`, the index".into());
                    }
                    Ok(self.i)
                }
                Some(c) if c.is_ascii_digit() => {
                    let start = self.at;
                    while self
                        .s
                        .get(self.at)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    {
                        self.at += 1;
                    }
                    let text = std::str::from_utf8(&self.s[start..self.at]).expect("ascii");
                    text.parse::<msi_protocol::HexU64>()
                        .map(|h| h.get())
                        .map_err(|e| e.to_string())
                }
                Some(_) => Err("expected a number, `i` or `(`".into()),
                None => Err("expected a number, `i` or `(`, found the end".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::template::{eval, render, Replacement};
    use super::*;

    #[test]
    fn expressions_evaluate_exactly() {
        assert_eq!(eval("0x10000000 + i * 0x100000", 3), Ok(0x1030_0000));
        assert_eq!(eval("(i + 1) * 2 - 1", 4), Ok(9));
        assert_eq!(eval("1_000", 0), Ok(1000));
        assert!(eval("0 - i", 1).unwrap_err().contains("negative"));
        assert!(eval("0xffffffffffffffff + i", 1)
            .unwrap_err()
            .contains("overflows"));
        assert!(eval("j", 0).unwrap_err().contains("`i`"));
        assert!(eval("i +", 0).unwrap_err().contains("the end"));
        assert!(eval("i i", 0).unwrap_err().contains("unexpected `i`"));
    }

    #[test]
    fn templates_are_numbers_alone_and_text_inside_strings() {
        assert_eq!(render("{i * 2}", 5), Ok(Replacement::Number(10)));
        assert_eq!(render("ioas{i}", 5), Ok(Replacement::Text("ioas5".into())));
        assert_eq!(
            render("w{i}-{i + 1}", 1),
            Ok(Replacement::Text("w1-2".into()))
        );
        assert!(render("{i", 0).is_err());
        assert!(render("i}", 0).is_err());
    }

    #[test]
    fn compound_ops_are_every_variant() {
        let all = [
            Compound::RaiseAndWait {
                device: "d".into(),
                count: 1,
                timeout_ms: 1,
            },
            Compound::EnableMsi {
                device: "d".into(),
                vectors: 1,
                irq: IrqKind::Msix,
            },
            Compound::SetWindow {
                device: "d".into(),
                start: HexU64(0),
                size: HexU64(1),
            },
        ];
        let ops: Vec<&str> = all.iter().map(Compound::op).collect();
        assert_eq!(ops, Compound::OPS);
        let err = toml::from_str::<Compound>("op = \"no_such_op\"")
            .unwrap_err()
            .to_string();
        for op in Compound::OPS {
            assert!(err.contains(&format!("`{op}`")), "{err}");
        }
        for c in &all {
            // `set_window`'s device addresses its window through the dialect.
            let takes_device = c.expand().0.iter().any(|(s, _)| s.device().is_some())
                || matches!(c, Compound::SetWindow { .. });
            assert_eq!(Compound::DEVICE_OPS.contains(&c.op()), takes_device);
        }
    }
}
