//! The suite's report: one markdown table per section plus the verdicts against the suite's
//! targets, written as `RESULTS.md` (for people) and `results.json` (for tools).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One section's measurements.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// Section title.
    pub title: String,
    /// How it was measured, in a sentence or two.
    pub method: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows of cells, already formatted.
    pub rows: Vec<Vec<String>>,
    /// Target checks: (target, measured, met).
    pub targets: Vec<(String, String, bool)>,
}

impl Table {
    /// A table with a title, a method note and its columns.
    pub fn new(title: &str, method: &str, columns: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            method: method.to_owned(),
            columns: columns.iter().map(|&c| c.to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Adds one row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Records a target check.
    pub fn target(&mut self, target: &str, measured: String, met: bool) {
        self.targets.push((target.to_owned(), measured, met));
    }

    /// The table as markdown.
    pub fn to_markdown(&self) -> String {
        let mut text = format!("## {}\n\n{}\n\n", self.title, self.method);
        let _ = writeln!(text, "| {} |", self.columns.join(" | "));
        let _ = writeln!(text, "|{}", "---|".repeat(self.columns.len()));
        for row in &self.rows {
            let _ = writeln!(text, "| {} |", row.join(" | "));
        }
        if !self.targets.is_empty() {
            text.push_str("\n| target | measured | met |\n|---|---|---|\n");
            for (target, measured, met) in &self.targets {
                let mark = if *met { "yes" } else { "**no**" };
                let _ = writeln!(text, "| {target} | {measured} | {mark} |");
            }
        }
        text
    }
}

/// Every section's table, in run order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The sections.
    pub tables: Vec<Table>,
}

impl Report {
    /// Adds a finished section and prints it at once.
    pub fn push(&mut self, table: Table) {
        println!("{}", table.to_markdown());
        self.tables.push(table);
    }

    /// Writes `RESULTS.md` and `results.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut markdown = String::from("# Floodgate benchmark results\n\n");
        let _ = writeln!(
            markdown,
            "Machine: {} cores. Command: `bench/run.sh`. Ratios are measured in one run.\n",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        );
        for table in &self.tables {
            markdown.push_str(&table.to_markdown());
            markdown.push('\n');
        }
        std::fs::write(dir.join("RESULTS.md"), markdown).context("writing RESULTS.md")?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json).context("writing results.json")
    }
}
