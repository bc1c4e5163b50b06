//! Output files: `<out>/<name>.json`, `<out>/<name>.svg`, and for `lab all` a `REPORT.md` that
//! sets each claim of the seed beside the measured figure and embeds the plots.
//!
//! Lesson (all stages, docs/stages.md): an experiment anyone can rerun leaves evidence behind that
//! anyone can read; the report is that evidence, next to the story it checks.
//!
//! Invariant: files are written whole (rendered in memory first), so an error while drawing
//! never leaves a half-written SVG or report behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::outcome::{ExperimentInfo, Outcome};
use crate::plot::{PlotError, render_svg};

/// Why output files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The output directory or a file in it could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The outcome could not be serialized.
    #[error("cannot serialize the outcome: {0}")]
    Json(#[from] serde_json::Error),
    /// The chart could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// An experiment of `lab all` that could not run at all (as opposed to one whose claim failed).
#[derive(Debug, Clone)]
pub struct Broken {
    /// Which experiment.
    pub info: ExperimentInfo,
    /// Why it could not run.
    pub error: String,
}

fn write_file(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates `out` if needed.
pub fn ensure_dir(out: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_owned(),
        source,
    })
}

/// Writes `<out>/<name>.json` and `<out>/<name>.svg`; returns their paths.
pub fn write_outcome(out: &Path, outcome: &Outcome) -> Result<(PathBuf, PathBuf), ReportError> {
    ensure_dir(out)?;
    let json = serde_json::to_string_pretty(outcome)?;
    let svg = render_svg(&outcome.plot)?;
    let json_path = out.join(format!("{}.json", outcome.info.name));
    let svg_path = out.join(format!("{}.svg", outcome.info.name));
    write_file(&json_path, &json)?;
    write_file(&svg_path, &svg)?;
    Ok((json_path, svg_path))
}

/// Writes `<out>/REPORT.md` for a whole `lab all` run; returns its path.
pub fn write_report(
    out: &Path,
    outcomes: &[Outcome],
    broken: &[Broken],
    quick: bool,
) -> Result<PathBuf, ReportError> {
    ensure_dir(out)?;
    let path = out.join("REPORT.md");
    write_file(&path, &render_report(outcomes, broken, quick))?;
    Ok(path)
}

/// The Markdown text of REPORT.md.
pub fn render_report(outcomes: &[Outcome], broken: &[Broken], quick: bool) -> String {
    let mut text = String::from("# Floodgate lab report\n\n");
    let form = if quick {
        "`--quick` form (scaled time, fewer requests: a smoke test, not the seed's own figures)"
    } else {
        "full form (the seed's own parameters)"
    };
    let held = outcomes
        .iter()
        .filter(|outcome| outcome.verdict.holds)
        .count();
    let _ = writeln!(
        text,
        "Run: `floodgate lab all{}` — {form}.\n\n{held} of {} claims hold{}.\n",
        if quick { " --quick" } else { "" },
        outcomes.len() + broken.len(),
        if broken.is_empty() {
            String::new()
        } else {
            format!("; {} experiments could not run", broken.len())
        },
    );
    text.push_str("| experiment | stage | the seed says | measured | verdict |\n");
    text.push_str("| --- | --- | --- | --- | --- |\n");
    for outcome in outcomes {
        let _ = writeln!(
            text,
            "| [{name}](#{name}) | {} | {} | {} | **{}** |",
            outcome.info.stage,
            cell(outcome.info.seed_says),
            cell(&outcome.measured),
            outcome.verdict.label(),
            name = outcome.info.name,
        );
    }
    for item in broken {
        let _ = writeln!(
            text,
            "| {} | {} | {} | could not run: {} | **ERROR** |",
            item.info.name,
            item.info.stage,
            cell(item.info.seed_says),
            cell(&item.error),
        );
    }
    for outcome in outcomes {
        text.push('\n');
        text.push_str(&render_section(outcome));
    }
    text
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn render_section(outcome: &Outcome) -> String {
    let mut text = String::new();
    let info = &outcome.info;
    let _ = writeln!(
        text,
        "<a id=\"{name}\"></a>\n## {name} (stage {})\n\n**Claim:** {}\n\n**The seed says:** {}\n\n\
         **Measured:** {}\n\n**Verdict: {}** ({:.1} s)\n",
        info.stage,
        info.claim,
        info.seed_says,
        outcome.measured,
        outcome.verdict.label(),
        outcome.elapsed_seconds,
        name = info.name,
    );
    for check in &outcome.verdict.checks {
        let _ = writeln!(text, "- `{}`", check.render());
    }
    text.push('\n');
    text.push_str(&outcome.table.render_markdown());
    for note in &outcome.notes {
        let _ = write!(text, "\n> {note}\n");
    }
    let _ = writeln!(
        text,
        "\n![{}]({}.svg)\n\nRerun: `floodgate lab {}{}`\n",
        outcome.plot.title,
        info.name,
        info.name,
        if outcome.quick { " --quick" } else { "" },
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{Bar, PlotKind, PlotSpec};
    use crate::table::Table;
    use crate::verdict::{Check, Expectation, Verdict};

    fn outcome(name: &'static str, holds: bool) -> Outcome {
        let figure = if holds { 1.0 } else { 0.0 };
        Outcome {
            info: ExperimentInfo {
                name,
                stage: "5",
                claim: "rejections are fast",
                seed_says: "Accepted requests matched queue capacity",
            },
            quick: false,
            parameters: serde_json::json!({}),
            measured: "101 accepted of 1000".to_owned(),
            table: Table::new(["a"]),
            verdict: Verdict::from_checks(vec![Check::new(
                "x",
                figure,
                Expectation::AtLeast { min: 1.0 },
            )]),
            plot: PlotSpec {
                title: "Stage 5 burst".to_owned(),
                x_label: "x".to_owned(),
                y_label: "y".to_owned(),
                kind: PlotKind::Bars {
                    bars: vec![Bar::new("a", 1.0)],
                },
                y_max: None,
                references: Vec::new(),
            },
            notes: vec!["a note".to_owned()],
            elapsed_seconds: 2.0,
        }
    }

    // Proves REPORT.md puts the seed's words beside the measured figure and the verdict,
    // embeds each plot, lists broken experiments and counts the claims that hold.
    #[test]
    fn report_sets_claims_beside_measurements() {
        let broken = Broken {
            info: ExperimentInfo {
                name: "stage1-freeze",
                stage: "1",
                claim: "c",
                seed_says: "s",
            },
            error: "bind failed".to_owned(),
        };
        let text = render_report(
            &[
                outcome("stage5-backpressure", true),
                outcome("other", false),
            ],
            &[broken],
            false,
        );
        assert!(text.contains("1 of 3 claims hold; 1 experiments could not run"));
        assert!(text.contains(
            "| [stage5-backpressure](#stage5-backpressure) | 5 | Accepted requests matched queue \
             capacity | 101 accepted of 1000 | **HOLDS** |"
        ));
        assert!(text.contains("**DOES NOT HOLD**"));
        assert!(text.contains("could not run: bind failed | **ERROR**"));
        assert!(text.contains("![Stage 5 burst](stage5-backpressure.svg)"));
        assert!(text.contains("> a note"));
        assert!(text.contains("Rerun: `floodgate lab stage5-backpressure`"));
    }

    // Proves an outcome is written as parseable JSON and a complete SVG under the given folder.
    #[test]
    fn outcome_files_are_written() {
        let out = std::env::temp_dir().join(format!("floodgate-lab-report-{}", std::process::id()));
        let (json_path, svg_path) =
            write_outcome(&out, &outcome("stage5-backpressure", true)).expect("files written");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json readable"))
                .expect("valid json");
        assert_eq!(json["info"]["name"], "stage5-backpressure");
        let svg = std::fs::read_to_string(&svg_path).expect("svg readable");
        assert!(svg.contains("Stage 5 burst") && svg.trim_end().ends_with("</svg>"));
        std::fs::remove_dir_all(&out).expect("temp dir removed");
    }
}
