//! Improved precision and recall of generated samples (Kynkäänniemi,
//! Karras, Laine, Lehtinen, Aila, "Improved Precision and Recall Metric for
//! Assessing Generative Models", NeurIPS 2019), on feature vectors.
//!
//! Each set of features approximates its manifold by the union of balls
//! around its points, each ball's radius the distance to the point's k-th
//! nearest neighbour in the same set (k = 3 in StyleGAN2-ADA's `pr50k3`).
//! Precision is the fraction of generated points inside the real manifold
//! (are the samples realistic?), recall the fraction of real points inside
//! the generated manifold (is the data's variety covered?). FID alone cannot
//! tell mode dropping (low recall) from poor samples (low precision), which
//! is what separates the paper's labelling modes.
//!
//! As in StyleGAN2-ADA's `metrics/precision_recall.py`: Euclidean distances
//! in float32, the radius is the (k+1)-th smallest distance from a point to
//! its own set (the point itself is the first, at distance 0), and a probe
//! is inside when its distance to some manifold point is at most that
//! point's radius. Distances are computed in row blocks, so memory is
//! `block x N` whatever the sizes. Every distance is one element of a matrix
//! product (no sums across threads), so the result does not depend on the
//! thread count.
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Rows of the first operand per distance block.
const BLOCK_ROWS: i64 = 1024;

/// Improved precision and recall of a generated set against a real one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// Precision and recall of `fake` against `real` (both [N, D] features),
/// with neighbourhood size `k`.
pub fn precision_recall(real: &Tensor, fake: &Tensor, k: i64) -> Result<PrecisionRecall> {
    let (real, fake) = (features(real, "real")?, features(fake, "generated")?);
    if real.size()[1] != fake.size()[1] {
        return Err(Error::invalid(format!(
            "precision/recall: real features are {}-d, generated {}-d",
            real.size()[1],
            fake.size()[1]
        )));
    }
    let (nr, nf) = (real.size()[0], fake.size()[0]);
    if k < 1 || nr <= k || nf <= k {
        return Err(Error::invalid(format!(
            "precision/recall with k = {k} needs more than k points per set (got {nr} real, {nf} generated)"
        )));
    }
    Ok(PrecisionRecall {
        precision: coverage(&real, &fake, k),
        recall: coverage(&fake, &real, k),
    })
}

/// [N, D] float32 on the CPU, contiguous.
fn features(t: &Tensor, what: &str) -> Result<Tensor> {
    if t.dim() != 2 {
        return Err(Error::invalid(format!(
            "precision/recall: {what} features must be [N, D], got {:?}",
            t.size()
        )));
    }
    Ok(t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous())
}

/// The fraction of `probes` inside the manifold of `manifold` (k-NN balls).
fn coverage(manifold: &Tensor, probes: &Tensor, k: i64) -> f64 {
    let norms = squared_norms(manifold);
    let radii = knn_radii(manifold, &norms, k);
    let mut inside = 0i64;
    for block in probes.split(BLOCK_ROWS, 0) {
        let d = distances(&block, manifold, &norms);
        // [b, N] <= [1, N]: inside some manifold point's ball.
        inside += d
            .le_tensor(&radii.unsqueeze(0))
            .any_dim(1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    inside as f64 / probes.size()[0] as f64
}

/// Distance from each row of `x` to its k-th nearest other row, given
/// `x`'s squared norms. [N, D] -> [N]
fn knn_radii(x: &Tensor, norms: &Tensor, k: i64) -> Tensor {
    let radii: Vec<Tensor> = x
        .split(BLOCK_ROWS, 0)
        .iter()
        .map(|block| distances(block, x, norms).kthvalue(k + 1, 1, false).0)
        .collect();
    Tensor::cat(&radii, 0)
}

/// Squared norms of the rows. [N, D] -> [N]
fn squared_norms(x: &Tensor) -> Tensor {
    (x * x).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// Euclidean distances between the rows of `a` and of `b`, given `b`'s
/// squared norms: `|a|² + |b|² - 2 a·b`, clamped at 0 against rounding.
/// [M, D] x [N, D] -> [M, N]
fn distances(a: &Tensor, b: &Tensor, b_norms: &Tensor) -> Tensor {
    let a_norms = squared_norms(a).unsqueeze(1);
    (a_norms + b_norms.unsqueeze(0) - a.matmul(&b.tr()) * 2.0)
        .clamp_min(0.0)
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` points around each of `centres` (unit Gaussian noise, seeded).
    fn clusters(centres: &[f64], n: i64, d: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let parts: Vec<Tensor> = centres
            .iter()
            .map(|c| Tensor::randn([n, d], (Kind::Float, Device::Cpu)) + *c)
            .collect();
        Tensor::cat(&parts, 0)
    }

    #[test]
    fn a_set_against_itself_is_all_precision_and_all_recall() {
        let x = clusters(&[0.0, 10.0, 20.0], 50, 8, 1);
        let pr = precision_recall(&x, &x, 3).unwrap();
        assert_eq!(
            pr,
            PrecisionRecall {
                precision: 1.0,
                recall: 1.0
            }
        );
    }

    #[test]
    fn one_mode_of_three_is_precise_but_recalls_a_third() {
        let real = clusters(&[0.0, 30.0, 60.0], 200, 8, 2);
        // Fresh draws of the same three modes: k-NN balls of 200 points in
        // 8-d cover most, not all, of a mode.
        let all = precision_recall(&real, &clusters(&[0.0, 30.0, 60.0], 200, 8, 3), 3).unwrap();
        assert!(all.precision > 0.75 && all.recall > 0.75, "{all:?}");
        let one_mode = clusters(&[30.0], 600, 8, 3);
        let pr = precision_recall(&real, &one_mode, 3).unwrap();
        assert!(
            (pr.precision - all.precision).abs() < 0.1,
            "{pr:?} vs {all:?}"
        );
        assert!(
            (pr.recall - all.recall / 3.0).abs() < 0.05,
            "{pr:?} vs {all:?}"
        );
        // Samples off the data: neither precise nor recalling.
        let off = clusters(&[90.0], 200, 8, 4);
        let pr = precision_recall(&real, &off, 3).unwrap();
        assert_eq!(
            pr,
            PrecisionRecall {
                precision: 0.0,
                recall: 0.0
            }
        );
    }

    #[test]
    fn matches_a_brute_force_count() {
        let real = clusters(&[0.0, 3.0], 40, 5, 5);
        let fake = clusters(&[1.0], 70, 5, 6);
        let pr = precision_recall(&real, &fake, 3).unwrap();
        let rows = |t: &Tensor| -> Vec<Vec<f64>> {
            let n = t.size()[0];
            (0..n)
                .map(|i| Vec::<f64>::try_from(t.get(i).to_kind(Kind::Double)).unwrap())
                .collect()
        };
        let (r, f) = (rows(&real), rows(&fake));
        let dist = |a: &[f64], b: &[f64]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let radii = |set: &[Vec<f64>]| -> Vec<f64> {
            set.iter()
                .map(|p| {
                    let mut d: Vec<f64> = set.iter().map(|q| dist(p, q)).collect();
                    d.sort_by(|a, b| a.total_cmp(b));
                    d[3]
                })
                .collect()
        };
        let inside = |manifold: &[Vec<f64>], probes: &[Vec<f64>]| -> f64 {
            let rad = radii(manifold);
            let hits = probes
                .iter()
                .filter(|p| manifold.iter().zip(&rad).any(|(m, r)| dist(p, m) <= *r))
                .count();
            hits as f64 / probes.len() as f64
        };
        assert!((pr.precision - inside(&r, &f)).abs() < 1e-9, "{pr:?}");
        assert!((pr.recall - inside(&f, &r)).abs() < 1e-9, "{pr:?}");
    }

    #[test]
    fn too_few_points_is_an_error() {
        let x = clusters(&[0.0], 3, 4, 7);
        let err = precision_recall(&x, &x, 3).unwrap_err().to_string();
        assert!(err.contains("more than k points"), "{err}");
    }
}
