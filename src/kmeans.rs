//! k-means clustering of feature vectors, the "Clustering" labels of Lucic et
//! al. 2019 (docs/method.md), at faiss's speed (issue 15):
//! - **Train on a seeded subsample** of at most `sample_per_centroid` points
//!   per cluster (faiss's `max_points_per_centroid`, 256), seed it with greedy
//!   k-means++ or k-means|| and run at most `max_iter` Lloyd iterations on
//!   it, then assign every point once, in one pass. Optional restarts
//!   (`n_init`) keep the run of lowest inertia on the training points, as
//!   scikit-learn does.
//! - Points come as row blocks ([`Points`]): the record batches of an Arrow
//!   table read in place (`shard::mapped`), never gathered into one matrix.
//!
//! Two back-ends:
//! - `torch`: libtorch, squared distances as one matrix product per chunk of
//!   points (`|x|^2 - 2 x.c + |c|^2`, the chunk a view of the block, no copy),
//!   on CUDA when asked. The path for ImageNet-sized inputs.
//! - `linfa`: linfa-clustering's Lloyd iterations (and its mini-batch updates
//!   when there are many points) from our seeding; plain per-point distances,
//!   fine for small problems.
//!
//! Both are deterministic for a seed whatever the thread count: random draws
//! come from seeded ChaCha streams or per-point hashes (never from per-thread
//! generators), sums run in a fixed order, and each point's distances are one
//! row of a matrix product whose rows the BLAS splits between threads but
//! never sums across them (checked by tests/kmeans.rs at 1 and 2 threads).
//! That is also why the seeding is our own: linfa's k-means|| seeds its
//! per-thread generators in rayon's scheduling order.
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

/// Above this many multiply-adds per pass over all points `Backend::Auto`
/// picks libtorch (linfa's per-point distances ran 3x slower than libtorch's
/// matrix product on Fashion-MNIST, 60,000 x 784, k = 10, on this project's
/// 2-core machine).
pub const LINFA_MAX_WORK: f64 = 1e8;
/// Above this many training points the linfa back-end switches to
/// mini-batches (unless told otherwise).
pub const MINIBATCH_ABOVE: usize = 500_000;
/// Training points per centroid by default: faiss's `max_points_per_centroid`.
pub const SAMPLE_PER_CENTROID: usize = 256;
const PARALLEL_ROUNDS: usize = 5;
/// k-means|| seeds from a uniform sample of this many training points per
/// cluster (when there are more): its rounds then cost a fraction of one
/// Lloyd iteration instead of five.
const PARALLEL_SAMPLE_PER_CLUSTER: usize = 32;
/// Elements of one chunk's distance matrix on CPU (32 MB, 8,192 rows at k =
/// 1000): large enough that MKL packs the centroids rarely.
const CPU_CHUNK_ELEMENTS: usize = 8 << 20;
/// The same on CUDA (128 MB).
const DEVICE_CHUNK_ELEMENTS: usize = 32 << 20;
/// On CUDA the training points are uploaded once when they take at most this
/// many bytes, else streamed chunk by chunk on every pass.
const DEVICE_CACHE_BYTES: usize = 8 << 30;
/// k-means|| reads its candidates' distances from one candidates x
/// candidates product when it has at most this many elements (256 MB).
const PAIRWISE_MAX_ELEMENTS: usize = 1 << 26;
/// Cluster sums over fewer values than this run on one thread.
const PARALLEL_SUMS_ABOVE: usize = 1 << 24;
/// Salt of the subsample's random stream (so it differs from the seeding's).
const SAMPLE_SALT: u64 = 0x7375_6273_616d_706c;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub k: usize,
    /// Lloyd iterations at most (for mini-batch: passes over the training points).
    pub max_iter: usize,
    /// Stop when the squared centroid shift, summed over centroids, is at most
    /// `tol` times the mean feature variance of the training points
    /// (scikit-learn's rule); always stop once no training point changes
    /// cluster. 0 (the default, as faiss) runs up to `max_iter` iterations
    /// unless the assignment stops changing.
    pub tol: f64,
    pub init: Init,
    pub seed: u64,
    pub backend: Backend,
    /// Mini-batch size for the linfa back-end: 0 = automatic (4096 when
    /// there are more than [`MINIBATCH_ABOVE`] training points, else full batch).
    pub batch_size: usize,
    /// Where the torch back-end runs.
    pub device: Device,
    /// Train on at most this many points per cluster, drawn uniformly with
    /// the seed; 0 = train on every point.
    pub sample_per_centroid: usize,
    /// Runs from different seeds; the one of lowest training inertia is kept.
    pub n_init: usize,
}

impl Config {
    /// faiss's defaults (25 iterations, 256 points per centroid) with our seeding.
    pub fn new(k: usize, seed: u64) -> Self {
        Config {
            k,
            max_iter: 25,
            tol: 0.0,
            init: Init::Auto,
            seed,
            backend: Backend::Auto,
            batch_size: 0,
            device: Device::Cpu,
            sample_per_centroid: SAMPLE_PER_CENTROID,
            n_init: 1,
        }
    }

    /// How many points the centroids are trained on, out of `n`.
    pub fn train_points(&self, n: usize) -> usize {
        match self.sample_per_centroid {
            0 => n,
            s => n.min(s.saturating_mul(self.k)),
        }
    }
}

/// `n` points of `d` dims as row-major blocks of rows (the batches of a table).
#[derive(Debug, Clone)]
pub struct Points<'a> {
    blocks: Vec<&'a [f32]>,
    /// Row index of each block's first row, then the number of rows.
    starts: Vec<usize>,
    d: usize,
}

impl<'a> Points<'a> {
    /// Blocks of whole rows; empty blocks are dropped.
    pub fn new(blocks: Vec<&'a [f32]>, d: usize) -> Result<Self> {
        if d == 0 {
            return Err(Error::invalid("k-means: points of 0 dims"));
        }
        let mut starts = vec![0];
        let mut kept = Vec::with_capacity(blocks.len());
        for (i, b) in blocks.into_iter().enumerate() {
            if b.len() % d != 0 {
                return Err(Error::invalid(format!(
                    "k-means: block {i} has {} values, not whole points of {d} dims",
                    b.len()
                )));
            }
            if !b.is_empty() {
                starts.push(starts.last().copied().unwrap_or(0) + b.len() / d);
                kept.push(b);
            }
        }
        Ok(Points {
            blocks: kept,
            starts,
            d,
        })
    }

    /// One row-major n x d matrix.
    pub fn contiguous(x: &'a [f32], d: usize) -> Result<Self> {
        Points::new(vec![x], d)
    }

    pub fn n(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    /// Point `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        let r = i - self.starts[b];
        &self.blocks[b][r * self.d..(r + 1) * self.d]
    }

    /// (first row, values) of each block.
    fn blocks(&self) -> impl Iterator<Item = (usize, &'a [f32])> + '_ {
        self.starts.iter().copied().zip(self.blocks.iter().copied())
    }

    /// (first row, values) of pieces of at most `rows` rows, in order.
    fn chunks(&self, rows: usize) -> Vec<(usize, &'a [f32])> {
        let step = rows.max(1) * self.d;
        self.blocks()
            .flat_map(|(s, b)| {
                b.chunks(step)
                    .enumerate()
                    .map(move |(j, c)| (s + j * rows.max(1), c))
            })
            .collect()
    }

    /// The rows `idx`, row-major.
    fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.d);
        for &i in idx {
            out.extend_from_slice(self.row(i));
        }
        out
    }

    /// Applies `f` to each point and its slot of `out` (one per point), in parallel.
    fn par_rows<T: Send>(&self, out: &mut [T], f: impl Fn(&[f32], &mut T) + Sync) {
        let mut rest = out;
        for (_, b) in self.blocks() {
            let (here, tail) = rest.split_at_mut(b.len() / self.d);
            b.par_chunks_exact(self.d)
                .zip(here.par_iter_mut())
                .for_each(|(row, o)| f(row, o));
            rest = tail;
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
    /// Sum of squared distances of every point to its nearest centroid.
    pub inertia: f64,
    /// Points the centroids were trained on.
    pub train_points: usize,
    /// The kept run's inertia on the training points.
    pub train_inertia: f64,
    /// Which of the `n_init` runs was kept (0-based).
    pub best_run: usize,
    /// Lloyd iterations of the kept run.
    pub iterations: usize,
    pub converged: bool,
    pub backend: Backend,
    pub init: Init,
    pub minibatch: bool,
    /// Sampling and seeding, all runs.
    pub init_seconds: f64,
    /// Lloyd iterations, all runs.
    pub iterate_seconds: f64,
    /// The final assignment of every point.
    pub assign_seconds: f64,
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
    fit_points(&Points::contiguous(x, d)?, cfg)
}

/// Clusters `points` into `cfg.k` clusters.
pub fn fit_points(points: &Points, cfg: &Config) -> Result<Clustering> {
    let (n, d, k) = (points.n(), points.dim(), cfg.k);
    if k == 0 || k > n {
        return Err(Error::invalid(format!(
            "k = {k}: need between 1 and the number of points ({n}) clusters"
        )));
    }
    if cfg.n_init == 0 {
        return Err(Error::invalid("n_init = 0: need at least one run"));
    }
    if cfg.max_iter == 0 {
        return Err(Error::invalid("max_iter = 0: need at least one iteration"));
    }
    if !(cfg.tol >= 0.0 && cfg.tol.is_finite()) {
        return Err(Error::invalid(format!("tol = {}: need >= 0", cfg.tol)));
    }
    let t0 = Instant::now();
    check_finite(points)?;
    tracing::debug!(
        "k-means: {n} points checked in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    let (backend, init) = resolve(cfg, n, d);
    let t0 = Instant::now();
    let m = cfg.train_points(n);
    let sample: Vec<f32>;
    let train = if m < n {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ SAMPLE_SALT);
        let mut idx = rand::seq::index::sample(&mut rng, n, m).into_vec();
        // In table order: the gather reads memory forward, and the training
        // set's order (hence every sum over it) depends on the seed alone.
        idx.sort_unstable();
        sample = points.gather(&idx);
        Points::contiguous(&sample, d)?
    } else {
        points.clone()
    };
    let sample_seconds = t0.elapsed().as_secs_f64();
    let mut c = match backend {
        Backend::Linfa => fit_linfa(points, &train, cfg, init)?,
        _ => fit_torch(points, &train, cfg, init)?,
    };
    c.init_seconds += sample_seconds;
    Ok(c)
}

/// The first non-finite value, in point order, is an error (a NaN would
/// otherwise silently take every point to cluster 0).
fn check_finite(points: &Points) -> Result<()> {
    let d = points.dim();
    const ROWS: usize = 1024;
    for (s, b) in points.blocks() {
        let bad = b
            .par_chunks(ROWS * d)
            .position_first(|c| c.iter().any(|v| !v.is_finite()));
        if let Some(c) = bad {
            let off = b[c * ROWS * d..]
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or(0);
            let at = c * ROWS * d + off;
            return Err(Error::invalid(format!(
                "k-means: value {} of point {} is {}; features must be finite",
                at % d,
                s + at / d,
                b[at]
            )));
        }
    }
    Ok(())
}

/// The mean over features of each feature's variance (scikit-learn's tolerance scale).
fn mean_variance(points: &Points) -> f64 {
    let d = points.dim();
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for (_, b) in points.blocks() {
        for row in b.chunks_exact(d) {
            for j in 0..d {
                let v = row[j] as f64;
                mean[j] += v;
                sq[j] += v * v;
            }
        }
    }
    let n = points.n() as f64;
    (0..d)
        .map(|j| (sq[j] / n - (mean[j] / n).powi(2)).max(0.0))
        .sum::<f64>()
        / d as f64
}

/// A uniform number in [0, 1) from a hash of (seed, round, point): the same
/// for a point whichever thread looks at it.
fn point_uniform(seed: u64, round: u64, i: u64) -> f64 {
    let z =
        seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (splitmix(z) >> 11) as f64 / (1u64 << 53) as f64
}

/// The splitmix64 finaliser.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of run `r` of `n_init`: run 0 uses the seed itself, so one run
/// is the same whatever `n_init` says.
fn run_seed(seed: u64, r: usize) -> u64 {
    if r == 0 {
        seed
    } else {
        splitmix(seed.wrapping_add((r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
}

/// f64 prefix sums of non-negative weights, in index order (so a draw does
/// not depend on threads).
fn prefix_sums(w: impl Iterator<Item = f64>) -> Vec<f64> {
    w.scan(0.0f64, |acc, v| {
        *acc += v.max(0.0);
        Some(*acc)
    })
    .collect()
}

/// Draws an index with probability proportional to the weights whose prefix
/// sums are `prefix`; `None` when all are 0.
fn draw_from(prefix: &[f64], rng: &mut ChaCha8Rng) -> Option<usize> {
    let total = *prefix.last()?;
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let u = rng.random::<f64>() * total;
    Some(prefix.partition_point(|&p| p <= u).min(prefix.len() - 1))
}

/// Each point's nearest and second-nearest centroid distance (squared).
#[derive(Debug, Clone)]
struct Top2 {
    arg: Vec<u32>,
    d1: Vec<f32>,
    d2: Vec<f32>,
}

/// Squared distances from every point of one point set to sets of centers.
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
    /// Nearest and second-nearest squared distance to `centers`, and the nearest index.
    fn top2(&self, centers: &[f32], m: usize) -> Result<Top2>;
    /// All squared distances to a few `centers` (n x m, row-major).
    fn dists(&self, centers: &[f32], m: usize) -> Result<Vec<f32>>;
    /// Per-cluster sums (k x d, f64) and counts of the points labelled `labels`.
    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)>;
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    // Eight running sums: independent chains the CPU overlaps, in a fixed order.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            let t = x[j] - y[j];
            acc[j] += t * t;
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

fn sq_norm(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let r = c.remainder();
    for x in c {
        for j in 0..8 {
            acc[j] += x[j] * x[j];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for x in r {
        s += x * x;
    }
    s
}

/// Plain loops over the rows, parallel over points (each point's result is
/// independent of the split, so of the thread count).
struct RustNearest<'p, 'a> {
    x: &'p Points<'a>,
}

impl Nearest for RustNearest<'_, '_> {
    fn n(&self) -> usize {
        self.x.n()
    }

    fn fold(
        &self,
        centers: &[f32],
        _m: usize,
        best: &mut [f32],
        arg: &mut [u32],
        first: u32,
    ) -> Result<()> {
        let d = self.x.dim();
        let mut slots: Vec<(f32, u32)> = best.iter().copied().zip(arg.iter().copied()).collect();
        self.x.par_rows(&mut slots, |row, (b, a)| {
            for (j, c) in centers.chunks_exact(d).enumerate() {
                let v = sq_dist(row, c);
                if v < *b {
                    *b = v;
                    *a = first + j as u32;
                }
            }
        });
        for ((b, a), (sb, sa)) in best.iter_mut().zip(arg.iter_mut()).zip(slots) {
            *b = sb;
            *a = sa;
        }
        Ok(())
    }

    fn top2(&self, centers: &[f32], _m: usize) -> Result<Top2> {
        let d = self.x.dim();
        let mut r = vec![(0u32, f32::INFINITY, f32::INFINITY); self.n()];
        self.x.par_rows(&mut r, |row, o| {
            for (j, c) in centers.chunks_exact(d).enumerate() {
                let v = sq_dist(row, c);
                if v < o.1 {
                    o.2 = o.1;
                    o.1 = v;
                    o.0 = j as u32;
                } else if v < o.2 {
                    o.2 = v;
                }
            }
        });
        Ok(unzip_top2(r))
    }

    fn dists(&self, centers: &[f32], m: usize) -> Result<Vec<f32>> {
        let d = self.x.dim();
        let mut out = vec![vec![0f32; m]; self.n()];
        self.x.par_rows(&mut out, |row, o| {
            for (v, c) in o.iter_mut().zip(centers.chunks_exact(d)) {
                *v = sq_dist(row, c);
            }
        });
        Ok(out.concat())
    }

    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)> {
        Ok(rust_sums(self.x, labels, k))
    }
}

fn unzip_top2(r: Vec<(u32, f32, f32)>) -> Top2 {
    let mut t = Top2 {
        arg: Vec::with_capacity(r.len()),
        d1: Vec::with_capacity(r.len()),
        d2: Vec::with_capacity(r.len()),
    };
    for (a, b, c) in r {
        t.arg.push(a);
        t.d1.push(b);
        t.d2.push(c);
    }
    t
}

/// Cluster sums in f64, one task per (cluster, block of 512 columns): each
/// task adds its cluster's points in index order, so the result is the same
/// for any number of threads, and reads every row as one contiguous run
/// (column strips of every row, the obvious split, miss the cache on each row).
fn rust_sums(x: &Points, labels: &[u32], k: usize) -> (Vec<f64>, Vec<u64>) {
    const COLS: usize = 512;
    let d = x.dim();
    let mut counts = vec![0u64; k];
    for &l in labels {
        counts[l as usize] += 1;
    }
    // The rows in cluster order (a counting sort, stable: index order within a cluster).
    let mut start = vec![0usize; k + 1];
    for c in 0..k {
        start[c + 1] = start[c] + counts[c] as usize;
    }
    let mut next = start.clone();
    let mut rows: Vec<&[f32]> = vec![&[]; labels.len()];
    for (s, b) in x.blocks() {
        for (j, row) in b.chunks_exact(d).enumerate() {
            let c = labels[s + j] as usize;
            rows[next[c]] = row;
            next[c] += 1;
        }
    }
    let blocks = d.div_ceil(COLS);
    let task = |t: usize| {
        let (c, b) = (t / blocks, t % blocks);
        let (c0, c1) = (b * COLS, ((b + 1) * COLS).min(d));
        let mut acc = vec![0f64; c1 - c0];
        for row in &rows[start[c]..start[c + 1]] {
            for (a, v) in acc.iter_mut().zip(&row[c0..c1]) {
                *a += *v as f64;
            }
        }
        acc
    };
    // Small sums on this thread: waking rayon right after a libtorch product
    // costs more than they do (libtorch's OpenMP workers spin for a while).
    let parts: Vec<Vec<f64>> = if labels.len() * d < PARALLEL_SUMS_ABOVE {
        (0..k * blocks).map(task).collect()
    } else {
        (0..k * blocks).into_par_iter().map(task).collect()
    };
    let mut sums = vec![0f64; k * d];
    for (t, part) in parts.into_iter().enumerate() {
        let (c, b) = (t / blocks, t % blocks);
        let c0 = c * d + b * COLS;
        sums[c0..c0 + part.len()].copy_from_slice(&part);
    }
    (sums, counts)
}

/// libtorch: distances as one matrix product per chunk of points.
struct TorchNearest<'p, 'a> {
    x: &'p Points<'a>,
    /// Each point's squared norm, computed in Rust (one row at a time, so
    /// the same for any thread count).
    norms: Vec<f32>,
    device: Device,
    /// On CUDA: (first row, the rows on the device), when they fit [`DEVICE_CACHE_BYTES`].
    cached: Vec<(usize, Tensor)>,
}

/// A CPU tensor viewing `len` rows of `d` values without copying them.
fn view(values: &[f32], d: usize) -> Result<Tensor> {
    let shape = [(values.len() / d) as i64, d as i64];
    // SAFETY: the tensor borrows `values` and is dropped before the caller's
    // borrow ends (every view lives inside one method call); it is only read.
    Ok(unsafe {
        Tensor::f_from_blob(
            values.as_ptr() as *const u8,
            &shape,
            &[],
            Kind::Float,
            Device::Cpu,
        )?
    })
}

fn to_vec<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<T>> {
    Ok(Vec::<T>::try_from(
        &t.f_to_device(Device::Cpu)?.f_contiguous()?.f_view([-1])?,
    )?)
}

impl<'p, 'a> TorchNearest<'p, 'a> {
    fn new(x: &'p Points<'a>, device: Device) -> Result<Self> {
        let mut norms = vec![0f32; x.n()];
        x.par_rows(&mut norms, |row, o| *o = sq_norm(row));
        let mut cached = Vec::new();
        if device != Device::Cpu && x.n() * x.dim() * 4 <= DEVICE_CACHE_BYTES {
            for (s, b) in x.blocks() {
                cached.push((s, view(b, x.dim())?.f_to_device(device)?));
            }
        }
        Ok(TorchNearest {
            x,
            norms,
            device,
            cached,
        })
    }

    /// Rows per chunk for `m` centers.
    fn rows(&self, m: usize) -> usize {
        let elements = match self.device {
            Device::Cpu => CPU_CHUNK_ELEMENTS,
            _ => DEVICE_CHUNK_ELEMENTS,
        };
        (elements / m.max(1)).clamp(256, 65_536)
    }

    /// `-2 c^T` (d x m, a transposed view of m x d) and `|c|^2` (1 x m) on the
    /// device, so that one addmm gives `|c|^2 - 2 x.c`: the squared distance
    /// less `|x|^2`, which is the same for every center, so nearest centers
    /// are found without it. The view, not a contiguous copy: MKL's product
    /// with few centers (k = 10) ran 3.6x faster with it on this machine
    /// (2560 x 3072 x 10, one thread: 17 ms vs 62 ms).
    fn centers(&self, centers: &[f32], m: usize) -> Result<(Tensor, Tensor)> {
        let d = self.x.dim();
        let c = Tensor::f_from_slice(centers)?
            .f_view([m as i64, d as i64])?
            .f_to_device(self.device)?;
        let cn: Vec<f32> = centers.chunks_exact(d).map(sq_norm).collect();
        let cn = Tensor::f_from_slice(&cn)?
            .f_view([1, m as i64])?
            .f_to_device(self.device)?;
        Ok((c.f_mul_scalar(-2.0)?.f_contiguous()?.f_tr()?, cn))
    }

    /// Calls `f(first row, chunk on the device)` for chunks of at most
    /// `rows` points, in order.
    fn for_chunks(
        &self,
        rows: usize,
        mut f: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        if self.cached.is_empty() {
            for (s, c) in self.x.chunks(rows) {
                let t = view(c, self.x.dim())?;
                if self.device == Device::Cpu {
                    f(s, &t)?;
                } else {
                    f(s, &t.f_to_device(self.device)?)?;
                }
            }
            return Ok(());
        }
        for (s, t) in &self.cached {
            let len = t.size()[0] as usize;
            let mut o = 0;
            while o < len {
                let l = rows.min(len - o);
                f(s + o, &t.f_narrow(0, o as i64, l as i64)?)?;
                o += l;
            }
        }
        Ok(())
    }

    /// Calls `g(first row, partial)` with each chunk's `|c|^2 - 2 x.c` (len x
    /// m, on the device). On CPU the product goes into one buffer reused by
    /// every chunk, and the reductions that follow run in libtorch's own
    /// threads: a rayon pass between two products would fight libtorch's
    /// OpenMP workers, which spin for a while after each product, for the two cores.
    fn partials(
        &self,
        centers: &[f32],
        m: usize,
        mut g: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let _g = tch::no_grad_guard();
        let (ct, cn) = self.centers(centers, m)?;
        let rows = self.rows(m);
        let out = match self.device {
            Device::Cpu => Some(Tensor::f_empty(
                [rows as i64, m as i64],
                (Kind::Float, Device::Cpu),
            )?),
            _ => None,
        };
        self.for_chunks(rows, |s, xc| match &out {
            Some(o) => {
                let o = o.f_narrow(0, 0, xc.size()[0])?;
                let _ = cn.f_addmm_out(&o, xc, &ct)?;
                g(s, &o)
            }
            None => g(s, &cn.f_addmm(xc, &ct)?),
        })
    }
}

impl Nearest for TorchNearest<'_, '_> {
    fn n(&self) -> usize {
        self.x.n()
    }

    fn fold(
        &self,
        centers: &[f32],
        m: usize,
        best: &mut [f32],
        arg: &mut [u32],
        first: u32,
    ) -> Result<()> {
        let norms = &self.norms;
        self.partials(centers, m, |s, p| {
            let (v, a) = p.f_min_dim(1, false)?;
            let (v, a): (Vec<f32>, Vec<i64>) = (to_vec(&v)?, to_vec(&a)?);
            for i in 0..v.len() {
                let v = (v[i] + norms[s + i]).max(0.0);
                if v < best[s + i] {
                    best[s + i] = v;
                    arg[s + i] = first + a[i] as u32;
                }
            }
            Ok(())
        })
    }

    fn top2(&self, centers: &[f32], m: usize) -> Result<Top2> {
        let n = self.n();
        let norms = &self.norms;
        let mut t = Top2 {
            arg: vec![0; n],
            d1: vec![0.0; n],
            d2: vec![f32::INFINITY; n],
        };
        self.partials(centers, m, |s, p| {
            let len = p.size()[0] as usize;
            if m >= 2 {
                // The nearest, then the nearest of the rest: two vectorised
                // min passes (libtorch's topk sorts a copy of every row, which
                // cost a third of the matrix product at k = 1000).
                let (v1, a1) = p.f_min_dim(1, false)?;
                let inf = Tensor::f_from_slice(&[f32::INFINITY])?.f_to_device(self.device)?;
                let mut q = p.shallow_clone();
                let _ = q.f_scatter_(
                    1,
                    &a1.f_unsqueeze(1)?,
                    &inf.f_expand([len as i64, 1], false)?,
                )?;
                let v2 = q.f_amin(1, false)?;
                let (v1, a1, v2): (Vec<f32>, Vec<i64>, Vec<f32>) =
                    (to_vec(&v1)?, to_vec(&a1)?, to_vec(&v2)?);
                for i in 0..len {
                    let xn = norms[s + i];
                    t.arg[s + i] = a1[i] as u32;
                    t.d1[s + i] = (v1[i] + xn).max(0.0);
                    t.d2[s + i] = (v2[i] + xn).max(0.0);
                }
            } else {
                let v: Vec<f32> = to_vec(p)?;
                for i in 0..len {
                    t.d1[s + i] = (v[i] + norms[s + i]).max(0.0);
                }
            }
            Ok(())
        })?;
        Ok(t)
    }

    fn dists(&self, centers: &[f32], m: usize) -> Result<Vec<f32>> {
        let norms = &self.norms;
        let mut out = vec![0f32; self.n() * m];
        self.partials(centers, m, |s, p| {
            let v: Vec<f32> = to_vec(p)?;
            for (i, (o, row)) in out[s * m..s * m + v.len()]
                .chunks_exact_mut(m)
                .zip(v.chunks_exact(m))
                .enumerate()
            {
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = (v + norms[s + i]).max(0.0);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn sums(&self, labels: &[u32], k: usize) -> Result<(Vec<f64>, Vec<u64>)> {
        if self.device == Device::Cpu {
            return Ok(rust_sums(self.x, labels, k));
        }
        // On CUDA: one-hot matrix products per chunk (index_add_ would use
        // atomics, whose summation order, hence result, varies run to run).
        let _g = tch::no_grad_guard();
        let d = self.x.dim();
        let mut acc = Tensor::f_zeros([k as i64, d as i64], (Kind::Double, self.device))?;
        let lab: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        let lab = Tensor::f_from_slice(&lab)?.f_to_device(self.device)?;
        self.for_chunks(self.rows(k), |s, xc| {
            let len = xc.size()[0];
            let oh = lab
                .f_narrow(0, s as i64, len)?
                .f_one_hot(k as i64)?
                .f_to_kind(Kind::Float)?;
            let part = oh.f_tr()?.f_mm(xc)?;
            acc = acc.f_add(&part.f_to_kind(Kind::Double)?)?;
            Ok(())
        })?;
        let sums: Vec<f64> = to_vec(&acc)?;
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
    fn build<'p, 'a>(self, x: &'p Points<'a>) -> Result<Box<dyn Nearest + 'p>> {
        Ok(match self {
            Oracle::Rust => Box::new(RustNearest { x }),
            Oracle::Torch(device) => Box::new(TorchNearest::new(x, device)?),
        })
    }
}

/// Squared distances from every point of a set to some of its points, one
/// vector of n per point asked for.
type DistTo<'f> = dyn FnMut(&[usize]) -> Result<Vec<Vec<f32>>> + 'f;

/// [`DistTo`] by products against the points' rows.
fn dist_by_oracle<'f>(
    x: &'f Points,
    oracle: &'f dyn Nearest,
) -> impl FnMut(&[usize]) -> Result<Vec<Vec<f32>>> + 'f {
    move |idx| {
        let m = idx.len();
        let rows: Vec<f32> = idx.iter().flat_map(|&i| x.row(i)).copied().collect();
        let d = oracle.dists(&rows, m)?;
        Ok((0..m)
            .map(|j| d.iter().skip(j).step_by(m).copied().collect())
            .collect())
    }
}

/// Greedy weighted k-means++ (scikit-learn's `_kmeans_plusplus`) over `n`
/// points: each pick draws `2 + ln k` candidates with probability
/// proportional to weight x squared distance to the nearest pick so far, and
/// keeps the one that lowers the total most. Returns the picked indices.
fn kmeans_pp(
    n: usize,
    dist_to: &mut DistTo,
    weights: Option<&[f64]>,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<usize>> {
    let w = |i: usize| weights.map_or(1.0, |w| w[i]);
    let trials = 2 + (k as f64).ln() as usize;
    let first = draw_from(&prefix_sums((0..n).map(w)), rng).unwrap_or(0);
    let mut picks = vec![first];
    let mut best = dist_to(&[first])?.swap_remove(0);
    while picks.len() < k {
        let prefix = prefix_sums((0..n).map(|i| w(i) * best[i] as f64));
        let mut cands: Vec<usize> = Vec::with_capacity(trials);
        for _ in 0..trials {
            match draw_from(&prefix, rng) {
                Some(i) => cands.push(i),
                None => break,
            }
        }
        if cands.is_empty() {
            // Every point sits on a pick: take the lowest unpicked index.
            cands.push((0..n).find(|i| !picks.contains(i)).unwrap_or(0));
        }
        let dist = dist_to(&cands)?;
        // Each candidate's total, summed in point order. On this thread: a
        // rayon pass right after libtorch's product would wait for its
        // OpenMP workers to stop spinning, far longer than the sums take.
        let totals: Vec<f64> = dist
            .iter()
            .map(|dj| {
                best.iter()
                    .zip(dj)
                    .enumerate()
                    .map(|(i, (b, v))| w(i) * b.min(*v) as f64)
                    .sum()
            })
            .collect();
        let mut j = 0;
        for (jj, t) in totals.iter().enumerate() {
            if *t < totals[j] {
                j = jj;
            }
        }
        picks.push(cands[j]);
        for (b, v) in best.iter_mut().zip(&dist[j]) {
            *b = b.min(*v);
        }
    }
    Ok(picks)
}

/// k-means|| (Bahmani et al. 2012): each round keeps every point with
/// probability `l * d^2 / cost` (a per-point hash, not a thread's RNG), then
/// weighted greedy k-means++ picks k of the candidates, weighted by how many
/// points each is nearest to. Returns k x d centroids.
fn kmeans_parallel(
    x: &Points,
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
    oracle.fold(&x.gather(&cands), 1, &mut best, &mut arg, 0)?;
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
            &x.gather(&new),
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
    let cx = x.gather(&cands);
    let c = cands.len();
    let cp = Points::contiguous(&cx, x.dim())?;
    let inner = kind.build(&cp)?;
    let picks = if c * c <= PAIRWISE_MAX_ELEMENTS {
        // Every candidate-to-candidate distance in one product (c x c): the
        // picks then read rows of it, where one product per pick multiplies
        // a few columns at a time (k such products, badly shaped for BLAS).
        let all = inner.dists(&cx, c)?;
        // Row j: every candidate's distance to candidate j (by symmetry).
        let mut rows = |idx: &[usize]| -> Result<Vec<Vec<f32>>> {
            Ok(idx
                .iter()
                .map(|&j| all[j * c..(j + 1) * c].to_vec())
                .collect())
        };
        kmeans_pp(c, &mut rows, Some(&weights), k, rng)?
    } else {
        let mut by_oracle = dist_by_oracle(&cp, inner.as_ref());
        kmeans_pp(c, &mut by_oracle, Some(&weights), k, rng)?
    };
    Ok(cp.gather(&picks))
}

/// Initial centroids (k x d) of the training points by `init`.
fn initial_centroids(
    x: &Points,
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
            Ok(x.gather(&idx))
        }
        Init::KmeansParallel if n > PARALLEL_SAMPLE_PER_CLUSTER * k => {
            let mut idx =
                rand::seq::index::sample(&mut rng, n, PARALLEL_SAMPLE_PER_CLUSTER * k).into_vec();
            idx.sort_unstable();
            let sub = x.gather(&idx);
            let sub = Points::contiguous(&sub, x.dim())?;
            let sub_oracle = kind.build(&sub)?;
            kmeans_parallel(&sub, sub_oracle.as_ref(), k, seed, &mut rng, kind)
        }
        Init::KmeansParallel => kmeans_parallel(x, oracle, k, seed, &mut rng, kind),
        Init::KmeansPlusPlus | Init::Auto => {
            let picks = kmeans_pp(n, &mut dist_by_oracle(x, oracle), None, k, &mut rng)?;
            Ok(x.gather(&picks))
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

/// One run of Lloyd's algorithm on the training points.
struct Run {
    centroids: Vec<f32>,
    iterations: usize,
    converged: bool,
    minibatch: bool,
    /// The training points' assignment to `centroids`, when the run ended
    /// with one (it stopped because no point changed cluster).
    last: Option<Top2>,
}

impl Run {
    /// A full-batch run that ended without a final assignment.
    fn ended(centroids: Vec<f32>, iterations: usize, converged: bool) -> Self {
        Run {
            centroids,
            iterations,
            converged,
            minibatch: false,
            last: None,
        }
    }
}

/// The squared shift below which the iterations stop: `tol` times the mean
/// feature variance of the training points (0 when `tol` is 0).
fn shift_threshold(cfg: &Config, train: &Points) -> f64 {
    if cfg.tol > 0.0 {
        cfg.tol * mean_variance(train)
    } else {
        0.0
    }
}

/// The squared distance the centroids moved, summed over all of them.
fn sq_shift(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
}

/// Lloyd's algorithm over an oracle (the torch back-end).
fn lloyd(train: &Points, oracle: &dyn Nearest, start: Vec<f32>, cfg: &Config) -> Result<Run> {
    let (k, d) = (cfg.k, train.dim());
    let threshold = shift_threshold(cfg, train);
    let mut centroids = start;
    let mut labels = vec![u32::MAX; train.n()];
    let (mut iterations, mut converged) = (0, false);
    while iterations < cfg.max_iter {
        let t = oracle.top2(&centroids, k)?;
        iterations += 1;
        if t.arg == labels {
            return Ok(Run {
                centroids,
                iterations,
                converged: true,
                minibatch: false,
                last: Some(t),
            });
        }
        labels = t.arg;
        let (sums, counts) = oracle.sums(&labels, k)?;
        let next = new_centroids(train, d, &sums, &counts, &t.d1, &centroids);
        let shift = sq_shift(&next, &centroids);
        centroids = next;
        if cfg.tol > 0.0 && shift <= threshold {
            converged = true;
            break;
        }
    }
    Ok(Run::ended(centroids, iterations, converged))
}

/// The runs of one back-end: seeds and trains `n_init` times on `train`,
/// keeps the run of lowest training inertia (the first on ties), then
/// assigns every point.
fn fit_runs(
    points: &Points,
    train: &Points,
    cfg: &Config,
    init: Init,
    backend: Backend,
    kind: Oracle,
    mut one_run: impl FnMut(&dyn Nearest, Vec<f32>) -> Result<Run>,
) -> Result<Clustering> {
    let k = cfg.k;
    let (mut init_seconds, mut iterate_seconds) = (0.0, 0.0);
    let oracle = kind.build(train)?;
    let mut kept: Option<(f64, usize, Run)> = None;
    for r in 0..cfg.n_init {
        let t0 = Instant::now();
        let start =
            initial_centroids(train, oracle.as_ref(), k, init, run_seed(cfg.seed, r), kind)?;
        init_seconds += t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut run = one_run(oracle.as_ref(), start)?;
        // Inertia on the training points, to compare runs (and to report).
        if run.last.is_none() && (cfg.n_init > 1 || train.n() < points.n()) {
            run.last = Some(oracle.top2(&run.centroids, k)?);
        }
        let inertia = run
            .last
            .as_ref()
            .map_or(f64::NAN, |t| t.d1.iter().map(|&v| v as f64).sum());
        iterate_seconds += t1.elapsed().as_secs_f64();
        tracing::debug!(
            "k-means run {r}: seeded in {:.3} s, {} iterations in {:.3} s, training inertia {inertia}",
            t1.duration_since(t0).as_secs_f64(),
            run.iterations,
            t1.elapsed().as_secs_f64()
        );
        if kept.as_ref().is_none_or(|(best, _, _)| inertia < *best) {
            kept = Some((inertia, r, run));
        }
    }
    let (mut train_inertia, best_run, run) = kept.expect("n_init >= 1");
    drop(oracle);
    let t2 = Instant::now();
    let all = match run.last {
        // Training on every point: its last assignment is the answer.
        Some(t) if train.n() == points.n() => t,
        _ => kind.build(points)?.top2(&run.centroids, k)?,
    };
    let inertia = all.d1.iter().map(|&v| v as f64).sum();
    if train.n() == points.n() {
        train_inertia = inertia;
    }
    Ok(Clustering {
        k,
        dim: points.dim(),
        inertia,
        confidence: confidence(&all.d1, &all.d2),
        centroids: run.centroids,
        labels: all.arg,
        train_points: train.n(),
        train_inertia,
        best_run,
        iterations: run.iterations,
        converged: run.converged,
        backend,
        init,
        minibatch: run.minibatch,
        init_seconds,
        iterate_seconds,
        assign_seconds: t2.elapsed().as_secs_f64(),
    })
}

fn fit_torch(points: &Points, train: &Points, cfg: &Config, init: Init) -> Result<Clustering> {
    let kind = Oracle::Torch(cfg.device);
    fit_runs(
        points,
        train,
        cfg,
        init,
        Backend::Torch,
        kind,
        |o, start| lloyd(train, o, start, cfg),
    )
}

/// Means of the clusters; an empty cluster takes the point farthest from its
/// centroid that no other empty cluster took (scikit-learn's relocation).
fn new_centroids(
    x: &Points,
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
                Some(&i) => dst.copy_from_slice(x.row(i)),
                None => dst.copy_from_slice(&old[c * d..(c + 1) * d]),
            }
        }
    }
    out
}

/// linfa-clustering's Lloyd iterations (or mini-batches) from our seeding.
/// Full-batch Lloyd runs one linfa iteration per call, restarting from the
/// previous centroids, so that we count iterations and stop by our rule.
fn fit_linfa(points: &Points, train: &Points, cfg: &Config, init: Init) -> Result<Clustering> {
    use linfa::traits::{Fit, FitWith};
    use linfa::{DatasetBase, ParamGuard};
    use linfa_clustering::{IncrKMeansError, KMeans, KMeansInit};
    use ndarray::{Array2, ArrayView2};
    use rand_xoshiro::rand_core::SeedableRng as _;
    use rand_xoshiro::Xoshiro256Plus;

    let (k, d, m) = (cfg.k, train.dim(), train.n());
    // linfa takes one matrix; small problems only, so a copy is cheap.
    let whole: Vec<f32>;
    let x: &[f32] = match train.blocks.as_slice() {
        [one] => one,
        _ => {
            whole = train.gather(&(0..m).collect::<Vec<_>>());
            &whole
        }
    };
    let view = ArrayView2::from_shape((m, d), x)
        .map_err(|e| Error::invalid(format!("k-means: feature matrix: {e}")))?;
    let matrix = |c: Vec<f32>| {
        Array2::from_shape_vec((k, d), c)
            .map_err(|e| Error::invalid(format!("k-means: centroids: {e}")))
    };
    let params = |init: KMeansInit<f32>, iters: u64, tol: f32| {
        KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(cfg.seed))
            .init_method(init)
            .n_runs(1)
            .tolerance(tol.max(f32::MIN_POSITIVE))
            .max_n_iterations(iters)
    };
    let linfa_err = |e: &dyn std::fmt::Display| Error::invalid(format!("k-means (linfa): {e}"));
    let threshold = shift_threshold(cfg, train);
    let batch = match cfg.batch_size {
        0 if m > MINIBATCH_ABOVE => 4096,
        0 => m,
        b => b.min(m),
    };
    let minibatch = batch < m;
    let full_batch = |start: Vec<f32>| -> Result<Run> {
        let ds = DatasetBase::from(view);
        let mut centroids = start;
        let (mut iterations, mut converged) = (0, false);
        while iterations < cfg.max_iter {
            let model = params(KMeansInit::Precomputed(matrix(centroids.clone())?), 1, 0.0)
                .fit(&ds)
                .map_err(|e| linfa_err(&e))?;
            let next: Vec<f32> = model.centroids().iter().cloned().collect();
            iterations += 1;
            let shift = sq_shift(&centroids, &next);
            centroids = next;
            if shift == 0.0 || (cfg.tol > 0.0 && shift <= threshold) {
                converged = true;
                break;
            }
        }
        Ok(Run::ended(centroids, iterations, converged))
    };
    let mini_batch = |start: Vec<f32>, seed: u64| -> Result<Run> {
        // linfa compares the Euclidean norm of the centroid shift with its tolerance.
        let valid = params(
            KMeansInit::Precomputed(matrix(start)?),
            cfg.max_iter as u64,
            threshold.sqrt() as f32,
        )
        .check()
        .map_err(|e| linfa_err(&e))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d69_6e69);
        let mut model = None;
        let (mut iterations, mut converged) = (0, false);
        'epochs: for _ in 0..cfg.max_iter {
            let mut order: Vec<usize> = (0..m).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
            for idx in order.chunks(batch) {
                let rows = Array2::from_shape_vec((idx.len(), d), train.gather(idx))
                    .map_err(|e| Error::invalid(format!("k-means: batch: {e}")))?;
                let ds = DatasetBase::from(rows);
                iterations += 1;
                match valid.fit_with(model.take(), &ds) {
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
        Ok(Run {
            centroids: m.centroids().iter().cloned().collect(),
            iterations,
            converged,
            minibatch: true,
            last: None,
        })
    };
    let mut r = 0;
    fit_runs(
        points,
        train,
        cfg,
        init,
        Backend::Linfa,
        Oracle::Rust,
        |_, start| {
            let seed = run_seed(cfg.seed, r);
            r += 1;
            if minibatch {
                mini_batch(start, seed)
            } else {
                full_batch(start)
            }
        },
    )
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
    fn blocks_give_the_same_clustering_as_one_matrix() {
        let (x, _) = blobs();
        let blocks = Points::new(vec![&x[..20], &[], &x[20..182], &x[182..]], 2).unwrap();
        assert_eq!(blocks.n(), 150);
        assert_eq!(blocks.row(10), &x[20..22]);
        assert_eq!(blocks.row(91), &x[182..184]);
        for backend in [Backend::Linfa, Backend::Torch] {
            let mut cfg = Config::new(3, 2);
            cfg.backend = backend;
            cfg.sample_per_centroid = 20;
            let one = fit(&x, 150, 2, &cfg).unwrap();
            let many = fit_points(&blocks, &cfg).unwrap();
            assert_eq!(one.labels, many.labels, "{backend:?}");
            assert_eq!(one.centroids, many.centroids, "{backend:?}");
            assert_eq!(one.train_points, 60);
        }
        assert!(Points::new(vec![&x[..3]], 2).is_err());
    }

    #[test]
    fn restarts_keep_the_lowest_training_inertia() {
        let (x, _) = blobs();
        let mut cfg = Config::new(3, 3);
        cfg.init = Init::Random;
        cfg.backend = Backend::Torch;
        let mut seen = Vec::new();
        for s in 0..6 {
            cfg.seed = run_seed(3, s);
            cfg.n_init = 1;
            seen.push(fit(&x, 150, 2, &cfg).unwrap().train_inertia);
        }
        cfg.seed = 3;
        cfg.n_init = 6;
        let best = fit(&x, 150, 2, &cfg).unwrap();
        let lowest = seen.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(best.train_inertia, lowest);
        assert_eq!(seen[best.best_run], lowest);
        assert!((best.inertia - best.train_inertia).abs() < 1e-3);
    }

    #[test]
    fn linfa_minibatch_path_runs_and_clusters() {
        let (x, y) = blobs();
        let mut cfg = Config::new(3, 2);
        cfg.backend = Backend::Linfa;
        cfg.batch_size = 32;
        cfg.sample_per_centroid = 0;
        let c = fit(&x, 150, 2, &cfg).unwrap();
        assert!(c.minibatch && c.iterations > 0);
        assert!(agrees(&c.labels, &y));
    }

    #[test]
    fn empty_clusters_are_relocated_to_far_points() {
        let x = [0.0f32, 0.0, 1.0, 1.0, 100.0, 100.0];
        let p = Points::contiguous(&x, 2).unwrap();
        let sums = [1.0, 1.0, 0.0, 0.0];
        let counts = [2, 0];
        let dist = [0.5f32, 0.5, 9000.0];
        let c = new_centroids(&p, 2, &sums, &counts, &dist, &[0.0; 4]);
        assert_eq!(c, vec![0.5, 0.5, 100.0, 100.0]);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_value() {
        let x = [0.0f32; 4];
        let e = fit(&x, 2, 2, &Config::new(3, 0)).unwrap_err().to_string();
        assert!(e.contains("k = 3") && !e.contains("--"), "{e}");
        assert!(fit(&x, 3, 2, &Config::new(1, 0)).is_err());
        let mut cfg = Config::new(1, 0);
        cfg.n_init = 0;
        assert!(fit(&x, 2, 2, &cfg)
            .unwrap_err()
            .to_string()
            .contains("n_init = 0"));
        let e = fit(&[0.0, 1.0, 2.0, f32::NAN], 2, 2, &Config::new(1, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("value 1 of point 1 is NaN"), "{e}");
    }

    #[test]
    fn point_uniform_is_in_range_and_spread() {
        let v: Vec<f64> = (0..10_000).map(|i| point_uniform(3, 1, i)).collect();
        assert!(v.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
