//! Plots: every experiment draws one SVG chart of what it measured, titled with the claim.
//!
//! Lesson (all stages, docs/stages.md): a curve shows a plateau (stage 7) or a gap between two
//! designs (stage 8) at a glance where a table needs reading. Sweeps are line charts, comparisons
//! are bar charts; both carry axis names with units, a legend and dashed reference lines for the
//! theory the measurement is held against.
//!
//! Invariant: rendering is a pure function of the [`PlotSpec`] (no clock, no randomness), and
//! it never panics on odd data: empty series, NaN and infinite points are skipped, and the axes
//! always have a non-empty range.

use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::verdict::format_figure;

/// Width of every chart, in pixels.
pub const PLOT_WIDTH_PX: u32 = 960;
/// Height of every chart, in pixels.
pub const PLOT_HEIGHT_PX: u32 = 560;
/// Lines with more points than this are drawn without point markers (time series).
const MAX_MARKED_POINTS: usize = 40;
/// Headroom above the largest value so the top line and bar labels stay inside the chart.
const Y_HEADROOM_RATIO: f64 = 1.18;

/// Distinct, colour-blind-friendly series colours (Tableau 10), reused in order.
const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// What to draw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlotSpec {
    /// The chart title: names the claim being tested.
    pub title: String,
    /// The x axis name, unit last (`"workers"`, `"time (s)"`).
    pub x_label: String,
    /// The y axis name, unit last (`"throughput (events/s)"`).
    pub y_label: String,
    /// Lines or bars.
    pub kind: PlotKind,
    /// Top of the y axis; `None` fits the data (with headroom). Set it to leave room for the
    /// legend above a time series.
    pub y_max: Option<f64>,
    /// Horizontal reference lines (a limit, a timeout), drawn dashed and named in the legend.
    pub references: Vec<Reference>,
}

/// The two kinds of chart the lab draws.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlotKind {
    /// A sweep: one line per series over a numeric x axis.
    Lines {
        /// How the x axis is scaled.
        x_scale: XScale,
        /// The lines.
        series: Vec<Series>,
    },
    /// A comparison: one bar per entry.
    Bars {
        /// The bars, left to right.
        bars: Vec<Bar>,
    },
}

/// Scale of a line chart's x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XScale {
    /// Evenly spaced values.
    Linear,
    /// Doubling values (worker sweeps 1, 2, 4, ... 64) spaced evenly; x must be > 0.
    Log2,
}

/// One line of a line chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// The points `(x, y)`, in x order.
    pub points: Vec<(f64, f64)>,
    /// Dashed lines mark theory; solid lines mark measurements.
    pub dashed: bool,
}

impl Series {
    /// A measured (solid) line.
    pub fn measured(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    /// A theoretical (dashed) line.
    pub fn theory(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: true,
        }
    }
}

/// One bar of a bar chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// The category under the bar.
    pub label: String,
    /// The bar's height.
    pub value: f64,
    /// Text printed above the bar instead of the value (`"no answer"`), if any.
    pub note: Option<String>,
}

impl Bar {
    /// A bar labelled with its value.
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Self {
            label: label.into(),
            value,
            note: None,
        }
    }

    /// A bar labelled with `note` instead of its value.
    pub fn with_note(label: impl Into<String>, value: f64, note: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            value,
            note: Some(note.into()),
        }
    }
}

/// A horizontal reference line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    /// The legend entry (`"lock limit 1/hold = 100 events/s"`).
    pub label: String,
    /// Its height on the y axis.
    pub y: f64,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

fn plot_error(error: impl std::fmt::Display) -> PlotError {
    PlotError(error.to_string())
}

/// Renders `spec` as an SVG document.
pub fn render_svg(spec: &PlotSpec) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (PLOT_WIDTH_PX, PLOT_HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        match &spec.kind {
            PlotKind::Lines { x_scale, series } => draw_lines(&root, spec, *x_scale, series)?,
            PlotKind::Bars { bars } => draw_bars(&root, spec, bars)?,
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The largest finite y among `values` and the references, with headroom; never zero.
fn y_top(values: impl Iterator<Item = f64>, references: &[Reference]) -> f64 {
    let largest = values
        .chain(references.iter().map(|reference| reference.y))
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    if largest > 0.0 {
        largest * Y_HEADROOM_RATIO
    } else {
        1.0
    }
}

/// The spec's own y-axis top when it is usable, else `fitted`.
fn chosen_top(spec: &PlotSpec, fitted: f64) -> f64 {
    spec.y_max
        .filter(|top| top.is_finite() && *top > 0.0)
        .unwrap_or(fitted)
}

/// Maps an x value onto the drawn axis (log2 for doubling sweeps); None when undrawable.
fn x_position(x: f64, scale: XScale) -> Option<f64> {
    let position = match scale {
        XScale::Linear => x,
        XScale::Log2 if x > 0.0 => x.log2(),
        XScale::Log2 => return None,
    };
    position.is_finite().then_some(position)
}

/// The finite, drawable points of `series` in axis coordinates.
fn drawable(series: &Series, scale: XScale) -> Vec<(f64, f64)> {
    series
        .points
        .iter()
        .filter(|(_, y)| y.is_finite())
        .filter_map(|(x, y)| x_position(*x, scale).map(|position| (position, *y)))
        .collect()
}

/// The x range covering every drawable point, padded; never empty.
fn x_range(series: &[Series], scale: XScale) -> (f64, f64) {
    let positions: Vec<f64> = series
        .iter()
        .flat_map(|line| drawable(line, scale))
        .map(|(x, _)| x)
        .collect();
    let low = positions.iter().copied().fold(f64::INFINITY, f64::min);
    let high = positions.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.05).max(0.25);
    (low - pad, high + pad)
}

/// The frame every chart shares: the spec's title as caption, margins and axis label areas.
fn chart_frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    spec: &PlotSpec,
) -> ChartBuilder<'a, 'static, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&spec.title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(80);
    builder
}

/// The mesh style every chart shares: the spec's axis names, fonts and light grid lines.
fn house_mesh<'m, 'a, 'b, X: Ranged, Y: Ranged, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
    spec: &PlotSpec,
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB> {
    mesh.x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
}

fn draw_lines(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    spec: &PlotSpec,
    scale: XScale,
    series: &[Series],
) -> Result<(), PlotError> {
    let (x_low, x_high) = x_range(series, scale);
    let fitted = y_top(
        series
            .iter()
            .flat_map(|line| line.points.iter().map(|(_, y)| *y)),
        &spec.references,
    );
    let top = chosen_top(spec, fitted);
    let mut chart = chart_frame(root, spec)
        .build_cartesian_2d(x_low..x_high, 0.0..top)
        .map_err(plot_error)?;
    let x_formatter = |value: &f64| match scale {
        XScale::Linear => format_figure(*value),
        XScale::Log2 => format_figure(value.exp2()),
    };
    let y_formatter = |value: &f64| format_figure(*value);
    let x_label_count = match scale {
        XScale::Linear => 10,
        // One label per doubling: ticks land on whole powers of two.
        XScale::Log2 => ((x_high - x_low).ceil() as usize + 1).max(2),
    };
    house_mesh(&mut chart.configure_mesh(), spec)
        .x_labels(x_label_count)
        .x_label_formatter(&x_formatter)
        .y_label_formatter(&y_formatter)
        .draw()
        .map_err(plot_error)?;
    for (index, line) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let points = drawable(line, scale);
        let style = color.stroke_width(3);
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 24, y)], style);
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 10, 6, style))
                .map_err(plot_error)?
                .label(&line.name)
                .legend(legend);
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(plot_error)?
                .label(&line.name)
                .legend(legend);
            if points.len() <= MAX_MARKED_POINTS {
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 5, color.filled())),
                    )
                    .map_err(plot_error)?;
            }
        }
    }
    draw_references(&mut chart, &spec.references, (x_low, x_high), series.len())?;
    draw_legend(&mut chart)
}

fn draw_references<'a>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    references: &[Reference],
    (x_low, x_high): (f64, f64),
    colour_offset: usize,
) -> Result<(), PlotError> {
    for (index, reference) in references.iter().enumerate() {
        if !reference.y.is_finite() {
            continue;
        }
        let color = PALETTE[(colour_offset + index) % PALETTE.len()];
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(x_low, reference.y), (x_high, reference.y)],
                6,
                6,
                style,
            ))
            .map_err(plot_error)?
            .label(&reference.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    Ok(())
}

fn draw_legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(plot_error)
}

fn draw_bars(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    spec: &PlotSpec,
    bars: &[Bar],
) -> Result<(), PlotError> {
    let count = i32::try_from(bars.len().max(1)).unwrap_or(i32::MAX);
    let top = chosen_top(
        spec,
        y_top(bars.iter().map(|bar| bar.value), &spec.references),
    );
    let mut chart = chart_frame(root, spec)
        // An integer range includes its end: `0..count - 1` is exactly `count` slots.
        .build_cartesian_2d((0..count - 1).into_segmented(), 0.0..top)
        .map_err(plot_error)?;
    let x_formatter = |value: &SegmentValue<i32>| match value {
        SegmentValue::CenterOf(index) => usize::try_from(*index)
            .ok()
            .and_then(|index| bars.get(index))
            .map(|bar| bar.label.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let y_formatter = |value: &f64| format_figure(*value);
    house_mesh(&mut chart.configure_mesh(), spec)
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&x_formatter)
        .y_label_formatter(&y_formatter)
        .draw()
        .map_err(plot_error)?;
    for (index, bar) in bars.iter().enumerate() {
        let slot = i32::try_from(index).unwrap_or(i32::MAX);
        let value = if bar.value.is_finite() {
            bar.value
        } else {
            0.0
        };
        let color = PALETTE[index % PALETTE.len()];
        let mut rectangle = Rectangle::new(
            [
                (SegmentValue::Exact(slot), 0.0),
                (SegmentValue::Exact(slot + 1), value),
            ],
            color.filled(),
        );
        rectangle.set_margin(0, 0, 18, 18);
        chart.draw_series([rectangle]).map_err(plot_error)?;
        let text = bar.note.clone().unwrap_or_else(|| format_figure(value));
        let style = ("sans-serif", 15)
            .into_text_style(root)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series([Text::new(
                text,
                (SegmentValue::CenterOf(slot), value + top * 0.01),
                style,
            )])
            .map_err(plot_error)?;
    }
    draw_bar_references(&mut chart, &spec.references, count)?;
    if spec.references.is_empty() {
        return Ok(());
    }
    draw_legend(&mut chart)
}

fn draw_bar_references<'a>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<SegmentedCoord<RangedCoordi32>, RangedCoordf64>,
    >,
    references: &[Reference],
    count: i32,
) -> Result<(), PlotError> {
    for (index, reference) in references.iter().enumerate() {
        if !reference.y.is_finite() {
            continue;
        }
        let color = PALETTE[(PALETTE.len() - 1 - index % PALETTE.len()) % PALETTE.len()];
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (SegmentValue::Exact(0), reference.y),
                    (SegmentValue::Exact(count), reference.y),
                ],
                6,
                6,
                style,
            ))
            .map_err(plot_error)?
            .label(&reference.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `spec`, asserts the SVG carries every one of `texts` and the `element` that
    /// draws the data (`<polyline` for lines, `<rect` for bars), and returns the SVG.
    fn assert_renders_with(spec: &PlotSpec, texts: &[&str], element: &str) -> String {
        let svg = render_svg(spec).expect("a valid spec renders");
        for text in texts {
            assert!(svg.contains(text), "missing {text:?}");
        }
        assert!(svg.contains(element), "the data is drawn with {element:?}");
        svg
    }

    fn sweep() -> PlotSpec {
        PlotSpec {
            title: "Stage 7: one lock caps throughput".to_owned(),
            x_label: "workers".to_owned(),
            y_label: "throughput (events/s)".to_owned(),
            kind: PlotKind::Lines {
                x_scale: XScale::Log2,
                series: vec![
                    Series::measured("global lock", vec![(1.0, 9.0), (4.0, 36.0), (64.0, 97.0)]),
                    Series::theory("workers/(work+hold)", vec![(1.0, 9.1), (64.0, 581.0)]),
                ],
            },
            y_max: None,
            references: vec![Reference {
                label: "1/hold".to_owned(),
                y: 100.0,
            }],
        }
    }

    // Proves a line chart is a complete SVG carrying the title, axis names, legend entries and
    // the doubling tick labels of a log2 axis.
    #[test]
    fn line_chart_has_title_axes_legend_and_ticks() {
        let texts = [
            "Stage 7: one lock caps throughput",
            "workers",
            "throughput (events/s)",
            "global lock",
            "workers/(work+hold)",
            "1/hold",
            "\n64\n",
            "\n16\n",
        ];
        let svg = assert_renders_with(&sweep(), &texts, "<polyline");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    // Proves a bar chart labels each category and prints a note in place of a value.
    #[test]
    fn bar_chart_labels_bars_and_notes() {
        let spec = PlotSpec {
            title: "Stage 1: idle clients freeze the blocking server".to_owned(),
            x_label: "server".to_owned(),
            y_label: "answer latency (ms)".to_owned(),
            kind: PlotKind::Bars {
                bars: vec![
                    Bar::with_note("stage 1 blocking", 1000.0, "no answer"),
                    Bar::new("stage 2 async", 2.5),
                ],
            },
            y_max: None,
            references: vec![Reference {
                label: "timeout 1000 ms".to_owned(),
                y: 1000.0,
            }],
        };
        let texts = [
            "stage 1 blocking",
            "stage 2 async",
            "no answer",
            "2.50",
            "timeout 1000 ms",
        ];
        assert_renders_with(&spec, &texts, "<rect");
    }

    // Proves odd data (empty series, NaN, infinities, x <= 0 on a log axis) renders without
    // panicking or failing.
    #[test]
    fn odd_data_still_renders() {
        let spec = PlotSpec {
            title: "odd".to_owned(),
            x_label: "x".to_owned(),
            y_label: "y".to_owned(),
            kind: PlotKind::Lines {
                x_scale: XScale::Log2,
                series: vec![
                    Series::measured("empty", Vec::new()),
                    Series::measured(
                        "bad",
                        vec![(0.0, 1.0), (2.0, f64::NAN), (4.0, f64::INFINITY)],
                    ),
                ],
            },
            y_max: None,
            references: vec![Reference {
                label: "nan".to_owned(),
                y: f64::NAN,
            }],
        };
        assert!(render_svg(&spec).is_ok());
        let empty_bars = PlotSpec {
            kind: PlotKind::Bars { bars: Vec::new() },
            y_max: None,
            references: Vec::new(),
            ..spec
        };
        assert!(render_svg(&empty_bars).is_ok());
    }
}
