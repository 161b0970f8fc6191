//! The GAN losses: hinge (Lim & Ye 2017; BigGAN, compare_gan `hinge`) and
//! the auxiliary cross-entropies of S3GAN (rotation, and the class head's
//! loss averaged over the labelled images only, as compare_gan's
//! `softmax_cross_entropy(weights=is_label_available)` does).
use tch::{Kind, Tensor};

/// D's hinge loss terms: `mean(relu(1 - D(real)))`, `mean(relu(1 + D(fake)))`.
pub fn d_hinge(real: &Tensor, fake: &Tensor) -> (Tensor, Tensor) {
    (
        (real.neg() + 1.0).relu().mean(Kind::Float),
        (fake + 1.0).relu().mean(Kind::Float),
    )
}

/// G's hinge loss: `-mean(D(fake))`.
pub fn g_hinge(fake: &Tensor) -> Tensor {
    -fake.mean(Kind::Float)
}

/// Mean cross-entropy of logits [N, K] against int64 targets [N].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1)
        .neg()
        .mean(Kind::Float)
}

/// Cross-entropy averaged over the rows where `known` (bool [N]) is true;
/// 0 when no row is labelled (compare_gan's SUM_BY_NONZERO_WEIGHTS).
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor, known: &Tensor) -> Tensor {
    let w = known.to_kind(Kind::Float);
    let safe = labels.where_scalarother(known, 0);
    let ce = logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &safe.unsqueeze(1), false)
        .squeeze_dim(1)
        .neg();
    (ce * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0)
}

/// Fraction of rows whose argmax equals the target (only where `mask`, if given).
pub fn accuracy(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> f64 {
    let hit = logits
        .argmax(1, false)
        .eq_tensor(targets)
        .to_kind(Kind::Float);
    match mask {
        None => hit.mean(Kind::Float).double_value(&[]),
        Some(m) => {
            let m = m.to_kind(Kind::Float);
            let n = m.sum(Kind::Float).double_value(&[]);
            if n == 0.0 {
                f64::NAN
            } else {
                (hit * m).sum(Kind::Float).double_value(&[]) / n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// Hand-computed: real [2, 0.5, -1] -> relu(1-x) = [0, 0.5, 2], mean 0.8333;
    /// fake [-2, 0, 0.5] -> relu(1+x) = [0, 1, 1.5], mean 0.8333; G: -mean(fake) = 0.5.
    #[test]
    fn hinge_by_hand() {
        let (r, f) = d_hinge(&t(&[2.0, 0.5, -1.0]), &t(&[-2.0, 0.0, 0.5]));
        assert!((r.double_value(&[]) - 2.5 / 3.0).abs() < 1e-6);
        assert!((f.double_value(&[]) - 2.5 / 3.0).abs() < 1e-6);
        let g = g_hinge(&t(&[-2.0, 0.0, 0.5]));
        assert!((g.double_value(&[]) - 0.5).abs() < 1e-6);
    }

    /// Two rows, logits [0, ln 3] (p = 0.25, 0.75): CE of class 1 = -ln 0.75,
    /// class 0 = -ln 0.25. Only the first row is labelled.
    #[test]
    fn masked_cross_entropy_by_hand() {
        let l3 = 3f32.ln();
        let logits = Tensor::from_slice(&[0.0, l3, 0.0, l3]).view([2, 2]);
        let labels = Tensor::from_slice(&[1i64, -1]);
        let known = Tensor::from_slice(&[true, false]);
        let ce = masked_cross_entropy(&logits, &labels, &known).double_value(&[]);
        assert!((ce - (-(0.75f64).ln())).abs() < 1e-5, "{ce}");
        let none = Tensor::from_slice(&[false, false]);
        assert_eq!(
            masked_cross_entropy(&logits, &labels, &none).double_value(&[]),
            0.0
        );
        let both = cross_entropy(&logits, &Tensor::from_slice(&[1i64, 0])).double_value(&[]);
        assert!((both - (-(0.75f64).ln() - (0.25f64).ln()) / 2.0).abs() < 1e-5);
    }
}
