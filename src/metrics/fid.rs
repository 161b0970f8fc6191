//! Sample-quality metrics on network features: the Fréchet Inception
//! Distance (Heusel et al. 2017), the Kernel Inception Distance (Bińkowski
//! et al., "Demystifying MMD GANs", 2018) and the Inception Score (Salimans
//! et al. 2016).
//!
//! Everything is accumulated in f64 and streams: [`FeatureStats`] keeps a
//! running mean and centred scatter matrix (merged batch by batch with the
//! pairwise update of Chan, Golub and LeVeque, so no catastrophic
//! cancellation from `E[xx'] - E[x]E[x]'`), [`Reservoir`] keeps a bounded
//! uniform sample of feature rows for KID, and [`InceptionScore`] keeps per
//! split sums, never the whole probability matrix.
//!
//! ## The matrix square root
//! FID needs `tr sqrt(S1 S2)`. `S1 S2` is not symmetric, and with fewer
//! images than feature dimensions (2048) both covariances are singular:
//! scipy's `sqrtm` (Schur form of a non-normal matrix), which the reference
//! implementations call, then returns spurious imaginary parts that they
//! drop. We use instead that `AB` and `BA` have the same non-zero
//! eigenvalues: with `A = S1^½` and `B = S1^½ S2`, the eigenvalues of
//! `S1 S2` are those of `M = S1^½ S2 S1^½`, which is symmetric positive
//! semi-definite. So `tr sqrt(S1 S2) = Σ sqrt(λᵢ(M))`, computed with two
//! symmetric eigendecompositions (LAPACK `syevd` through libtorch, backward
//! stable) in f64, clipping the tiny negative eigenvalues rounding leaves.
//! No invertibility is needed and no complex arithmetic appears.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Running mean and covariance of feature vectors, in f64.
pub struct FeatureStats {
    n: i64,
    mean: Option<Tensor>,
    scatter: Option<Tensor>,
}

impl Default for FeatureStats {
    fn default() -> Self {
        Self::new()
    }
}

impl FeatureStats {
    pub fn new() -> Self {
        FeatureStats {
            n: 0,
            mean: None,
            scatter: None,
        }
    }

    pub fn count(&self) -> i64 {
        self.n
    }

    /// Adds a batch of features [B, D] (any float kind, any device).
    pub fn add(&mut self, feats: &Tensor) -> Result<()> {
        let x = feats.to_device(Device::Cpu).to_kind(Kind::Double);
        let size = x.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "features must be [N, D], got {size:?}"
            )));
        }
        let nb = size[0];
        if nb == 0 {
            return Ok(());
        }
        let mb = x.mean_dim(0, false, Kind::Double);
        let xc = &x - &mb;
        let sb = xc.tr().matmul(&xc);
        match (&self.mean, &self.scatter) {
            (Some(mean), Some(scatter)) => {
                if mean.size() != mb.size() {
                    return Err(Error::invalid(format!(
                        "features changed width: {:?} then {:?}",
                        mean.size(),
                        mb.size()
                    )));
                }
                let n = self.n as f64;
                let total = n + nb as f64;
                let delta = &mb - mean;
                let new_mean = mean + &delta * (nb as f64 / total);
                let new_scatter = scatter + sb + delta.outer(&delta) * (n * nb as f64 / total);
                self.mean = Some(new_mean);
                self.scatter = Some(new_scatter);
            }
            _ => {
                self.mean = Some(mb);
                self.scatter = Some(sb);
            }
        }
        self.n += nb;
        Ok(())
    }

    /// The mean and the unbiased covariance (divided by n - 1, as `np.cov`).
    pub fn finish(&self) -> Result<Gaussian> {
        match (&self.mean, &self.scatter) {
            (Some(mean), Some(scatter)) if self.n >= 2 => Ok(Gaussian {
                n: self.n,
                mean: mean.shallow_clone(),
                cov: scatter / (self.n - 1) as f64,
            }),
            _ => Err(Error::invalid(format!(
                "FID needs at least 2 images, got {}",
                self.n
            ))),
        }
    }
}

/// The Gaussian fitted to a set of features: mean [D] and covariance [D, D], f64 on the CPU.
pub struct Gaussian {
    pub n: i64,
    pub mean: Tensor,
    pub cov: Tensor,
}

/// `tr sqrt(S1 S2)` for symmetric PSD `S1`, `S2` (see the module doc).
pub fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> Result<f64> {
    let (l, v) = s1.f_linalg_eigh("L")?;
    let root = drop_rounding_noise(&l).sqrt();
    let s1_half = (&v * root.unsqueeze(0)).matmul(&v.tr());
    let m = s1_half.matmul(s2).matmul(&s1_half);
    // Exactly symmetric, so the symmetric solver sees the matrix we mean.
    let m = (&m + m.tr()) / 2.0;
    let mu = m.f_linalg_eigvalsh("L")?;
    Ok(drop_rounding_noise(&mu)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]))
}

/// Sets to 0 the eigenvalues below `max |λ| * n * ε`, the size of rounding
/// noise in a symmetric eigensolver: with fewer images than dimensions most
/// eigenvalues are truly 0, and the square root would blow their noise
/// (1e-14 -> 1e-7, times hundreds of them) into the trace.
fn drop_rounding_noise(eigenvalues: &Tensor) -> Tensor {
    let n = eigenvalues.size()[0] as f64;
    let max = eigenvalues.abs().max().double_value(&[]);
    let tol = max * n * f64::EPSILON;
    let keep = eigenvalues.gt(tol);
    eigenvalues * keep.to_kind(Kind::Double)
}

/// The Fréchet distance between two Gaussians:
/// `|m1 - m2|² + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.mean.size() != b.mean.size() {
        return Err(Error::invalid(format!(
            "FID: feature widths differ ({:?} vs {:?}); were both sets scored with the same network?",
            a.mean.size(),
            b.mean.size()
        )));
    }
    let diff = (&a.mean - &b.mean)
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    let tr_a = a.cov.trace().double_value(&[]);
    let tr_b = b.cov.trace().double_value(&[]);
    let tr_root = trace_sqrt_product(&a.cov, &b.cov)?;
    let fid = diff + tr_a + tr_b - 2.0 * tr_root;
    if !fid.is_finite() {
        return Err(Error::invalid(format!(
            "FID is {fid}: the features hold NaN or Inf"
        )));
    }
    Ok(fid)
}

/// A bounded uniform sample of feature rows (Vitter's algorithm R, seeded),
/// so KID works on 50,000 samples with fixed memory.
pub struct Reservoir {
    capacity: usize,
    dim: usize,
    seen: u64,
    rows: Vec<f32>,
    rng: ChaCha8Rng,
}

impl Reservoir {
    pub fn new(capacity: usize, seed: u64) -> Self {
        Reservoir {
            capacity: capacity.max(1),
            dim: 0,
            seen: 0,
            rows: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Offers a batch of features [B, D].
    pub fn add(&mut self, feats: &Tensor) -> Result<()> {
        let x = feats
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let size = x.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "features must be [N, D], got {size:?}"
            )));
        }
        let (b, d) = (size[0] as usize, size[1] as usize);
        if self.dim == 0 {
            self.dim = d;
        } else if self.dim != d {
            return Err(Error::invalid("features changed width between batches"));
        }
        let flat = Vec::<f32>::try_from(x.view([-1]))?;
        for row in flat.chunks_exact(d).take(b) {
            let kept = self.rows.len() / d;
            if kept < self.capacity {
                self.rows.extend_from_slice(row);
            } else {
                let j = self.rng.random_range(0..=self.seen) as usize;
                if j < self.capacity {
                    self.rows[j * d..(j + 1) * d].copy_from_slice(row);
                }
            }
            self.seen += 1;
        }
        Ok(())
    }

    /// The kept rows as [K, D] float32.
    pub fn tensor(&self) -> Tensor {
        if self.dim == 0 {
            return Tensor::zeros([0, 0], (Kind::Float, Device::Cpu));
        }
        Tensor::from_slice(&self.rows).view([(self.rows.len() / self.dim) as i64, self.dim as i64])
    }
}

/// The Kernel Inception Distance: the unbiased estimate of MMD² with the
/// cubic polynomial kernel `k(x, y) = (x·y / d + 1)³`, averaged over
/// `subsets` random subsets of `subset_size` rows of each set (drawn without
/// replacement), as in StyleGAN2-ADA's `metrics/kernel_inception_distance.py`.
/// Returns the mean and standard deviation over subsets.
pub fn kernel_inception_distance(
    real: &Tensor,
    fake: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let (nr, nf) = (real.size()[0] as usize, fake.size()[0] as usize);
    let m = subset_size.min(nr).min(nf);
    if m < 2 || subsets == 0 {
        return Err(Error::invalid(format!(
            "KID needs at least 2 rows per set and 1 subset (got {nr} real, {nf} generated, {subsets} subsets)"
        )));
    }
    let d = real.size()[1] as f64;
    let real = real.to_kind(Kind::Double);
    let fake = fake.to_kind(Kind::Double);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kernel = |a: &Tensor, b: &Tensor| (a.matmul(&b.tr()) / d + 1.0).pow_tensor_scalar(3i64);
    let mut values = Vec::with_capacity(subsets);
    let pick = |rng: &mut ChaCha8Rng, n: usize| {
        let idx: Vec<i64> = rand::seq::index::sample(rng, n, m)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Tensor::from_slice(&idx)
    };
    for _ in 0..subsets {
        let x = fake.index_select(0, &pick(&mut rng, nf));
        let y = real.index_select(0, &pick(&mut rng, nr));
        let a = kernel(&x, &x) + kernel(&y, &y);
        let b = kernel(&x, &y);
        let off_diag = a.sum(Kind::Double).double_value(&[])
            - a.diagonal(0, 0, 1).sum(Kind::Double).double_value(&[]);
        let t = off_diag / (m - 1) as f64 - b.sum(Kind::Double).double_value(&[]) * 2.0 / m as f64;
        values.push(t / m as f64);
    }
    Ok(mean_std(&values))
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

/// The Inception Score over `splits` equal consecutive parts of `total`
/// samples (the remainder beyond `splits * (total / splits)` is left out, as
/// in the original code), streamed: per split it keeps `Σ p(y|x)` and
/// `Σ p log p`, since `mean_x KL(p(y|x) ‖ p(y)) = mean_x Σ p log p - Σ p(y) log p(y)`.
pub struct InceptionScore {
    per_split: usize,
    splits: usize,
    seen: usize,
    sum_p: Vec<Vec<f64>>,
    sum_plogp: Vec<f64>,
    count: Vec<usize>,
}

impl InceptionScore {
    pub fn new(total: usize, splits: usize) -> Result<Self> {
        if splits == 0 || total < splits {
            return Err(Error::invalid(format!(
                "Inception Score: {total} samples cannot make {splits} splits"
            )));
        }
        Ok(InceptionScore {
            per_split: total / splits,
            splits,
            seen: 0,
            sum_p: vec![Vec::new(); splits],
            sum_plogp: vec![0.0; splits],
            count: vec![0; splits],
        })
    }

    /// Adds a batch of class logits [B, C], in sample order.
    pub fn add_logits(&mut self, logits: &Tensor) -> Result<()> {
        let p = logits
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .softmax(-1, Kind::Double)
            .contiguous();
        let size = p.size();
        if size.len() != 2 {
            return Err(Error::invalid(format!(
                "the classifier must return [N, classes] logits, got {size:?}"
            )));
        }
        let c = size[1] as usize;
        let flat = Vec::<f64>::try_from(p.view([-1]))?;
        for row in flat.chunks_exact(c) {
            let split = self.seen / self.per_split;
            self.seen += 1;
            if split >= self.splits {
                continue;
            }
            let s = &mut self.sum_p[split];
            if s.is_empty() {
                s.resize(c, 0.0);
            } else if s.len() != c {
                return Err(Error::invalid(
                    "the classifier changed its number of classes",
                ));
            }
            for (acc, &v) in s.iter_mut().zip(row) {
                *acc += v;
            }
            self.sum_plogp[split] += row.iter().map(|&v| xlogx(v)).sum::<f64>();
            self.count[split] += 1;
        }
        Ok(())
    }

    /// Mean and standard deviation of the per-split scores.
    pub fn finish(&self) -> Result<(f64, f64)> {
        let mut scores = Vec::with_capacity(self.splits);
        for k in 0..self.splits {
            let n = self.count[k];
            if n == 0 {
                return Err(Error::invalid(
                    "Inception Score: a split received no samples",
                ));
            }
            let n = n as f64;
            let marginal: f64 = self.sum_p[k].iter().map(|&s| xlogx(s / n)).sum();
            scores.push((self.sum_plogp[k] / n - marginal).exp());
        }
        // The original reports the population standard deviation (np.std).
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / scores.len() as f64;
        Ok((mean, var.sqrt()))
    }
}

/// `x log x` with `0 log 0 = 0`.
fn xlogx(x: f64) -> f64 {
    if x > 0.0 {
        x * x.ln()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(n: i64, d: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, d], (Kind::Double, Device::Cpu))
    }

    #[test]
    fn streaming_stats_equal_two_pass() {
        let x = randn(300, 8, 1) * 3.0 + 100.0;
        let mut s = FeatureStats::new();
        for chunk in x.split(37, 0) {
            s.add(&chunk).expect("add");
        }
        let g = s.finish().expect("finish");
        let mean = x.mean_dim(0, false, Kind::Double);
        let xc = &x - &mean;
        let cov = xc.tr().matmul(&xc) / 299.0;
        let e_mean = (&g.mean - mean).abs().max().double_value(&[]);
        let e_cov = (&g.cov - cov).abs().max().double_value(&[]);
        assert!(e_mean < 1e-10 && e_cov < 1e-9, "{e_mean} {e_cov}");
    }

    #[test]
    fn fid_of_commuting_covariances_is_closed_form() {
        // Diagonal covariances commute: tr sqrt(S1 S2) = Σ sqrt(a_i b_i).
        let a = [1.0f64, 2.0, 0.5, 4.0];
        let b = [3.0f64, 0.25, 0.5, 1.0];
        let g1 = Gaussian {
            n: 10,
            mean: Tensor::from_slice(&[0.0f64, 1.0, 0.0, 0.0]),
            cov: Tensor::from_slice(&a).diag(0),
        };
        let g2 = Gaussian {
            n: 10,
            mean: Tensor::from_slice(&[1.0f64, 1.0, 0.0, 2.0]),
            cov: Tensor::from_slice(&b).diag(0),
        };
        let want: f64 = 5.0
            + a.iter()
                .zip(&b)
                .map(|(x, y)| x + y - 2.0 * (x * y).sqrt())
                .sum::<f64>();
        let got = frechet_distance(&g1, &g2).expect("fid");
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    #[test]
    fn fid_of_a_rank_deficient_set_with_itself_is_zero() {
        // 50 points in 200 dimensions: singular covariance, as with few images.
        let x = randn(50, 200, 2);
        let mut s = FeatureStats::new();
        s.add(&x).expect("add");
        let g = s.finish().expect("finish");
        let fid = frechet_distance(&g, &g).expect("fid");
        let scale = g.cov.trace().double_value(&[]);
        assert!(fid.abs() < 1e-8 * scale, "{fid} (trace {scale})");
    }

    #[test]
    fn kid_separates_distributions() {
        let x = randn(400, 16, 3);
        let y = randn(400, 16, 4);
        let z = randn(400, 16, 5) + 1.0;
        let (same, _) = kernel_inception_distance(&x, &y, 20, 100, 0).expect("kid");
        let (diff, _) = kernel_inception_distance(&x, &z, 20, 100, 0).expect("kid");
        assert!(same.abs() < 0.05, "{same}");
        assert!(diff > 10.0 * same.abs().max(1e-3), "{diff} vs {same}");
    }

    #[test]
    fn inception_score_of_confident_uniform_predictions_is_the_class_count() {
        // One-hot predictions spread evenly over 5 classes: IS = 5.
        let mut logits = vec![0f32; 100 * 5];
        for i in 0..100 {
            logits[i * 5 + i % 5] = 60.0;
        }
        let t = Tensor::from_slice(&logits).view([100, 5]);
        let mut is = InceptionScore::new(100, 2).expect("new");
        is.add_logits(&t.narrow(0, 0, 33)).expect("add");
        is.add_logits(&t.narrow(0, 33, 67)).expect("add");
        let (mean, std) = is.finish().expect("finish");
        assert!((mean - 5.0).abs() < 1e-6 && std < 1e-6, "{mean} {std}");
        // Identical predictions everywhere: IS = 1.
        let mut one = InceptionScore::new(10, 2).expect("new");
        one.add_logits(&Tensor::ones([10, 5], (Kind::Float, Device::Cpu)))
            .expect("add");
        let (mean, _) = one.finish().expect("finish");
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn reservoir_keeps_at_most_capacity_rows() {
        let mut r = Reservoir::new(10, 7);
        r.add(&randn(25, 3, 6)).expect("add");
        r.add(&randn(25, 3, 8)).expect("add");
        assert_eq!(r.tensor().size(), vec![10, 3]);
        let mut small = Reservoir::new(100, 7);
        let x = randn(5, 3, 9);
        small.add(&x).expect("add");
        let diff = (small.tensor().to_kind(Kind::Double) - x)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6);
    }
}
