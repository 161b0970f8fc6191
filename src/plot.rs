//! Small charts: a heat map with a colour scale (confusion matrices) and an
//! image grid (samples) drawn straight onto an `image::RgbImage`, and line
//! plots of several series with axes (training curves) as SVG ([`svg`]). Text uses a built-in
//! 5x7 bitmap font (ASCII; lower case drawn as upper case), so the charts need
//! no font files and render identically everywhere. Building block: knows
//! nothing of stages; the report reuses it.
use std::path::Path;

use image::{Rgb, RgbImage};

pub mod svg;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GREY: Rgb<u8> = Rgb([200, 200, 200]);

/// Width and height of a glyph cell at scale 1 (5x7 glyph plus spacing).
pub const GLYPH_W: u32 = 6;
pub const GLYPH_H: u32 = 8;

/// A drawing surface with clipped primitives.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(width: u32, height: u32, background: Rgb<u8>) -> Self {
        Canvas {
            img: RgbImage::from_pixel(width.max(1), height.max(1), background),
        }
    }

    pub fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: u32, h: u32, c: Rgb<u8>) {
        for yy in y..y + h as i64 {
            for xx in x..x + w as i64 {
                self.put(xx, yy, c);
            }
        }
    }

    pub fn rect_outline(&mut self, x: i64, y: i64, w: u32, h: u32, c: Rgb<u8>) {
        let (x1, y1) = (x + w as i64 - 1, y + h as i64 - 1);
        self.line(x, y, x1, y, c);
        self.line(x, y1, x1, y1, c);
        self.line(x, y, x, y1, c);
        self.line(x1, y, x1, y1, c);
    }

    /// A one-pixel line (Bresenham).
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A two-pixel-wide line, for plotted series.
    pub fn thick_line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
        self.line(x0, y0, x1, y1, c);
        self.line(x0, y0 + 1, x1, y1 + 1, c);
    }

    /// Draws `s` with its top-left corner at (x, y); `scale` multiplies the glyph size.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>, scale: u32) {
        let scale = scale.max(1) as i64;
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * GLYPH_W as i64 * scale;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.put(gx + col * scale + dx, y + r as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Draws `s` rotated 90 degrees counter-clockwise (reading upwards), its
    /// bottom-left corner at (x, y): for vertical axis titles.
    pub fn text_vertical(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gy = y - i as i64 * GLYPH_W as i64;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.put(x + r as i64, gy - col, c);
                    }
                }
            }
        }
    }

    pub fn into_image(self) -> RgbImage {
        self.img
    }
}

/// Width in pixels of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * GLYPH_W * scale.max(1)
}

/// Encodes `img` as PNG and writes it atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("PNG encoding failed: {e}")))?;
    write_atomic(path, bytes.get_ref())
}

/// A perceptually ordered colour scale (viridis, by linear interpolation of
/// nine of its stops); `t` in [0, 1].
pub fn colormap(t: f64) -> Rgb<u8> {
    const STOPS: [[f64; 3]; 9] = [
        [68.0, 1.0, 84.0],
        [71.0, 44.0, 122.0],
        [59.0, 81.0, 139.0],
        [44.0, 113.0, 142.0],
        [33.0, 144.0, 141.0],
        [39.0, 173.0, 129.0],
        [92.0, 200.0, 99.0],
        [170.0, 220.0, 50.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    Rgb([
        mix(STOPS[i][0], STOPS[i + 1][0]),
        mix(STOPS[i][1], STOPS[i + 1][1]),
        mix(STOPS[i][2], STOPS[i + 1][2]),
    ])
}

/// Distinct colours for plotted series (Tableau 10).
pub fn series_colour(i: usize) -> Rgb<u8> {
    const C: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    Rgb(C[i % C.len()])
}

/// Options of [`heat_map`].
#[derive(Debug, Clone, Default)]
pub struct HeatMap<'a> {
    pub title: &'a str,
    /// What the rows are (drawn vertically on the left).
    pub row_axis: &'a str,
    /// What the columns are (drawn below).
    pub col_axis: &'a str,
    /// Colour each row by its share of the row total (a confusion matrix's
    /// recall view) instead of by the raw value.
    pub normalize_rows: bool,
    /// Print each cell's value in it when cells are large enough.
    pub annotate: bool,
}

/// Draws `values` (rows x cols) as coloured cells with row and column names
/// (when they fit) and a colour scale on the right.
pub fn heat_map(values: &[Vec<f64>], rows: &[String], cols: &[String], opt: &HeatMap) -> RgbImage {
    let n_rows = values.len().max(1);
    let n_cols = values.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    // Cells shrink with the matrix so a 1000 x 1000 map stays about 1000 px wide.
    let cell = (640 / n_rows.max(n_cols) as u32).clamp(1, 48);
    let show_names = cell >= GLYPH_H;
    let name_w = if show_names {
        rows.iter()
            .map(|r| text_width(r, 1))
            .max()
            .unwrap_or(0)
            .min(120)
            + 6
    } else {
        0
    };
    let col_name_h = if show_names {
        cols.iter()
            .map(|c| text_width(c, 1))
            .max()
            .unwrap_or(0)
            .min(120)
            + 6
    } else {
        0
    };
    let (left, top) = (16 + name_w, 12 + 2 * GLYPH_H);
    let (grid_w, grid_h) = (cell * n_cols as u32, cell * n_rows as u32);
    let scale_x = left + grid_w + 16;
    let width = scale_x + 16 + text_width("0000000", 1) + 8;
    let height = (top + grid_h + col_name_h + GLYPH_H + 16).max(top + 160);
    let mut c = Canvas::new(width, height, WHITE);
    c.text(left as i64, 6, opt.title, BLACK, 1);

    let shown: Vec<Vec<f64>> = values
        .iter()
        .map(|r| {
            if opt.normalize_rows {
                let s: f64 = r.iter().sum();
                r.iter()
                    .map(|v| if s > 0.0 { v / s } else { 0.0 })
                    .collect()
            } else {
                r.clone()
            }
        })
        .collect();
    let max = shown
        .iter()
        .flatten()
        .cloned()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let min = shown
        .iter()
        .flatten()
        .cloned()
        .filter(|v| v.is_finite())
        .fold(max, f64::min)
        .min(0.0);
    let span = if max > min { max - min } else { 1.0 };
    for (i, row) in shown.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let colour = colormap((v - min) / span);
            let (x, y) = (left + j as u32 * cell, top + i as u32 * cell);
            c.fill_rect(x as i64, y as i64, cell, cell, colour);
            if opt.annotate {
                let raw = values[i][j];
                let label = if raw.fract() == 0.0 {
                    format!("{raw:.0}")
                } else {
                    format!("{raw:.2}")
                };
                if text_width(&label, 1) + 2 <= cell && GLYPH_H + 2 <= cell {
                    let t = (v - min) / span;
                    let ink = if t > 0.6 { BLACK } else { WHITE };
                    let tx = x + (cell - text_width(&label, 1)) / 2;
                    let ty = y + (cell - 7) / 2;
                    c.text(tx as i64, ty as i64, &label, ink, 1);
                }
            }
        }
    }
    c.rect_outline(
        left as i64 - 1,
        top as i64 - 1,
        grid_w + 2,
        grid_h + 2,
        BLACK,
    );
    if show_names {
        for (i, name) in rows.iter().enumerate().take(n_rows) {
            let name: String = name.chars().take(20).collect();
            let y = top + i as u32 * cell + (cell - 7) / 2;
            let x = left - 4 - text_width(&name, 1);
            c.text(x as i64, y as i64, &name, BLACK, 1);
        }
        for (j, name) in cols.iter().enumerate().take(n_cols) {
            let name: String = name.chars().take(20).collect();
            let x = left + j as u32 * cell + (cell - 7) / 2;
            let y = top + grid_h + 4 + text_width(&name, 1);
            c.text_vertical(x as i64, y as i64, &name, BLACK);
        }
    }
    // Axis titles.
    let below = top + grid_h + col_name_h + 4;
    c.text(left as i64, below as i64, opt.col_axis, BLACK, 1);
    let axis_len = text_width(opt.row_axis, 1);
    c.text_vertical(
        4,
        (top + grid_h / 2 + axis_len / 2) as i64,
        opt.row_axis,
        BLACK,
    );
    // Colour scale: max at the top, min at the bottom.
    let bar_h = grid_h.max(120);
    for k in 0..bar_h {
        let t = 1.0 - k as f64 / (bar_h - 1).max(1) as f64;
        c.fill_rect(scale_x as i64, (top + k) as i64, 12, 1, colormap(t));
    }
    c.rect_outline(scale_x as i64 - 1, top as i64 - 1, 14, bar_h + 2, BLACK);
    let fmt = |v: f64| {
        if opt.normalize_rows || v.fract() != 0.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.0}")
        }
    };
    c.text((scale_x + 16) as i64, top as i64, &fmt(max), BLACK, 1);
    c.text(
        (scale_x + 16) as i64,
        (top + bar_h - 7) as i64,
        &fmt(min),
        BLACK,
        1,
    );
    c.into_image()
}

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Options of [`line_plot`].
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_axis: &'a str,
    pub y_axis: &'a str,
    pub width: u32,
    pub height: u32,
}

impl Default for LinePlot<'_> {
    fn default() -> Self {
        LinePlot {
            title: "",
            x_axis: "",
            y_axis: "",
            width: 640,
            height: 400,
        }
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
pub fn tick_step(span: f64, n: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / n.max(1) as f64;
    let pow = 10f64.powf(raw.log10().floor());
    let m = raw / pow;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * pow
}

pub(crate) fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 && v.abs() < 1e7 {
        format!("{v:.0}")
    } else if step >= 0.01 {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.1e}")
    }
}

/// Tiles `images` row by row, `cols` per row, with `pad` pixels of
/// `background` between and around them. Cells take the largest image's size.
pub fn image_grid(images: &[RgbImage], cols: usize, pad: u32, background: Rgb<u8>) -> RgbImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let cw = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let ch = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let w = pad + cols as u32 * (cw + pad);
    let h = pad + rows as u32 * (ch + pad);
    let mut out = RgbImage::from_pixel(w, h, background);
    for (k, img) in images.iter().enumerate() {
        let x = pad + (k % cols) as u32 * (cw + pad);
        let y = pad + (k / cols) as u32 * (ch + pad);
        image::imageops::replace(&mut out, img, x as i64, y as i64);
    }
    out
}

/// `grid` (from [`image_grid`], `rows` rows of cells `cell_h` high with
/// `pad` between) with a white margin on its left holding one label per
/// row, centred on the row: the class names of a sample grid.
pub fn label_rows(grid: RgbImage, labels: &[String], cell_h: u32, pad: u32) -> RgbImage {
    if labels.is_empty() {
        return grid;
    }
    // Twice the font where the rows have room for it.
    let scale = if cell_h >= 2 * GLYPH_H + 4 { 2 } else { 1 };
    let margin = labels
        .iter()
        .map(|l| text_width(l, scale))
        .max()
        .unwrap_or(0)
        + 8;
    let mut c = Canvas::new(grid.width() + margin, grid.height(), WHITE);
    image::imageops::replace(&mut c.img, &grid, margin as i64, 0);
    for (r, label) in labels.iter().enumerate() {
        let centre = pad + r as u32 * (cell_h + pad) + cell_h / 2;
        let y = centre as i64 - (GLYPH_H * scale / 2) as i64;
        let x = margin as i64 - 4 - text_width(label, scale) as i64;
        c.text(x, y, label, BLACK, scale);
    }
    c.into_image()
}

/// The 5x7 glyph of `ch`: seven rows, bit 4 is the leftmost pixel.
fn glyph(ch: char) -> [u8; 7] {
    let ch = ch.to_ascii_uppercase();
    match ch {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '*' => [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '\'' => [0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '|' => [0x04; 7],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // '?'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_known_glyph_pixels() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.text(0, 0, "1", BLACK, 1);
        // '1' has its stem in column 2 on every row but the last is the base.
        for y in 0..7 {
            assert_eq!(*c.img.get_pixel(2, y), BLACK, "row {y}");
        }
        assert_eq!(*c.img.get_pixel(0, 0), WHITE);
        assert_eq!(text_width("ab1", 2), 36);
    }

    #[test]
    fn heat_map_colours_follow_values() {
        let v = vec![vec![0.0, 10.0], vec![5.0, 0.0]];
        let names = vec!["a".to_string(), "b".to_string()];
        let img = heat_map(
            &v,
            &names,
            &names,
            &HeatMap {
                title: "t",
                ..Default::default()
            },
        );
        // Find the cells by their colours: the largest value is the scale's top colour.
        let top = colormap(1.0);
        let bottom = colormap(0.0);
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(top) > 48 * 48, "max cell drawn");
        assert!(count(bottom) > 2 * 48 * 48, "two zero cells drawn");
        assert!(count(colormap(0.5)) >= 48 * 48, "middle cell drawn");
    }

    #[test]
    fn image_grid_places_tiles() {
        let a = RgbImage::from_pixel(4, 4, Rgb([255, 0, 0]));
        let b = RgbImage::from_pixel(4, 4, Rgb([0, 255, 0]));
        let g = image_grid(&[a.clone(), b, a], 2, 1, BLACK);
        assert_eq!((g.width(), g.height()), (11, 11));
        assert_eq!(g.get_pixel(1, 1).0, [255, 0, 0]);
        assert_eq!(g.get_pixel(6, 1).0, [0, 255, 0]);
        assert_eq!(g.get_pixel(1, 6).0, [255, 0, 0]);
        assert_eq!(g.get_pixel(6, 6).0, [0, 0, 0]);
    }
}
