//! Kernel-style indentation for an added line whose whitespace a mailer
//! removed, derived from the lines before it.
//!
//! [`Lexer`] is fed the file's lines up to the hunk and then the hunk's new
//! side, one line at a time, and keeps just enough C structure: open block
//! comments, unclosed parentheses with their columns, open braces, the
//! statements so far. [`indent`] then places a line:
//!
//! - inside a block comment: the comment's indentation, ` *`, and the
//!   alignment of the text around it (a `@name:` tag one space after the
//!   `*`; a continuation under the text of the line before, past a `@name:`,
//!   a kernel-doc `name - ` or a list bullet; the first line after a bare
//!   `@name:` as such lines are in this file); a rewritten comment line
//!   keeps the alignment of the line it replaces;
//! - preprocessor lines and goto labels at column 0; a `#define` body as
//!   code one level in;
//! - inside unclosed parentheses: aligned just after the innermost `(`, or
//!   one tab in from its line when the `(` ends that line;
//! - after a line ending in a binary operator: one tab in (after `return `,
//!   aligned with what is returned);
//! - otherwise tabs, one more after a line ending in `{`, a `case …:` or a
//!   brace-less `if (…)`/`for (…)`/`while (…)`/`else`/iterator macro, back
//!   out after the statement such a header governs, one less for a line
//!   starting with `}` and for a `case` label (labels sit at their
//!   `switch`'s level).

use super::{columns, leading_ws, tabs, to_ws, trim, trim_start};

#[derive(Debug, Clone, Default)]
pub(super) struct Lexer {
    /// The block comment the next line is inside, if any.
    pub(super) comment: Option<CommentBlock>,
    /// Whitespace after the `*` of the first line after a bare `@name:`
    /// line, the last time there was one in the file: how this file aligns
    /// tag descriptions.
    after_tag_inner: Option<Vec<u8>>,
    /// Unclosed `(`s, innermost last.
    pub(super) parens: Vec<Paren>,
    /// Open `{`s: whether a `case` label opened each.
    braces: Vec<bool>,
    /// Statements and comments so far; labels and preprocessor lines are
    /// not structure and are left out.
    history: Vec<Logical>,
    /// Inside a preprocessor directive continued with `\`.
    directive: Option<Directive>,
}

#[derive(Debug, Clone)]
pub(super) struct CommentBlock {
    /// What goes before the ` *` of a continuation line: the indentation of
    /// the line that opened the comment.
    lead: Vec<u8>,
    /// Opened with `/**`, and no text line seen yet (the `name - ` line).
    kernel_doc_first: bool,
    /// Whitespace after the `*` where a continuation of the last line's
    /// text goes.
    align: Option<Vec<u8>>,
    /// The same for the next list bullet, when the last lines were a list.
    bullet: Option<Vec<u8>>,
    /// The last line was a bare `@name:` (its description follows).
    after_bare_tag: bool,
    /// Everything before the text on the last comment line.
    last_prefix: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(super) struct Paren {
    /// Visual column just after the `(`.
    column: usize,
    /// The `(` ended its line.
    at_end: bool,
    /// Indentation (tabs) of the line holding the `(`.
    line_indent: usize,
}

#[derive(Debug, Clone)]
struct Logical {
    comment: bool,
    /// Indentation of its first line, in tabs and in columns.
    indent: usize,
    indent_cols: usize,
    /// Code of its first and of its last line, trimmed, without comments
    /// or a macro's trailing `\`.
    first: Vec<u8>,
    last: Vec<u8>,
    /// Starts with a `}` that closes a `case …: {` block.
    closes_case: bool,
}

#[derive(Debug, Clone)]
struct Directive {
    /// A `#define`'s body is code with its own structure; the file's is put
    /// back after it. Other directives are skipped.
    saved: Option<Box<Saved>>,
}

#[derive(Debug, Clone)]
struct Saved {
    parens: Vec<Paren>,
    braces: Vec<bool>,
    history: usize,
}

/// What one line held, from [`Lexer::scan`].
struct Scanned {
    /// Code outside comments, trimmed, a trailing `\` removed.
    code: Vec<u8>,
    /// The `{` and `}` of that code, in order.
    braces: Vec<u8>,
}

impl Lexer {
    /// Whether the last statement ends in a binary operator (so the next
    /// line continues it).
    pub(super) fn last_code_open(&self) -> bool {
        self.history
            .last()
            .is_some_and(|l| !l.comment && ends_in_operator(&l.last))
    }

    pub(super) fn feed(&mut self, line: &[u8]) {
        let ws = leading_ws(line);
        let text = &line[ws..];
        let continues = trim(line).ends_with(b"\\");
        if text.is_empty() {
            self.end_directive();
            return;
        }
        let was_in_comment = self.comment.is_some();
        if self.directive.is_none() && !was_in_comment && text.starts_with(b"#") {
            let is_define = first_identifier(trim_start(&text[1..])) == b"define";
            if continues && is_define {
                // The body's parentheses start with the `#define` line's.
                self.directive = Some(Directive {
                    saved: Some(Box::new(Saved {
                        parens: std::mem::take(&mut self.parens),
                        braces: std::mem::take(&mut self.braces),
                        history: self.history.len(),
                    })),
                });
                self.scan(line, ws, 0);
                // The body goes one level in, as after a `{`.
                self.history.push(Logical {
                    comment: false,
                    indent: 0,
                    indent_cols: 0,
                    first: b"#define".to_vec(),
                    last: b"{".to_vec(),
                    closes_case: false,
                });
            } else {
                let parens = self.parens.clone();
                self.scan(line, ws, 0);
                self.parens = parens;
                if continues {
                    self.directive = Some(Directive { saved: None });
                }
            }
            return;
        }
        if let Some(d) = &self.directive {
            if d.saved.is_none() {
                let parens = self.parens.clone();
                self.scan(line, ws, 0);
                self.parens = parens;
                if !continues {
                    self.directive = None;
                }
                return;
            }
        }
        self.feed_code(line, ws, was_in_comment);
        if self.directive.is_some() && !continues {
            self.end_directive();
        }
    }

    fn end_directive(&mut self) {
        if let Some(Directive { saved: Some(s) }) = self.directive.take() {
            self.parens = s.parens;
            self.braces = s.braces;
            self.history.truncate(s.history);
        }
    }

    fn feed_code(&mut self, line: &[u8], ws: usize, was_in_comment: bool) {
        let indent_cols = columns(&line[..ws]);
        let indent = indent_cols / 8;
        let continuing = !self.parens.is_empty() || self.last_code_open();
        let scanned = self.scan(line, ws, indent);
        let code = scanned.code;
        let statement_first = match self.history.iter().rev().find(|l| !l.comment) {
            Some(l) if continuing => l.first.clone(),
            _ => code.clone(),
        };
        let mut closes_case = false;
        for (k, b) in scanned.braces.iter().enumerate() {
            if *b == b'{' {
                self.braces.push(is_case_label(&statement_first));
            } else {
                let opened_by_case = self.braces.pop().unwrap_or(false);
                if k == 0 && code.starts_with(b"}") {
                    closes_case = opened_by_case;
                }
            }
        }
        if code.is_empty() {
            if !was_in_comment {
                self.history.push(Logical {
                    comment: true,
                    indent,
                    indent_cols,
                    first: Vec::new(),
                    last: Vec::new(),
                    closes_case: false,
                });
            }
            return;
        }
        if continuing {
            if let Some(l) = self.history.iter_mut().rev().find(|l| !l.comment) {
                l.last = code;
                return;
            }
        }
        if is_label(&code) && self.parens.is_empty() {
            return;
        }
        self.history.push(Logical {
            comment: false,
            indent,
            indent_cols,
            first: code.clone(),
            last: code,
            closes_case,
        });
    }

    /// Walks one line: comments, strings, parentheses.
    fn scan(&mut self, line: &[u8], ws: usize, line_indent: usize) -> Scanned {
        let mut code = Vec::new();
        let mut braces = Vec::new();
        let mut col = columns(&line[..ws]);
        let mut i = ws;
        let mut quote: Option<u8> = None;
        let began_in_comment = self.comment.is_some();
        while i < line.len() {
            let b = line[i];
            let next = line.get(i + 1).copied();
            if self.comment.is_some() {
                if b == b'*' && next == Some(b'/') {
                    self.comment = None;
                    i += 2;
                    col += 2;
                    continue;
                }
            } else if let Some(q) = quote {
                code.push(b);
                if b == b'\\' && next.is_some() {
                    code.push(line[i + 1]);
                    i += 2;
                    col += 2;
                    continue;
                }
                if b == q {
                    quote = None;
                }
            } else if b == b'/' && next == Some(b'*') {
                let lead = if trim(&code).is_empty() {
                    line[..ws].to_vec()
                } else {
                    to_ws(col)
                };
                let rest = &line[i + 2..];
                let kernel_doc = rest.first() == Some(&b'*') && trim(&rest[1..]).is_empty();
                self.comment = Some(CommentBlock {
                    lead,
                    kernel_doc_first: kernel_doc,
                    // `/* text` goes on one space after the ` *`.
                    align: (!kernel_doc && !trim(rest).is_empty()).then(|| b" ".to_vec()),
                    bullet: None,
                    after_bare_tag: false,
                    last_prefix: Vec::new(),
                });
                i += 2;
                col += 2;
                continue;
            } else if b == b'/' && next == Some(b'/') {
                break;
            } else {
                match b {
                    b'"' | b'\'' => quote = Some(b),
                    b'(' => self.parens.push(Paren {
                        column: col + 1,
                        at_end: {
                            let rest = trim(&line[i + 1..]);
                            trim(rest.strip_suffix(b"\\").unwrap_or(rest)).is_empty()
                        },
                        line_indent,
                    }),
                    b')' => {
                        self.parens.pop();
                    }
                    b'{' | b'}' => braces.push(b),
                    _ => {}
                }
                code.push(b);
            }
            col = if b == b'\t' {
                (col / 8 + 1) * 8
            } else if b & 0xC0 != 0x80 {
                col + 1
            } else {
                col
            };
            i += 1;
        }
        if began_in_comment {
            if let Some(cb) = self.comment.as_mut() {
                let after_tag = cb.continue_with(&line[ws..], &line[..ws]);
                if after_tag.is_some() {
                    self.after_tag_inner = after_tag;
                }
            }
        }
        let code = trim(&code);
        let code = trim(code.strip_suffix(b"\\").unwrap_or(code));
        Scanned {
            code: code.to_vec(),
            braces,
        }
    }
}

impl CommentBlock {
    /// Takes in a continuation line (`text` without its indentation `ws`).
    /// Returns its alignment when it is the first line of a tag's
    /// description.
    fn continue_with(&mut self, text: &[u8], ws: &[u8]) -> Option<Vec<u8>> {
        let Some(rest) = text.strip_prefix(b"*") else {
            self.last_prefix = ws.to_vec();
            return None;
        };
        let inner = &rest[..leading_ws(rest)];
        let content = &rest[inner.len()..];
        self.last_prefix = [ws, b"*", inner].concat();
        if content.is_empty() || content.starts_with(b"/") {
            // A paragraph break: what follows starts a paragraph.
            self.after_bare_tag = false;
            self.bullet = None;
            self.align = Some(b" ".to_vec());
            return None;
        }
        let after_tag = self.after_bare_tag.then(|| inner.to_vec());
        self.after_bare_tag = is_bare_tag(content);
        let marker = bullet_width(content);
        self.bullet = match marker {
            Some(_) => Some(inner.to_vec()),
            None => self.bullet.take().filter(|b| columns(b) < columns(inner)),
        };
        let skip = if let Some(w) = marker {
            Some(w)
        } else if content.starts_with(b"@") && !self.after_bare_tag {
            // The description after `@name: ` (a bare tag's goes on the
            // next line, aligned as this file does).
            tag_width(content)
        } else if self.kernel_doc_first {
            find(content, b" - ").map(|p| p + 3)
        } else {
            None
        };
        self.kernel_doc_first = false;
        let mut align = inner.to_vec();
        if let Some(w) = skip {
            align.extend(std::iter::repeat_n(b' ', columns(&content[..w])));
        }
        self.align = Some(align);
        after_tag
    }
}

/// The added line `text` (its leading whitespace gone) indented for its
/// place after the lines `lex` has seen. `counterpart` is the removed line
/// it may be a rewrite of.
pub(super) fn indent(text: &[u8], lex: &Lexer, counterpart: Option<&[u8]>) -> Vec<u8> {
    let with = |prefix: &[u8], text: &[u8]| [prefix, text].concat();
    if text.is_empty() {
        return Vec::new();
    }
    if let Some(cb) = &lex.comment {
        return comment_line(text, cb, lex.after_tag_inner.as_deref(), counterpart);
    }
    if matches!(&lex.directive, Some(d) if d.saved.is_none()) {
        return with(b"\t", text);
    }
    if text.starts_with(b"#") || is_label(text) {
        return text.to_vec();
    }
    if let Some(p) = lex.parens.last() {
        if text.starts_with(b")") {
            return with(&tabs(p.line_indent), text);
        }
        if p.at_end {
            return with(&tabs(p.line_indent + 1), text);
        }
        return with(&to_ws(p.column), text);
    }
    if lex.last_code_open() {
        let Some(c) = lex.history.iter().rev().find(|l| !l.comment) else {
            return text.to_vec();
        };
        if c.first.starts_with(b"return ") {
            return with(&to_ws(c.indent_cols + b"return ".len()), text);
        }
        return with(&tabs(c.indent + 1), text);
    }
    let mut level = structural_level(&lex.history);
    if text.starts_with(b"}") || is_case_label(text) {
        level = level.saturating_sub(1);
    }
    with(&tabs(level), text)
}

fn comment_line(
    text: &[u8],
    cb: &CommentBlock,
    after_tag_inner: Option<&[u8]>,
    counterpart: Option<&[u8]>,
) -> Vec<u8> {
    let Some(rest) = text.strip_prefix(b"*") else {
        return [cb.last_prefix.as_slice(), text].concat();
    };
    let content = trim_start(rest);
    // A rewritten line keeps the alignment of the one it replaces.
    if let Some(old) = counterpart {
        let ows = leading_ws(old);
        if let Some(orest) = old[ows..].strip_prefix(b"*") {
            let at = ows + 1 + leading_ws(orest);
            if !content.is_empty() && first_word(&old[at..]) == first_word(content) {
                return [&old[..at], content].concat();
            }
        }
    }
    let mut line = cb.lead.clone();
    line.extend_from_slice(b" *");
    if content.is_empty() || rest.starts_with(b"/") {
        line.extend_from_slice(rest);
        return line;
    }
    let inner: &[u8] = if content.starts_with(b"@") {
        b" "
    } else if cb.after_bare_tag {
        after_tag_inner.unwrap_or(b" ")
    } else if bullet_width(content).is_some() && cb.bullet.is_some() {
        cb.bullet.as_deref().unwrap_or(b" ")
    } else {
        cb.align.as_deref().unwrap_or(b" ")
    };
    line.extend_from_slice(inner);
    line.extend_from_slice(content);
    line
}

/// The indentation (tabs) of a new statement after `history`, before the
/// new line's own `}` or `case` is taken into account.
fn structural_level(history: &[Logical]) -> usize {
    let Some(last) = history.last() else {
        return 0;
    };
    if last.comment {
        // A comment already sits where the next statement goes.
        return last.indent;
    }
    let code: Vec<&Logical> = history.iter().filter(|l| !l.comment).collect();
    let Some((c, before)) = code.split_last() else {
        return 0;
    };
    if c.last.ends_with(b"{") || is_case_label(&c.last) || is_control(c) {
        return c.indent + 1;
    }
    if c.closes_case && c.last == b"}" {
        // Still among the `switch`'s cases.
        return c.indent + 1;
    }
    // The end of a statement that was the body of brace-less `if`s, `for`s,
    // `else`s: back to the level of the outermost of them.
    let mut level = c.indent;
    for p in before.iter().rev() {
        if is_control(p) && p.indent + 1 == level {
            level = p.indent;
        } else {
            break;
        }
    }
    level
}

/// A statement whose body is the next line: `if (…)`, `for (…)`,
/// `while (…)`, `else`, `do`, or an iterator macro (`list_for_each…(…)`)
/// inside a function, all without `{`.
fn is_control(l: &Logical) -> bool {
    let first = match l.first.strip_prefix(b"}") {
        Some(rest) => trim_start(rest),
        None => &l.first,
    };
    if matches!(first, b"else" | b"do") {
        return true;
    }
    if !l.last.ends_with(b")") {
        return false;
    }
    let word = first_identifier(first);
    matches!(word, b"if" | b"for" | b"while" | b"switch")
        || (word == b"else" && first_identifier(trim_start(&first[4..])) == b"if")
        || (l.indent > 0 && !word.is_empty())
}

/// `case …:` or `default:`, possibly opening a block.
pub(super) fn is_case_label(text: &[u8]) -> bool {
    let word = first_identifier(text);
    let text = trim(text);
    let text = trim(text.strip_suffix(b"{").unwrap_or(text));
    (word == b"case" || word == b"default") && text.ends_with(b":")
}

/// A goto label: `name:` alone on its line.
pub(super) fn is_label(text: &[u8]) -> bool {
    let text = trim(text);
    let Some(name) = text.strip_suffix(b":") else {
        return false;
    };
    let name = trim(name);
    !name.is_empty()
        && name != b"default"
        && (name[0].is_ascii_alphabetic() || name[0] == b'_')
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn ends_in_operator(code: &[u8]) -> bool {
    if code.ends_with(b"->") || code.ends_with(b"++") || code.ends_with(b"--") {
        return false;
    }
    matches!(
        code.last(),
        Some(b'=' | b'+' | b'-' | b'|' | b'&' | b'?' | b'/' | b'%' | b'^' | b'<' | b'>')
    )
}

/// `@name:` with nothing after it.
fn is_bare_tag(content: &[u8]) -> bool {
    tag_width(content).is_some() && trim(content).ends_with(b":") && !trim(content).contains(&b' ')
}

/// Width of `@name:` and the whitespace after it.
fn tag_width(content: &[u8]) -> Option<usize> {
    let colon = content.iter().position(|&b| b == b':')?;
    let name = &content[1..colon];
    if !content.starts_with(b"@")
        || name.is_empty()
        || !name.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']' | b'-' | b'>')
        })
    {
        return None;
    }
    Some(colon + 1 + leading_ws(&content[colon + 1..]))
}

/// Width of a list bullet (`- `, `* `, `1. `) and the whitespace after it.
fn bullet_width(content: &[u8]) -> Option<usize> {
    let marker = if content.starts_with(b"- ") || content.starts_with(b"* ") {
        1
    } else {
        let digits = content.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || !content[digits..].starts_with(b". ") {
            return None;
        }
        digits + 1
    };
    Some(marker + leading_ws(&content[marker..]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn first_identifier(text: &[u8]) -> &[u8] {
    let end = text
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn first_word(text: &[u8]) -> &[u8] {
    let end = text
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(text.len());
    &text[..end]
}
