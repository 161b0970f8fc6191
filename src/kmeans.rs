//! k-means clustering of feature vectors, the "Clustering" labels of Lucic et
//! al. 2019 (METHOD.md). Two back-ends:
//! - `linfa`: linfa-clustering's Lloyd iterations (k-means++ or k-means||
//!   seeding), and its mini-batch updates when there are many points; plain
//!   per-point distances, fine for small problems.
//! - `torch`: libtorch, squared distances as one matrix product per chunk of
//!   points (`|x|^2 - 2 x.c + |c|^2`), on CUDA when asked: the path for
//!   ImageNet-sized inputs (1.28M x 2048, k = 1000).
//!
//! Both are deterministic for a seed whatever the thread count: random draws
//! come from seeded ChaCha streams or per-point hashes (never from per-thread
//! generators), and sums run in a fixed order. That is why k-means|| seeding
//! is our own: linfa's seeds its per-thread generators in rayon's scheduling
//! order, which changes from run to run.
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How the first centroids are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// k-means++ for up to 100 clusters, k-means|| above.
    #[default]
    Auto,
    /// k-means++ (Arthur and Vassilvitskii 2007): k passes over the data.
    #[serde(rename = "kmeans++")]
    KmeansPlusPlus,
    /// k-means|| (Bahmani et al. 2012) on a sample of 32 points per cluster: 5
    /// rounds oversampling k points each, then weighted k-means++ on the candidates.
    KmeansParallel,
    /// k distinct points drawn uniformly (faiss's default).
    Random,
}

/// Which implementation runs the iterations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// linfa for small problems (points x clusters x dims up to 1e8), libtorch
    /// above. By size only, never by device, so the device never changes the choice.
    #[default]
    Auto,
    Linfa,
    Torch,
}

/// Above this many multiply-adds per iteration `Backend::Auto` picks libtorch
/// (linfa's per-point distances ran 3x slower than libtorch's matrix product
/// on Fashion-MNIST, 60,000 x 784, k = 10, on this project's 2-core machine).
pub const LINFA_MAX_WORK: f64 = 1e8;
/// Above this many points the linfa back-end switches to mini-batches (unless told otherwise).
pub const MINIBATCH_ABOVE: usize = 500_000;
const PARALLEL_ROUNDS: usize = 5;
/// k-means|| seeds from a uniform sample of this many points per cluster
/// (when the data has more): its rounds then cost a fraction of one Lloyd
/// iteration instead of five (faiss samples likewise, 256 per centroid, for
/// the whole training).
const PARALLEL_SAMPLE_PER_CLUSTER: usize = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub k: usize,
    /// Lloyd iterations at most (for mini-batch: passes over the data).
    pub max_iter: usize,
    /// Stop when the centroids move less than `tol` times the mean feature
    /// variance (squared, summed over centroids: scikit-learn's rule), or
    /// when no point changes cluster. 0 runs all `max_iter` iterations
    /// unless the assignment stops changing.
    pub tol: f64,
    pub init: Init,
    pub seed: u64,
    pub backend: Backend,
    /// Mini-batch size for the linfa back-end: 0 = automatic (4096 when
    /// there are more than [`MINIBATCH_ABOVE`] points, else full batch).
    pub batch_size: usize,
    /// Where the torch back-end runs.
    pub device: Device,
}

impl Config {
    pub fn new(k: usize, seed: u64) -> Self {
        Config {
            k,
            max_iter: 100,
            tol: 1e-4,
            init: Init::Auto,
            seed,
            backend: Backend::Auto,
            batch_size: 0,
            device: Device::Cpu,
        }
    }
}

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct Clustering {
    pub k: usize,
    pub dim: usize,
    /// k x dim, row-major.
    pub centroids: Vec<f32>,
    /// Each point's nearest centroid.
    pub labels: Vec<u32>,
    /// `1 - d1 / d2` from the Euclidean distances to the nearest and the
    /// second-nearest centroid: 0 on a boundary, 1 at a centroid.
    pub confidence: Vec<f32>,
    /// Sum of squared distances to the nearest centroid.
    pub inertia: f64,
    pub iterations: usize,
    pub converged: bool,
    pub backend: Backend,
    pub init: Init,
    pub minibatch: bool,
    pub init_seconds: f64,
    pub iterate_seconds: f64,
}

/// Resolves `Auto` choices for a problem of `n` points of `d` dims.
pub fn resolve(cfg: &Config, n: usize, d: usize) -> (Backend, Init) {
    let backend = match cfg.backend {
        Backend::Auto if (n as f64) * (cfg.k as f64) * (d as f64) > LINFA_MAX_WORK => {
            Backend::Torch
        }
        Backend::Auto => Backend::Linfa,
        b => b,
    };
    let init = match cfg.init {
        Init::Auto if cfg.k <= 100 => Init::KmeansPlusPlus,
        Init::Auto => Init::KmeansParallel,
        i => i,
    };
    (backend, init)
}

/// Clusters `n` points of `d` dims (`x` row-major, n x d) into `cfg.k` clusters.
pub fn fit(x: &[f32], n: usize, d: usize, cfg: &Config) -> Result<Clustering> {
    if x.len() != n * d || d == 0 {
        return Err(Error::invalid(format!(
            "k-means: {} values are not {n} points of {d} dims",
            x.len()
        )));
    }
    if cfg.k == 0 || cfg.k > n {
        return Err(Error::invalid(format!(
            "--clusters {}: must be between 1 and the number of points ({n})",
            cfg.k
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "k-means: feature {} of point {} is not finite; re-run `embed`",
            i % d,
            i / d
        )));
    }
    let (backend, init) = resolve(cfg, n, d);
    match backend {
        Backend::Linfa => fit_linfa(x, n, d, cfg, init),
        _ => fit_torch(x, n, d, cfg, init),
    }
}

/// The mean over features of each feature's variance (scikit-learn's tolerance scale).
fn mean_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for j in 0..d {
            let v = row[j] as f64;
            mean[j] += v;
            sq[j] += v * v;
        }
    }
    let n = n as f64;
    (0..d)
        .map(|j| (sq[j] / n - (mean[j] / n).powi(2)).max(0.0))
        .sum::<f64>()
        / d as f64
}

/// A uniform number in [0, 1) from a hash of (seed, round, point): the same
/// for a point whichever thread looks at it.
fn point_uniform(seed: u64, round: u64, i: u64) -> f64 {
    let mut z =
        seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Draws an index with probability proportional to `w` (f64 prefix sums in
/// index order, so the draw does not depend on threads); `None` when all are 0.
fn draw_weighted(w: impl Iterator<Item = f64>, rng: &mut ChaCha8Rng) -> Option<usize> {
    let prefix: Vec<f64> = w
        .scan(0.0f64, |acc, v| {
            *acc += v.max(0.0);
            Some(*acc)
        })
        .collect();
    let total = *prefix.last()?;
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let u = rng.random::<f64>() * total;
    Some(prefix.partition_point(|&p| p <= u).min(prefix.len() - 1))
}

/// Squared distances from every point of a data set to sets of centers.
trait Nearest {
    fn n(&self) -> usize;
    /// Folds the distances to `centers` (m x d) into each point's best
    /// (`best`, `arg`), numbering the new centers from `first`; ties keep the
    /// lower index.
    fn fold(
        &self,
        centers: &[f32],
        m: usize,
        best: &mut [f32],
        arg: &mut [u32],
        first: u32,
    ) -> Result<()>;
    /// Each point's nearest and second-nearest squared distance to `centers`, and its nearest index.
    fn top2(&self, centers: &[f32], m: usize) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)>;
    /// Per-cluster sums (k x d, f64) and counts of the points labelled `labels`.
    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)>;
}

/// Plain loops over the rows, parallel over points (each point's result is
/// independent of the split, so of the thread count).
struct RustNearest<'a> {
    x: &'a [f32],
    d: usize,
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

impl Nearest for RustNearest<'_> {
    fn n(&self) -> usize {
        self.x.len() / self.d
    }

    fn fold(
        &self,
        centers: &[f32],
        _m: usize,
        best: &mut [f32],
        arg: &mut [u32],
        first: u32,
    ) -> Result<()> {
        let d = self.d;
        self.x
            .par_chunks_exact(d)
            .zip(best.par_iter_mut().zip(arg.par_iter_mut()))
            .for_each(|(row, (b, a))| {
                for (j, c) in centers.chunks_exact(d).enumerate() {
                    let v = sq_dist(row, c);
                    if v < *b {
                        *b = v;
                        *a = first + j as u32;
                    }
                }
            });
        Ok(())
    }

    fn top2(&self, centers: &[f32], _m: usize) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
        let d = self.d;
        let r: Vec<(u32, f32, f32)> = self
            .x
            .par_chunks_exact(d)
            .map(|row| {
                let (mut a, mut d1, mut d2) = (0u32, f32::INFINITY, f32::INFINITY);
                for (j, c) in centers.chunks_exact(d).enumerate() {
                    let v = sq_dist(row, c);
                    if v < d1 {
                        d2 = d1;
                        d1 = v;
                        a = j as u32;
                    } else if v < d2 {
                        d2 = v;
                    }
                }
                (a, d1, d2)
            })
            .collect();
        Ok(unzip3(r))
    }

    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)> {
        Ok(rust_sums(self.x, self.d, labels, k))
    }
}

fn unzip3(r: Vec<(u32, f32, f32)>) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let mut a = Vec::with_capacity(r.len());
    let mut b = Vec::with_capacity(r.len());
    let mut c = Vec::with_capacity(r.len());
    for (x, y, z) in r {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

/// Cluster sums in f64, parallel over blocks of columns: every column is
/// summed over the points in index order, so the result is the same for any
/// number of threads.
fn rust_sums(x: &[f32], d: usize, labels: &[u32], k: usize) -> (Vec<f64>, Vec<u64>) {
    const BLOCK: usize = 32;
    let blocks: Vec<(usize, Vec<f64>)> = (0..d.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (c0, c1) = (b * BLOCK, ((b + 1) * BLOCK).min(d));
            let w = c1 - c0;
            let mut acc = vec![0f64; k * w];
            for (row, &l) in x.chunks_exact(d).zip(labels) {
                let dst = &mut acc[l as usize * w..(l as usize + 1) * w];
                for (a, v) in dst.iter_mut().zip(&row[c0..c1]) {
                    *a += *v as f64;
                }
            }
            (c0, acc)
        })
        .collect();
    let mut sums = vec![0f64; k * d];
    for (c0, acc) in blocks {
        let w = acc.len() / k;
        for c in 0..k {
            sums[c * d + c0..c * d + c0 + w].copy_from_slice(&acc[c * w..(c + 1) * w]);
        }
    }
    let mut counts = vec![0u64; k];
    for &l in labels {
        counts[l as usize] += 1;
    }
    (sums, counts)
}

/// libtorch: distances as one matrix product per chunk of points.
struct TorchNearest<'a> {
    x_host: &'a [f32],
    x: Tensor,
    norms: Tensor,
    d: usize,
    device: Device,
}

impl<'a> TorchNearest<'a> {
    fn new(x_host: &'a [f32], n: usize, d: usize, device: Device) -> Result<Self> {
        let shape = [n as i64, d as i64];
        let x = if device == Device::Cpu {
            // SAFETY: the tensor borrows `x_host`, which outlives `self` (lifetime 'a);
            // it is only read, and never resized.
            unsafe {
                Tensor::f_from_blob(
                    x_host.as_ptr() as *const u8,
                    &shape,
                    &[],
                    Kind::Float,
                    Device::Cpu,
                )?
            }
        } else {
            Tensor::f_from_slice(x_host)?
                .f_view(shape)?
                .f_to_device(device)?
        };
        let norms = x.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?;
        Ok(TorchNearest {
            x_host,
            x,
            norms,
            d,
            device,
        })
    }

    /// Rows per chunk so that a chunk's distance matrix stays near 128 MB.
    fn chunk(&self, m: usize) -> usize {
        ((32usize << 20) / m.max(1)).clamp(256, 65_536)
    }

    fn centers(&self, centers: &[f32], m: usize) -> Result<(Tensor, Tensor)> {
        let c = Tensor::f_from_slice(centers)?
            .f_view([m as i64, self.d as i64])?
            .f_to_device(self.device)?;
        let cn = c.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?;
        // -2 c^T, so that one addmm gives |c|^2 - 2 x.c.
        Ok((
            c.f_tr()?.f_mul_scalar(-2.0)?.f_contiguous()?,
            cn.f_unsqueeze(0)?,
        ))
    }

    /// `|c|^2 - 2 x.c` for rows [s, s + len) (len x m): the squared distance
    /// less `|x|^2`, which is the same for every center, so the nearest
    /// centers are found without it (one GEMM, no extra pass over the matrix).
    fn partial_dist(&self, s: usize, len: usize, ct2: &Tensor, cn: &Tensor) -> Result<Tensor> {
        let xc = self.x.f_narrow(0, s as i64, len as i64)?;
        Ok(cn.f_addmm(&xc, ct2)?)
    }

    /// Adds `|x|^2` back to selected partial distances (len x j), clamped at
    /// 0: rounding can make a tiny distance negative.
    fn complete(&self, s: usize, len: usize, v: &Tensor) -> Result<Tensor> {
        let xn = self.norms.f_narrow(0, s as i64, len as i64)?;
        let xn = if v.dim() == 2 { xn.f_unsqueeze(1)? } else { xn };
        Ok(v.f_add(&xn)?.f_clamp_min(0.0)?)
    }
}

fn to_vec<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<T>> {
    Ok(Vec::<T>::try_from(
        &t.f_to_device(Device::Cpu)?.f_contiguous()?.f_view([-1])?,
    )?)
}

impl Nearest for TorchNearest<'_> {
    fn n(&self) -> usize {
        self.x_host.len() / self.d
    }

    fn fold(
        &self,
        centers: &[f32],
        m: usize,
        best: &mut [f32],
        arg: &mut [u32],
        first: u32,
    ) -> Result<()> {
        let _g = tch::no_grad_guard();
        let (ct, cn) = self.centers(centers, m)?;
        let (n, step) = (self.n(), self.chunk(m));
        let mut s = 0;
        while s < n {
            let len = step.min(n - s);
            let (v, a) = self.partial_dist(s, len, &ct, &cn)?.f_min_dim(1, false)?;
            let v: Vec<f32> = to_vec(&self.complete(s, len, &v)?)?;
            let a: Vec<i64> = to_vec(&a)?;
            for i in 0..len {
                if v[i] < best[s + i] {
                    best[s + i] = v[i];
                    arg[s + i] = first + a[i] as u32;
                }
            }
            s += len;
        }
        Ok(())
    }

    fn top2(&self, centers: &[f32], m: usize) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
        let _g = tch::no_grad_guard();
        let (ct, cn) = self.centers(centers, m)?;
        let (n, step) = (self.n(), self.chunk(m));
        let (mut arg, mut d1, mut d2) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut s = 0;
        while s < n {
            let len = step.min(n - s);
            let dist = self.partial_dist(s, len, &ct, &cn)?;
            if m >= 2 {
                let (v, a) = dist.f_topk(2, 1, false, true)?;
                let v: Vec<f32> = to_vec(&self.complete(s, len, &v)?)?;
                let a: Vec<i64> = to_vec(&a)?;
                for i in 0..len {
                    arg.push(a[2 * i] as u32);
                    d1.push(v[2 * i]);
                    d2.push(v[2 * i + 1]);
                }
            } else {
                let v: Vec<f32> = to_vec(&self.complete(s, len, &dist.f_view([len as i64])?)?)?;
                arg.extend(std::iter::repeat_n(0u32, len));
                d1.extend(v);
                d2.extend(std::iter::repeat_n(f32::INFINITY, len));
            }
            s += len;
        }
        Ok((arg, d1, d2))
    }

    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)> {
        if self.device == Device::Cpu {
            return Ok(rust_sums(self.x_host, self.d, labels, k));
        }
        // On CUDA: one-hot matrix products per chunk (index_add_ would use
        // atomics, whose summation order, hence result, varies run to run).
        let _g = tch::no_grad_guard();
        let n = self.n();
        let step = self.chunk(k);
        let mut acc = Tensor::f_zeros([k as i64, self.d as i64], (Kind::Double, self.device))?;
        let lab: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        let lab = Tensor::f_from_slice(&lab)?.f_to_device(self.device)?;
        let mut s = 0;
        while s < n {
            let len = step.min(n - s);
            let oh = lab
                .f_narrow(0, s as i64, len as i64)?
                .f_one_hot(k as i64)?
                .f_to_kind(Kind::Float)?;
            let part = oh
                .f_tr()?
                .f_mm(&self.x.f_narrow(0, s as i64, len as i64)?)?;
            acc = acc.f_add(&part.f_to_kind(Kind::Double)?)?;
            s += len;
        }
        let sums: Vec<f64> = to_vec(&acc.f_view([-1])?)?;
        let mut counts = vec![0u64; k];
        for &l in labels {
            counts[l as usize] += 1;
        }
        Ok((sums, counts))
    }
}

/// Which [`Nearest`] implementation to build for a point set.
#[derive(Debug, Clone, Copy)]
enum Oracle {
    Rust,
    Torch(Device),
}

impl Oracle {
    fn build<'a>(self, x: &'a [f32], n: usize, d: usize) -> Result<Box<dyn Nearest + 'a>> {
        Ok(match self {
            Oracle::Rust => Box::new(RustNearest { x, d }),
            Oracle::Torch(device) => Box::new(TorchNearest::new(x, n, d, device)?),
        })
    }
}

fn rows_of(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    out
}

/// Weighted k-means++: picks `k` of the oracle's points, each with probability
/// proportional to weight x squared distance to the nearest pick so far.
fn kmeans_pp(
    x: &[f32],
    d: usize,
    oracle: &dyn Nearest,
    weights: Option<&[f64]>,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<usize>> {
    let n = oracle.n();
    let w = |i: usize| weights.map_or(1.0, |w| w[i]);
    let first = draw_weighted((0..n).map(w), rng).unwrap_or(0);
    let mut picks = vec![first];
    let mut best = vec![f32::INFINITY; n];
    let mut arg = vec![0u32; n];
    oracle.fold(&rows_of(x, d, &[first]), 1, &mut best, &mut arg, 0)?;
    while picks.len() < k {
        let next = match draw_weighted((0..n).map(|i| w(i) * best[i] as f64), rng) {
            Some(i) => i,
            // Every point sits on a pick: take the lowest unpicked index.
            None => (0..n).find(|i| !picks.contains(i)).unwrap_or(0),
        };
        picks.push(next);
        oracle.fold(&rows_of(x, d, &[next]), 1, &mut best, &mut arg, 0)?;
    }
    Ok(picks)
}

/// k-means|| (Bahmani et al. 2012): each round keeps every point with
/// probability `l * d^2 / cost` (a per-point hash, not a thread's RNG), then
/// weighted k-means++ picks k of the candidates, weighted by how many points
/// each is nearest to.
fn kmeans_parallel(
    x: &[f32],
    d: usize,
    oracle: &dyn Nearest,
    k: usize,
    seed: u64,
    rng: &mut ChaCha8Rng,
    kind: Oracle,
) -> Result<Vec<f32>> {
    let n = oracle.n();
    let l = k as f64;
    let mut cands = vec![rng.random_range(0..n)];
    let mut best = vec![f32::INFINITY; n];
    let mut arg = vec![0u32; n];
    oracle.fold(&rows_of(x, d, &cands), 1, &mut best, &mut arg, 0)?;
    for round in 0..PARALLEL_ROUNDS {
        let cost: f64 = best.iter().map(|&v| v as f64).sum();
        if cost <= 0.0 {
            break;
        }
        let new: Vec<usize> = (0..n)
            .filter(|&i| {
                point_uniform(seed, round as u64 + 1, i as u64) < l * best[i] as f64 / cost
            })
            .collect();
        if new.is_empty() {
            continue;
        }
        oracle.fold(
            &rows_of(x, d, &new),
            new.len(),
            &mut best,
            &mut arg,
            cands.len() as u32,
        )?;
        cands.extend(new);
    }
    if cands.len() < k {
        // Too few distinct candidates (tiny or degenerate data): pad with unpicked points.
        let have: std::collections::HashSet<usize> = cands.iter().copied().collect();
        let extra: Vec<usize> = (0..n)
            .filter(|i| !have.contains(i))
            .take(k - cands.len())
            .collect();
        cands.extend(extra);
    }
    let mut weights = vec![0f64; cands.len()];
    for &a in &arg {
        weights[a as usize] += 1.0;
    }
    // Candidates no point is nearest to still deserve a small chance.
    for w in &mut weights {
        if *w == 0.0 {
            *w = 1e-3;
        }
    }
    let cx = rows_of(x, d, &cands);
    let inner = kind.build(&cx, cands.len(), d)?;
    let picks = kmeans_pp(&cx, d, inner.as_ref(), Some(&weights), k, rng)?;
    Ok(rows_of(&cx, d, &picks))
}

/// Initial centroids (k x d) by `init`.
fn initial_centroids(
    x: &[f32],
    d: usize,
    oracle: &dyn Nearest,
    k: usize,
    init: Init,
    seed: u64,
    kind: Oracle,
) -> Result<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = oracle.n();
    match init {
        Init::Random => {
            let idx = rand::seq::index::sample(&mut rng, n, k).into_vec();
            Ok(rows_of(x, d, &idx))
        }
        Init::KmeansParallel if n > PARALLEL_SAMPLE_PER_CLUSTER * k => {
            let mut idx =
                rand::seq::index::sample(&mut rng, n, PARALLEL_SAMPLE_PER_CLUSTER * k).into_vec();
            idx.sort_unstable();
            let sub = rows_of(x, d, &idx);
            let sub_oracle = kind.build(&sub, idx.len(), d)?;
            kmeans_parallel(&sub, d, sub_oracle.as_ref(), k, seed, &mut rng, kind)
        }
        Init::KmeansParallel => kmeans_parallel(x, d, oracle, k, seed, &mut rng, kind),
        Init::KmeansPlusPlus | Init::Auto => {
            let picks = kmeans_pp(x, d, oracle, None, k, &mut rng)?;
            Ok(rows_of(x, d, &picks))
        }
    }
}

fn confidence(d1: &[f32], d2: &[f32]) -> Vec<f32> {
    d1.iter()
        .zip(d2)
        .map(|(&a, &b)| {
            if !b.is_finite() || b <= 0.0 {
                1.0
            } else {
                (1.0 - (a.max(0.0) / b).sqrt()).clamp(0.0, 1.0)
            }
        })
        .collect()
}

/// Lloyd's algorithm over an oracle (the torch back-end).
fn fit_torch(x: &[f32], n: usize, d: usize, cfg: &Config, init: Init) -> Result<Clustering> {
    let k = cfg.k;
    let t0 = Instant::now();
    let kind = Oracle::Torch(cfg.device);
    let oracle = TorchNearest::new(x, n, d, cfg.device)?;
    let mut centroids = initial_centroids(x, d, &oracle, k, init, cfg.seed, kind)?;
    let init_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let threshold = cfg.tol * mean_variance(x, n, d) * k as f64;
    let mut labels = vec![u32::MAX; n];
    let (mut iterations, mut converged) = (0, false);
    let mut best = vec![0f32; n];
    let mut arg = vec![0u32; n];
    while iterations < cfg.max_iter {
        best.fill(f32::INFINITY);
        oracle.fold(&centroids, k, &mut best, &mut arg, 0)?;
        iterations += 1;
        if arg == labels {
            converged = true;
            break;
        }
        std::mem::swap(&mut labels, &mut arg);
        let (sums, counts) = oracle.sums(&labels, k)?;
        let next = new_centroids(x, d, &sums, &counts, &best, &centroids);
        let shift: f64 = next
            .iter()
            .zip(&centroids)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        centroids = next;
        if cfg.tol > 0.0 && shift <= threshold {
            converged = true;
            break;
        }
    }
    let (labels, d1, d2) = oracle.top2(&centroids, k)?;
    Ok(Clustering {
        k,
        dim: d,
        inertia: d1.iter().map(|&v| v as f64).sum(),
        confidence: confidence(&d1, &d2),
        centroids,
        labels,
        iterations,
        converged,
        backend: Backend::Torch,
        init,
        minibatch: false,
        init_seconds,
        iterate_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Means of the clusters; an empty cluster takes the point farthest from its
/// centroid that no other empty cluster took (scikit-learn's relocation).
fn new_centroids(
    x: &[f32],
    d: usize,
    sums: &[f64],
    counts: &[u64],
    dist: &[f32],
    old: &[f32],
) -> Vec<f32> {
    let k = counts.len();
    let mut out = vec![0f32; k * d];
    let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    let mut far: Vec<usize> = Vec::new();
    if !empty.is_empty() {
        let mut order: Vec<usize> = (0..dist.len()).collect();
        // Largest distance first; ties by index, so the choice is deterministic.
        order.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
        far = order.into_iter().take(empty.len()).collect();
    }
    for c in 0..k {
        let dst = &mut out[c * d..(c + 1) * d];
        if counts[c] > 0 {
            let inv = 1.0 / counts[c] as f64;
            for (o, s) in dst.iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                *o = (s * inv) as f32;
            }
        } else if let Some(pos) = empty.iter().position(|&e| e == c) {
            match far.get(pos) {
                Some(&i) => dst.copy_from_slice(&x[i * d..(i + 1) * d]),
                None => dst.copy_from_slice(&old[c * d..(c + 1) * d]),
            }
        }
    }
    out
}

/// linfa-clustering's Lloyd iterations (or mini-batches), seeded by us or by linfa.
/// Full-batch Lloyd runs one linfa iteration per call, restarting from the
/// previous centroids, so that we count iterations and stop by our rule.
fn fit_linfa(x: &[f32], n: usize, d: usize, cfg: &Config, init: Init) -> Result<Clustering> {
    use linfa::traits::{Fit, FitWith};
    use linfa::{DatasetBase, ParamGuard};
    use linfa_clustering::{IncrKMeansError, KMeans, KMeansInit};
    use ndarray::{Array2, ArrayView2};
    use rand_xoshiro::rand_core::SeedableRng as _;
    use rand_xoshiro::Xoshiro256Plus;

    let k = cfg.k;
    let t0 = Instant::now();
    let oracle = RustNearest { x, d };
    let view = ArrayView2::from_shape((n, d), x)
        .map_err(|e| Error::invalid(format!("k-means: feature matrix: {e}")))?;
    let matrix = |c: Vec<f32>| {
        Array2::from_shape_vec((k, d), c)
            .map_err(|e| Error::invalid(format!("k-means: centroids: {e}")))
    };
    let first_init = match init {
        Init::KmeansPlusPlus | Init::Auto => KMeansInit::KMeansPlusPlus,
        Init::Random => KMeansInit::Random,
        // Our deterministic k-means|| (see the module note), handed to linfa.
        Init::KmeansParallel => KMeansInit::Precomputed(matrix(initial_centroids(
            x,
            d,
            &oracle,
            k,
            init,
            cfg.seed,
            Oracle::Rust,
        )?)?),
    };
    let params = |init: KMeansInit<f32>, iters: u64, tol: f32| {
        KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(cfg.seed))
            .init_method(init)
            .n_runs(1)
            .tolerance(tol.max(f32::MIN_POSITIVE))
            .max_n_iterations(iters)
    };
    let linfa_err = |e: &dyn std::fmt::Display| Error::invalid(format!("k-means (linfa): {e}"));
    let threshold = cfg.tol * mean_variance(x, n, d) * k as f64;
    let batch = match cfg.batch_size {
        0 if n > MINIBATCH_ABOVE => 4096,
        0 => n,
        b => b.min(n),
    };
    let minibatch = batch < n;
    let mut init_seconds = 0.0;
    let (centroids, iterations, converged) = if !minibatch {
        let ds = DatasetBase::from(view);
        let (mut centroids, mut iterations, mut converged) = (None::<Vec<f32>>, 0, false);
        while iterations < cfg.max_iter.max(1) {
            let start = match &centroids {
                None => first_init.clone(),
                Some(c) => KMeansInit::Precomputed(matrix(c.clone())?),
            };
            let model = params(start, 1, f32::MIN_POSITIVE)
                .fit(&ds)
                .map_err(|e| linfa_err(&e))?;
            let next: Vec<f32> = model.centroids().iter().cloned().collect();
            iterations += 1;
            if iterations == 1 {
                init_seconds = t0.elapsed().as_secs_f64();
            }
            let shift = centroids.as_ref().map(|c| {
                c.iter()
                    .zip(&next)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            });
            centroids = Some(next);
            if let Some(shift) = shift {
                if shift == 0.0 || (cfg.tol > 0.0 && shift <= threshold) {
                    converged = true;
                    break;
                }
            }
        }
        let c = centroids.ok_or_else(|| Error::invalid("k-means: no iteration ran"))?;
        (c, iterations, converged)
    } else {
        // linfa compares the Euclidean norm of the centroid shift with its tolerance.
        let valid = params(
            first_init,
            cfg.max_iter.max(1) as u64,
            threshold.sqrt() as f32,
        )
        .check()
        .map_err(|e| linfa_err(&e))?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6d69_6e69);
        let mut model = None;
        let (mut iterations, mut converged) = (0, false);
        'epochs: for _ in 0..cfg.max_iter.max(1) {
            let mut order: Vec<usize> = (0..n).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
            for idx in order.chunks(batch) {
                let rows = Array2::from_shape_vec((idx.len(), d), rows_of(x, d, idx))
                    .map_err(|e| Error::invalid(format!("k-means: batch: {e}")))?;
                let ds = DatasetBase::from(rows);
                iterations += 1;
                let out = valid.fit_with(model.take(), &ds);
                if iterations == 1 {
                    init_seconds = t0.elapsed().as_secs_f64();
                }
                match out {
                    Ok(m) => {
                        model = Some(m);
                        converged = true;
                        break 'epochs;
                    }
                    Err(IncrKMeansError::NotConverged(m)) => model = Some(m),
                    Err(e) => return Err(linfa_err(&e)),
                }
            }
        }
        let m = model.ok_or_else(|| Error::invalid("k-means: no mini-batch ran"))?;
        (
            m.centroids().iter().cloned().collect(),
            iterations,
            converged,
        )
    };
    let (labels, d1, d2) = oracle.top2(&centroids, k)?;
    Ok(Clustering {
        k,
        dim: d,
        inertia: d1.iter().map(|&v| v as f64).sum(),
        confidence: confidence(&d1, &d2),
        centroids,
        labels,
        iterations,
        converged,
        backend: Backend::Linfa,
        init,
        minibatch,
        init_seconds,
        iterate_seconds: t0.elapsed().as_secs_f64() - init_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight, well separated 2-D blobs of 50 points each.
    fn blobs() -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let centers = [(0.0, 0.0), (10.0, 10.0), (-10.0, 10.0)];
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..150 {
            let (cx, cy) = centers[i % 3];
            x.push(cx + rng.random_range(-1.0..1.0f32));
            x.push(cy + rng.random_range(-1.0..1.0f32));
            y.push(i % 3);
        }
        (x, y)
    }

    fn agrees(labels: &[u32], truth: &[usize]) -> bool {
        // Same partition up to renaming.
        (0..truth.len())
            .all(|i| (0..truth.len()).all(|j| (labels[i] == labels[j]) == (truth[i] == truth[j])))
    }

    #[test]
    fn every_backend_and_init_finds_separated_blobs() {
        let (x, y) = blobs();
        for backend in [Backend::Linfa, Backend::Torch] {
            for init in [Init::KmeansPlusPlus, Init::KmeansParallel, Init::Random] {
                let mut cfg = Config::new(3, 5);
                cfg.backend = backend;
                cfg.init = init;
                let c = fit(&x, 150, 2, &cfg).unwrap();
                if init != Init::Random {
                    assert!(agrees(&c.labels, &y), "{backend:?} {init:?}");
                }
                assert_eq!(c.backend, backend);
                assert!(c.confidence.iter().all(|v| (0.0..=1.0).contains(v)));
                let again = fit(&x, 150, 2, &cfg).unwrap();
                assert_eq!(
                    c.labels, again.labels,
                    "{backend:?} {init:?} not deterministic"
                );
                assert_eq!(c.centroids, again.centroids);
            }
        }
    }

    #[test]
    fn linfa_minibatch_path_runs_and_clusters() {
        let (x, y) = blobs();
        let mut cfg = Config::new(3, 2);
        cfg.backend = Backend::Linfa;
        cfg.batch_size = 32;
        let c = fit(&x, 150, 2, &cfg).unwrap();
        assert!(c.minibatch && c.iterations > 0);
        assert!(agrees(&c.labels, &y));
    }

    #[test]
    fn empty_clusters_are_relocated_to_far_points() {
        let x = [0.0f32, 0.0, 1.0, 1.0, 100.0, 100.0];
        let sums = [1.0, 1.0, 0.0, 0.0];
        let counts = [2, 0];
        let dist = [0.5f32, 0.5, 9000.0];
        let c = new_centroids(&x, 2, &sums, &counts, &dist, &[0.0; 4]);
        assert_eq!(c, vec![0.5, 0.5, 100.0, 100.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = [0.0f32; 4];
        assert!(fit(&x, 2, 2, &Config::new(3, 0)).is_err());
        assert!(fit(&x, 3, 2, &Config::new(1, 0)).is_err());
        assert!(fit(&[f32::NAN, 0.0], 1, 2, &Config::new(1, 0)).is_err());
    }

    #[test]
    fn point_uniform_is_in_range_and_spread() {
        let v: Vec<f64> = (0..10_000).map(|i| point_uniform(3, 1, i)).collect();
        assert!(v.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
