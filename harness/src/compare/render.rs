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
        for d in &s.steps {
            rows.extend(step_rows(d).into_iter().map(|r| {
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
    out.push_str(&table_markdown(&verdicts, &[false, false]));
    out.push_str(&format!("\n{}\n", totals(c)));
    for s in c.scenarios.iter().filter(|s| !s.steps.is_empty()) {
        out.push_str(&format!(
            "\n### {}: {}\n\n",
            s.scenario,
            s.verdict.describe(&la, &lb)
        ));
        let mut rows = vec![cells(["step", "op", "what", &la, &lb])];
        let mut below = Vec::new();
        for d in &s.steps {
            for [step, op, what, a, b] in step_rows(d) {
                let long = |c: &[String]| c.len() > MD_LINES || c.iter().any(|l| l.len() > MD_CELL);
                let (ca, cb) = if long(&a) || long(&b) {
                    below.push(fenced(d, &what[0], &la, &a, &lb, &b));
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
        let rows: Vec<[Vec<String>; 5]> = rows;
        out.push_str(&table_markdown(&rows, &[true, false, false, false, false]));
        for block in below {
            out.push('\n');
            out.push_str(&block);
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

/// A step's rows: `[step, op, what, a, b]`, the step and op on its first.
fn step_rows(d: &StepDiff) -> Vec<[Vec<String>; 5]> {
    let step = d.step.map_or_else(String::new, |n| n.to_string());
    let op = if d.request_only {
        format!("{} (request only)", d.op)
    } else {
        d.op.clone()
    };
    d.rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let first = |s: &str| vec![if i == 0 { s.to_string() } else { String::new() }];
            [
                first(&step),
                first(&op),
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

/// A Markdown table (first row the head) of one-line cells, padded;
/// `right` aligns a column to the right.
fn table_markdown<const N: usize>(rows: &[[Vec<String>; N]], right: &[bool; N]) -> String {
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
            .zip(right)
            .map(|((c, w), r)| {
                if *r {
                    format!("{:>w$}", line(c))
                } else {
                    format!("{:w$}", line(c))
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .zip(right)
                .map(|(w, r)| {
                    if *r {
                        format!("{}:", "-".repeat(w - 1))
                    } else {
                        "-".repeat(*w)
                    }
                })
                .collect();
            out.push_str(&format!("| {} |\n", rule.join(" | ")));
        }
    }
    out
}

/// A difference too long for a table row, fenced.
fn fenced(d: &StepDiff, what: &str, la: &str, a: &[String], lb: &str, b: &[String]) -> String {
    let step = match d.step {
        Some(n) => format!("step {n} {}", d.op),
        None => d.op.clone(),
    };
    let mut text = format!("```\n{step}, {what}:\n");
    for (label, lines) in [(la, a), (lb, b)] {
        text.push_str(&format!("  {label}:\n"));
        // Indented by four, no line of the text can close the fence.
        for l in lines {
            text.push_str(&format!("    {l}\n"));
        }
    }
    text.push_str("```\n");
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
