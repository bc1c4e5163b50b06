//! Outcomes: what one experiment run produced (table, verdict, plot), and the claim it tested.
//!
//! Lesson (all stages, docs/stages.md): an experiment is a claim of the seed, a measurement, and a
//! verdict side by side; keeping them in one value lets the terminal, the JSON file, the SVG and
//! REPORT.md all say the same thing.
//!
//! Invariant: an [`Outcome`] is self-describing: its JSON names the experiment, the claim, the
//! seed's own figure, the parameters used and every check, so it can be read without the code.

use serde::Serialize;

use crate::plot::PlotSpec;
use crate::table::Table;
use crate::verdict::Verdict;

/// The fixed description of an experiment: which claim of the seed it tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExperimentInfo {
    /// The name used on the command line and for output files (`stage7-contention`).
    pub name: &'static str,
    /// The seed stage it comes from (`"7"`) or `"beyond"` for experiments past the seed.
    pub stage: &'static str,
    /// The claim, as the lab tests it.
    pub claim: &'static str,
    /// What the seed itself says or measured, quoted or paraphrased with its figures.
    pub seed_says: &'static str,
}

/// The result of running one experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Which experiment, and the claim it tests.
    pub info: ExperimentInfo,
    /// Whether this was the `--quick` form (scaled time, fewer requests).
    pub quick: bool,
    /// The parameters used, as JSON (the experiment's params struct).
    pub parameters: serde_json::Value,
    /// The headline figure in one line, to set beside `seed_says` in REPORT.md.
    pub measured: String,
    /// The measured rows.
    pub table: Table,
    /// Whether the claim held, with the numbers.
    pub verdict: Verdict,
    /// The chart to draw.
    pub plot: PlotSpec,
    /// Remarks: where the measurement disagrees with the seed's story, or caveats.
    pub notes: Vec<String>,
    /// Wall time the experiment took, in seconds.
    pub elapsed_seconds: f64,
}

impl Outcome {
    /// The outcome as it is printed in the terminal: claim, table, verdict, notes.
    pub fn render_text(&self) -> String {
        let mut text = format!(
            "== {} (stage {}){} ==\nclaim: {}\nseed:  {}\n\n{}\nmeasured: {}\n{}",
            self.info.name,
            self.info.stage,
            if self.quick { ", quick" } else { "" },
            self.info.claim,
            self.info.seed_says,
            self.table.render_text(),
            self.measured,
            self.verdict.render(),
        );
        for note in &self.notes {
            text.push_str("note: ");
            text.push_str(note);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{PlotKind, PlotSpec};
    use crate::verdict::{Check, Expectation};

    // Proves the terminal rendering carries the claim, the seed's figure, the table, the
    // verdict and the notes.
    #[test]
    fn text_rendering_carries_every_part() {
        let mut table = Table::new(["workers", "throughput (events/s)"]);
        table.push(["16", "98"]);
        let outcome = Outcome {
            info: ExperimentInfo {
                name: "stage7-contention",
                stage: "7",
                claim: "one lock caps throughput near 1/hold",
                seed_says: "~100 jobs/s effective max",
            },
            quick: true,
            parameters: serde_json::json!({"workers": 16}),
            measured: "98 events/s".to_owned(),
            table,
            verdict: Verdict::from_checks(vec![Check::new(
                "throughput (events/s)",
                98.0,
                Expectation::AtMost { max: 120.0 },
            )]),
            plot: PlotSpec {
                title: "t".to_owned(),
                x_label: "x".to_owned(),
                y_label: "y".to_owned(),
                kind: PlotKind::Bars { bars: Vec::new() },
                y_max: None,
                references: Vec::new(),
            },
            notes: vec!["the seed's 64-worker slowdown did not appear".to_owned()],
            elapsed_seconds: 1.0,
        };
        let text = outcome.render_text();
        for part in [
            "== stage7-contention (stage 7), quick ==",
            "claim: one lock caps throughput near 1/hold",
            "seed:  ~100 jobs/s effective max",
            "16       98",
            "measured: 98 events/s",
            "verdict: HOLDS",
            "PASS  throughput (events/s) = 98 (expected <= 120)",
            "note: the seed's 64-worker slowdown did not appear",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
        let json = serde_json::to_value(&outcome).expect("outcome serializes");
        assert_eq!(json["verdict"]["holds"], true);
        assert_eq!(json["info"]["name"], "stage7-contention");
    }
}
