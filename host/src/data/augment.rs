//! BYOL's augmentations (docs/DESIGN.md §1), T for view 1 and T′ for view 2:
//!
//! | step | T | T′ |
//! |---|---|---|
//! | random resized crop, area 8–100 %, aspect 3/4–4/3, bicubic | 1.0 | 1.0 |
//! | horizontal flip | 0.5 | 0.5 |
//! | colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order) | 0.8 | 0.8 |
//! | grayscale | 0.2 | 0.2 |
//! | gaussian blur, kernel ≈ 10 % of the side, σ ∈ [0.1, 2.0] | 1.0 | 0.1 |
//! | solarize (pixels ≥ 0.5 inverted) | 0.0 | 0.2 |
//!
//! then per-channel normalisation. Operations follow torchvision's definitions (crop sampling,
//! blend-based jitter with clamping, ITU-R 601 grayscale, reflect-padded blur). Working
//! images are `[h, w, 3]` f32 in `[0, 1]`; outputs `[size, size, 3]` normalised. Each image's
//! randomness comes from its own stream, seeded from (run seed, epoch, position, view), so a
//! batch is the same whatever the thread count, and a resumed run sees the same views.

use super::Dataset;
use crate::error::{Error, Result};
use kernels::augment::{
    blur_value, finish_value, grayscale_pixel, jitter_pixel, mean_gray, resize_channels,
    ViewParams, BRIGHTNESS, CONTRAST, HUE, MAX_BLUR, SATURATION,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// One augmentation distribution; probabilities in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewConfig {
    pub crop_scale: (f32, f32),
    pub crop_ratio: (f32, f32),
    pub flip: f32,
    pub jitter: f32,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
    pub grayscale: f32,
    pub blur: f32,
    pub blur_sigma: (f32, f32),
    pub solarize: f32,
}

impl ViewConfig {
    /// T, view 1.
    pub const BYOL_T: ViewConfig = ViewConfig {
        crop_scale: (0.08, 1.0),
        crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
        flip: 0.5,
        jitter: 0.8,
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.2,
        hue: 0.1,
        grayscale: 0.2,
        blur: 1.0,
        blur_sigma: (0.1, 2.0),
        solarize: 0.0,
    };
    /// T′, view 2: rarer blur, some solarisation.
    pub const BYOL_T_PRIME: ViewConfig = ViewConfig {
        blur: 0.1,
        solarize: 0.2,
        ..ViewConfig::BYOL_T
    };
    /// No augmentation at all (the whole image, resized).
    pub const IDENTITY: ViewConfig = ViewConfig {
        crop_scale: (1.0, 1.0),
        crop_ratio: (1.0, 1.0),
        flip: 0.0,
        jitter: 0.0,
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        grayscale: 0.0,
        blur: 0.0,
        blur_sigma: (0.1, 2.0),
        solarize: 0.0,
    };
}

impl ViewConfig {
    /// This distribution with its colour jitter's magnitudes scaled by `s` (its probability
    /// unchanged); `s = 1` leaves it as it is, bit for bit.
    pub fn with_colour_strength(self, s: f32) -> ViewConfig {
        ViewConfig {
            brightness: self.brightness * s,
            contrast: self.contrast * s,
            saturation: self.saturation * s,
            hue: self.hue * s,
            ..self
        }
    }

    /// A named pair (T, T′) for the paper's augmentation ablations: `full` (the paper's),
    /// `symmetric` (T′ = T), `no-colour` (no jitter, no grayscale), `no-grayscale`, `no-blur`,
    /// `no-flip`, `crop-only`, `crop-flip`, `crop-colour` (crop, jitter, grayscale),
    /// `crop-blur`. Every set keeps the random resized crop.
    pub fn named(name: &str) -> Result<[ViewConfig; 2]> {
        Self::named_over(name, [ViewConfig::BYOL_T, ViewConfig::BYOL_T_PRIME])
    }

    /// [`ViewConfig::named`] over another base pair (T, T′): the recipes change the blur
    /// probabilities of the paper's pair, and the named sets keep or drop what the base has.
    pub fn named_over(name: &str, base: [ViewConfig; 2]) -> Result<[ViewConfig; 2]> {
        let [t, t2] = base;
        let crop = ViewConfig {
            crop_scale: t.crop_scale,
            crop_ratio: t.crop_ratio,
            ..ViewConfig::IDENTITY
        };
        let both = |f: &dyn Fn(ViewConfig) -> ViewConfig| [f(t), f(t2)];
        Ok(match name {
            "full" => [t, t2],
            "symmetric" => [t, t],
            "no-colour" => both(&|v| ViewConfig {
                jitter: 0.0,
                grayscale: 0.0,
                ..v
            }),
            "no-grayscale" => both(&|v| ViewConfig {
                grayscale: 0.0,
                ..v
            }),
            "no-blur" => both(&|v| ViewConfig { blur: 0.0, ..v }),
            "no-flip" => both(&|v| ViewConfig { flip: 0.0, ..v }),
            "crop-only" => [crop, crop],
            "crop-flip" => both(&|v| ViewConfig {
                flip: v.flip,
                ..crop
            }),
            "crop-colour" => both(&|v| ViewConfig {
                jitter: v.jitter,
                brightness: v.brightness,
                contrast: v.contrast,
                saturation: v.saturation,
                hue: v.hue,
                grayscale: v.grayscale,
                ..crop
            }),
            "crop-blur" => both(&|v| ViewConfig {
                blur: v.blur,
                blur_sigma: v.blur_sigma,
                ..crop
            }),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown augmentation set {name:?}: expected one of {}",
                    AUGMENTATION_SETS.join(", ")
                )))
            }
        })
    }
}

/// The names [`ViewConfig::named`] knows.
pub const AUGMENTATION_SETS: [&str; 10] = [
    "full",
    "symmetric",
    "no-colour",
    "no-grayscale",
    "no-blur",
    "no-flip",
    "crop-only",
    "crop-flip",
    "crop-colour",
    "crop-blur",
];

/// The two views' distributions, the output size and the normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmenter {
    pub views: [ViewConfig; 2],
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// SplitMix64: turns structured keys into well-spread seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Augmenter {
    /// The two views of the images `indices` of `data`: `out[v]` is `[indices.len(), size,
    /// size, 3]`. `stream` identifies the batch (e.g. from seed, epoch and step).
    pub fn batch(&self, data: &Dataset, indices: &[usize], stream: u64, out: [&mut [f32]; 2]) {
        self.batch_part(data, indices, 0, stream, out)
    }

    /// [`Augmenter::batch`] of a part of a batch whose first image sits at position `first`
    /// of the whole batch: each image's views come from its position in the whole batch, so
    /// the ranks of a data-parallel run, each augmenting its part, make exactly the views one
    /// process makes.
    pub fn batch_part(
        &self,
        data: &Dataset,
        indices: &[usize],
        first: usize,
        stream: u64,
        out: [&mut [f32]; 2],
    ) {
        let px = self.size * self.size * 3;
        let params = self.batch_params(data, indices.len(), first, stream);
        for ((out, params), _) in out.into_iter().zip(&params).zip(0..) {
            out[..indices.len() * px]
                .par_chunks_mut(px)
                .zip(indices.par_iter().zip(params))
                .for_each(|(o, (&i, p))| self.apply(p, data.image(i), data.w, o));
        }
    }

    /// The drawn views (T and T′) of `count` images at positions `first..` of a batch: what
    /// [`Augmenter::batch_part`] applies on the CPU and the GPU's augmentation applies there.
    pub fn batch_params(
        &self,
        data: &Dataset,
        count: usize,
        first: usize,
        stream: u64,
    ) -> [Vec<ViewParams>; 2] {
        [0usize, 1].map(|v| {
            (0..count)
                .into_par_iter()
                .map(|j| {
                    let position = (first + j) as u64;
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(stream ^ position) ^ v as u64));
                    self.draw(&self.views[v], data.h, data.w, &mut rng)
                })
                .collect()
        })
    }

    /// The images `indices`, whole and unaugmented, resized and normalised (for evaluation).
    pub fn plain(&self, data: &Dataset, indices: &[usize], out: &mut [f32]) {
        let px = self.size * self.size * 3;
        out[..indices.len() * px]
            .par_chunks_mut(px)
            .zip(indices.par_iter())
            .for_each(|(o, &i)| {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                self.view(
                    &ViewConfig::IDENTITY,
                    data.image(i),
                    data.h,
                    data.w,
                    &mut rng,
                    o,
                )
            });
    }

    /// One augmented, normalised view of `img [h, w, 3]` into `out [size, size, 3]`: the
    /// view's randomness drawn ([`Augmenter::draw`]), then applied ([`Augmenter::apply`]).
    pub fn view(
        &self,
        cfg: &ViewConfig,
        img: &[u8],
        h: usize,
        w: usize,
        rng: &mut impl Rng,
        out: &mut [f32],
    ) {
        let p = self.draw(cfg, h, w, rng);
        self.apply(&p, img, w, out);
    }

    /// Everything random about one view of an `h × w` image, drawn from `rng` in a fixed order
    /// (crop, flip, jitter factors and order, grayscale, blur σ, solarisation; a draw that only
    /// matters when the one before it fires is made only then).
    pub fn draw(&self, cfg: &ViewConfig, h: usize, w: usize, rng: &mut impl Rng) -> ViewParams {
        let (top, left, ch, cw) = crop_box(cfg, h, w, rng);
        let mut p = ViewParams::plain(h, w);
        p.crop = [top, left, ch, cw].map(|v| v as u32);
        p.flip = (rng.random::<f32>() < cfg.flip) as u32;
        if rng.random::<f32>() < cfg.jitter {
            // torchvision's ColorJitter: factors drawn once, the four adjustments in random order.
            let factor = |rng: &mut dyn rand::RngCore, amount: f32| {
                rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount)
            };
            let b = factor(rng, cfg.brightness);
            let c = factor(rng, cfg.contrast);
            let s = factor(rng, cfg.saturation);
            let hue = rng.random_range(-cfg.hue..=cfg.hue);
            let mut order = [BRIGHTNESS, CONTRAST, SATURATION, HUE];
            order.shuffle(rng);
            (p.jitter, p.factors, p.order) = (1, [b, c, s, hue], order);
        }
        p.grayscale = (rng.random::<f32>() < cfg.grayscale) as u32;
        if rng.random::<f32>() < cfg.blur {
            let sigma = rng.random_range(cfg.blur_sigma.0..=cfg.blur_sigma.1);
            blur_weights(&mut p, blur_kernel_size(self.size), sigma);
        }
        p.solarize = (rng.random::<f32>() < cfg.solarize) as u32;
        p
    }

    /// Applies the drawn view `p` to `img [·, w, 3]`, into `out [size, size, 3]` normalised.
    pub fn apply(&self, p: &ViewParams, img: &[u8], w: usize, out: &mut [f32]) {
        apply_view(p, img, w, self.size, self.mean, self.std, out)
    }
}

/// The drawn view `p` of `img [·, w, 3]` into `out [size, size, 3]`, normalised by `mean` and
/// `std`, with the pixel functions of `kernels::augment` (those the GPU runs) in the same
/// order as the GPU's launches.
pub fn apply_view(
    p: &ViewParams,
    img: &[u8],
    w: usize,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) {
    let (pixels, values) = (size * size, size * size * 3);
    let out = &mut out[..values];
    for (pixel, rgb) in out.chunks_exact_mut(3).enumerate() {
        rgb.copy_from_slice(&resize_channels::<3>(
            p,
            img,
            w,
            size,
            pixel / size,
            pixel % size,
            0,
        ));
    }
    if p.jitter != 0 {
        for op in p.order {
            // Contrast blends towards the mean luma of the image as it is at this point.
            let gray_mean = if op == CONTRAST {
                mean_gray(out, pixels)
            } else {
                0.0
            };
            out.chunks_exact_mut(3)
                .for_each(|px| jitter_pixel(op, p.factors, gray_mean, px));
        }
    }
    if p.grayscale != 0 {
        out.chunks_exact_mut(3).for_each(grayscale_pixel);
    }
    if p.blur_len > 0 {
        blur(p, out, size);
    }
    for (i, v) in out.iter_mut().enumerate() {
        *v = finish_value(p, *v, mean[i % 3], std[i % 3]);
    }
}

/// The view's gaussian weights for a kernel of `k` taps (cut to [`MAX_BLUR`]) at `sigma`,
/// normalised to sum 1.
fn blur_weights(p: &mut ViewParams, k: usize, sigma: f32) {
    let k = k.min(MAX_BLUR);
    let half = (k / 2) as isize;
    let weights: Vec<f32> = (-half..=half)
        .map(|t| (-(t * t) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    for (dst, w) in p.blur.iter_mut().zip(&weights) {
        *dst = w / total;
    }
    p.blur_len = k as u32;
}

/// The separable blur of `img [side, side, 3]` in place: along x, then along y.
fn blur(p: &ViewParams, img: &mut [f32], side: usize) {
    for horizontal in [true, false] {
        let src = img.to_vec();
        for (i, v) in img.iter_mut().enumerate() {
            let (pixel, c) = (i / 3, i % 3);
            *v = blur_value(p, &src, side, pixel / side, pixel % side, c, horizontal);
        }
    }
}

/// Blur kernel: about 10% of the side, odd (23 at 224 px, 3 at 32 px).
pub fn blur_kernel_size(side: usize) -> usize {
    ((side as f32 * 0.1).round() as usize).max(1) | 1
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform
/// aspect ratio that fits, else the largest centred crop within the ratio range.
/// Returns (top, left, height, width).
pub fn crop_box(
    cfg: &ViewConfig,
    h: usize,
    w: usize,
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f32;
    let (lr0, lr1) = (cfg.crop_ratio.0.ln(), cfg.crop_ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(cfg.crop_scale.0..=cfg.crop_scale.1);
        let ratio = rng.random_range(lr0..=lr1).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            return (
                rng.random_range(0..=h - ch),
                rng.random_range(0..=w - cw),
                ch,
                cw,
            );
        }
    }
    let in_ratio = w as f32 / h as f32;
    let (ch, cw) = if in_ratio < cfg.crop_ratio.0 {
        ((w as f32 / cfg.crop_ratio.0).round() as usize, w)
    } else if in_ratio > cfg.crop_ratio.1 {
        (h, (h as f32 * cfg.crop_ratio.1).round() as usize)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize, seed: u64) -> Vec<u8> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..h * w * 3).map(|_| r.random()).collect()
    }
    fn unit(cfg: ViewConfig) -> Augmenter {
        Augmenter {
            views: [cfg, cfg],
            size: 8,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    #[test]
    fn named_sets_should_switch_off_exactly_what_they_name() {
        for name in AUGMENTATION_SETS {
            let [a, b] = ViewConfig::named(name).unwrap();
            assert_eq!(
                (a.crop_scale, b.crop_scale),
                ((0.08, 1.0), (0.08, 1.0)),
                "{name} keeps the crop"
            );
        }
        assert_eq!(
            ViewConfig::named("full").unwrap(),
            [ViewConfig::BYOL_T, ViewConfig::BYOL_T_PRIME]
        );
        assert_eq!(
            ViewConfig::named("symmetric").unwrap(),
            [ViewConfig::BYOL_T; 2]
        );
        let [a, b] = ViewConfig::named("no-colour").unwrap();
        assert!(
            a.jitter == 0.0
                && a.grayscale == 0.0
                && a.blur == 1.0
                && b.solarize == 0.2
                && b.blur == 0.1
        );
        let [a, b] = ViewConfig::named("crop-only").unwrap();
        assert!([a.flip, a.jitter, a.grayscale, a.blur, b.solarize] == [0.0; 5]);
        let [a, b] = ViewConfig::named("crop-blur").unwrap();
        assert!(a.blur == 1.0 && b.blur == 0.1 && a.jitter == 0.0 && b.flip == 0.0);
        let [a, _] = ViewConfig::named("crop-colour").unwrap();
        assert!(a.jitter == 0.8 && a.grayscale == 0.2 && a.blur == 0.0 && a.flip == 0.0);
        assert!(ViewConfig::named("colour-only")
            .unwrap_err()
            .to_string()
            .contains("crop-blur"));
    }

    #[test]
    fn colour_strength_should_scale_the_jitter_and_nothing_else() {
        let t = ViewConfig {
            jitter: 1.0,
            ..ViewConfig::BYOL_T
        };
        assert_eq!(t.with_colour_strength(1.0), t);
        let aug = unit(t);
        let factors = |s: f32| {
            let cfg = t.with_colour_strength(s);
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            (0..400)
                .map(|_| aug.draw(&cfg, 8, 8, &mut rng).factors)
                .collect::<Vec<_>>()
        };
        // Strength 0: every draw jitters, by factors that change nothing.
        assert!(factors(0.0).iter().all(|f| *f == [1.0, 1.0, 1.0, 0.0]));
        // Strength 2: brightness and contrast in [0.2, 1.8], saturation in [0.6, 1.4], hue
        // within ±0.2, and the draws reach past the paper's own bounds.
        let f = factors(2.0);
        let range = |i: usize| {
            let v = f.iter().map(|f| f[i]);
            (
                v.clone().fold(f32::MAX, f32::min),
                v.fold(f32::MIN, f32::max),
            )
        };
        for (i, lo, hi) in [(0, 0.2, 1.8), (1, 0.2, 1.8), (2, 0.6, 1.4), (3, -0.2, 0.2)] {
            let (min, max) = range(i);
            let paper = (hi - lo) / 4.0;
            assert!(
                min >= lo && max <= hi,
                "factor {i}: [{min}, {max}] ⊄ [{lo}, {hi}]"
            );
            assert!(
                min < lo + paper && max > hi - paper,
                "factor {i}: [{min}, {max}] stays inside the paper's range"
            );
        }
    }

    /// PyTorch's bicubic resize (`align_corners=False`, no antialiasing, Keys' kernel with
    /// a = −0.75, source indices clamped to the crop) of crop `[top, left, ch, cw]` to
    /// `size × size`, in f64, with the kernel written as the plain cubic in |x| rather than the
    /// code's nested form.
    fn bicubic_reference(
        img: &[u8],
        w: usize,
        crop: [usize; 4],
        size: usize,
        flip: bool,
    ) -> Vec<f64> {
        let keys = |x: f64| {
            let (a, x) = (-0.75, x.abs());
            match x {
                x if x <= 1.0 => (a + 2.0) * x.powi(3) - (a + 3.0) * x.powi(2) + 1.0,
                x if x < 2.0 => a * x.powi(3) - 5.0 * a * x.powi(2) + 8.0 * a * x - 4.0 * a,
                _ => 0.0,
            }
        };
        // The four source indices (clamped) and weights of output coordinate `o`.
        let taps = |o: usize, extent: usize| -> Vec<(usize, f64)> {
            let src = (o as f64 + 0.5) * extent as f64 / size as f64 - 0.5;
            let base = src.floor();
            (-1..=2)
                .map(|d| {
                    let i = (base as isize + d).clamp(0, extent as isize - 1) as usize;
                    (i, keys(src - (base + d as f64)))
                })
                .collect()
        };
        let [top, left, ch, cw] = crop;
        let mut out = vec![0.0; size * size * 3];
        for oy in 0..size {
            for ox in 0..size {
                let sx = if flip { size - 1 - ox } else { ox };
                for c in 0..3 {
                    let mut v = 0.0;
                    for (y, wy) in taps(oy, ch) {
                        for (x, wx) in taps(sx, cw) {
                            v += wy * wx * img[((top + y) * w + left + x) * 3 + c] as f64;
                        }
                    }
                    out[(oy * size + ox) * 3 + c] = (v / 255.0).clamp(0.0, 1.0);
                }
            }
        }
        out
    }

    #[test]
    fn resized_crops_should_match_an_f64_bicubic_reference() {
        let (h, w) = (20, 24);
        let img = image(h, w, 3);
        // Up and down, square and not, flipped and not, the crop touching the image's edges.
        for (crop, size, flip) in [
            ([3, 5, 13, 17], 32, false),
            ([3, 5, 13, 17], 32, true),
            ([0, 0, 20, 24], 8, true),
            ([7, 2, 9, 22], 11, false),
        ] {
            let mut p = ViewParams::plain(h, w);
            p.crop = crop.map(|v| v as u32);
            p.flip = flip as u32;
            let mut out = vec![0.0; size * size * 3];
            apply_view(&p, &img, w, size, [0.0; 3], [1.0; 3], &mut out);
            let expected = bicubic_reference(&img, w, crop, size, flip);
            for (i, (&o, &e)) in out.iter().zip(&expected).enumerate() {
                assert!(
                    (o as f64 - e).abs() < 1e-5,
                    "crop {crop:?} to {size}, flip {flip}: value {i}: {o} vs {e}"
                );
                // The GPU computes each value on its own; the CPU a pixel's three at once.
                let (px, c) = (i / 3, i % 3);
                let single = resize_channels::<1>(&p, &img, w, size, px / size, px % size, c)[0];
                assert_eq!(
                    o.to_bits(),
                    single.to_bits(),
                    "value {i}: per pixel and per value differ"
                );
            }
        }
    }

    #[test]
    fn identity_view_should_return_the_image_normalised() {
        let img = image(8, 8, 1);
        let aug = Augmenter {
            views: [ViewConfig::IDENTITY; 2],
            size: 8,
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.5],
        };
        let mut out = vec![0.0; 8 * 8 * 3];
        aug.view(
            &ViewConfig::IDENTITY,
            &img,
            8,
            8,
            &mut ChaCha8Rng::seed_from_u64(0),
            &mut out,
        );
        for (i, (&o, &p)) in out.iter().zip(&img).enumerate() {
            let expected = (p as f32 / 255.0 - aug.mean[i % 3]) / aug.std[i % 3];
            assert!((o - expected).abs() < 1e-5, "pixel {i}: {o} vs {expected}");
        }
    }

    #[test]
    fn flip_grayscale_and_solarize_should_do_what_they_say() {
        let img = image(8, 8, 2);
        let px = |img: &[u8], y: usize, x: usize, c: usize| img[(y * 8 + x) * 3 + c] as f32 / 255.0;
        let run = |cfg: ViewConfig| {
            let mut out = vec![0.0; 8 * 8 * 3];
            unit(cfg).view(
                &cfg,
                &img,
                8,
                8,
                &mut ChaCha8Rng::seed_from_u64(0),
                &mut out,
            );
            out
        };
        let flipped = run(ViewConfig {
            flip: 1.0,
            ..ViewConfig::IDENTITY
        });
        assert!((flipped[(3 * 8 + 1) * 3 + 2] - px(&img, 3, 6, 2)).abs() < 1e-5);
        let gray = run(ViewConfig {
            grayscale: 1.0,
            ..ViewConfig::IDENTITY
        });
        let g = 0.299 * px(&img, 2, 5, 0) + 0.587 * px(&img, 2, 5, 1) + 0.114 * px(&img, 2, 5, 2);
        assert!((0..3).all(|c| (gray[(2 * 8 + 5) * 3 + c] - g).abs() < 1e-5));
        let sol = run(ViewConfig {
            solarize: 1.0,
            ..ViewConfig::IDENTITY
        });
        for (o, &p) in sol.iter().zip(&img) {
            let v = p as f32 / 255.0;
            assert!((o - if v >= 0.5 { 1.0 - v } else { v }).abs() < 1e-5);
        }
    }

    #[test]
    fn hue_shift_should_turn_colours_and_keep_gray() {
        use kernels::augment::shift_hue;
        let mut red = [1.0f32, 0.0, 0.0];
        shift_hue(&mut red, 1.0 / 3.0);
        assert!(
            (red[0] - 0.0).abs() < 1e-5 && (red[1] - 1.0).abs() < 1e-5 && red[2].abs() < 1e-5,
            "{red:?}"
        );
        let mut p = [0.2f32, 0.5, 0.9];
        shift_hue(&mut p, 0.0);
        assert!(
            (p[0] - 0.2).abs() < 1e-5 && (p[1] - 0.5).abs() < 1e-5 && (p[2] - 0.9).abs() < 1e-5
        );
        let mut g = [0.4f32, 0.4, 0.4];
        shift_hue(&mut g, 0.3);
        assert_eq!(g, [0.4, 0.4, 0.4]);
    }

    #[test]
    fn blur_should_preserve_a_constant_image_and_smooth_an_impulse() {
        let mut p = ViewParams::plain(9, 9);
        blur_weights(&mut p, 3, 1.0);
        let mut flat = vec![0.3f32; 9 * 9 * 3];
        blur(&p, &mut flat, 9);
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut dot = vec![0.0f32; 9 * 9 * 3];
        dot[(4 * 9 + 4) * 3] = 1.0;
        blur(&p, &mut dot, 9);
        let total: f32 = dot.iter().step_by(3).sum();
        assert!(
            (total - 1.0).abs() < 1e-5 && dot[(4 * 9 + 4) * 3] < 0.5 && dot[(4 * 9 + 5) * 3] > 0.05
        );
        assert_eq!(
            (
                blur_kernel_size(224),
                blur_kernel_size(32),
                blur_kernel_size(96)
            ),
            (23, 3, 11)
        );
    }

    #[test]
    fn crops_should_cover_the_configured_area_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let (t, l, h, w) = crop_box(&ViewConfig::BYOL_T, 32, 32, &mut rng);
            assert!(t + h <= 32 && l + w <= 32 && h > 0 && w > 0);
            areas.push((h * w) as f32 / 1024.0);
        }
        let mean = areas.iter().sum::<f32>() / areas.len() as f32;
        assert!(
            (0.45..0.6).contains(&mean),
            "mean crop area {mean} (uniform on [0.08, 1] gives ~0.54)"
        );
        assert!(areas.iter().any(|&a| a < 0.15) && areas.iter().any(|&a| a > 0.9));
    }

    #[test]
    fn batches_should_be_reproducible_and_views_differ() {
        let data = Dataset {
            name: "t".into(),
            images: image(16, 16, 4).repeat(4),
            labels: vec![0; 4],
            h: 16,
            w: 16,
            classes: 1,
        };
        let aug = Augmenter {
            views: [ViewConfig::BYOL_T, ViewConfig::BYOL_T_PRIME],
            size: 16,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let run = |threads: usize, stream: u64| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut a, mut b) = (vec![0.0; 4 * 768], vec![0.0; 4 * 768]);
            pool.install(|| aug.batch(&data, &[0, 1, 2, 3], stream, [&mut a, &mut b]));
            (a, b)
        };
        let (a, b) = run(1, 7);
        assert_eq!(
            run(3, 7),
            (a.clone(), b.clone()),
            "thread count must not matter"
        );
        assert_ne!(a, b, "the two views differ");
        assert_ne!(
            a[..768],
            a[768..1536],
            "the same image gets its own randomness at each position"
        );
        assert_ne!(run(1, 8).0, a, "another batch, other views");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
