//! A [`Comparison`] for people: aligned plain text for the terminal, or
//! Markdown a reviewer pastes into a mail reply (a verdict table, then a
//! short table per scenario that differs, long lines fenced below it; no
//! HTML, padded so that it reads as plain text too).

use super::diff::{StepDiff, Verdict};
use super::{Comparison, Side};

/// Text columns wider than this wrap (kernel lines, whole MSI configs).
const TEXT_CELL: usize = 56;
/// Markdown cells with a line longer than this, or more lines, go below the
/// table in a fenced block: a table row must stay one line.
const MD_CELL: usize = 60;
const MD_LINES: usize = 3;

/// The comparison as aligned text: the sources, a verdict per scenario, and
/// for each that differs its differing steps side by side.
pub fn text(c: &Comparison) -> String {
    let (la, lb) = c.labels();
    let mut out = header(c, &la, &lb);
    for s in &c.scenarios {
        out.push_str(&format!(
            "{}: {}\n",
            s.scenario,
            s.verdict.describe(&la, &lb)
        ));
        if s.steps.is_empty() {
            continue;
        }
        let mut rows = vec![cells(["step", "op", "what", &la, &lb])];
        for (numbers, d) in groups(&s.steps) {
            rows.extend(step_rows(&numbers, d).into_iter().map(|r| {
                let [step, op, what, a, b] = r;
                [step, op, what, wrap_all(&a), wrap_all(&b)]
            }));
        }
        out.push_str(&table_text(&rows));
        out.push('\n');
    }
    out.push_str(&totals(c));
    out.push('\n');
    out
}

/// The comparison as Markdown for a mail reply.
pub fn markdown(c: &Comparison) -> String {
    let (la, lb) = c.labels();
    let mut out = String::new();
    for (label, side) in [(&la, &c.a), (&lb, &c.b)] {
        out.push_str(&format!("- {}: {}\n", code(label), source_of(side)));
    }
    out.push('\n');
    let verdicts: Vec<[Vec<String>; 2]> =
        std::iter::once([vec!["scenario".to_string()], vec![format!("{la} vs {lb}")]])
            .chain(c.scenarios.iter().map(|s| {
                [
                    vec![plain(&s.scenario)],
                    vec![plain(&s.verdict.describe(&la, &lb))],
                ]
            }))
            .collect();
    out.push_str(&table_markdown(&verdicts));
    out.push_str(&format!("\n{}\n", totals(c)));
    for s in c.scenarios.iter().filter(|s| !s.steps.is_empty()) {
        out.push_str(&format!(
            "\n### {}: {}\n\n",
            s.scenario,
            s.verdict.describe(&la, &lb)
        ));
        let mut rows = vec![cells(["step", "op", "what", &la, &lb])];
        let mut below = Vec::new();
        for (numbers, d) in groups(&s.steps) {
            for [step, op, what, a, b] in step_rows(&numbers, d) {
                let long =
                    |c: &[String]| c.len() > MD_LINES || c.join("; ").chars().count() > MD_CELL;
                let (ca, cb) = if long(&a) || long(&b) {
                    below.push(long_row(&numbers, d, &what[0], &la, &a, &lb, &b));
                    let see = vec!["(below)".to_string()];
                    (see.clone(), see)
                } else {
                    (
                        a.iter().map(|l| code(l)).collect(),
                        b.iter().map(|l| code(l)).collect(),
                    )
                };
                let join = |c: Vec<String>| vec![c.join("; ")];
                rows.push([step, op, what, join(ca), join(cb)]);
            }
        }
        out.push_str(&table_markdown(&rows));
        if !below.is_empty() {
            // Indented by two or more, no line of the text can close the fence.
            out.push_str(&format!("\n```\n{}```\n", below.join("\n")));
        }
    }
    out
}

fn header(c: &Comparison, la: &str, lb: &str) -> String {
    let width = la.len().max(lb.len());
    format!(
        "A {la:width$}  {}\nB {lb:width$}  {}\n\n",
        source_of(&c.a),
        source_of(&c.b)
    )
}

fn source_of(side: &Side) -> String {
    match &side.kernel {
        Some(k) => format!("{}, kernel {k}", side.source),
        None => side.source.clone(),
    }
}

/// `22 scenarios: 3 same, 19 differ`.
fn totals(c: &Comparison) -> String {
    let mut same = 0;
    let mut differ = 0;
    let mut one_side = 0;
    let mut skipped = 0;
    let mut failed = 0;
    for s in &c.scenarios {
        match &s.verdict {
            Verdict::Same => same += 1,
            Verdict::Differs {
                steps: 0, whole, ..
            } if whole.is_empty() => same += 1,
            Verdict::Differs { .. } => differ += 1,
            Verdict::OnlyIn(_) => one_side += 1,
            Verdict::Skipped(_) => skipped += 1,
            Verdict::NotCompared(_) => failed += 1,
        }
    }
    let mut parts = vec![format!("{same} same"), format!("{differ} differ")];
    for (n, what) in [
        (one_side, "only on one side"),
        (skipped, "skipped"),
        (failed, "not compared"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let n = c.scenarios.len();
    format!(
        "{n} scenario{}: {}",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

fn cells<const N: usize>(texts: [&str; N]) -> [Vec<String>; N] {
    texts.map(|t| vec![t.to_string()])
}

/// Adjacent steps that differ in the same way (a repeat's body, a window
/// set in two steps), each group with its step numbers.
fn groups(steps: &[StepDiff]) -> Vec<(Vec<usize>, &StepDiff)> {
    let mut out: Vec<(Vec<usize>, &StepDiff)> = Vec::new();
    for d in steps {
        if let (Some(n), Some((numbers, last))) = (d.step, out.last_mut()) {
            if last.step.is_some()
                && (&last.op, last.request_only, &last.rows) == (&d.op, d.request_only, &d.rows)
            {
                numbers.push(n);
                continue;
            }
        }
        out.push((d.step.into_iter().collect(), d));
    }
    out
}

/// `5`, `4, 5`, or for a long group `5, 6, ... 326` and `(65 steps)`.
fn step_numbers(numbers: &[usize]) -> Vec<String> {
    let list = |ns: &[usize]| {
        ns.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match numbers {
        [] => vec![String::new()],
        [_] | [_, _] | [_, _, _] => vec![list(numbers)],
        [first, second, .., last] => vec![
            format!("{first}, {second}, ... {last}"),
            format!("({} steps)", numbers.len()),
        ],
    }
}

/// A group's rows: `[step, op, what, a, b]`, the steps and op on its first.
fn step_rows(numbers: &[usize], d: &StepDiff) -> Vec<[Vec<String>; 5]> {
    let step = step_numbers(numbers);
    let op = if d.request_only {
        format!("{} (request only)", d.op)
    } else {
        d.op.clone()
    };
    d.rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let first = |s: Vec<String>| if i == 0 { s } else { vec![String::new()] };
            [
                first(step.clone()),
                first(vec![op.clone()]),
                vec![r.what.clone()],
                r.a.clone(),
                r.b.clone(),
            ]
        })
        .collect()
}

fn wrap_all(lines: &[String]) -> Vec<String> {
    lines.iter().flat_map(|l| wrap(l, TEXT_CELL)).collect()
}

/// `line` in pieces of at most `width` characters, broken at spaces where
/// possible; continuation pieces are indented by two.
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: Vec<char> = line.chars().collect();
    let mut indent = "";
    while indent.len() + rest.len() > width {
        let room = width - indent.len();
        let cut = rest[..=room]
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|&i| i > 0)
            .unwrap_or(room);
        let piece: String = rest[..cut].iter().collect();
        out.push(format!("{indent}{}", piece.trim_end()));
        rest = rest[cut..]
            .iter()
            .copied()
            .skip_while(|c| *c == ' ')
            .collect();
        indent = "  ";
    }
    out.push(format!("{indent}{}", rest.iter().collect::<String>()));
    out
}

/// Rows of multi-line cells, columns padded, indented by two.
fn table_text<const N: usize>(rows: &[[Vec<String>; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.iter().map(|l| l.chars().count()).max().unwrap_or(0));
        }
    }
    let mut out = String::new();
    for row in rows {
        let height = row.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..height {
            let mut line = String::from(" ");
            for (w, cell) in widths.iter().zip(row) {
                let text = cell.get(i).map_or("", String::as_str);
                line.push_str(&format!(" {text:w$} "));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// A Markdown table (first row the head) of one-line cells, padded.
fn table_markdown<const N: usize>(rows: &[[Vec<String>; N]]) -> String {
    let line = |c: &Vec<String>| c.join(" ");
    let mut widths = [3usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(line(cell).chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{:w$}", line(c)))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("| {} |\n", rule.join(" | ")));
        }
    }
    out
}

/// A difference too long for a table row, for the fenced block below it.
fn long_row(
    numbers: &[usize],
    d: &StepDiff,
    what: &str,
    la: &str,
    a: &[String],
    lb: &str,
    b: &[String],
) -> String {
    let step = match numbers {
        [] => d.op.clone(),
        [n] => format!("step {n} {}", d.op),
        _ => format!("steps {} {}", step_numbers(numbers).join(" "), d.op),
    };
    let mut text = format!("{step}, {what}:\n");
    for (label, lines) in [(la, a), (lb, b)] {
        text.push_str(&format!("  {label}:\n"));
        for l in lines {
            text.push_str(&format!("    {l}\n"));
        }
    }
    text
}

/// `text` in a table cell: a pipe would end the cell.
fn plain(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `text` as a code span that a table cell keeps whole: a pipe escaped, a
/// backtick inside fenced by two.
fn code(text: &str) -> String {
    let text = text.replace('|', "\\|");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}
