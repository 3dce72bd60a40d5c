//! Mutants of the C lines a patch series adds, for `cargo xtask mutants`.
//!
//! The lines come from a diff of each `.c` file as the series leaves it
//! against the pristine file, so a line a later patch of the series changes
//! again is taken as it ends up. Every mutant changes exactly one such line
//! into one other line (never adds or removes one): line numbers stay those
//! of the patched file, so a mutant is named `ioas.c:85:delete` and its diff
//! is one line against the series' result.
//!
//! Headers are left alone: a mutated uapi header would change what the
//! agent is built against, and a mutated private header would rebuild the
//! whole directory for one mutant.
//!
//! The operators (as the issue names them), each only where the result
//! still reads as C a compiler may accept:
//! - `delete`: a whole statement becomes the empty statement `;` (not a
//!   blank line: under a braceless `if` the next statement must not slide
//!   into its place). Declarations are kept: deleting one cannot compile.
//! - `negate`: `if (C)` / `while (C)` becomes `if (!(C))`.
//! - `and-or`, `eq-ne`: one `&&`/`||` or `==`/`!=` flipped.
//! - `const+1`, `const-1`, `const+page`, `const-page`: an integer literal
//!   off by one, or by 0x1000 when it is at least that.
//! - `errno-0`: `return -EXXX;` returns 0 instead.
//! - `swap-source`: an assignment's source replaced by the source of a
//!   sibling assignment (added lines of one block, same indentation) when
//!   the two differ beyond their casts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use super::apply::Applied;

/// One change to one line of the series' result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mutant {
    /// `ioas.c:85:delete` (a `.2` suffix when a line has two of a kind).
    pub id: String,
    /// The file, relative to the tree.
    pub file: String,
    /// 1-based, in the file as the series leaves it.
    pub line: usize,
    pub operator: &'static str,
    pub original: String,
    pub replacement: String,
    /// Up to two lines of the file before and after, for the diff.
    #[serde(skip)]
    before: Vec<String>,
    #[serde(skip)]
    after: Vec<String>,
}

impl Mutant {
    /// What the build key is made from: the file, the line and what it
    /// becomes.
    pub fn key(&self) -> String {
        format!("{}\n{}\n{}", self.file, self.line, self.replacement)
    }

    /// A unified diff against the series' result, with context.
    pub fn diff(&self) -> String {
        let mut out = format!("--- a/{0}\n+++ b/{0}\n", self.file);
        let first = self.line - self.before.len();
        let n = self.before.len() + 1 + self.after.len();
        out.push_str(&format!("@@ -{first},{n} +{first},{n} @@ {}\n", self.id));
        for l in &self.before {
            out.push_str(&format!(" {l}\n"));
        }
        out.push_str(&format!("-{}\n+{}\n", self.original, self.replacement));
        for l in &self.after {
            out.push_str(&format!(" {l}\n"));
        }
        out
    }

    /// The series' result with this mutant applied.
    pub fn apply(&self, applied: &mut Applied) -> anyhow::Result<()> {
        let state = applied
            .files
            .get_mut(&self.file)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| {
                anyhow::anyhow!("{}: the series does not write {}", self.id, self.file)
            })?;
        let text = String::from_utf8(state.data.clone())
            .map_err(|_| anyhow::anyhow!("{}: {} is not UTF-8", self.id, self.file))?;
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        let Some(old) = lines.get(self.line - 1) else {
            anyhow::bail!("{}: {} has no line {}", self.id, self.file, self.line);
        };
        let (body, ending) = match old.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (*old, ""),
        };
        if body != self.original {
            anyhow::bail!(
                "{}: line {} of {} is no longer `{}`",
                self.id,
                self.line,
                self.file,
                self.original.trim()
            );
        }
        let new = format!("{}{ending}", self.replacement);
        lines[self.line - 1] = &new;
        state.data = lines.concat().into_bytes();
        Ok(())
    }
}

/// The 0-based indexes of `new`'s lines that `old` does not have.
pub fn added_lines(old: &str, new: &str) -> BTreeSet<usize> {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut added = BTreeSet::new();
    for op in diff.ops() {
        for change in diff.iter_changes(op) {
            if change.tag() == similar::ChangeTag::Insert {
                if let Some(i) = change.new_index() {
                    added.insert(i);
                }
            }
        }
    }
    added
}

/// Every mutant of the `.c` lines the series adds. `pristine` gives each
/// file's content before the series (`None`: the series creates it).
pub fn generate(applied: &Applied, pristine: &BTreeMap<String, Option<String>>) -> Vec<Mutant> {
    let mut all = Vec::new();
    for (path, state) in &applied.files {
        let Some(state) = state else { continue };
        if !path.ends_with(".c") {
            continue;
        }
        let Ok(new) = std::str::from_utf8(&state.data) else {
            continue;
        };
        let old = pristine.get(path).cloned().flatten().unwrap_or_default();
        let added = added_lines(&old, new);
        all.extend(of_file(path, new, &added));
    }
    name(&mut all);
    all
}

/// Gives each mutant its id: the file's base name when no two files share
/// one, `:line:operator`, and `.2`, `.3` for repeats on one line.
fn name(mutants: &mut [Mutant]) {
    let files: BTreeSet<&str> = mutants.iter().map(|m| m.file.as_str()).collect();
    let base = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
    let bases: BTreeSet<String> = files.iter().map(|f| base(f)).collect();
    let short = bases.len() == files.len();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in mutants.iter_mut() {
        let f = if short { base(&m.file) } else { m.file.clone() };
        let stem = format!("{f}:{}:{}", m.line, m.operator);
        let n = seen.entry(stem.clone()).or_default();
        *n += 1;
        m.id = if *n == 1 { stem } else { format!("{stem}.{n}") };
    }
}

/// A line with comments and the insides of string and character literals
/// blanked out (same length, so offsets stay those of the line), and
/// whether a block comment is still open at its end.
fn mask(line: &str, mut in_comment: bool) -> (String, bool) {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if in_comment {
            if c == b'*' && b.get(i + 1) == Some(&b'/') {
                in_comment = false;
                out.extend_from_slice(b"  ");
                i += 2;
            } else {
                out.push(b' ');
                i += 1;
            }
            continue;
        }
        if let Some(q) = quote {
            if c == b'\\' {
                out.extend_from_slice(b"  ");
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
                out.push(c);
            } else {
                out.push(b' ');
            }
            i += 1;
            continue;
        }
        match (c, b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                in_comment = true;
                out.extend_from_slice(b"  ");
                i += 2;
            }
            (b'/', Some(b'/')) => {
                out.resize(b.len(), b' ');
                break;
            }
            (b'"' | b'\'', _) => {
                quote = Some(c);
                out.push(c);
                i += 1;
            }
            _ => {
                out.push(if c.is_ascii() { c } else { b' ' });
                i += 1;
            }
        }
    }
    out.truncate(b.len());
    (String::from_utf8(out).unwrap_or_default(), in_comment)
}

static CONTROL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\}\s*)?(else\s+)?(if|while|for)\s*\(.*\)$|^(\}\s*)?else$").unwrap()
});
static CONDITION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<head>(\}\s*)?(else\s+)?(if|while)\s*)\((?P<cond>.*)\)(?P<tail>\s*\{?)$")
        .unwrap()
});
static LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(case\s.*|default\s*|[A-Za-z_]\w*\s*):$").unwrap());
static DECLARATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^((const|static|volatile|register)\s+)*((struct|union|enum|unsigned|signed)\s+)?[A-Za-z_]\w*[\s\*]+[A-Za-z_]\w*\s*(\[[^\]]*\]\s*)?(=.*)?;$",
    )
    .unwrap()
});
static NOT_A_TYPE: &[&str] = &["return", "goto", "break", "continue", "else", "do", "case"];
static ERRNO_RETURN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\breturn\s+(?P<errno>-E[A-Z0-9]+)\s*;").unwrap());
static INTEGER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*\b").unwrap());
static ASSIGNMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?P<lhs>[\w\->\.\*\[\]]+)\s=\s(?P<rhs>[^;]+);$").unwrap());
static CAST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\(\s*(const\s+)?(struct\s+)?\w+(\s*\*+)?\s*\)").unwrap());

/// Width of the leading whitespace, tabs at 8.
fn indent(line: &str) -> usize {
    let mut w = 0;
    for c in line.chars() {
        match c {
            '\t' => w = (w / 8 + 1) * 8,
            ' ' => w += 1,
            _ => break,
        }
    }
    w
}

/// The mutants of one file: `added` are 0-based line indexes of `text`.
fn of_file(path: &str, text: &str, added: &BTreeSet<usize>) -> Vec<Mutant> {
    let lines: Vec<&str> = text.lines().collect();
    let mut masked = Vec::with_capacity(lines.len());
    let mut in_comment = false;
    for l in &lines {
        let (m, open) = mask(l, in_comment);
        masked.push(m);
        in_comment = open;
    }
    let code = |i: usize| masked[i].trim().to_string();
    // The code of the nearest earlier line that has some.
    let previous_code = |i: usize| (0..i).rev().map(code).find(|c| !c.is_empty());
    let mut out = Vec::new();
    let mut push = |i: usize, operator: &'static str, replacement: String| {
        if replacement == lines[i] {
            return;
        }
        out.push(Mutant {
            id: String::new(),
            file: path.to_string(),
            line: i + 1,
            operator,
            original: lines[i].to_string(),
            replacement,
            before: lines[i.saturating_sub(2)..i]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            after: lines[i + 1..(i + 3).min(lines.len())]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
    };
    for &i in added {
        let Some(line) = lines.get(i) else { continue };
        let c = code(i);
        if c.is_empty() || c.starts_with('#') || LABEL.is_match(&c) {
            continue;
        }
        let lead = &line[..line.len() - line.trim_start().len()];
        // A statement starts here when the code before it ended one (or
        // opened a block, or was a label or a control header).
        let starts = previous_code(i).is_none_or(|p| {
            p.ends_with(';')
                || p.ends_with('{')
                || p.ends_with('}')
                || p.ends_with(':')
                || CONTROL.is_match(&p)
        });
        let first_word = c
            .split(|ch: char| !ch.is_alphanumeric() && ch != '_')
            .next();
        let declaration =
            DECLARATION.is_match(&c) && !first_word.is_some_and(|w| NOT_A_TYPE.contains(&w));
        if starts && c.ends_with(';') && !declaration && !c.starts_with('}') {
            push(i, "delete", format!("{lead};"));
        }
        if let Some(m) = CONDITION.captures(&c) {
            let cond = &m["cond"];
            if balanced(cond) {
                push(
                    i,
                    "negate",
                    format!("{lead}{}(!({cond})){}", &m["head"], &m["tail"]),
                );
            }
        }
        let m = &masked[i];
        for (from, to, operator) in [
            ("&&", "||", "and-or"),
            ("||", "&&", "and-or"),
            ("==", "!=", "eq-ne"),
            ("!=", "==", "eq-ne"),
        ] {
            for (at, _) in m.match_indices(from) {
                push(
                    i,
                    operator,
                    format!("{}{to}{}", &line[..at], &line[at + 2..]),
                );
            }
        }
        for lit in INTEGER.find_iter(m) {
            let digits = INTEGER.captures(lit.as_str()).unwrap()[1].to_string();
            let (value, hex) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
                Some(h) => (u64::from_str_radix(h, 16).ok(), true),
                None => (digits.parse::<u64>().ok(), false),
            };
            let Some(value) = value else { continue };
            let at = lit.start();
            let rest = &line[at + digits.len()..];
            let mut variant = |v: u64, operator: &'static str| {
                let text = if hex {
                    format!("{v:#x}")
                } else {
                    v.to_string()
                };
                push(i, operator, format!("{}{text}{rest}", &line[..at]));
            };
            variant(value.wrapping_add(1), "const+1");
            if value > 0 {
                variant(value - 1, "const-1");
            }
            if value >= 0x1000 {
                variant(value + 0x1000, "const+page");
                variant(value - 0x1000, "const-page");
            }
        }
        if let Some(m) = ERRNO_RETURN.captures(m) {
            let e = m.name("errno").unwrap();
            push(
                i,
                "errno-0",
                format!("{}0{}", &line[..e.start()], &line[e.end()..]),
            );
        }
        if let Some(a) = ASSIGNMENT.captures(&c) {
            for j in siblings(i, &lines, added) {
                let sibling = code(j);
                let Some(b) = ASSIGNMENT.captures(&sibling) else {
                    continue;
                };
                let strip = |s: &str| CAST.replace_all(s, "").trim().to_string();
                if strip(&a["rhs"]) == strip(&b["rhs"]) || a["lhs"] == b["lhs"] {
                    continue;
                }
                push(
                    i,
                    "swap-source",
                    format!("{lead}{} = {};", &a["lhs"], &b["rhs"]),
                );
            }
        }
    }
    out
}

/// The other added lines of `i`'s block: a run of consecutive added lines
/// at `i`'s indentation, none between them indented less.
fn siblings(i: usize, lines: &[&str], added: &BTreeSet<usize>) -> Vec<usize> {
    let level = indent(lines[i]);
    let within = |j: usize| added.contains(&j) && indent(lines[j]) >= level;
    let mut first = i;
    while first > 0 && within(first - 1) {
        first -= 1;
    }
    let mut last = i;
    while last + 1 < lines.len() && within(last + 1) {
        last += 1;
    }
    (first..=last)
        .filter(|&j| j != i && indent(lines[j]) == level)
        .collect()
}

/// Whether the parentheses of `s` pair up (so `(s)` is one group).
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::apply::FileState;

    const OLD: &str = "\
int f(struct ctx *ctx, struct cmd *cmd)
{
\tint rc;

\treturn rc;
}
";

    const NEW: &str = "\
int f(struct ctx *ctx, struct cmd *cmd)
{
\tint rc;
\tstruct ctx *other = ctx->other; /* a && b */
\tif (cmd->object_id)
\t\treturn -EOPNOTSUPP;
\tif (ctx->size && ctx->start != MAX)
\t\tctx->base = ctx->start;
\tctx->start = MAX;
\tctx->size = 0;
\tctx->flags = (u32)0x1000;
\trc = g(cmd,
\t       \"a == b\");

\treturn rc;
}
";

    fn applied(path: &str, text: &str) -> Applied {
        let mut a = Applied::default();
        a.files.insert(
            path.to_string(),
            Some(FileState {
                data: text.as_bytes().to_vec(),
                executable: None,
            }),
        );
        a
    }

    fn mutants() -> Vec<Mutant> {
        let pristine = BTreeMap::from([("d/f.c".to_string(), Some(OLD.to_string()))]);
        generate(&applied("d/f.c", NEW), &pristine)
    }

    #[test]
    fn only_added_lines_are_mutated_each_operator_where_it_applies() {
        let got: Vec<(String, String)> = mutants()
            .iter()
            .map(|m| (m.id.clone(), m.replacement.trim().to_string()))
            .collect();
        let want = [
            ("f.c:5:negate", "if (!(cmd->object_id))"),
            ("f.c:6:delete", ";"),
            ("f.c:6:errno-0", "return 0;"),
            ("f.c:7:negate", "if (!(ctx->size && ctx->start != MAX))"),
            ("f.c:7:and-or", "if (ctx->size || ctx->start != MAX)"),
            ("f.c:7:eq-ne", "if (ctx->size && ctx->start == MAX)"),
            ("f.c:8:delete", ";"),
            ("f.c:9:delete", ";"),
            ("f.c:9:swap-source", "ctx->start = 0;"),
            ("f.c:9:swap-source.2", "ctx->start = (u32)0x1000;"),
            ("f.c:10:delete", ";"),
            ("f.c:10:const+1", "ctx->size = 1;"),
            ("f.c:10:swap-source", "ctx->size = MAX;"),
            ("f.c:10:swap-source.2", "ctx->size = (u32)0x1000;"),
            ("f.c:11:delete", ";"),
            ("f.c:11:const+1", "ctx->flags = (u32)0x1001;"),
            ("f.c:11:const-1", "ctx->flags = (u32)0xfff;"),
            ("f.c:11:const+page", "ctx->flags = (u32)0x2000;"),
            ("f.c:11:const-page", "ctx->flags = (u32)0x0;"),
            ("f.c:11:swap-source", "ctx->flags = MAX;"),
            ("f.c:11:swap-source.2", "ctx->flags = 0;"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // Not mutated: the declaration (line 4), the comment's `&&`, the
        // two-line call (its first line does not end the statement, its
        // second is a continuation) and the string's `==`, and the
        // pristine `return rc;`.
        assert_eq!(got, want);
    }

    #[test]
    fn a_mutant_changes_one_line_in_place_and_its_diff_shows_it() {
        let all = mutants();
        let m = all.iter().find(|m| m.id == "f.c:6:errno-0").unwrap();
        let mut a = applied("d/f.c", NEW);
        m.apply(&mut a).unwrap();
        let after = String::from_utf8(a.files["d/f.c"].as_ref().unwrap().data.clone()).unwrap();
        assert_eq!(after.lines().count(), NEW.lines().count());
        assert_eq!(after.lines().nth(5), Some("\t\treturn 0;"));
        assert_eq!(
            NEW.lines()
                .zip(after.lines())
                .filter(|(x, y)| x != y)
                .count(),
            1
        );
        assert_eq!(
            m.diff(),
            "--- a/d/f.c\n+++ b/d/f.c\n@@ -4,5 +4,5 @@ f.c:6:errno-0\n \
             \tstruct ctx *other = ctx->other; /* a && b */\n \tif (cmd->object_id)\n\
             -\t\treturn -EOPNOTSUPP;\n+\t\treturn 0;\n \
             \tif (ctx->size && ctx->start != MAX)\n \t\tctx->base = ctx->start;\n"
        );
        // Applying to a file that moved on is an error, not a wrong mutant.
        let mut moved = applied("d/f.c", OLD);
        assert!(m
            .apply(&mut moved)
            .unwrap_err()
            .to_string()
            .contains("no longer"));
    }

    #[test]
    fn ids_and_keys_are_unique() {
        let all = mutants();
        let ids: BTreeSet<_> = all.iter().map(|m| m.id.clone()).collect();
        let keys: BTreeSet<_> = all.iter().map(|m| m.key()).collect();
        assert_eq!(ids.len(), all.len());
        assert_eq!(keys.len(), all.len());
    }

    #[test]
    fn comments_and_literals_are_masked_across_lines() {
        let (m, open) = mask("a /* b && c", false);
        assert_eq!((m.trim_end(), open), ("a", true));
        let (m, open) = mask("d */ e == 'x' \"f||g\" // h", true);
        assert_eq!((m.trim_end(), open), ("     e == ' ' \"    \"", false));
    }
}
