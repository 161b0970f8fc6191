//! Line plots as SVG: text and lines stay sharp at any zoom (the report's
//! training curves), where the PNG plots draw a 5x7 bitmap font. Same axes,
//! ticks and legend rules as [`super::line_plot`].
use std::fmt::Write as _;

use super::{series_colour, tick_label, tick_step, LinePlot, Series};

/// Escapes text for SVG, XML and HTML.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(c: image::Rgb<u8>) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The plot's value ranges, padded and rounded out to whole ticks.
struct Axes {
    x: (f64, f64),
    y: (f64, f64),
    x_step: f64,
    y_step: f64,
}

fn axes(series: &[Series]) -> Axes {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let fold = |f: fn(&(f64, f64)) -> f64| {
        pts.iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)))
    };
    let ((x0, mut x1), (mut y0, mut y1)) = if pts.is_empty() {
        ((0.0, 1.0), (0.0, 1.0))
    } else {
        (fold(|p| p.0), fold(|p| p.1))
    };
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= pad;
        y1 += pad;
    }
    let (x_step, y_step) = (tick_step(x1 - x0, 6), tick_step(y1 - y0, 5));
    Axes {
        x: (x0, x1),
        y: (
            (y0 / y_step).floor() * y_step,
            (y1 / y_step).ceil() * y_step,
        ),
        x_step,
        y_step,
    }
}

/// The series as an SVG document: polylines over shared axes with grid,
/// tick labels, axis titles and a legend. Non-finite points break a line.
pub fn line_plot_svg(series: &[Series], opt: &LinePlot) -> String {
    let (w, h) = (opt.width.max(200) as f64, opt.height.max(150) as f64);
    let a = axes(series);
    let (left, right, top, bottom) = (64.0, 16.0, 28.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |x: f64| left + (x - a.x.0) / (a.x.1 - a.x.0) * pw;
    let py = |y: f64| top + (1.0 - (y - a.y.0) / (a.y.1 - a.y.0)) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="13">{}</text>"#,
        xml_escape(opt.title)
    );
    // Horizontal grid and y ticks.
    let mut t = a.y.0;
    while t <= a.y.1 + a.y_step * 0.5 {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 4.0,
            y + 4.0,
            xml_escape(&tick_label(t, a.y_step))
        );
        t += a.y_step;
    }
    // Vertical grid and x ticks.
    let mut t = (a.x.0 / a.x_step).ceil() * a.x_step;
    while t <= a.x.1 + a.x_step * 1e-9 {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 14.0,
            xml_escape(&tick_label(t, a.x_step))
        );
        t += a.x_step;
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 8.0,
        xml_escape(opt.x_axis)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        xml_escape(opt.y_axis)
    );
    for (i, series) in series.iter().enumerate() {
        let colour = hex(series_colour(i));
        // One polyline per unbroken run of finite points.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &series.points {
            if x.is_finite() && y.is_finite() {
                runs.last_mut().expect("a run").push((px(x), py(y)));
            } else if !runs.last().expect("a run").is_empty() {
                runs.push(Vec::new());
            }
        }
        let _ = writeln!(s, r#"<g stroke="{colour}" fill="{colour}">"#);
        for run in runs.iter().filter(|r| !r.is_empty()) {
            if let [(x, y)] = run.as_slice() {
                let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2"/>"#);
                continue;
            }
            let points: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        let _ = writeln!(s, "</g>");
        // Legend, top right inside the plot.
        let ly = top + 14.0 + i as f64 * 14.0;
        let lx = left + pw - 8.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}" text-anchor="end">{}</text>"#,
            lx - 14.0,
            ly - 4.0,
            lx,
            ly - 4.0,
            lx - 18.0,
            xml_escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_per_series_and_escaped_text() {
        let series = vec![
            Series {
                name: "d_loss".into(),
                points: vec![(0.0, 1.0), (10.0, 0.5), (20.0, 0.25)],
            },
            Series {
                name: "g<loss>".into(),
                points: vec![(0.0, 2.0), (10.0, f64::NAN), (20.0, 1.0), (30.0, 0.5)],
            },
        ];
        let svg = line_plot_svg(
            &series,
            &LinePlot {
                title: "train-gan metrics: losses",
                x_axis: "step",
                y_axis: "loss",
                ..Default::default()
            },
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Series 1 is broken by its NaN: a dot, then a line.
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("g&lt;loss&gt;") && !svg.contains("g<loss>"));
        assert!(svg.contains(">train-gan metrics: losses</text>"));
        for tick in [">0</text>", ">30</text>", ">step</text>"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
        assert!(svg.contains(&hex(series_colour(1))));
    }
}
