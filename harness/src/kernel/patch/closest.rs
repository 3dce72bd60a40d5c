//! The closest lines: where in a file the old side of a hunk that does not
//! apply comes nearest, line by line, and how those lines differ from the
//! hunk's.
//!
//! A reviewer's first question about a stale hunk is "what is there
//! instead?". The answer is the window of file lines that best matches the
//! hunk's expected lines, aligned with them: lines the same, lines that
//! differ (shown beside the patch's), lines only the tree has (something was
//! added there since the patch was written) and lines only the patch has.
//! Pure functions over lines, so a repair of mangled mails can use the same
//! search.
//!
//! How: candidate places come from lines that match exactly once whitespace
//! is ignored (each such line votes for the hunk starting where it would put
//! it); when no line matches at all, every place near the expected one is
//! scored by line similarity. Each candidate is then aligned with the hunk
//! (a small edit-distance alignment over line similarities, allowing a few
//! inserted or missing lines) and the best alignment wins, the nearer one on
//! a tie.

use std::collections::HashMap;

/// One line of the best window, aligned with the hunk's old side. Line
/// numbers are the tree's, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Same {
        line: usize,
        text: Vec<u8>,
    },
    Differs {
        line: usize,
        tree: Vec<u8>,
        patch: Vec<u8>,
    },
    /// The tree has a line here that the patch does not expect.
    TreeOnly {
        line: usize,
        tree: Vec<u8>,
    },
    /// The patch expects a line the tree does not have here.
    PatchOnly {
        patch: Vec<u8>,
    },
}

/// The best-matching window of tree lines for a hunk's old side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub rows: Vec<Row>,
}

impl Window {
    /// The first and last tree line of the window (1-based).
    pub fn lines(&self) -> Option<(usize, usize)> {
        let nos = self.rows.iter().filter_map(Row::line);
        let first = nos.clone().min()?;
        Some((first, nos.max()?))
    }

    /// How many of the hunk's lines the window has unchanged.
    pub fn same(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r, Row::Same { .. }))
            .count()
    }
}

impl Row {
    pub fn line(&self) -> Option<usize> {
        match self {
            Row::Same { line, .. } | Row::Differs { line, .. } | Row::TreeOnly { line, .. } => {
                Some(*line)
            }
            Row::PatchOnly { .. } => None,
        }
    }
}

/// Score of an inserted or missing line in an alignment; a pair of lines
/// scores `2 * similarity - 1` (from -1 to 1).
const GAP: f64 = -0.6;
/// Candidate places aligned in full.
const CANDIDATES: usize = 8;
/// How far from the expected place the similarity scan looks when no line
/// matches exactly.
const SCAN: usize = 2000;

/// The window of `tree` that best matches `want` (a hunk's context and
/// removed lines), nearest to index `near` (0-based) on a tie. `None` when
/// the tree or the hunk is empty, or nothing in the tree resembles the hunk.
pub fn closest<T: AsRef<[u8]>, U: AsRef<[u8]>>(
    tree: &[T],
    want: &[U],
    near: usize,
) -> Option<Window> {
    let (n, k) = (tree.len(), want.len());
    if n == 0 || k == 0 {
        return None;
    }
    let tree: Vec<Keyed> = tree.iter().map(|l| Keyed::new(l.as_ref())).collect();
    let want: Vec<Keyed> = want.iter().map(|l| Keyed::new(l.as_ref())).collect();
    let distance = |s: isize| (s - near as isize).unsigned_abs();

    // Votes from lines equal but for whitespace; braces and blank lines are
    // everywhere and say nothing about the place.
    let mut index: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, l) in tree.iter().enumerate() {
        if l.squashed.len() >= 4 {
            index.entry(l.squashed.as_slice()).or_default().push(i);
        }
    }
    let mut votes: HashMap<isize, usize> = HashMap::new();
    for (j, l) in want.iter().enumerate() {
        for &i in index.get(l.squashed.as_slice()).into_iter().flatten() {
            *votes.entry(i as isize - j as isize).or_default() += 1;
        }
    }
    let mut starts: Vec<(isize, f64)> = votes.into_iter().map(|(s, v)| (s, v as f64)).collect();
    if starts.is_empty() {
        // Nothing matches exactly: score every place near the expected one.
        let from = near.saturating_sub(SCAN);
        let to = (near + SCAN).min(n - 1);
        for s in from..=to {
            let score: f64 = (0..k)
                .filter(|&j| s + j < n)
                .map(|j| tree[s + j].similarity(&want[j]))
                .sum();
            starts.push((s as isize, score));
        }
    }
    starts.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| distance(a.0).cmp(&distance(b.0)))
    });
    starts.truncate(CANDIDATES);

    let slack = (k / 2).max(3);
    let mut best: Option<(f64, usize, Vec<Row>)> = None;
    for (start, _) in starts {
        let lo = (start - slack as isize).max(0) as usize;
        let hi = ((start + (k + slack) as isize).max(0) as usize).min(n);
        if lo >= hi {
            continue;
        }
        let (score, rows) = align(&tree[lo..hi], lo, &want);
        let dist = distance(start);
        let better = match &best {
            None => true,
            Some((s, d, _)) => score > *s + 1e-9 || ((score - *s).abs() <= 1e-9 && dist < *d),
        };
        if better {
            best = Some((score, dist, rows));
        }
    }
    let (_, _, rows) = best?;
    let resembles = rows.iter().any(|r| match r {
        Row::Same { .. } => true,
        Row::Differs { tree, patch, .. } => similarity(tree, patch) >= 0.5,
        _ => false,
    });
    resembles.then_some(Window { rows })
}

/// A line with what comparing it needs, computed once (the character
/// pairs only when a comparison needs them: most tree lines are never
/// compared).
struct Keyed<'a> {
    raw: &'a [u8],
    /// Without whitespace.
    squashed: Vec<u8>,
    /// Its character pairs, sorted.
    pairs: std::cell::OnceCell<Vec<u16>>,
}

impl<'a> Keyed<'a> {
    fn new(raw: &'a [u8]) -> Keyed<'a> {
        Keyed {
            raw,
            squashed: squash(raw),
            pairs: std::cell::OnceCell::new(),
        }
    }

    fn pairs(&self) -> &[u16] {
        self.pairs.get_or_init(|| {
            let mut pairs: Vec<u16> = self
                .squashed
                .windows(2)
                .map(|w| u16::from(w[0]) << 8 | u16::from(w[1]))
                .collect();
            pairs.sort_unstable();
            pairs
        })
    }

    /// See [`similarity`].
    fn similarity(&self, other: &Keyed) -> f64 {
        if self.raw == other.raw {
            return 1.0;
        }
        if self.squashed == other.squashed {
            return 0.9;
        }
        let (pa, pb) = (self.pairs(), other.pairs());
        if pa.is_empty() || pb.is_empty() {
            return 0.0;
        }
        let (mut x, mut y, mut common) = (0, 0, 0);
        while x < pa.len() && y < pb.len() {
            match pa[x].cmp(&pb[y]) {
                std::cmp::Ordering::Equal => {
                    common += 1;
                    x += 1;
                    y += 1;
                }
                std::cmp::Ordering::Less => x += 1,
                std::cmp::Ordering::Greater => y += 1,
            }
        }
        0.85 * 2.0 * common as f64 / (pa.len() + pb.len()) as f64
    }
}

/// Aligns all of `want` with a stretch of `tree` (whose first line has index
/// `offset`): tree lines before and after the aligned part are free, tree
/// lines inside it and hunk lines left out cost [`GAP`].
fn align(tree: &[Keyed], offset: usize, want: &[Keyed]) -> (f64, Vec<Row>) {
    let (m, k) = (tree.len(), want.len());
    let at = |i: usize, j: usize| i * (k + 1) + j;
    let mut score = vec![0.0f64; (m + 1) * (k + 1)];
    // 0: start, 1: pair, 2: tree line only, 3: hunk line only.
    let mut back = vec![0u8; (m + 1) * (k + 1)];
    for j in 1..=k {
        score[at(0, j)] = score[at(0, j - 1)] + GAP;
        back[at(0, j)] = 3;
    }
    for i in 1..=m {
        for j in 1..=k {
            let pair = score[at(i - 1, j - 1)] + 2.0 * tree[i - 1].similarity(&want[j - 1]) - 1.0;
            let tree_only = score[at(i - 1, j)] + GAP;
            let want_only = score[at(i, j - 1)] + GAP;
            let (s, b) = if pair >= tree_only && pair >= want_only {
                (pair, 1)
            } else if tree_only >= want_only {
                (tree_only, 2)
            } else {
                (want_only, 3)
            };
            score[at(i, j)] = s;
            back[at(i, j)] = b;
        }
    }
    let end = (0..=m)
        .max_by(|&a, &b| score[at(a, k)].total_cmp(&score[at(b, k)]).then(b.cmp(&a)))
        .unwrap_or(0);
    let mut rows = Vec::new();
    let (mut i, mut j) = (end, k);
    while j > 0 {
        match back[at(i, j)] {
            1 => {
                let (t, w) = (tree[i - 1].raw, want[j - 1].raw);
                let line = offset + i;
                rows.push(if t == w {
                    Row::Same {
                        line,
                        text: t.to_vec(),
                    }
                } else {
                    Row::Differs {
                        line,
                        tree: t.to_vec(),
                        patch: w.to_vec(),
                    }
                });
                i -= 1;
                j -= 1;
            }
            2 => {
                rows.push(Row::TreeOnly {
                    line: offset + i,
                    tree: tree[i - 1].raw.to_vec(),
                });
                i -= 1;
            }
            _ => {
                rows.push(Row::PatchOnly {
                    patch: want[j - 1].raw.to_vec(),
                });
                j -= 1;
            }
        }
    }
    rows.reverse();
    (score[at(end, k)], rows)
}

/// How alike two lines are, from 0 to 1: 1 when equal, 0.9 when only
/// whitespace differs, else character-pair overlap (Dice) of the lines
/// without whitespace, scaled below that.
pub fn similarity(a: &[u8], b: &[u8]) -> f64 {
    Keyed::new(a).similarity(&Keyed::new(b))
}

fn squash(line: &[u8]) -> Vec<u8> {
    line.iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect()
}

/// Says how a tree line differs from the patch's: "the tree has
/// `igroup->lock` where the patch has `idev->igroup->lock`", or that only
/// whitespace differs.
pub fn difference(tree: &[u8], patch: &[u8]) -> String {
    if squash(tree) == squash(patch) {
        let indent = |l: &[u8]| l.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        let (ti, pi) = (indent(tree), indent(patch));
        if tree[ti..] == patch[pi..] {
            return format!(
                "only the indentation differs: the tree has `{}`, the patch `{}`",
                visible(&tree[..ti]),
                visible(&patch[..pi])
            );
        }
        return "only whitespace differs".to_string();
    }
    let prefix = tree.iter().zip(patch).take_while(|(a, b)| a == b).count();
    let room = tree.len().min(patch.len()) - prefix;
    let suffix = tree
        .iter()
        .rev()
        .zip(patch.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    // Where a boundary of the differing middle cuts through a word (an
    // `a->b.c` chain), widen the middle to the whole word: it reads better.
    let token = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'>' | b'-' | b'.');
    let mut p = prefix;
    let cuts_at_start = |p: usize| {
        p > 0
            && token(&tree[p - 1])
            && (tree.get(p).is_some_and(token) || patch.get(p).is_some_and(token))
    };
    if cuts_at_start(p) {
        while p > 0 && token(&tree[p - 1]) {
            p -= 1;
        }
    }
    let mut s = suffix;
    let before_suffix =
        |line: &[u8], s: usize| line.len() - s > p && token(&line[line.len() - s - 1]);
    if s > 0 && token(&tree[tree.len() - s]) && (before_suffix(tree, s) || before_suffix(patch, s))
    {
        while s > 0 && token(&tree[tree.len() - s]) {
            s -= 1;
        }
    }
    let (t, w) = (&tree[p..tree.len() - s], &patch[p..patch.len() - s]);
    let shown = |b: &[u8]| cut(String::from_utf8_lossy(b).trim(), 50);
    match (t.trim_ascii().is_empty(), w.trim_ascii().is_empty()) {
        (true, _) => format!("the tree lacks `{}`", shown(w)),
        (_, true) => format!("the tree adds `{}`", shown(t)),
        _ => format!(
            "the tree has `{}` where the patch has `{}`",
            shown(t),
            shown(w)
        ),
    }
}

/// The window as text: one row per line, tree line numbers on the left,
/// a marker (' ' same, '!' differs, '+' only in the tree, '-' only in the
/// patch), the tree's line, and under a differing one the patch's line and
/// how they differ. Tabs are expanded to 8 columns; `indent` starts each row.
pub fn render(window: &Window, indent: &str) -> String {
    let width = window
        .lines()
        .map(|(_, last)| last.to_string().len())
        .unwrap_or(1)
        .max(5);
    let mut out = String::new();
    let mut row = |no: &str, mark: char, text: &str| {
        out.push_str(&format!("{indent}{no:>width$} {mark} {text}\n"));
    };
    let code = |text: &[u8]| cut(&expand_tabs(text), 120);
    for r in &window.rows {
        match r {
            Row::Same { line, text } => row(&line.to_string(), ' ', &code(text)),
            Row::Differs { line, tree, patch } => {
                row(&line.to_string(), '!', &code(tree));
                row("patch", ' ', &code(patch));
                row("", ' ', &format!("({})", difference(tree, patch)));
            }
            Row::TreeOnly { line, tree } => row(&line.to_string(), '+', &code(tree)),
            Row::PatchOnly { patch } => row("patch", '-', &code(patch)),
        }
    }
    out
}

fn expand_tabs(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::new();
    for c in text.chars() {
        if c == '\t' {
            let pad = 8 - out.chars().count() % 8;
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.push(c);
        }
    }
    out
}

fn visible(ws: &[u8]) -> String {
    String::from_utf8_lossy(ws).replace('\t', "\\t")
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        let head: String = text.chars().take(max).collect();
        format!("{head}...")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&[u8]> {
        text.lines().map(str::as_bytes).collect()
    }

    #[test]
    fn an_added_line_and_a_renamed_expression_are_aligned() {
        // The shape of RFCv2 09/13's device.c hunk on 6.18: the tree gained
        // a local and uses it where the mail dereferences idev.
        let tree = lines(
            "int other(void)\n{\n\treturn 0;\n}\n\nstatic int\nattach(struct dev *idev)\n{\n\tstruct group *igroup = idev->igroup;\n\tint rc;\n\n\tlockdep_assert_held(&igroup->lock);\n\n\trc = enforce(idev->dev,\n\t\t     &igroup->start);\n\tif (rc)\n\t\treturn rc;\n}\n",
        );
        let want = lines(
            "attach(struct dev *idev)\n{\n\tint rc;\n\n\tlockdep_assert_held(&idev->igroup->lock);\n\n\trc = enforce(idev->dev,\n\t\t     &idev->igroup->start);\n",
        );
        let w = closest(&tree, &want, 0).expect("a window");
        assert_eq!(w.lines(), Some((7, 15)));
        assert_eq!(w.same(), 6);
        assert_eq!(
            w.rows[2],
            Row::TreeOnly {
                line: 9,
                tree: b"\tstruct group *igroup = idev->igroup;".to_vec()
            }
        );
        let Row::Differs { line, tree, patch } = &w.rows[5] else {
            panic!("{:?}", w.rows[5]);
        };
        assert_eq!(*line, 12);
        assert_eq!(
            difference(tree, patch),
            "the tree has `igroup->lock` where the patch has `idev->igroup->lock`"
        );
        let text = render(&w, "  ");
        assert!(
            text.contains("     12 !         lockdep_assert_held(&igroup->lock);\n  patch           lockdep_assert_held(&idev->igroup->lock);\n"),
            "{text}"
        );
        assert!(
            text.contains("      9 +         struct group *igroup = idev->igroup;\n"),
            "{text}"
        );
    }

    #[test]
    fn whitespace_only_and_missing_lines() {
        assert_eq!(
            difference(b"\t\tx = 1;", b"x = 1;"),
            "only the indentation differs: the tree has `\\t\\t`, the patch ``"
        );
        assert_eq!(
            difference(b"a(b, c);", b"a(b,  c);"),
            "only whitespace differs"
        );
        assert_eq!(difference(b"f(x);", b"f(x, y);"), "the tree lacks `, y`");
        // Mangled lines (indentation lost) still find their place.
        let tree = lines("a\n\tint one;\n\tint two;\n\tint three;\nb\n");
        let want = lines("int one;\nint two;\nint three;\n");
        let w = closest(&tree, &want, 0).unwrap();
        assert_eq!(w.lines(), Some((2, 4)));
        assert_eq!(w.same(), 0);
        // A line the tree lost shows as the patch's only.
        let tree = lines("x\nalpha();\ngamma();\ny\n");
        let want = lines("alpha();\nbeta();\ngamma();\n");
        let w = closest(&tree, &want, 0).unwrap();
        assert_eq!(
            w.rows,
            vec![
                Row::Same {
                    line: 2,
                    text: b"alpha();".to_vec()
                },
                Row::PatchOnly {
                    patch: b"beta();".to_vec()
                },
                Row::Same {
                    line: 3,
                    text: b"gamma();".to_vec()
                },
            ]
        );
    }

    #[test]
    fn nearest_place_wins_a_tie_and_nothing_alike_is_none() {
        let tree = lines("f(a);\ng(b);\nzzz\nzzz\nf(a);\ng(b);\n");
        let want = lines("f(a);\ng(c);\n");
        assert_eq!(closest(&tree, &want, 4).unwrap().lines(), Some((5, 6)));
        assert_eq!(closest(&tree, &want, 0).unwrap().lines(), Some((1, 2)));
        assert_eq!(closest(&lines("qqqq\nwwww\n"), &lines("abc;\n"), 0), None);
        assert_eq!(closest::<&[u8], &[u8]>(&[], &lines("a\n"), 0), None);
    }
}
