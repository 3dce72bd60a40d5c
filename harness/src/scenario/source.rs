//! Positions in a scenario file: byte offsets to `file:line:col`, and
//! deserializing a spanned TOML value so that a failure names the key or
//! value at fault.
//!
//! serde's derive for internally tagged enums (`op = "..."`, `kind = "..."`)
//! buffers the table before it picks the variant, so the TOML deserializer's
//! spans are lost by the time a field fails. The parser therefore works on
//! toml's spanned document (`DeTable`) and, when a table does not
//! deserialize, finds the key at fault itself (see [`locate`]).

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::model::{Pos, ScenarioError};

/// Maps byte offsets to line/column.
pub(crate) struct Source<'a> {
    pub(crate) file: String,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line,
            col: before[line_start..].chars().count() + 1,
        }
    }

    pub(crate) fn err(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
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

/// Deserializes `v` into `T`, turning a failure into an error at the key or
/// value at fault.
pub(crate) fn deserialize<T: DeserializeOwned>(
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
