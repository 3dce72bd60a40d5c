//! KTAP, the kselftest output format: the totals of a run and the names of
//! the tests that failed. Used by the kernel stage (the selftest it builds
//! is checked when run) and by the scenario stage (a `kselftest` step).

/// The counts of a kselftest run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KtapTotals {
    pub pass: u32,
    pub fail: u32,
    pub skip: u32,
    pub xfail: u32,
    /// Tests expected to fail that passed (kselftest counts these as a
    /// failure of the run).
    pub xpass: u32,
    pub error: u32,
    /// The plan (`1..N`), if the output has one.
    pub planned: Option<u32>,
}

impl KtapTotals {
    /// Results reported, of any kind.
    pub fn ran(&self) -> u32 {
        self.pass + self.fail + self.skip + self.xfail + self.xpass + self.error
    }

    /// Planned tests without a result: the binary died before them.
    pub fn missing(&self) -> u32 {
        self.planned.map_or(0, |p| p.saturating_sub(self.ran()))
    }

    /// Every planned test ran, and none failed.
    pub fn all_passed(&self) -> bool {
        self.fail == 0 && self.xpass == 0 && self.error == 0 && self.missing() == 0
    }
}

impl std::fmt::Display for KtapTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pass:{} fail:{} xfail:{} xpass:{} skip:{} error:{}",
            self.pass, self.fail, self.xfail, self.xpass, self.skip, self.error
        )?;
        match self.planned {
            Some(p) => write!(f, " (planned {p})"),
            None => write!(f, " (no plan)"),
        }
    }
}

/// One top-level `ok`/`not ok` line.
struct ResultLine<'a> {
    ok: bool,
    name: &'a str,
    /// The directive after ` # `, upper-cased first word (`SKIP`, `XFAIL`...).
    directive: Option<String>,
}

fn result_line(line: &str) -> Option<ResultLine<'_>> {
    // Nested (indented) results belong to subtests; the harness's own
    // commentary starts with `#`.
    let (ok, rest) = if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else {
        return None;
    };
    let rest = rest.trim_end();
    let (number, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, Some(d)),
        None => match rest.strip_prefix("# ") {
            Some(d) => ("", Some(d)),
            None => (rest, None),
        },
    };
    let directive = directive.and_then(|d| d.split_whitespace().next().map(|w| w.to_uppercase()));
    Some(ResultLine {
        ok,
        name: name.trim(),
        directive,
    })
}

/// Reads a kselftest harness run: the `# Totals:` line when there is one,
/// else the `ok`/`not ok` lines counted (a run that crashed never prints
/// its totals); the plan from the first top-level `1..N`.
pub fn parse_ktap(output: &str) -> KtapTotals {
    let mut counted = KtapTotals::default();
    let mut totals: Option<KtapTotals> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if counted.planned.is_none() {
            if let Some(n) = line.strip_prefix("1..").and_then(|n| n.trim().parse().ok()) {
                counted.planned = Some(n);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# Totals:") {
            totals = Some(parse_totals(rest));
            continue;
        }
        let Some(r) = result_line(line) else { continue };
        match (r.ok, r.directive.as_deref()) {
            (_, Some("SKIP")) => counted.skip += 1,
            (true, Some("XFAIL")) => counted.xfail += 1,
            (true, Some("XPASS")) => counted.xpass += 1,
            (true, _) => counted.pass += 1,
            (false, _) => counted.fail += 1,
        }
    }
    match totals {
        Some(t) => KtapTotals {
            planned: counted.planned,
            ..t
        },
        None => counted,
    }
}

fn parse_totals(rest: &str) -> KtapTotals {
    let mut t = KtapTotals::default();
    for field in rest.split_whitespace() {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let Ok(value) = value.parse::<u32>() else {
            continue;
        };
        match name {
            "pass" => t.pass = value,
            "fail" => t.fail = value,
            "xfail" => t.xfail = value,
            "xpass" => t.xpass = value,
            "skip" => t.skip = value,
            "error" => t.error = value,
            _ => {}
        }
    }
    t
}

/// The names of the tests that failed (`not ok` without a SKIP), in order.
pub fn failed_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| result_line(l.trim_end_matches('\r')))
        .filter(|r| !r.ok && r.directive.as_deref() != Some("SKIP"))
        .map(|r| r.name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ktap")
            .join(name);
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn totals_line_of_a_passing_run() {
        let out = fixture("pass-sw-msi-rfcv2.ktap");
        let t = parse_ktap(&out);
        // The fixture keeps only a few result lines: the totals line, not
        // a count of them, is what is reported.
        assert_eq!(
            t,
            KtapTotals {
                pass: 224,
                fail: 0,
                skip: 5,
                xfail: 0,
                xpass: 0,
                error: 0,
                planned: Some(229),
            }
        );
        assert!(t.all_passed());
        assert!(failed_tests(&out).is_empty());
        assert_eq!(
            t.to_string(),
            "pass:224 fail:0 xfail:0 xpass:0 skip:5 error:0 (planned 229)"
        );
    }

    #[test]
    fn failing_run_names_its_failures() {
        let out = fixture("fail-no-hugepages.ktap");
        let t = parse_ktap(&out);
        assert_eq!((t.pass, t.fail, t.skip, t.planned), (202, 22, 5, Some(229)));
        assert!(!t.all_passed());
        assert_eq!(
            failed_tests(&out),
            [
                "iommufd_ioas.no_domain.access_domain_destory",
                "iommufd_mock_domain.one_domain_hugepage.basic",
                "iommufd_mock_domain.one_domain_hugepage.all_aligns",
                "iommufd_mock_domain.one_domain_hugepage.all_aligns_copy",
                "iommufd_mock_domain.two_domains_hugepage.basic",
                "iommufd_mock_domain.two_domains_hugepage.all_aligns",
                "iommufd_mock_domain.two_domains_hugepage.all_aligns_copy",
            ]
        );
    }

    #[test]
    fn run_cut_short_is_counted_line_by_line() {
        let out = fixture("cut-short.ktap");
        let t = parse_ktap(&out);
        assert_eq!((t.pass, t.fail, t.skip, t.error), (4, 3, 0, 0));
        assert_eq!(t.planned, Some(229));
        assert_eq!(t.missing(), 222);
        assert!(!t.all_passed());
        assert_eq!(failed_tests(&out).len(), 3);
    }

    #[test]
    fn skips_and_expected_failures_are_told_apart_when_counting() {
        let out = fixture("pass-sw-msi-rfcv2.ktap");
        let without_totals: String = out
            .lines()
            .filter(|l| !l.starts_with("# Totals:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let t = parse_ktap(&without_totals);
        assert_eq!((t.pass, t.skip, t.fail), (6, 5, 0));
        assert_eq!(t.missing(), 218);
        // A fixture cannot show these: the iommufd selftest has no XFAIL.
        let t = parse_ktap("1..3\nok 1 a # XFAIL known\nnot ok 2 b # SKIP no\nok 3 c # xpass\n");
        assert_eq!((t.xfail, t.skip, t.xpass, t.fail), (1, 1, 1, 0));
        assert!(failed_tests("not ok 2 b # SKIP no\n").is_empty());
        // Not results: commentary, subtests, the harness's OK lines.
        let t = parse_ktap("#            OK  x\n    ok 1 nested\nokay 1\nok x y\n");
        assert_eq!(t, KtapTotals::default());
    }
}
