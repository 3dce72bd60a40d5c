//! Two documents of one scenario, aligned by step number, reduced to what
//! differs in observable behaviour.
//!
//! Compared: the result (ok value or errno; for two values of the same kind,
//! the fields that differ: an MSI address, an interrupt count), the SMMU's
//! translations and faults and the ITS's writes (as multisets: the same
//! entry with another count is a difference), the kernel's reports, the
//! request (marked when it is the step's only difference: a dialect sending
//! another object id behaves the same), and of the scenario as a whole its
//! machine, devices, boot reports and early stop. Not compared: a step's
//! expectation, which is the scenario's claim, not the kernel's behaviour.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Observed, Which};
use crate::snapshot::observe::{Counted, ItsWrite, Observations, Translation};
use crate::snapshot::{PlacedDevice, SnapshotDoc, SnapshotStep};

/// One scenario, compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioComparison {
    pub scenario: String,
    pub verdict: Verdict,
    /// What differs: the scenario as a whole first (`step: None`), then the
    /// steps in order.
    pub steps: Vec<StepDiff>,
}

/// The one-line answer for a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// `steps` steps behave differently, `request_only` more differ only in
    /// what was sent; `whole` names what differs about the scenario as a
    /// whole (its devices, its boot reports, where it stopped).
    Differs {
        steps: usize,
        request_only: usize,
        whole: Vec<String>,
    },
    /// Only one side has the scenario (a variant whose snapshots do not
    /// cover it).
    OnlyIn(Which),
    /// Not applicable on one side or both, with the reason.
    Skipped(Vec<(Which, String)>),
    /// Nothing to compare: per side, what went wrong (a phrase that follows
    /// the side's name: `failed to run: QEMU exited`).
    NotCompared(Vec<(Which, String)>),
}

impl Verdict {
    /// The verdict in words, the sides named `a` and `b`.
    pub fn describe(&self, a: &str, b: &str) -> String {
        let name = |w: &Which| if *w == Which::A { a } else { b };
        let steps = |n: usize| format!("{n} step{}", if n == 1 { "" } else { "s" });
        match self {
            Verdict::Same => "same".into(),
            Verdict::Differs {
                steps: 0,
                request_only,
                whole,
            } if whole.is_empty() => format!(
                "same behaviour; {} differ{} only in the request",
                steps(*request_only),
                if *request_only == 1 { "s" } else { "" }
            ),
            Verdict::Differs {
                steps: n,
                request_only,
                whole,
            } => {
                let mut what: Vec<String> = Vec::new();
                if *n > 0 {
                    what.push(steps(*n));
                }
                what.extend(whole.iter().cloned());
                let mut text = format!("differs in {}", what.join(", "));
                if *request_only > 0 {
                    text.push_str(&format!(
                        "; {} more only in the request",
                        steps(*request_only)
                    ));
                }
                text
            }
            Verdict::OnlyIn(w) => format!("only in {}", name(w)),
            Verdict::Skipped(sides) | Verdict::NotCompared(sides) => {
                let skipped = matches!(self, Verdict::Skipped(_));
                sides
                    .iter()
                    .map(|(w, why)| {
                        if skipped {
                            format!("skipped on {}: {why}", name(w))
                        } else {
                            format!("{} {why}", name(w))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        }
    }
}

/// What differs in one step (or, with `step: None`, in the scenario as a
/// whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDiff {
    pub step: Option<usize>,
    /// The step's op (`option_set`); `scenario` for the scenario as a whole.
    pub op: String,
    /// Only the request differs: the kernel did the same.
    pub request_only: bool,
    pub rows: Vec<Row>,
}

/// One difference: what it is about, and each side's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `result`, `msi_config.address`, `request.object`, `smmu translations`,
    /// `its writes`, `smmu faults`, `kernel`, `step` (only on one side), …
    pub what: String,
    pub a: Vec<String>,
    pub b: Vec<String>,
}

/// What a side shows where it has nothing of its own.
pub const NONE: &str = "-";

/// Compares one scenario's two sides.
pub fn scenario(name: &str, a: &Observed, b: &Observed) -> ScenarioComparison {
    let sides = [(Which::A, a), (Which::B, b)];
    let of = |pick: fn(&Observed) -> Option<&String>| -> Vec<(Which, String)> {
        sides
            .iter()
            .filter_map(|(w, o)| pick(o).map(|why| (*w, why.clone())))
            .collect()
    };
    let failed = of(|o| match o {
        Observed::Failed(why) => Some(why),
        _ => None,
    });
    let skipped = of(|o| match o {
        Observed::Skipped(why) => Some(why),
        _ => None,
    });
    let verdict = |verdict| ScenarioComparison {
        scenario: name.to_string(),
        verdict,
        steps: Vec::new(),
    };
    if !failed.is_empty() {
        return verdict(Verdict::NotCompared(failed));
    }
    if !skipped.is_empty() {
        return verdict(Verdict::Skipped(skipped));
    }
    match (a, b) {
        (Observed::Doc(da), Observed::Doc(db)) => docs(name, da, db),
        (Observed::Doc(_), _) => verdict(Verdict::OnlyIn(Which::A)),
        (_, Observed::Doc(_)) => verdict(Verdict::OnlyIn(Which::B)),
        _ => verdict(Verdict::NotCompared(vec![
            (Which::A, "has no data for it".into()),
            (Which::B, "has no data for it".into()),
        ])),
    }
}

fn docs(name: &str, a: &SnapshotDoc, b: &SnapshotDoc) -> ScenarioComparison {
    let mut steps = Vec::new();
    let (whole_rows, whole) = whole(a, b);
    if !whole_rows.is_empty() {
        steps.push(StepDiff {
            step: None,
            op: "scenario".into(),
            request_only: false,
            rows: whole_rows,
        });
    }
    let by_number = |d: &SnapshotDoc| -> BTreeMap<usize, SnapshotStep> {
        d.steps.iter().map(|s| (s.step, s.clone())).collect()
    };
    let (sa, sb) = (by_number(a), by_number(b));
    let numbers: BTreeSet<usize> = sa.keys().chain(sb.keys()).copied().collect();
    steps.extend(
        numbers
            .into_iter()
            .filter_map(|n| step(n, sa.get(&n), sb.get(&n))),
    );
    let request_only = steps.iter().filter(|s| s.request_only).count();
    let behaviour = steps
        .iter()
        .filter(|s| s.step.is_some() && !s.request_only)
        .count();
    let verdict = if steps.is_empty() {
        Verdict::Same
    } else {
        Verdict::Differs {
            steps: behaviour,
            request_only,
            whole,
        }
    };
    ScenarioComparison {
        scenario: name.to_string(),
        verdict,
        steps,
    }
}

/// The scenario as a whole: its rows, and the names of what differs.
fn whole(a: &SnapshotDoc, b: &SnapshotDoc) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut names = Vec::new();
    if a.machine != b.machine {
        rows.push(Row {
            what: "machine".into(),
            a: vec![a.machine.clone()],
            b: vec![b.machine.clone()],
        });
        names.push("the machine".into());
    }
    let device = |d: &PlacedDevice| format!("{} at {} rid {}", d.id, d.bdf, d.requester_id);
    if let Some(row) = multiset("devices", &a.devices, &b.devices, device, device) {
        rows.push(row);
        names.push("the devices".into());
    }
    let line = |l: &String| l.clone();
    if let Some(row) = multiset(
        "kernel at boot",
        &a.boot_kernel_reports,
        &b.boot_kernel_reports,
        line,
        line,
    ) {
        rows.push(row);
        names.push("the kernel's boot reports".into());
    }
    if a.aborted != b.aborted {
        let stop = |s: &Option<String>| s.clone().unwrap_or_else(|| "ran to the end".into());
        rows.push(Row {
            what: "stopped early".into(),
            a: vec![stop(&a.aborted)],
            b: vec![stop(&b.aborted)],
        });
        names.push("where it stopped".into());
    }
    (rows, names)
}

fn step(n: usize, a: Option<&SnapshotStep>, b: Option<&SnapshotStep>) -> Option<StepDiff> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (Some(only), None) | (None, Some(only)) => {
            let ran = vec![params(&only.request.0), summary(&only.result)];
            let missing = vec!["(no such step)".to_string()];
            let (ra, rb) = if a.is_some() {
                (ran, missing)
            } else {
                (missing, ran)
            };
            return Some(StepDiff {
                step: Some(n),
                op: op_of(only),
                request_only: false,
                rows: vec![Row {
                    what: "step".into(),
                    a: ra,
                    b: rb,
                }],
            });
        }
        (None, None) => return None,
    };
    let request = fields("request", &a.request.0, &b.request.0);
    let mut behaviour = result(&a.result, &b.result);
    behaviour.extend(observations(&a.observed, &b.observed));
    if request.is_empty() && behaviour.is_empty() {
        return None;
    }
    let request_only = behaviour.is_empty();
    let mut rows = request;
    rows.extend(behaviour);
    Some(StepDiff {
        step: Some(n),
        op: op_of(a),
        request_only,
        rows,
    })
}

fn op_of(step: &SnapshotStep) -> String {
    step.request
        .0
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// Two results: one `result` row with each side in words, or, when both
/// succeeded with the same kind of value, a row per field that differs.
fn result(a: &Value, b: &Value) -> Vec<Row> {
    if a == b {
        return Vec::new();
    }
    if let (Some(Value::Object(oa)), Some(Value::Object(ob))) = (a.get("ok"), b.get("ok")) {
        if oa.keys().eq(ob.keys()) {
            return fields("", &a["ok"], &b["ok"]);
        }
    }
    vec![Row {
        what: "result".into(),
        a: vec![summary(a)],
        b: vec![summary(b)],
    }]
}

/// A row per leaf (`msi_config.address`, `iova_ranges[1].last`) whose value
/// differs, named below `prefix`.
fn fields(prefix: &str, a: &Value, b: &Value) -> Vec<Row> {
    let (la, lb) = (leaves(a), leaves(b));
    let mut seen = BTreeSet::new();
    let paths: Vec<&String> = la
        .iter()
        .chain(&lb)
        .map(|(p, _)| p)
        .filter(|p| seen.insert(*p))
        .collect();
    let get = |l: &[(String, String)], p: &str| {
        l.iter()
            .find(|(q, _)| q == p)
            .map_or_else(|| NONE.to_string(), |(_, v)| v.clone())
    };
    paths
        .into_iter()
        .filter_map(|p| {
            let (va, vb) = (get(&la, p), get(&lb, p));
            (va != vb).then(|| Row {
                what: match (prefix.is_empty(), p.is_empty()) {
                    (true, _) => p.clone(),
                    (false, true) => prefix.to_string(),
                    (false, false) => format!("{prefix}.{p}"),
                },
                a: vec![va],
                b: vec![vb],
            })
        })
        .collect()
}

/// Every scalar below `v` with its path, in document order.
fn leaves(v: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x, p, out);
                }
            }
            Value::Array(xs) if !xs.is_empty() => {
                for (i, x) in xs.iter().enumerate() {
                    walk(x, format!("{path}[{i}]"), out);
                }
            }
            _ => out.push((path, inline(v))),
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// A step's result in words: `ok`, `ok value=0x10000000`,
/// `EOPNOTSUPP (IOMMU_OPTION)`, `returned 1 (IOMMU_OPTION)`, `agent error: …`.
pub fn summary(result: &Value) -> String {
    if let Some(ok) = result.get("ok") {
        return match ok {
            Value::String(s) if s == "done" => "ok".into(),
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                format!("ok {k}={}", inline(v))
            }
            v => format!("ok {}", inline(v)),
        };
    }
    if let Some(err) = result.get("err") {
        let name = match (err.get("name").and_then(Value::as_str), err.get("errno")) {
            (Some(n), _) => n.to_string(),
            (None, Some(e)) => format!("errno {e}"),
            (None, None) => inline(err),
        };
        return match err.get("call").and_then(Value::as_str) {
            Some(call) => format!("{name} ({call})"),
            None => name,
        };
    }
    if let Some(r) = result.get("returned") {
        let rc = r.get("rc").map_or_else(|| "?".into(), inline);
        return match r.get("call").and_then(Value::as_str) {
            Some(call) => format!("returned {rc} ({call})"),
            None => format!("returned {rc}"),
        };
    }
    if let Some(m) = result.get("agent_error") {
        let m = m.get("message").unwrap_or(m);
        return format!("agent error: {}", inline(m));
    }
    if let Some(m) = result.get("protocol_error") {
        return format!("protocol error: {}", inline(m));
    }
    inline(result)
}

/// A request without its op, as `key=value` pairs.
fn params(request: &Value) -> String {
    match request {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "op")
            .map(|(k, v)| format!("{k}={}", inline(v)))
            .collect::<Vec<_>>()
            .join(" "),
        v => inline(v),
    }
}

/// A value on one line, strings unquoted: `{address: 0x8000040, enabled: true}`.
pub fn inline(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(xs) => format!("[{}]", xs.iter().map(inline).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k}: {}", inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        v => v.to_string(),
    }
}

fn observations(a: &Observations, b: &Observations) -> Vec<Row> {
    let translation =
        |t: &Translation| format!("{} {}->{} x{}", t.device, t.iova, t.translated, t.count);
    let translation_long = |t: &Translation| {
        format!(
            "{} sid {} perm {} stage {}",
            translation(t),
            t.sid,
            t.perm,
            t.stage
        )
    };
    let its = |w: &ItsWrite| {
        let source = w
            .source
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        format!(
            "{} rid {}{source} data {} x{}",
            w.device, w.requester_id, w.data, w.count
        )
    };
    let its_long = |w: &ItsWrite| format!("{} offset {}", its(w), w.offset);
    let fault = |f: &Counted| format!("{} {} x{}", f.device, f.event, f.count);
    let line = |l: &String| l.clone();
    [
        multiset(
            "smmu translations",
            &a.smmu_translations,
            &b.smmu_translations,
            translation,
            translation_long,
        ),
        multiset("smmu faults", &a.smmu_faults, &b.smmu_faults, fault, fault),
        multiset("its writes", &a.its_writes, &b.its_writes, its, its_long),
        multiset("kernel", &a.kernel, &b.kernel, line, line),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The entries of `a` and `b` that the other side does not have (each in
/// its order; an entry twice on one side and once on the other counts once
/// as its own), or `None` when both hold the same. Entries are shown with
/// `short`, or with `long` when two different entries would read the same.
/// The row's name says how many entries both sides share.
fn multiset<T: Ord>(
    what: &str,
    a: &[T],
    b: &[T],
    short: impl Fn(&T) -> String,
    long: impl Fn(&T) -> String,
) -> Option<Row> {
    fn own<'t, T: Ord>(xs: &'t [T], other: &[T]) -> Vec<&'t T> {
        let mut left: BTreeMap<&T, usize> = BTreeMap::new();
        for x in other {
            *left.entry(x).or_default() += 1;
        }
        xs.iter()
            .filter(|x| match left.get_mut(x) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .collect()
    }
    let (oa, ob) = (own(a, b), own(b, a));
    if oa.is_empty() && ob.is_empty() {
        return None;
    }
    let common = a.len() - oa.len();
    let shown = |xs: &[&T], f: &dyn Fn(&T) -> String| -> Vec<String> {
        if xs.is_empty() {
            vec![NONE.to_string()]
        } else {
            xs.iter().map(|x| f(x)).collect()
        }
    };
    let (mut sa, mut sb) = (shown(&oa, &short), shown(&ob, &short));
    if sa.iter().any(|x| x != NONE && sb.contains(x)) {
        (sa, sb) = (shown(&oa, &long), shown(&ob, &long));
    }
    Some(Row {
        what: if common > 0 {
            format!("{what} (+{common} same)")
        } else {
            what.to_string()
        },
        a: sa,
        b: sb,
    })
}
