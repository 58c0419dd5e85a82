//! The loss ablations and the closed-form predictor against independent references: the
//! contrastive term against the paper's InfoNCE formula written in f64, its gradients and
//! those of every loss normalisation against finite differences of those references, and the
//! closed-form predictor against a least-squares solution computed another way.

mod common;

use common::reference::{info_nce_loss, nmse_row, normalised_squared_error};
use common::*;
use host::backend::DirectionGrads;
use host::byol::closed_form;
use host::byol::{Normalisation, Objective};
use host::Cpu;

struct Rows {
    a: Vec<f32>,
    o: Vec<f32>,
    s: Vec<f32>,
}

fn rows(seed: u64, n: usize, dim: usize) -> Rows {
    let mut r = rng(seed);
    let a = uniform(&mut r, n * dim, 1.0);
    // Positives correlated with the anchors, as after some training.
    let o = a
        .iter()
        .zip(uniform(&mut r, n * dim, 1.0))
        .map(|(x, e)| 0.7 * x + e)
        .collect();
    Rows {
        a,
        o,
        s: uniform(&mut r, n * dim, 1.0),
    }
}

/// Loss and the three gradients (all treated as having one) of `obj` on `x`.
fn evaluate(obj: &Objective, x: &Rows, n: usize, dim: usize) -> (f32, [Vec<f32>; 3]) {
    let mut g = [vec![0.0; n * dim], vec![0.0; n * dim], vec![0.0; n * dim]];
    let [ga, go, gs] = &mut g;
    let loss = obj.direction(
        &x.a,
        &x.o,
        &x.s,
        n,
        dim,
        DirectionGrads {
            anchors: ga,
            positives: Some(go),
            same_view: Some(gs),
        },
    );
    (loss, g)
}

/// Central differences of an f64 reference `f(a, o, s)` at every coordinate of the three.
fn numeric_gradients(x: &Rows, f: impl Fn(&[f64], &[f64], &[f64]) -> f64) -> [Vec<f64>; 3] {
    let (a, o, s) = (to_f64(&x.a), to_f64(&x.o), to_f64(&x.s));
    let h = 1e-6;
    let grad = |which: usize| -> Vec<f64> {
        let base = [&a, &o, &s][which];
        (0..base.len())
            .map(|k| {
                let mut args = [a.clone(), o.clone(), s.clone()];
                args[which][k] += h;
                let plus = f(&args[0], &args[1], &args[2]);
                args[which][k] -= 2.0 * h;
                let minus = f(&args[0], &args[1], &args[2]);
                (plus - minus) / (2.0 * h)
            })
            .collect()
    };
    [grad(0), grad(1), grad(2)]
}

fn check_gradients(what: &str, analytic: &[Vec<f32>; 3], numeric: &[Vec<f64>; 3], used: [bool; 3]) {
    for (k, name) in ["anchors", "positives", "same-view"].iter().enumerate() {
        if used[k] {
            assert_norm_close(
                &format!("{what}: ∂L/∂{name}"),
                &analytic[k],
                &numeric[k],
                1e-4,
            );
        } else {
            assert!(
                analytic[k].iter().all(|&v| v == 0.0),
                "{what}: ∂L/∂{name} should be zero"
            );
        }
    }
}

#[test]
fn contrastive_term_should_match_the_papers_info_nce_and_its_gradient() {
    let (n, dim) = (6, 5);
    for (alpha, beta) in [(0.1, 1.0), (0.5, 0.3), (0.2, 0.0)] {
        let x = rows(1, n, dim);
        let obj = Objective {
            normalisation: Normalisation::L2,
            beta: beta as f32,
            temperature: alpha as f32,
        };
        let (loss, grads) = evaluate(&obj, &x, n, dim);
        let reference =
            |a: &[f64], o: &[f64], s: &[f64]| info_nce_loss(a, o, s, n, dim, alpha, beta);
        let expected = reference(&to_f64(&x.a), &to_f64(&x.o), &to_f64(&x.s));
        assert!(
            (loss as f64 - expected).abs() <= 1e-5 * expected.abs().max(1.0),
            "α {alpha} β {beta}: loss {loss} vs reference {expected}"
        );
        let numeric = numeric_gradients(&x, reference);
        // At β = 0 the same-view rows do not enter the loss.
        let what = format!("α {alpha} β {beta}");
        check_gradients(&what, &grads, &numeric, [true, true, beta > 0.0]);
    }
}

#[test]
fn contrastive_term_at_beta_zero_should_be_byols_loss() {
    let (n, dim) = (7, 9);
    let x = rows(2, n, dim);
    let (loss, _) = evaluate(
        &Objective {
            beta: 0.0,
            ..Objective::default()
        },
        &x,
        n,
        dim,
    );
    let (a, o) = (to_f64(&x.a), to_f64(&x.o));
    let expected: f64 = (0..n)
        .map(|i| nmse_row(&a[i * dim..][..dim], &o[i * dim..][..dim]))
        .sum::<f64>()
        / n as f64;
    assert!(
        (loss as f64 - expected).abs() < 1e-5,
        "{loss} vs {expected}"
    );
}

#[test]
fn simclr_should_be_a_cross_entropy_over_the_candidates() {
    // β = 1: 2 − InfoNCE = 2 + 2α · mean_i(−ln softmax_i(positive)), the NT-Xent of SimCLR.
    let (n, dim, alpha) = (5, 4, 0.1);
    let x = rows(3, n, dim);
    let obj = Objective {
        normalisation: Normalisation::L2,
        beta: 1.0,
        temperature: alpha as f32,
    };
    let (loss, _) = evaluate(&obj, &x, n, dim);
    let (a, o, s) = (to_f64(&x.a), to_f64(&x.o), to_f64(&x.s));
    let unit = |v: &[f64]| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<_>>()
    };
    let mut nt_xent = 0.0;
    for i in 0..n {
        let ai = unit(&a[i * dim..][..dim]);
        let logit = |v: &[f64]| ai.iter().zip(unit(v)).map(|(p, q)| p * q).sum::<f64>() / alpha;
        let mut logits = vec![logit(&o[i * dim..][..dim])];
        logits.extend(
            (0..n)
                .filter(|&j| j != i)
                .map(|j| logit(&o[j * dim..][..dim])),
        );
        logits.extend(
            (0..n)
                .filter(|&j| j != i)
                .map(|j| logit(&s[j * dim..][..dim])),
        );
        let log_z = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        nt_xent += log_z - logits[0];
    }
    let expected = 2.0 + 2.0 * alpha * nt_xent / n as f64;
    assert!(
        (loss as f64 - expected).abs() < 1e-5,
        "{loss} vs {expected}"
    );
}

#[test]
fn loss_normalisations_should_match_references_and_finite_differences() {
    let (n, dim) = (6, 5);
    for (norm, standardise) in [
        (Normalisation::None, None),
        (Normalisation::LayerNorm, Some(true)),
        (Normalisation::BatchNorm, Some(false)),
    ] {
        let x = rows(4, n, dim);
        let obj = Objective {
            normalisation: norm,
            ..Objective::default()
        };
        let (loss, grads) = evaluate(&obj, &x, n, dim);
        let reference =
            |a: &[f64], o: &[f64], _: &[f64]| normalised_squared_error(a, o, n, dim, standardise);
        let expected = reference(&to_f64(&x.a), &to_f64(&x.o), &[]);
        assert!(
            (loss as f64 - expected).abs() <= 1e-5 * expected.max(1.0),
            "{norm:?}: loss {loss} vs reference {expected}"
        );
        let numeric = numeric_gradients(&x, reference);
        check_gradients(&format!("{norm:?}"), &grads, &numeric, [true, true, false]);
    }
}

#[test]
fn l2_loss_gradient_for_an_online_psi_should_match_finite_differences() {
    let (n, dim) = (4, 6);
    let x = rows(5, n, dim);
    let (_, grads) = evaluate(&Objective::default(), &x, n, dim);
    let reference = |a: &[f64], o: &[f64], _: &[f64]| {
        (0..n)
            .map(|i| nmse_row(&a[i * dim..][..dim], &o[i * dim..][..dim]))
            .sum::<f64>()
            / n as f64
    };
    let numeric = numeric_gradients(&x, reference);
    check_gradients("l2", &grads, &numeric, [true, true, false]);
}

#[test]
fn bad_objectives_should_be_rejected() {
    let bad = [
        Objective {
            beta: -1.0,
            ..Objective::default()
        },
        Objective {
            temperature: 0.0,
            ..Objective::default()
        },
        Objective {
            beta: 1.0,
            normalisation: Normalisation::None,
            ..Objective::default()
        },
    ];
    for obj in bad {
        assert!(obj.validate().is_err(), "{obj:?} accepted");
    }
    assert!("cosine".parse::<Normalisation>().is_err());
}

/// Least squares by Householder QR of `Z` in f64 (no normal equations): the `X [d, d]`
/// minimising `‖Z X − Y‖`.
fn least_squares_qr(z: &[f64], y: &[f64], n: usize, d: usize) -> Vec<f64> {
    let (mut r, mut qty) = (z.to_vec(), y.to_vec());
    for k in 0..d {
        let norm = (k..n).map(|i| r[i * d + k].powi(2)).sum::<f64>().sqrt();
        let alpha = if r[k * d + k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (0..n)
            .map(|i| if i < k { 0.0 } else { r[i * d + k] })
            .collect();
        v[k] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        for m in [&mut r, &mut qty] {
            for c in 0..d {
                let dot: f64 = (k..n).map(|i| v[i] * m[i * d + c]).sum();
                for i in k..n {
                    m[i * d + c] -= 2.0 * v[i] * dot / vv;
                }
            }
        }
    }
    // Back substitution on the upper triangle.
    let mut x = vec![0.0; d * d];
    for c in 0..d {
        for i in (0..d).rev() {
            let s: f64 = (i + 1..d).map(|j| r[i * d + j] * x[j * d + c]).sum();
            x[i * d + c] = (qty[i * d + c] - s) / r[i * d + i];
        }
    }
    x
}

#[test]
fn closed_form_predictor_should_equal_an_independent_least_squares_solution() {
    let (n, d) = (40, 6);
    let mut r = rng(6);
    let z = uniform(&mut r, n * d, 1.0);
    let y = uniform(&mut r, n * d, 1.0);
    let mut wt = vec![0.0; d * d];
    closed_form::optimal_predictor(&Cpu, &z, &y, n, d, &mut wt).unwrap();
    let expected = least_squares_qr(&to_f64(&z), &to_f64(&y), n, d);
    assert_close("W*ᵀ", &wt, &expected, 1e-4, 1e-4);
    // Predictions, and the normal equations: the residual is orthogonal to every column of Z.
    let mut p = vec![0.0; n * d];
    closed_form::predict(&Cpu, &wt, &z, n, d, &mut p).unwrap();
    for c in 0..d {
        for k in 0..d {
            let dot: f64 = (0..n)
                .map(|i| z[i * d + c] as f64 * (y[i * d + k] - p[i * d + k]) as f64)
                .sum();
            assert!(dot.abs() < 1e-3, "Zᵀ(Y − P)[{c}][{k}] = {dot}");
        }
    }
    // The backward holds W* constant: ∂⟨G, Z W*ᵀ⟩/∂Z = G W*.
    let g = uniform(&mut r, n * d, 1.0);
    let mut gz = vec![1.0; n * d];
    closed_form::predict_backward(&Cpu, &wt, &g, n, d, &mut gz).unwrap();
    for i in 0..n {
        for c in 0..d {
            let e: f64 = 1.0
                + (0..d)
                    .map(|k| g[i * d + k] as f64 * expected[c * d + k])
                    .sum::<f64>();
            assert!((gz[i * d + c] as f64 - e).abs() < 1e-3, "∂Z[{i}][{c}]");
        }
    }
    assert!(closed_form::check_shape(6, 6).is_err());
}
