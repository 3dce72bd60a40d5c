//! Reading a scenario file: the top-level keys, `requires`, `prelude` and
//! `[machine]`; the steps are handed to [`super::expand`], and the result is
//! checked by [`super::validate`]. Every error names `file:line:col` of the
//! key or value at fault.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::expand::Expander;
use super::model::{list, MachineSpec, Pos, Prelude, Requirement, Scenario, ScenarioError};
use super::source::{deserialize, display_path, Source};

/// The keys of a scenario file's top level.
const TOP_KEYS: [&str; 6] = [
    "description",
    "reviewer_finding",
    "requires",
    "prelude",
    "machine",
    "step",
];

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

    /// Parses `text` (the contents of `path`, shown as `shown` in messages),
    /// expands its constructs and validates it.
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
        let requires = match get("requires") {
            Some(v) => parse_requires(&src, v)?,
            None => Vec::new(),
        };
        let prelude = match get("prelude") {
            Some(v) => Some((
                deserialize::<Prelude>(&src, v, "prelude")?,
                src.pos(v.span().start),
            )),
            None => None,
        };
        let machine = match get("machine") {
            Some(v) => parse_machine(&src, v)?,
            None => MachineSpec::default(),
        };
        let Some(step_value) = get("step") else {
            return Err(src.err(
                doc_span.end..doc_span.end,
                "no steps: add at least one `[[step]]` table",
            ));
        };
        let Some(items) = step_value.get_ref().as_array() else {
            return Err(src.err(
                step_value.span(),
                "`step` must be an array of tables: write each step as `[[step]]`",
            ));
        };
        let mut expander = Expander::new(&src, &machine, items);
        if let Some((prelude, pos)) = prelude {
            expander.prelude(prelude, pos);
        }
        for item in items.iter() {
            expander.file_step(item)?;
        }
        let scenario = Scenario {
            name,
            path: path.to_path_buf(),
            display_path: shown.to_string(),
            description,
            reviewer_finding,
            requires,
            machine,
            steps: expander.finish(),
        };
        scenario.validate()?;
        Ok(scenario)
    }
}

/// `requires = ["sw_msi_option", ...]`, each entry checked where it is.
fn parse_requires(src: &Source, v: &Spanned<DeValue>) -> Result<Vec<Requirement>, ScenarioError> {
    let Some(items) = v.get_ref().as_array() else {
        return Err(src.err(
            v.span(),
            format!(
                "`requires` must be an array of names, e.g. [\"sw_msi_option\"] (known: {})",
                list(Requirement::NAMES)
            ),
        ));
    };
    items
        .iter()
        .map(|item| deserialize::<Requirement>(src, item, "requires"))
        .collect()
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
