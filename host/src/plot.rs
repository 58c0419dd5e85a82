//! PNG plots: a run's loss, kNN accuracy, learning rate and τ, one panel each, in one image; and
//! several runs side by side, one colour per run, named in a legend (in the grid's empty place,
//! or under the panels). Drawn into an RGB buffer with an 8×8 bitmap font (`font8x8`), so no
//! system font is needed.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const PANEL_W: u32 = 480;
const PANEL_H: u32 = 300;
const MARGIN_L: u32 = 64;
const MARGIN_R: u32 = 16;
const MARGIN_T: u32 = 28;
const MARGIN_B: u32 = 32;
/// At most this many grid intervals on a value axis (four to six in practice).
const GRID_INTERVALS: usize = 6;
/// A legend row's height under the panels: one run each.
const LEGEND_ROW: u32 = 14;
/// The lines' colours, in the order of `Series::lines` (a run keeps its colour in every panel);
/// the first is the one-run plot's blue.
const PALETTE: [[u8; 3]; 10] = [
    [31, 90, 180],
    [200, 50, 40],
    [40, 150, 60],
    [140, 80, 170],
    [0, 150, 160],
    [170, 130, 0],
    [220, 90, 170],
    [100, 70, 40],
    [110, 110, 110],
    [120, 200, 40],
];
/// The crosses of `Series::marks`.
const MARK: [u8; 3] = [230, 120, 20];

/// One panel: a title, series of (x, y) points each joined by lines in its own colour, and
/// points marked alone (crosses, in another colour; the title says what they are).
pub struct Series<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub lines: Vec<&'a [(f64, f64)]>,
    pub marks: &'a [(f64, f64)],
}

struct Canvas {
    img: image::RgbImage,
}

impl Canvas {
    fn pixel(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
    }
    /// A line, by Bresenham.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.pixel(x, y, c);
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
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let code = if ch.is_ascii() {
                ch as usize
            } else {
                b'?' as usize
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        self.pixel(x + i as i64 * 8 + col, y + row as i64, c);
                    }
                }
            }
        }
    }
}

/// The value axis's grid: round values 1, 2 or 5 × 10^k apart, the fewest that cover [lo, hi]
/// in at most `most` intervals. Returns (first value, step, intervals); the axis then runs from
/// the first grid value to the last, so every label is a round number (0.90, 0.92, …, not
/// 0.900, 0.925, …) and the curve keeps most of the height.
fn grid(lo: f64, hi: f64, most: usize) -> (f64, f64, usize) {
    let base = 10f64.powf(((hi - lo) / most as f64).log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0, 20.0].map(|m| m * base) {
        let first = (lo / step).floor();
        let intervals = ((hi / step).ceil() - first).max(1.0) as usize;
        if intervals <= most {
            return (first * step, step, intervals);
        }
    }
    unreachable!("a step of 20 × 10^k above (hi − lo) / most covers the range in `most`")
}

/// The round values (as `grid` picks them) between `lo` and `hi`, for an axis whose ends stay at
/// the data's; `whole`: the values count whole things (steps, epochs, runs), so the step is at
/// least 1. Returns (step, values); one value when `lo` = `hi`.
fn inner_grid(lo: f64, hi: f64, whole: bool) -> (f64, Vec<f64>) {
    if hi - lo <= 1e-12 {
        return (1.0, vec![lo]);
    }
    let (mut first, mut step, mut intervals) = grid(lo, hi, GRID_INTERVALS);
    if whole && step < 1.0 {
        (first, step, intervals) = (lo, 1.0, (hi - lo) as usize);
    }
    let inside = |x: &f64| *x >= lo - 1e-9 * step && *x <= hi + 1e-9 * step;
    let values = (0..=intervals).map(|k| first + step * k as f64);
    (step, values.filter(inside).collect())
}

/// A grid value with the decimals its step needs (`grid`'s steps are 1, 2 or 5 × 10^k).
fn grid_label(v: f64, step: f64) -> String {
    let a = v.abs();
    if step < 1e-3 || a >= 1e5 {
        format!("{v:.1e}")
    } else {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        // Rounding to the step's decimals also turns −0.000 into 0.
        let v = if a < step / 2.0 { 0.0 } else { v };
        format!("{v:.decimals$}")
    }
}

fn panel(c: &mut Canvas, ox: u32, oy: u32, s: &Series) {
    let (black, grey) = ([0, 0, 0], [200, 200, 200]);
    let (x0, y0) = ((ox + MARGIN_L) as i64, (oy + MARGIN_T) as i64);
    let (x1, y1) = (
        (ox + PANEL_W - MARGIN_R) as i64,
        (oy + PANEL_H - MARGIN_B) as i64,
    );
    c.text(x0, oy as i64 + 8, s.title, black);
    let is_finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let finite = |points: &[(f64, f64)]| points.iter().copied().filter(is_finite).collect();
    let lines: Vec<Vec<(f64, f64)>> = s.lines.iter().map(|l| finite(l)).collect();
    let marks: Vec<(f64, f64)> = finite(s.marks);
    let all = || lines.iter().flatten().chain(&marks);
    if lines.iter().all(Vec::is_empty) {
        c.text(x0 + 8, (y0 + y1) / 2, "no data", grey);
        return;
    }
    let (xmin, xmax) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut ymin, mut ymax) =
        all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if ymax - ymin < 1e-12 {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    let (first, step, intervals) = grid(ymin, ymax, GRID_INTERVALS);
    (ymin, ymax) = (first, first + step * intervals as f64);
    let xs = |x: f64| x0 + ((x - xmin) / (xmax - xmin).max(1e-12) * (x1 - x0) as f64) as i64;
    let ys = |y: f64| y1 - ((y - ymin) / (ymax - ymin) * (y1 - y0) as f64) as i64;
    for k in 0..=intervals {
        let value = first + step * k as f64;
        let gy = ys(value);
        c.line((x0, gy), (x1, gy), grey);
        c.text(ox as i64 + 2, gy - 4, &grid_label(value, step), black);
    }
    // The other axis (steps, epochs, runs) keeps the data's own ends.
    let whole = all().all(|p| p.0.fract() == 0.0);
    let (step, values) = inner_grid(xmin, xmax, whole);
    for value in values {
        let (gx, label) = (xs(value), grid_label(value, step));
        c.line((gx, y0), (gx, y1), grey);
        let right_edge = (ox + PANEL_W) as i64 - 8 * label.len() as i64;
        let left = (gx - 4 * label.len() as i64).min(right_edge);
        c.text(left, y1 + 6, &label, black);
    }
    c.line((x0, y0), (x0, y1), black);
    c.line((x0, y1), (x1, y1), black);
    c.text(
        (x0 + x1) / 2 - 4 * s.x_label.len() as i64,
        y1 + 18,
        s.x_label,
        black,
    );
    for (line, &colour) in lines.iter().zip(PALETTE.iter().cycle()) {
        let mut prev = None;
        for &(x, y) in line {
            let p = (xs(x), ys(y));
            if let Some(q) = prev {
                c.line(q, p, colour);
            } else if line.len() == 1 {
                c.line((p.0 - 2, p.1), (p.0 + 2, p.1), colour);
            }
            prev = Some(p);
        }
    }
    for &(x, y) in &marks {
        let (px, py) = (xs(x), ys(y));
        c.line((px - 4, py - 4), (px + 4, py + 4), MARK);
        c.line((px - 4, py + 4), (px + 4, py - 4), MARK);
    }
}

/// Writes the panels in a grid two panels wide, as a PNG, with a legend when `legend` names the
/// lines (in `Series::lines` order): one row per line in its colour, in the grid's empty last
/// place when it has one and the rows fit there, else under the panels.
pub fn plot(path: &Path, series: &[Series], legend: &[String]) -> Result<()> {
    let rows = series.len().div_ceil(2) as u32;
    let legend_h = legend.len() as u32 * LEGEND_ROW;
    let in_empty_place = series.len() % 2 == 1 && legend_h + MARGIN_T + MARGIN_B <= PANEL_H;
    let below = if legend.is_empty() || in_empty_place {
        0
    } else {
        legend_h + 8
    };
    let (w, h) = (2 * PANEL_W, rows * PANEL_H + below);
    let mut c = Canvas {
        img: image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255])),
    };
    for (i, s) in series.iter().enumerate() {
        let (ox, oy) = ((i as u32 % 2) * PANEL_W, (i as u32 / 2) * PANEL_H);
        panel(&mut c, ox, oy, s);
    }
    let (lx, ly, width) = if in_empty_place {
        (PANEL_W + MARGIN_L, (rows - 1) * PANEL_H + MARGIN_T, PANEL_W)
    } else {
        (MARGIN_L, rows * PANEL_H + 4, w)
    };
    let room = (width - MARGIN_L - 32 - MARGIN_R) as usize / 8;
    for (i, (name, &colour)) in legend.iter().zip(PALETTE.iter().cycle()).enumerate() {
        let (x, y) = (lx as i64, (ly + i as u32 * LEGEND_ROW) as i64);
        for dy in 3..5 {
            c.line((x, y + dy), (x + 24, y + dy), colour);
        }
        // A name too long keeps its end, where run folders differ.
        let name: String = if name.chars().count() > room {
            let tail: Vec<char> = name.chars().rev().take(room - 1).collect();
            std::iter::once('~').chain(tail.into_iter().rev()).collect()
        } else {
            name.clone()
        };
        c.text(x + 32, y, &name, colour);
    }
    let mut png = std::io::Cursor::new(Vec::new());
    c.img
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| Error::Data {
            path: path.into(),
            reason: e.to_string(),
        })?;
    crate::files::write_atomic(path, png.get_ref())
}

/// What the plots read from a run's `metrics.jsonl`: per step, and per epoch (epoch 0 is the
/// untrained encoder: kNN only). A missing value is NaN, which the plots leave out.
#[derive(Default)]
struct Curves {
    loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    tau: Vec<(f64, f64)>,
    knn: Vec<(f64, f64)>,
    /// The untrained encoder read with the data's BatchNorm statistics (`eval::batchnorm`).
    knn_data_bn: Vec<(f64, f64)>,
    epoch_loss: Vec<(f64, f64)>,
    effective_rank: Vec<(f64, f64)>,
    /// lr and τ at each epoch's last step.
    epoch_lr: Vec<(f64, f64)>,
    epoch_tau: Vec<(f64, f64)>,
}

fn read_curves(metrics: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut c = Curves::default();
    for (_, v) in crate::files::parse_jsonl(metrics, &text)? {
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let value = |k: &str| f(k).unwrap_or(f64::NAN);
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("step") => {
                let s = f("step").unwrap_or(0.0);
                c.loss.push((s, value("loss")));
                c.lr.push((s, value("lr")));
                c.tau.push((s, value("tau")));
            }
            Some("epoch") => {
                let epoch = f("epoch").unwrap_or(0.0);
                c.knn.push((epoch, 100.0 * value("knn_top1")));
                if let Some(k) = f("knn_top1_data_bn") {
                    c.knn_data_bn.push((epoch, 100.0 * k));
                }
                if epoch > 0.0 {
                    c.epoch_loss.push((epoch, value("loss")));
                    c.effective_rank.push((epoch, value("effective_rank")));
                    let last = |steps: &[(f64, f64)]| steps.last().map_or(f64::NAN, |p| p.1);
                    c.epoch_lr.push((epoch, last(&c.lr)));
                    c.epoch_tau.push((epoch, last(&c.tau)));
                }
            }
            _ => {}
        }
    }
    Ok(c)
}

/// The plots of a run from its `metrics.jsonl`: loss, kNN top-1, lr and τ.
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<()> {
    let c = read_curves(metrics)?;
    let series = |title, x_label, line| Series {
        title,
        x_label,
        lines: vec![line],
        marks: &[],
    };
    let knn = Series {
        title: if c.knn_data_bn.is_empty() {
            "kNN top-1 (%)"
        } else {
            "kNN top-1 (%); x: init, data's BN stats"
        },
        x_label: "epoch",
        lines: vec![&c.knn],
        marks: &c.knn_data_bn,
    };
    let panels = [
        series("BYOL loss", "step", &c.loss),
        knn,
        series("learning rate", "step", &c.lr),
        series("target decay tau", "step", &c.tau),
    ];
    plot(out, &panels, &[])
}

/// Several runs in one image, by epoch so that runs of other batch sizes line up: kNN top-1,
/// mean loss, effective rank, and lr and τ at each epoch's end; `runs` are (legend name,
/// `metrics.jsonl`), one colour each.
pub fn plot_comparison(runs: &[(String, PathBuf)], out: &Path) -> Result<()> {
    let curves = runs
        .iter()
        .map(|(_, metrics)| read_curves(metrics))
        .collect::<Result<Vec<_>>>()?;
    let series = |title, pick: fn(&Curves) -> &[(f64, f64)]| Series {
        title,
        x_label: "epoch",
        lines: curves.iter().map(pick).collect(),
        marks: &[],
    };
    let panels = [
        series("kNN top-1 (%)", |c| &c.knn),
        series("BYOL loss (epoch mean)", |c| &c.epoch_loss),
        series("effective rank of the representation", |c| {
            &c.effective_rank
        }),
        series("learning rate (epoch end)", |c| &c.epoch_lr),
        series("target decay tau (epoch end)", |c| &c.epoch_tau),
    ];
    let names: Vec<String> = runs.iter().map(|(name, _)| name.clone()).collect();
    plot(out, &panels, &names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_axis_should_take_round_grid_values() {
        // A run's loss, kNN (%), learning rate and τ, as a 150-epoch run reads them.
        assert_eq!(grid(0.453, 3.845, 6), (0.0, 1.0, 4));
        assert_eq!(grid(25.15, 54.45, 6), (25.0, 5.0, 6));
        assert_eq!(grid(0.0, 0.5, 6), (0.0, 0.1, 5));
        let (first, step, intervals) = grid(0.9, 1.0, 6);
        assert!(
            (step - 0.02).abs() < 1e-15 && intervals <= 6 && first <= 0.9,
            "{first} {step}"
        );
        let labels: Vec<String> = (0..=intervals)
            .map(|k| grid_label(first + step * k as f64, step))
            .collect();
        assert_eq!(labels.last().unwrap(), "1.00", "{labels:?}");
        assert!(labels.contains(&"0.90".to_string()), "{labels:?}");
        // Over ranges of every scale: round steps, the range covered, two to six intervals.
        let mut lo: f64 = -3.7e-4;
        for i in 0..400 {
            let width = 10f64.powf(-6.0 + (i % 40) as f64 * 0.3) * (1.0 + (i / 40) as f64 / 7.0);
            lo = (lo * 1.37 + 0.11).rem_euclid(50.0) - 25.0;
            let hi = lo + width;
            let (first, step, n) = grid(lo, hi, 6);
            let mantissa = step / 10f64.powf(step.log10().floor());
            let round = [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-9);
            assert!(round, "[{lo}, {hi}]: step {step}");
            assert!(
                (2..=6).contains(&n),
                "[{lo}, {hi}]: {n} intervals of {step}"
            );
            assert!(first <= lo && first + step * n as f64 >= hi - 1e-9 * width);
            assert!(first + step > lo, "[{lo}, {hi}]: an empty first interval");
        }
        assert_eq!(inner_grid(0.0, 3.0, true), (1.0, vec![0.0, 1.0, 2.0, 3.0]));
        let steps = vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0];
        assert_eq!(inner_grid(0.0, 5849.0, true), (1000.0, steps));
        assert_eq!(
            inner_grid(1.0, 2.0, true),
            (1.0, vec![1.0, 2.0]),
            "runs 1 and 2"
        );
        assert_eq!(inner_grid(1.0, 2.0, false).1.len(), 6, "1.0, 1.2, …, 2.0");
        assert_eq!(inner_grid(7.0, 7.0, true), (1.0, vec![7.0]), "one point");
        assert_eq!(grid_label(25.0, 5.0), "25");
        assert_eq!(grid_label(0.0, 0.1), "0.0");
        assert_eq!(grid_label(-1e-17, 0.1), "0.0", "no minus zero");
        assert_eq!(grid_label(2e-5, 1e-5), "2.0e-5");
    }

    #[test]
    fn a_comparison_should_draw_each_line_in_its_colour_and_name_it() {
        let dir = std::env::temp_dir().join(format!("byol-plot-cmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<(f64, f64)> = (1..=20).map(|e| (e as f64, e as f64)).collect();
        let b: Vec<(f64, f64)> = (1..=10).map(|e| (e as f64, 20.0 - e as f64)).collect();
        let names = ["runs/a".to_string(), "runs/b".to_string()];
        let panel = |title| Series {
            title,
            x_label: "epoch",
            lines: vec![&a, &b],
            marks: &[],
        };
        let count = |img: &image::RgbImage, colour: [u8; 3], y_from: u32| {
            img.enumerate_pixels()
                .filter(|(x, y, p)| p.0 == colour && *y >= y_from && *x >= PANEL_W)
                .count()
        };
        // Three panels: the legend takes the empty fourth place.
        let path = dir.join("three.png");
        plot(&path, &[panel("p"), panel("q"), panel("r")], &names).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * PANEL_W, 2 * PANEL_H));
        for colour in &PALETTE[..2] {
            assert!(
                count(&img, *colour, PANEL_H) > 100,
                "{colour:?}: legend swatch and name"
            );
        }
        assert_eq!(count(&img, PALETTE[2], 0), 0, "two lines, two colours");
        // Two panels fill their row: the legend goes under them, a row per name.
        let path = dir.join("two.png");
        plot(&path, &[panel("p"), panel("q")], &names).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(
            img.dimensions(),
            (2 * PANEL_W, PANEL_H + 2 * LEGEND_ROW + 8)
        );
        let legend = |colour: [u8; 3]| {
            img.enumerate_pixels()
                .filter(|(_, y, p)| p.0 == colour && *y >= PANEL_H)
                .count()
        };
        assert!(legend(PALETTE[0]) > 50 && legend(PALETTE[1]) > 50);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plots_should_draw_lines_and_labels() {
        let dir = std::env::temp_dir().join(format!("byol-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, (i as f64 / 10.0).sin()))
            .collect();
        let path = dir.join("p.png");
        plot(
            &path,
            &[
                Series {
                    title: "sine",
                    x_label: "x",
                    lines: vec![&pts],
                    marks: &[(10.0, 0.5)],
                },
                Series {
                    title: "empty",
                    x_label: "x",
                    lines: vec![],
                    marks: &[],
                },
            ],
            &[],
        )
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * PANEL_W, PANEL_H));
        let blue = img.pixels().filter(|p| p.0 == [31, 90, 180]).count();
        let black = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        let orange = img.pixels().filter(|p| p.0 == [230, 120, 20]).count();
        assert!(blue > 300 && black > 500, "blue {blue}, black {black}");
        assert!(
            (10..=18).contains(&orange),
            "one cross of two 9-pixel strokes: {orange}"
        );
        assert!(!dir.join("p.png.tmp").exists(), "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
