//! Line charts as PNG files (loss curves, perplexity against length), through plotters.
//!
//! Text needs a TrueType font: the first of [`FONT_CANDIDATES`] that exists (or the file named by
//! the `QWEN_PLOT_FONT` environment variable) is registered once. Without one the chart is still
//! drawn, with its lines, axes and grid but no text, and [`save_png`] says so in its result.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Font files tried in order (Debian/Ubuntu, Fedora/Arch, macOS, Windows).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// One named line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart of several lines over shared axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Whether the chart got its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRendering {
    /// Title, labels and legend drawn with a system font.
    WithText,
    /// No font was found: lines and grid only.
    NoFont,
}

fn font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let from_env = std::env::var("QWEN_PLOT_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps a &'static reference to the font: leak it once per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn range(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if log {
        Some((lo / 1.1, hi * 1.1))
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-9);
        Some((lo - pad, hi + pad))
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A tick label without spurious decimals.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// Draws `chart` into a `width` x `height` PNG at `path`.
///
/// # Errors
/// [`TrainError::Plot`] if there is no finite point to draw (or none above zero on a log axis),
/// or plotters fails (e.g. the file cannot be written).
pub fn save_png(chart: &Chart, path: impl AsRef<Path>, width: u32, height: u32) -> Result<TextRendering> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter().copied());
    let (x0, x1) = range(points().map(|p| p.0), chart.log_x).ok_or_else(|| plot_err("no x values to plot"))?;
    let (y0, y1) = range(points().map(|p| p.1), chart.log_y).ok_or_else(|| plot_err("no y values to plot"))?;
    let text = font();
    let root = BitMapBackend::new(path.as_ref(), (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16).x_label_area_size(if text { 44 } else { 8 }).y_label_area_size(if text { 64 } else { 8 });
    if text {
        builder.caption(&chart.title, ("sans-serif", 22));
    }
    macro_rules! draw {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            let mut mesh = ctx.configure_mesh();
            if text {
                mesh.x_desc(chart.x_label.as_str())
                    .y_desc(chart.y_label.as_str())
                    .label_style(("sans-serif", 14))
                    .x_labels(8)
                    .y_labels(8)
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v));
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(plot_err)?;
            for (i, s) in chart.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_y || *y > 0.0))
                    .filter(|(x, _)| !chart.log_x || *x > 0.0);
                let series = ctx.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(plot_err)?;
                if text {
                    series
                        .label(s.name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                }
            }
            if text && chart.series.len() > 1 {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()
                    .map_err(plot_err)?;
            }
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => draw!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?),
        (true, false) => draw!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1).map_err(plot_err)?),
        (false, true) => draw!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(plot_err)?),
        (true, true) => {
            draw!(builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale()).map_err(plot_err)?)
        }
    }
    root.present().map_err(plot_err)?;
    Ok(if text { TextRendering::WithText } else { TextRendering::NoFont })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<(f64, f64)>, log_y: bool) -> Chart {
        Chart {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "nats".into(),
            log_x: false,
            log_y,
            series: vec![Series { name: "train".into(), points }],
        }
    }

    #[test]
    fn writes_a_png_and_rejects_empty_charts() {
        let dir = std::env::temp_dir().join(format!("qwen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        let pts: Vec<(f64, f64)> = (1..50).map(|i| (i as f64, 8.0 / (i as f64).sqrt())).collect();
        save_png(&chart(pts, true), &path, 640, 400).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(matches!(save_png(&chart(vec![], false), &path, 640, 400), Err(TrainError::Plot(_))));
        assert!(matches!(save_png(&chart(vec![(1.0, -1.0)], true), &path, 640, 400), Err(TrainError::Plot(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
