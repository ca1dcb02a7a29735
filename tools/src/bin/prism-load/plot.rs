//! PNG charts (`--png`), drawn with `plotters` on its bitmap backend.
//!
//! Text is rendered with `ab_glyph` from a font compiled into the tool
//! (`tools/assets/DejaVuSans-subset.ttf`, DejaVu Sans cut down to Latin-1 punctuation
//! and ASCII, 27 KiB; licence beside it), so a chart needs no system fonts, no
//! fontconfig and nothing installed.

use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One measured stage of a ramp.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub pps: f64,
    pub loss_percent: f64,
}

const W: u32 = 960;
const H: u32 = 540;
const FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans-subset.ttf");
const BLUE: RGBColor = RGBColor(31, 119, 180);
const RED: RGBColor = RGBColor(214, 39, 40);
const ORANGE: RGBColor = RGBColor(255, 127, 14);

/// Registers the embedded font as `sans-serif` (once per process).
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded chart font does not parse".to_string())
        })
        .clone()
}

/// A "nice" axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// An axis or bar label: 1.2M, 66k, 7200, 136, 25.6, 0.59.
fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn err(path: &Path) -> impl Fn(Box<dyn Error>) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Writes forwarded packets/s (blue, left axis) and loss % (red, right axis) against
/// the subscriber count to `path` as a PNG.
pub fn ramp_chart(path: &Path, title: &str, points: &[Point]) -> Result<(), String> {
    font()?;
    draw_ramp(path, title, points).map_err(err(path))
}

fn draw_ramp(path: &Path, title: &str, points: &[Point]) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = nice_max(points.iter().map(|p| p.x).fold(0.0, f64::max));
    let ymax = nice_max(points.iter().map(|p| p.pps).fold(0.0, f64::max));
    let lmax = nice_max(
        points
            .iter()
            .map(|p| p.loss_percent)
            .fold(0.0, f64::max)
            .max(1.0),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?
        .set_secondary_coord(0f64..xmax, 0f64..lmax);
    chart
        .configure_mesh()
        .x_desc("subscribers")
        .y_desc("forwarded packets/s")
        .y_label_formatter(&|v| label(*v))
        .x_label_formatter(&|v| label(*v))
        .label_style(("sans-serif", 15))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("loss %")
        .label_style(("sans-serif", 15))
        .draw()?;
    chart
        .draw_series(
            LineSeries::new(
                points.iter().map(|p| (p.x, p.pps)),
                BLUE.filled().stroke_width(3),
            )
            .point_size(4),
        )?
        .label("forwarded pkt/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart
        .draw_secondary_series(
            LineSeries::new(
                points.iter().map(|p| (p.x, p.loss_percent.min(lmax))),
                RED.filled().stroke_width(3),
            )
            .point_size(4),
        )?
        .label("loss %")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(root.present()?)
}

/// Writes grouped bars to `path` as a PNG: one panel per row (its own scale, since the
/// rows have different units), one bar per series, the value above each bar.
pub fn bar_chart(
    path: &Path,
    title: &str,
    series: &[&str],
    rows: &[(String, Vec<f64>)],
) -> Result<(), String> {
    font()?;
    draw_bars(path, title, series, rows).map_err(err(path))
}

fn draw_bars(
    path: &Path,
    title: &str,
    series: &[&str],
    rows: &[(String, Vec<f64>)],
) -> Result<(), Box<dyn Error>> {
    let colors = [BLUE, ORANGE, RED];
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (legend, panels) = root.split_vertically(36);
    for (i, s) in series.iter().enumerate() {
        let x = 24 + 180 * i as i32;
        let c = colors[i % colors.len()];
        legend.draw(&Rectangle::new([(x, 10), (x + 16, 26)], c.filled()))?;
        legend.draw_text(s, &("sans-serif", 17).into_text_style(&legend), (x + 24, 9))?;
    }
    let areas = panels.split_evenly((1, rows.len().max(1)));
    for (area, (name, values)) in areas.iter().zip(rows) {
        let max = nice_max(values.iter().copied().fold(0.0, f64::max) * 1.15);
        let n = values.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(8)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..n, 0f64..max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&|v| label(*v))
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            let c = colors[i % colors.len()];
            Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)], c.filled())
        }))?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            Text::new(
                label(*v),
                (i as f64 + 0.2, v + max * 0.07),
                ("sans-serif", 14).into_font(),
            )
        }))?;
    }
    Ok(root.present()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).expect("chart written");
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let w = u32::from_be_bytes(b[16..20].try_into().expect("4 bytes"));
        let h = u32::from_be_bytes(b[20..24].try_into().expect("4 bytes"));
        (w, h)
    }

    #[test]
    fn ramp_and_bar_charts_are_pngs_of_the_chart_size() {
        let dir = std::env::temp_dir().join(format!("prism-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ramp = dir.join("ramp.png");
        let points = [
            Point {
                x: 10.0,
                pps: 20_000.0,
                loss_percent: 0.0,
            },
            Point {
                x: 100.0,
                pps: 180_000.0,
                loss_percent: 0.4,
            },
            Point {
                x: 300.0,
                pps: 240_000.0,
                loss_percent: 3.5,
            },
        ];
        ramp_chart(
            &ramp,
            "prism-load fanout: forwarded pkt/s and loss",
            &points,
        )
        .expect("ramp chart");
        assert_eq!(png_size(&ramp), (W, H));
        let bars = dir.join("bars.png");
        let rows = vec![
            ("pkt/s per core".to_string(), vec![66_500.0, 39_100.0]),
            ("CPU µs/pkt".to_string(), vec![15.0, 25.6]),
            ("zero".to_string(), vec![0.0, 0.0]),
        ];
        bar_chart(&bars, "Prism vs Janus: fanout", &["Prism", "Janus"], &rows).expect("bar chart");
        assert_eq!(png_size(&bars), (W, H));
        // The rendering is not blank: a PNG of one colour compresses to far less.
        assert!(std::fs::metadata(&bars).expect("written").len() > 8_000);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn labels_and_axis_maxima() {
        assert_eq!(label(1_500_000.0), "1.5M");
        assert_eq!(label(66_500.0), "66k");
        assert_eq!(label(250.0), "250");
        assert_eq!(label(7200.004), "7200");
        assert_eq!(label(136.2), "136");
        assert_eq!(label(25.63), "25.6");
        assert_eq!(label(0.59), "0.59");
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(180_000.0), 200_000.0);
        assert_eq!(nice_max(240_000.0), 250_000.0);
    }
}
