//! Tables: the measured rows of an experiment, printed like the seed's own tables.
//!
//! Lesson (all stages, docs/stages.md): the seed argues with tables (`| Workers | Expected | Actual
//! |`); the lab answers with the same shape, in the terminal (aligned text) and in REPORT.md
//! (Markdown).
//!
//! Invariant: every row has exactly as many cells as there are headers (enforced by
//! [`Table::push`], which pads or truncates), so rendering never misaligns.

use serde::Serialize;

/// A table of strings with a header row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Column names, units last (`"throughput (events/s)"`).
    pub headers: Vec<String>,
    /// The rows, each as wide as `headers`.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells become empty, extra cells are dropped.
    pub fn push<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Column widths in characters (not bytes), so `≈` and `≫` align.
    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }

    /// The table as aligned plain text for the terminal.
    pub fn render_text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| pad(cell, *width))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut text = line(&self.headers);
        text.push('\n');
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        text.push_str(&rule.join("  "));
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(row));
            text.push('\n');
        }
        text
    }

    /// The table as GitHub-flavoured Markdown (pipes in cells are escaped).
    pub fn render_markdown(&self) -> String {
        let line = |cells: &[String]| -> String {
            let escaped: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
            format!("| {} |", escaped.join(" | "))
        };
        let mut text = line(&self.headers);
        text.push('\n');
        let rule: Vec<String> = self.headers.iter().map(|_| "---".to_owned()).collect();
        text.push_str(&line(&rule));
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(row));
            text.push('\n');
        }
        text
    }
}

/// `cell` padded with spaces to `width` characters.
fn pad(cell: &str, width: usize) -> String {
    let missing = width.saturating_sub(cell.chars().count());
    format!("{cell}{}", " ".repeat(missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::new(["workers", "throughput (events/s)"]);
        table.push(["1", "9.1"]);
        table.push(["64", "98.7", "dropped extra cell"]);
        table.push(["≈"]);
        table
    }

    // Proves rows are normalised to the header width (padded or truncated).
    #[test]
    fn rows_are_as_wide_as_headers() {
        let table = sample();
        assert!(table.rows.iter().all(|row| row.len() == 2));
        assert_eq!(table.rows[2], vec!["≈".to_owned(), String::new()]);
    }

    // Proves the text rendering aligns columns by characters, including non-ASCII cells.
    #[test]
    fn text_rendering_aligns_columns() {
        let text = sample().render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "workers  throughput (events/s)");
        assert_eq!(lines[1], "-------  ---------------------");
        assert_eq!(lines[2], "1        9.1");
        assert_eq!(lines[3], "64       98.7");
        assert_eq!(lines[4], "≈");
    }

    // Proves the Markdown rendering has a header rule and escapes pipes inside cells.
    #[test]
    fn markdown_rendering_escapes_pipes() {
        let mut table = Table::new(["case", "answer"]);
        table.push(["a|b", "400"]);
        let markdown = table.render_markdown();
        assert_eq!(
            markdown,
            "| case | answer |\n| --- | --- |\n| a\\|b | 400 |\n"
        );
    }
}
