//! Verdicts: a claim of the seed holds when every one of its numeric checks passes.
//!
//! Lesson (all stages, docs/stages.md): a claim is only as good as the number that tests it. Each
//! check names what was measured, the figure, and the band it had to fall in, so a failed verdict
//! says *which* number missed and by how much.
//!
//! Invariant: a [`Verdict`] holds if and only if it has at least one check and all of them pass;
//! a check's `passed` is computed from its figure and band, never set by hand.

use serde::Serialize;

/// The band a measured figure must fall in for a check to pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Expectation {
    /// The figure must be at least `min`.
    AtLeast { min: f64 },
    /// The figure must be at most `max`.
    AtMost { max: f64 },
    /// The figure must lie in `[min, max]`.
    Between { min: f64, max: f64 },
    /// The figure must be true (1.0) rather than false (0.0).
    IsTrue,
}

impl Expectation {
    /// Whether `figure` satisfies this expectation. NaN never does.
    pub fn accepts(self, figure: f64) -> bool {
        if figure.is_nan() {
            return false;
        }
        match self {
            Self::AtLeast { min } => figure >= min,
            Self::AtMost { max } => figure <= max,
            Self::Between { min, max } => figure >= min && figure <= max,
            Self::IsTrue => figure >= 0.5,
        }
    }

    /// A short human description such as `>= 1.50` or `in [0.80, 1.20]`.
    pub fn describe(self) -> String {
        match self {
            Self::AtLeast { min } => format!(">= {}", format_figure(min)),
            Self::AtMost { max } => format!("<= {}", format_figure(max)),
            Self::Between { min, max } => {
                format!("in [{}, {}]", format_figure(min), format_figure(max))
            }
            Self::IsTrue => "yes".to_owned(),
        }
    }
}

/// One numeric test of a claim.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was measured, with its unit (`"accepted events"`, `"p99 rejection latency (ms)"`).
    pub what: String,
    /// The measured figure (booleans are 1.0 / 0.0).
    pub measured: f64,
    /// The band the figure had to fall in.
    pub expected: Expectation,
    /// Whether the figure fell in the band.
    pub passed: bool,
}

impl Check {
    /// A check of `measured` against `expected`.
    pub fn new(what: impl Into<String>, measured: f64, expected: Expectation) -> Self {
        Self {
            what: what.into(),
            measured,
            passed: expected.accepts(measured),
            expected,
        }
    }

    /// A yes/no check: passes when `measured` is true.
    pub fn flag(what: impl Into<String>, measured: bool) -> Self {
        Self::new(what, f64::from(u8::from(measured)), Expectation::IsTrue)
    }

    /// One line: `PASS  accepted events = 138 (expected in [101, 160])`.
    pub fn render(&self) -> String {
        let mark = if self.passed { "PASS" } else { "FAIL" };
        let figure = match self.expected {
            Expectation::IsTrue if self.measured >= 0.5 => "yes".to_owned(),
            Expectation::IsTrue => "no".to_owned(),
            _ => format_figure(self.measured),
        };
        format!(
            "{mark}  {} = {figure} (expected {})",
            self.what,
            self.expected.describe()
        )
    }
}

/// The verdict on one claim: the checks that test it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the claim holds (every check passed, and there was at least one).
    pub holds: bool,
    /// The checks, in the order they were made.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// The verdict of `checks`. An empty list never holds: a claim with no test is not proven.
    pub fn from_checks(checks: Vec<Check>) -> Self {
        let holds = !checks.is_empty() && checks.iter().all(|check| check.passed);
        Self { holds, checks }
    }

    /// `HOLDS` or `DOES NOT HOLD`.
    pub fn label(&self) -> &'static str {
        if self.holds { "HOLDS" } else { "DOES NOT HOLD" }
    }

    /// The checks, one per line.
    pub fn render(&self) -> String {
        let mut text = format!("verdict: {}\n", self.label());
        for check in &self.checks {
            text.push_str("  ");
            text.push_str(&check.render());
            text.push('\n');
        }
        text
    }

    /// The checks that failed, rendered, for error messages.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|check| !check.passed)
            .map(Check::render)
            .collect()
    }
}

/// Formats a figure with precision that suits its size: `138`, `9.42`, `0.013`.
pub fn format_figure(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 || (magnitude - magnitude.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves each band accepts exactly the figures it should, edges included, and NaN never.
    #[test]
    fn expectations_accept_their_band_only() {
        assert!(Expectation::AtLeast { min: 2.0 }.accepts(2.0));
        assert!(!Expectation::AtLeast { min: 2.0 }.accepts(1.99));
        assert!(Expectation::AtMost { max: 2.0 }.accepts(2.0));
        assert!(!Expectation::AtMost { max: 2.0 }.accepts(2.01));
        let band = Expectation::Between { min: 1.0, max: 3.0 };
        assert!(band.accepts(1.0) && band.accepts(3.0) && band.accepts(2.0));
        assert!(!band.accepts(0.99) && !band.accepts(3.01));
        assert!(Expectation::IsTrue.accepts(1.0));
        assert!(!Expectation::IsTrue.accepts(0.0));
        assert!(!band.accepts(f64::NAN));
        assert!(!Expectation::AtMost { max: 1.0 }.accepts(f64::NAN));
    }

    // Proves a verdict holds only when all checks pass, and that an empty verdict never holds.
    #[test]
    fn verdict_holds_only_when_every_check_passes() {
        let pass = Check::new("a", 5.0, Expectation::AtLeast { min: 1.0 });
        let fail = Check::new("b", 0.5, Expectation::AtLeast { min: 1.0 });
        assert!(Verdict::from_checks(vec![pass.clone()]).holds);
        let mixed = Verdict::from_checks(vec![pass, fail]);
        assert!(!mixed.holds);
        assert_eq!(mixed.failures().len(), 1);
        assert!(mixed.failures()[0].contains("b = 0.500"));
        assert!(!Verdict::from_checks(Vec::new()).holds);
    }

    // Proves the rendered line names the figure, the band and the outcome.
    #[test]
    fn check_renders_figure_band_and_mark() {
        let check = Check::new(
            "accepted events",
            138.0,
            Expectation::Between {
                min: 101.0,
                max: 160.0,
            },
        );
        assert_eq!(
            check.render(),
            "PASS  accepted events = 138 (expected in [101, 160])"
        );
        let flag = Check::flag("server froze", false);
        assert_eq!(flag.render(), "FAIL  server froze = no (expected yes)");
        let verdict = Verdict::from_checks(vec![flag]);
        assert!(verdict.render().starts_with("verdict: DOES NOT HOLD\n"));
    }

    // Proves figures are printed with a precision that suits their size.
    #[test]
    fn figures_are_formatted_by_magnitude() {
        assert_eq!(format_figure(138.0), "138");
        assert_eq!(format_figure(1234.56), "1235");
        assert_eq!(format_figure(9.4213), "9.42");
        assert_eq!(format_figure(0.01349), "0.013");
        assert_eq!(format_figure(2.0), "2");
    }
}
