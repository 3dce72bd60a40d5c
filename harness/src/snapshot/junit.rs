//! nextest's JUnit report, read back for one question: which tests failed?
//!
//! nextest writes one `<testsuite name="BINARY-ID">` per test binary and one
//! `<testcase name="TEST">` per test, with a `<failure>` or `<error>` child
//! when the test failed. Nothing else of the report is needed, so this is a
//! reader of exactly that shape, not an XML parser.

/// A failed test: its binary id (`harness::scenarios`) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTest {
    pub binary: String,
    pub name: String,
}

impl FailedTest {
    /// `binary name`, as nextest prints it.
    pub fn display(&self) -> String {
        format!("{} {}", self.binary, self.name)
    }
}

/// What the report says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub tests: usize,
    pub failed: Vec<FailedTest>,
}

/// Reads a nextest JUnit report.
pub fn parse(xml: &str) -> Report {
    let mut report = Report::default();
    let mut suite = String::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if let Some(attrs) = tag.strip_prefix("testsuite ") {
            suite = attribute(attrs, "name").unwrap_or_default();
        } else if let Some(attrs) = tag.strip_prefix("testcase ") {
            report.tests += 1;
            let name = attribute(attrs, "name").unwrap_or_default();
            // A self-closed testcase passed (or was skipped).
            if !attrs.trim_end().ends_with('/') {
                let body_end = rest.find("</testcase>").unwrap_or(rest.len());
                let body = &rest[end.min(body_end)..body_end];
                if body.contains("<failure") || body.contains("<error") {
                    report.failed.push(FailedTest {
                        binary: suite.clone(),
                        name,
                    });
                }
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    report
}

fn attribute(attrs: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=\"");
    let at = attrs
        .match_indices(&needle)
        .find(|(i, _)| *i == 0 || attrs.as_bytes()[i - 1].is_ascii_whitespace())?
        .0;
    let value = &attrs[at + needle.len()..];
    let value = &value[..value.find('"')?];
    Some(unescape(value))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="4" failures="2" errors="0">
    <testsuite name="harness" tests="2" failures="1">
        <testcase name="cache::tests::ok" classname="harness" time="0.009"/>
        <testcase name="vm::tests::boots &amp; shuts_down" classname="harness" time="1.0">
            <failure type="test failure">thread panicked</failure>
            <system-out>...</system-out>
        </testcase>
    </testsuite>
    <testsuite name="harness::scenarios" tests="2" failures="1">
        <testcase name="parse:default-window" classname="harness::scenarios" time="0.01">
        </testcase>
        <testcase name="default-window@sw-msi-rfcv2" classname="harness::scenarios" time="3.0">
            <failure type="test failure"/>
        </testcase>
    </testsuite>
</testsuites>
"#;

    #[test]
    fn failed_tests_are_named_with_their_binary() {
        let r = parse(REPORT);
        assert_eq!(r.tests, 4);
        assert_eq!(
            r.failed,
            vec![
                FailedTest {
                    binary: "harness".into(),
                    name: "vm::tests::boots & shuts_down".into()
                },
                FailedTest {
                    binary: "harness::scenarios".into(),
                    name: "default-window@sw-msi-rfcv2".into()
                },
            ]
        );
        assert_eq!(
            r.failed[1].display(),
            "harness::scenarios default-window@sw-msi-rfcv2"
        );
    }

    #[test]
    fn an_empty_or_truncated_report_has_no_tests() {
        assert_eq!(parse(""), Report::default());
        assert_eq!(
            parse("<testsuites><testsuite name=\"h\"><testcase name=\"x\"").tests,
            1
        );
    }
}
