//! The embedded default data set: 32×32 colour images in 10 classes, generated from a seed, so
//! that `train` runs with no download. A class is a shape or texture (stripes in three
//! orientations, checkerboard, rings, disc, square, cross, triangle, dot grid); colours,
//! position, scale, phase and noise are drawn per image and say nothing about the class, so
//! a representation must see geometry, and crop or colour invariance matters.

use super::Dataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const CLASSES: usize = 10;
pub const SIZE: usize = 32;
pub const CLASS_NAMES: [&str; CLASSES] = [
    "h-stripes",
    "v-stripes",
    "d-stripes",
    "checker",
    "rings",
    "disc",
    "square",
    "cross",
    "triangle",
    "dots",
];

/// A train and a held-out split of `n_train` and `n_test` images, classes balanced.
pub fn synthetic(seed: u64, n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let make = |n: usize, salt: u64, name: &str| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
        let mut images = vec![0u8; n * SIZE * SIZE * 3];
        let mut labels = Vec::with_capacity(n);
        for (i, img) in images.chunks_exact_mut(SIZE * SIZE * 3).enumerate() {
            let class = i % CLASSES;
            render(class, &mut rng, img);
            labels.push(class as u16);
        }
        Dataset {
            name: name.into(),
            images,
            labels,
            h: SIZE,
            w: SIZE,
            classes: CLASSES,
        }
    };
    (
        make(n_train, 0x7261_696e, "synthetic-train"),
        make(n_test, 0x7465_7374, "synthetic-test"),
    )
}

/// A random saturated colour in `[0, 1]³`.
fn colour(rng: &mut impl Rng) -> [f32; 3] {
    let hue = rng.random_range(0.0..6.0f32);
    let (s, v) = (
        rng.random_range(0.4..1.0f32),
        rng.random_range(0.35..1.0f32),
    );
    let x = 1.0 - ((hue % 2.0) - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [r, g, b].map(|c| v * (1.0 - s + s * c))
}

/// Soft step: 0 well below 0, 1 well above, linear over about one pixel (anti-aliasing).
fn soft(d: f32) -> f32 {
    (d + 0.5).clamp(0.0, 1.0)
}

fn render(class: usize, rng: &mut impl Rng, img: &mut [u8]) {
    let (fg, mut bg) = (colour(rng), colour(rng));
    // Keep foreground and background apart in brightness, so the shape is always visible.
    let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    if (luma(fg) - luma(bg)).abs() < 0.25 {
        bg = if luma(fg) > 0.5 {
            bg.map(|c| c * 0.3)
        } else {
            bg.map(|c| 0.7 + 0.3 * c)
        };
    }
    let s = SIZE as f32;
    let (cx, cy) = (
        s / 2.0 + rng.random_range(-5.0..5.0f32),
        s / 2.0 + rng.random_range(-5.0..5.0f32),
    );
    let radius = rng.random_range(7.0..12.0f32);
    let period = rng.random_range(4.0..8.0f32);
    let phase = rng.random_range(0.0..period);
    let diagonal = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let noise = rng.random_range(0.02..0.08f32);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = (px - cx, py - cy);
            let stripe = |t: f32| {
                soft(((t + phase).rem_euclid(period) - period / 2.0).abs() * 2.0 - period / 2.0)
            };
            let m = match class {
                0 => stripe(py),
                1 => stripe(px),
                2 => stripe((px + diagonal * py) / std::f32::consts::SQRT_2),
                3 => {
                    let cell = |t: f32| ((t + phase) / period).floor() as i32;
                    ((cell(px) + cell(py)).rem_euclid(2)) as f32
                }
                4 => {
                    stripe((dx * dx + dy * dy).sqrt())
                        * soft(radius + 4.0 - (dx * dx + dy * dy).sqrt())
                }
                5 => soft(radius - (dx * dx + dy * dy).sqrt()),
                6 => soft(radius * 0.8 - dx.abs().max(dy.abs())),
                7 => {
                    soft(radius - dx.abs().max(dy.abs()))
                        * soft(radius * 0.3 - dx.abs().min(dy.abs()))
                }
                8 => {
                    // An equilateral triangle, rotated by `angle`: inside all three edges.
                    (0..3)
                        .map(|e| {
                            let a = angle + e as f32 * std::f32::consts::TAU / 3.0;
                            soft(radius * 0.5 - (dx * a.cos() + dy * a.sin()))
                        })
                        .fold(1.0, f32::min)
                }
                _ => {
                    let (u, v) = (
                        (px + phase).rem_euclid(period) - period / 2.0,
                        (py + phase).rem_euclid(period) - period / 2.0,
                    );
                    soft(period * 0.28 - (u * u + v * v).sqrt())
                }
            };
            for c in 0..3 {
                let v = bg[c] * (1.0 - m) + fg[c] * m + rng.random_range(-noise..noise);
                img[(y * SIZE + x) * 3 + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_data_should_be_reproducible_balanced_and_not_coloured_by_class() {
        let (a, _) = synthetic(1, 200, 50);
        let (b, test) = synthetic(1, 200, 50);
        assert_eq!(a.images, b.images);
        assert_eq!(
            (a.len(), test.len(), a.h, a.w, a.classes),
            (200, 50, 32, 32, 10)
        );
        assert!((0..10).all(|c| a.labels.iter().filter(|&&l| l as usize == c).count() == 20));
        assert_ne!(
            a.images,
            synthetic(2, 200, 50).0.images,
            "another seed, other images"
        );
        // Mean colour per class: no class stands out by colour (the spread of class means is
        // small against the spread of images).
        let mean = |img: &[u8]| {
            [0, 1, 2].map(|c| img.chunks(3).map(|p| p[c] as f64).sum::<f64>() / 1024.0)
        };
        let image_means: Vec<[f64; 3]> = (0..a.len()).map(|i| mean(a.image(i))).collect();
        let overall: f64 = image_means.iter().map(|m| m[0]).sum::<f64>() / a.len() as f64;
        let image_spread = (image_means
            .iter()
            .map(|m| (m[0] - overall).powi(2))
            .sum::<f64>()
            / a.len() as f64)
            .sqrt();
        for c in 0..10 {
            let class: Vec<f64> = (0..a.len())
                .filter(|&i| a.labels[i] as usize == c)
                .map(|i| image_means[i][0])
                .collect();
            let class_mean = class.iter().sum::<f64>() / class.len() as f64;
            assert!(
                (class_mean - overall).abs() < image_spread,
                "class {c} is told apart by its red channel"
            );
        }
    }
}
