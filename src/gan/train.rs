//! The GAN training loop (BigGAN-PyTorch `train_fns.GAN_training_function`
//! with compare_gan's S3GAN losses): per step, `d_steps` discriminator
//! updates then one generator update, each accumulated over `accumulation`
//! batches; hinge loss; Adam; EMA of G. Real images come from the shared
//! shard loader ([`crate::train::loader`]), which decodes in parallel and
//! prefetches; state goes into safetensors checkpoints
//! ([`crate::train::checkpoint`]) with the loader position, so a run killed
//! at any point resumes from its last checkpoint and ends with the weights
//! an uninterrupted run would have had (CPU; CUDA kernels may differ in the
//! last bits).
//!
//! Data-parallel ([`Dist`]): `batch_size` is the global batch of one
//! accumulation step, so an update sees `batch_size x accumulation` images
//! whatever the number of ranks. Each of the W ranks takes B/W real images
//! and B/W fakes per accumulated batch, and the gradients are averaged once
//! per update. Batch norm (in G; D has none) takes its moments either over
//! each rank's B/W images, as BigGAN-PyTorch's replicas do, or with
//! `sync_bn` over all B, as compare_gan's cross-replica batch norm does:
//! - per rank: rank r's k-th batch draws the latents (and reads the data) a
//!   single process with batch B/W and accumulation A x W draws for its
//!   batch k x W + r, so such a run is the reference the 2-rank test is held
//!   to; spectral norm's power iteration, which moves once per training
//!   forward, is moved W - 1 more times per forward on each rank for the
//!   same reason (a few matrix-vector products per layer). Batch-norm
//!   running statistics are rank 0's.
//! - `sync_bn`: rank r's k-th batch is the r-th slice of a single process's
//!   k-th batch of B (latents and data), and that process is the reference;
//!   the running statistics are the whole batch's on every rank.
//!
//! Rank 0 alone reads a checkpoint (its state is broadcast) and writes
//! anything.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::dist::Dist;
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::write_atomic;
use crate::gan::ema::{standing_stats, Ema};
use crate::gan::losses::{accuracy, cross_entropy, d_hinge, g_hinge, masked_cross_entropy};
use crate::gan::modes::{GanMode, RealLabels};
use crate::gan::rotation::RotationLayout;
use crate::gan::sample::{grid_inputs, grid_png, grid_row_labels, ModelInfo, EMA_FILE, MODEL_FILE};
use crate::gan::seed_all;
use crate::gan::tfevents::EventWriter;
use crate::models::biggan::{parameter_count, Config, Discriminator, Generator, Projection};
use crate::models::layers::{advance_spectral_norms, LayerCtx};
use crate::train::checkpoint::{load_variables, named_variables, Checkpoints};
use crate::train::loader::{Augment, Loader, LoaderConfig};
use crate::train::log::MetricsLog;
use crate::train::optim::{OptimConfig, Optimizer};

/// Everything the loop needs (the stage fills it from its `Params`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub mode: GanMode,
    pub model: Config,
    pub class_names: Vec<String>,
    pub steps: u64,
    pub batch_size: i64,
    pub accumulation: i64,
    pub d_steps: u64,
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub ema_decay: f64,
    pub ema_start: u64,
    pub rotated_batch_fraction: i64,
    pub weight_rotation_d: f64,
    pub weight_rotation_g: f64,
    pub weight_class: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub log_every: u64,
    /// Steps between scorings of the EMA generator (0: none).
    #[serde(default)]
    pub eval_every: u64,
    pub keep_checkpoints: usize,
    pub standing_batches: usize,
    pub grid_rows: i64,
    pub grid_cols: i64,
    pub bf16: bool,
    /// Batch-norm moments over every rank's images (see the module doc).
    #[serde(default)]
    pub sync_bn: bool,
    /// compare_gan's distorted crops of the stored images, resized to the
    /// model's resolution, instead of the stored images as they are.
    pub distorted_crops: bool,
}

/// Scores the EMA generator while it trains (`train-gan --eval-every`, as
/// compare_gan and BigGAN-PyTorch score their checkpoints): figures such
/// as FID and IS, logged under their names beside the losses. The loop
/// calls it on rank 0, after recomputing the standing statistics.
pub trait Scorer {
    fn score(&mut self, g: &Generator, step: u64) -> Result<Vec<(String, f64)>>;
}

/// Mean of each scalar since the last log line.
#[derive(Default)]
pub struct Scalars(BTreeMap<String, (f64, u64)>);

impl Scalars {
    fn add(&mut self, k: &str, v: f64) {
        // The key is kept even for NaN, so every rank holds the same keys.
        let e = self.0.entry(k.to_string()).or_insert((0.0, 0));
        if v.is_nan() {
            return;
        }
        e.0 += v;
        e.1 += 1;
    }

    /// The means since the last call, over every rank's values.
    fn take(&mut self, dist: Dist) -> Result<Vec<(String, f64)>> {
        if dist.world() > 1 {
            let mut v: Vec<f64> = self.0.values().flat_map(|(s, n)| [*s, *n as f64]).collect();
            dist.sum_f64(&mut v)?;
            for ((s, n), pair) in self.0.values_mut().zip(v.chunks(2)) {
                (*s, *n) = (pair[0], pair[1] as u64);
            }
        }
        let out = self
            .0
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(k, (s, n))| (k.clone(), s / *n as f64))
            .collect();
        self.0.clear();
        Ok(out)
    }
}

/// Stops the run when a loss term is NaN or infinite, naming the step and term.
fn finite(step: u64, term: &str, t: &Tensor) -> Result<f64> {
    let v = t.double_value(&[]);
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NonFinite {
            step,
            term: term.to_string(),
            value: v,
        })
    }
}

/// A real batch on the device: images, labels (-1 = unknown), known mask.
pub struct RealBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub known: Tensor,
}

/// G, D, the EMA generator and their optimisers.
pub struct Gan {
    pub cfg: TrainConfig,
    pub device: Device,
    pub vs_g: VarStore,
    pub vs_d: VarStore,
    pub vs_ema: VarStore,
    pub g: Generator,
    pub d: Discriminator,
    pub g_ema: Generator,
    pub opt_g: Optimizer,
    pub opt_d: Optimizer,
    pub ema: Ema,
    layout: Option<RotationLayout>,
    /// The job this process is a rank of, and its share of each batch.
    pub dist: Dist,
    pub local_batch: i64,
}

impl Gan {
    pub fn new(cfg: &TrainConfig, device: Device) -> Result<Self> {
        Self::on(cfg, device, Dist::single())
    }

    /// The GAN of one rank of `dist`: B / W images of each batch.
    pub fn on(cfg: &TrainConfig, device: Device, dist: Dist) -> Result<Self> {
        let world = dist.world() as i64;
        if cfg.batch_size % world != 0 {
            return Err(Error::invalid(format!(
                "batch size {} over {world} ranks: the world size must divide the batch",
                cfg.batch_size
            )));
        }
        let local_batch = cfg.batch_size / world;
        let layout = if cfg.mode.rotation() {
            Some(RotationLayout::new(
                local_batch,
                cfg.rotated_batch_fraction,
            )?)
        } else {
            None
        };
        crate::train::seed_torch(cfg.seed);
        let vs_g = VarStore::new(device);
        let vs_d = VarStore::new(device);
        let vs_ema = VarStore::new(device);
        let g_ctx = LayerCtx::new(cfg.bf16);
        if cfg.sync_bn && world > 1 {
            g_ctx.set_sync_bn(dist);
        }
        let g = Generator::new(&vs_g.root(), &cfg.model, &g_ctx);
        let d = Discriminator::new(&vs_d.root(), &cfg.model, &LayerCtx::new(cfg.bf16));
        let g_ema = Generator::new(&vs_ema.root(), &cfg.model, &LayerCtx::new(false));
        let ema = Ema::new(&vs_g, &vs_ema, cfg.ema_decay, cfg.ema_start);
        ema.copy_all();
        let opt_g = Optimizer::new(OptimConfig::adam(cfg.beta1, cfg.beta2), &vs_g);
        let opt_d = Optimizer::new(OptimConfig::adam(cfg.beta1, cfg.beta2), &vs_d);
        Ok(Gan {
            cfg: cfg.clone(),
            device,
            vs_g,
            vs_d,
            vs_ema,
            g,
            d,
            g_ema,
            opt_g,
            opt_d,
            ema,
            layout,
            dist,
            local_batch,
        })
    }

    /// The number of this rank's k-th accumulated batch among everyone's:
    /// k x W + r (k itself in a single process).
    pub fn micro(&self, k: u64) -> u64 {
        k * self.dist.world() as u64 + self.dist.rank() as u64
    }

    /// Whether batch norm takes its moments over every rank's images.
    fn synced(&self) -> bool {
        self.cfg.sync_bn && self.dist.world() > 1
    }

    /// Runs a training forward of the network in `vs` as this rank's share
    /// of the job's: without `sync_bn`, spectral norm moves for the ranks
    /// before it, then for those after it, as one process running all of
    /// them in turn would (with it, the reference runs one forward too).
    fn forward<T>(&self, vs: &VarStore, f: impl FnOnce() -> T) -> Result<T> {
        let (r, w) = (self.dist.rank() as u64, self.dist.world() as u64);
        let advance = !self.synced();
        if advance {
            advance_spectral_norms(vs, r);
        }
        let out = f();
        if advance {
            advance_spectral_norms(vs, w - 1 - r);
        }
        match self.g.ctx.take_failure() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// This rank's rows of a per-batch draw of `local_batch x W` rows
    /// (`sync_bn`: its slice of the whole batch's draw), else all of `t`.
    fn my_rows(&self, t: Tensor) -> Tensor {
        if self.synced() {
            t.narrow(
                0,
                self.dist.rank() as i64 * self.local_batch,
                self.local_batch,
            )
        } else {
            t
        }
    }

    /// Rows drawn per batch: the whole batch with `sync_bn` (each rank keeps its slice).
    fn drawn(&self) -> i64 {
        if self.synced() {
            self.cfg.batch_size
        } else {
            self.local_batch
        }
    }

    /// The number `seed_all` takes for this rank's k-th batch: the
    /// reference process's batch this one is (a share of).
    fn draw_index(&self, k: u64) -> u64 {
        if self.synced() {
            k
        } else {
            self.micro(k)
        }
    }

    /// Makes every rank's weights, EMA and optimiser state rank 0's.
    pub fn sync_from_rank0(&mut self) -> Result<()> {
        if !self.dist.is_launched() {
            return Ok(());
        }
        // The step counters are plain numbers, not tensors the broadcast can fill.
        let steps = ["opt_g.step", "opt_d.step"];
        let tensors: Vec<Tensor> = self
            .state()
            .into_iter()
            .filter(|(k, _)| !steps.contains(&k.as_str()))
            .map(|(_, t)| t)
            .collect();
        self.dist.broadcast_from_rank0(&tensors)?;
        let g = self.dist.broadcast_u64(self.opt_g.steps())?;
        self.opt_g.set_steps(g);
        let d = self.dist.broadcast_u64(self.opt_d.steps())?;
        self.opt_d.set_steps(d);
        Ok(())
    }

    /// z and sampled labels for the fakes of (step, phase, k).
    fn latents(&self, step: u64, phase: u64, k: u64) -> (Tensor, Tensor) {
        seed_all(self.cfg.seed, &[step, phase, self.draw_index(k)]);
        let b = self.drawn();
        let z = Tensor::randn([b, self.cfg.model.z_dim], (Kind::Float, self.device));
        let y = Tensor::randint(self.cfg.model.n_classes, [b], (Kind::Int64, self.device));
        (self.my_rows(z), self.my_rows(y))
    }

    /// Moves a loader batch to the device with the labels the mode projects.
    pub fn real_batch(
        &self,
        images: &Tensor,
        labels: &[Option<i64>],
        step: u64,
        k: u64,
    ) -> RealBatch {
        let b = labels.len() as i64;
        let images = images.to_device(self.device);
        let (labels, known) = match self.cfg.mode.real_labels() {
            RealLabels::FromData | RealLabels::CoTraining => {
                let l: Vec<i64> = labels.iter().map(|l| l.unwrap_or(-1)).collect();
                let k: Vec<bool> = labels.iter().map(|l| l.is_some()).collect();
                (
                    Tensor::from_slice(&l).to_device(self.device),
                    Tensor::from_slice(&k).to_device(self.device),
                )
            }
            RealLabels::Random => {
                seed_all(self.cfg.seed, &[step, 7, k]);
                let drawn = if self.synced() {
                    self.cfg.batch_size
                } else {
                    b
                };
                let y = Tensor::randint(
                    self.cfg.model.n_classes,
                    [drawn],
                    (Kind::Int64, self.device),
                );
                (
                    self.my_rows(y),
                    Tensor::ones([b], (Kind::Bool, self.device)),
                )
            }
            RealLabels::Single | RealLabels::None => (
                Tensor::zeros([b], (Kind::Int64, self.device)),
                Tensor::ones([b], (Kind::Bool, self.device)),
            ),
        };
        RealBatch {
            images,
            labels,
            known,
        }
    }

    fn projection<'a>(&self, labels: &'a Tensor, known: &'a Tensor) -> Projection<'a> {
        match self.cfg.mode.real_labels() {
            RealLabels::None => Projection::None,
            RealLabels::CoTraining => Projection::FillIn { labels, known },
            _ => Projection::Labels(labels),
        }
    }

    /// One discriminator update over `batches` (accumulated). `d` numbers
    /// the D step within the G step (its fakes get their own latents).
    pub fn d_step(
        &mut self,
        step: u64,
        d: u64,
        batches: &[RealBatch],
        out: &mut Scalars,
    ) -> Result<()> {
        self.opt_d.zero_grad();
        let accum = batches.len() as f64;
        for (k, real) in batches.iter().enumerate() {
            let (z, yf) = self.latents(step, 1 + d, k as u64);
            let b = self.local_batch;
            let fake =
                tch::no_grad(|| self.forward(&self.vs_g, || self.g.forward_t(&z, &yf, true)))?;
            let (rx, ry, rk) = match &self.layout {
                Some(l) => (
                    l.append_images(&real.images),
                    l.append_rows(&real.labels),
                    l.append_rows(&real.known),
                ),
                None => (
                    real.images.shallow_clone(),
                    real.labels.shallow_clone(),
                    real.known.shallow_clone(),
                ),
            };
            let r = rx.size()[0];
            // Rotated fakes are left out: D is not trained on their rotation
            // and, without batch norm in D, they change nothing else.
            let x = Tensor::cat(&[rx, fake], 0);
            let y = Tensor::cat(&[ry, yf.shallow_clone()], 0);
            let known = Tensor::cat(&[rk, Tensor::ones([b], (Kind::Bool, self.device))], 0);
            let o = self.forward(&self.vs_d, || {
                self.d.forward_t(&x, self.projection(&y, &known), true)
            })?;
            let (lr, lf) = d_hinge(&o.logit.narrow(0, 0, b), &o.logit.narrow(0, r, b));
            let mut loss = &lr + &lf;
            out.add("d/loss_real", finite(step, "D hinge loss (real)", &lr)?);
            out.add("d/loss_fake", finite(step, "D hinge loss (fake)", &lf)?);
            out.add(
                "d/real_logit",
                o.logit.narrow(0, 0, b).mean(Kind::Float).double_value(&[]),
            );
            out.add(
                "d/fake_logit",
                o.logit.narrow(0, r, b).mean(Kind::Float).double_value(&[]),
            );
            if let (Some(l), Some(rot)) = (&self.layout, &o.rotation_logits) {
                let logits = l.rotation_rows(&rot.narrow(0, 0, r));
                let t = l.targets(self.device);
                let ce = cross_entropy(&logits, &t);
                out.add(
                    "d/rotation_loss",
                    finite(step, "D rotation loss (real)", &ce)?,
                );
                out.add("d/rotation_accuracy", accuracy(&logits, &t, None));
                loss += ce * self.cfg.weight_rotation_d;
            }
            if let Some(cls) = &o.class_logits {
                let (yl, kl) = (real.labels.narrow(0, 0, b), real.known.narrow(0, 0, b));
                let logits = cls.narrow(0, 0, b);
                let ce = masked_cross_entropy(&logits, &yl, &kl);
                out.add("d/class_loss", finite(step, "D class-head loss", &ce)?);
                out.add("d/class_accuracy", accuracy(&logits, &yl, Some(&kl)));
                loss += ce * self.cfg.weight_class;
            }
            out.add(
                "data/labelled_fraction",
                real.known
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[]),
            );
            let total = finite(step, "D loss", &loss)?;
            out.add("d/loss", total);
            (loss / accum).f_backward()?;
        }
        self.dist.average_gradients(&self.vs_d)?;
        self.opt_d.step(self.cfg.lr_d);
        Ok(())
    }

    /// One generator update (accumulated), then the EMA update.
    pub fn g_step(&mut self, step: u64, out: &mut Scalars) -> Result<()> {
        self.opt_g.zero_grad();
        let accum = self.cfg.accumulation;
        for k in 0..accum {
            let (z, yf) = self.latents(step, 0, k as u64);
            let b = self.local_batch;
            let fake = self.forward(&self.vs_g, || self.g.forward_t(&z, &yf, true))?;
            let (fx, fy) = match &self.layout {
                Some(l) => (l.append_images(&fake), l.append_rows(&yf)),
                None => (fake, yf),
            };
            let proj = match self.cfg.mode.real_labels() {
                RealLabels::None => Projection::None,
                _ => Projection::Labels(&fy),
            };
            let o = self.forward(&self.vs_d, || self.d.forward_t(&fx, proj, true))?;
            let gl = g_hinge(&o.logit.narrow(0, 0, b));
            out.add("g/loss_adv", finite(step, "G hinge loss", &gl)?);
            let mut loss = gl;
            if let (Some(l), Some(rot)) = (&self.layout, &o.rotation_logits) {
                let logits = l.rotation_rows(rot);
                let t = l.targets(self.device);
                let ce = cross_entropy(&logits, &t);
                out.add(
                    "g/rotation_loss",
                    finite(step, "G rotation loss (fake)", &ce)?,
                );
                out.add("g/rotation_accuracy", accuracy(&logits, &t, None));
                loss += ce * self.cfg.weight_rotation_g;
            }
            out.add("g/loss", finite(step, "G loss", &loss)?);
            (loss / accum as f64).f_backward()?;
        }
        self.dist.average_gradients(&self.vs_g)?;
        self.opt_g.step(self.cfg.lr_g);
        self.ema.update(step);
        Ok(())
    }

    /// Every tensor of the run's state, named for the checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut t = named_variables(&self.vs_g, "g.");
        t.extend(named_variables(&self.vs_d, "d."));
        t.extend(named_variables(&self.vs_ema, "ema."));
        t.extend(self.opt_g.state_tensors("opt_g."));
        t.extend(self.opt_d.state_tensors("opt_d."));
        t
    }

    /// Recomputes the EMA generator's standing batch-norm statistics.
    fn standing(&self) {
        standing_stats(
            &self.g_ema,
            self.cfg.standing_batches,
            self.cfg.batch_size,
            self.cfg.seed,
            self.device,
        );
    }

    /// The EMA generator's grid from fixed z (standing stats first).
    pub fn grid(&self) -> Result<(Vec<u8>, u32, u32)> {
        self.standing();
        let (z, y, rows, cols) = grid_inputs(
            &self.cfg.model,
            self.cfg.grid_rows,
            self.cfg.grid_cols,
            self.cfg.seed,
            self.device,
        );
        let x = tch::no_grad(|| self.g_ema.forward_t(&z, &y, false));
        let names = grid_row_labels(&self.cfg.model, self.cfg.grid_rows, &self.cfg.class_names);
        grid_png(&x, rows, cols, &names)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: u64,
    /// The scorer's figures at each step it ran (this process's run only).
    pub evals: Vec<(u64, Vec<(String, f64)>)>,
    pub resumed_from: u64,
    pub g_params: i64,
    pub d_params: i64,
    pub images_per_s: f64,
    pub last: BTreeMap<String, f64>,
    pub seconds_data: f64,
    pub seconds_train: f64,
}

/// Trains in `out` (checkpoints/, samples/, tensorboard/, metrics.jsonl,
/// then model.json and ema.safetensors), resuming from the newest
/// checkpoint there when `resume` is set. As one rank of `dist`, only rank
/// 0 reads the checkpoint and writes. With `cfg.eval_every`, rank 0 scores
/// the EMA generator with `scorer` every that many steps and at the last.
pub fn train(
    cfg: &TrainConfig,
    files: Vec<PathBuf>,
    out: &Path,
    device: Device,
    resume: bool,
    dist: Dist,
    mut scorer: Option<&mut dyn Scorer>,
) -> Result<TrainOutcome> {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut gan = Gan::on(cfg, device, dist)?;
    let writes = dist.is_rank0();
    let ckpts = Checkpoints::new(out.join("checkpoints"), cfg.keep_checkpoints);
    let mut start = 0u64;
    if resume && writes {
        if let Some(c) = ckpts.latest()? {
            load_variables(&gan.vs_g, "g.", &c)?;
            load_variables(&gan.vs_d, "d.", &c)?;
            load_variables(&gan.vs_ema, "ema.", &c)?;
            gan.opt_g.load_state(&c, "opt_g.")?;
            gan.opt_d.load_state(&c, "opt_d.")?;
            start = c.step;
        }
    }
    start = dist.broadcast_u64(start)?;
    gan.sync_from_rank0()?;
    let mut lcfg = LoaderConfig::train(gan.local_batch as usize, cfg.seed);
    lcfg.label_column = Some("label".to_string());
    (lcfg.rank, lcfg.world) = (dist.rank(), dist.world());
    // Each step reads d_steps x accumulation batches on every rank: a
    // resumed run skips exactly what the checkpointed steps consumed.
    let per_step = cfg.d_steps * cfg.accumulation as u64;
    lcfg.skip_batches = start * per_step * dist.world() as u64;
    if cfg.distorted_crops {
        lcfg.augment = Augment::Distorted {
            size: cfg.model.resolution as usize,
        };
    }
    let mut loader = Loader::new(files, lcfg)?;
    let (h, w) = loader.image_size();
    let res = cfg.model.resolution as usize;
    if h != w || h % res != 0 {
        return Err(Error::invalid(format!(
            "the training images are {w}x{h} but the model's resolution is {res}: it needs square images of {res} (or a multiple of it)"
        )));
    }
    let factor = (h / res) as i64;

    let samples = out.join("samples");
    let (mut log, mut events) = if writes {
        fs::create_dir_all(&samples).at(&samples)?;
        let log = if start > 0 {
            MetricsLog::resume(out.join("metrics.jsonl"), start)?
        } else {
            MetricsLog::create(out.join("metrics.jsonl"))?
        };
        (
            Some(log),
            Some(EventWriter::create(&out.join("tensorboard"))?),
        )
    } else {
        (None, None)
    };
    let bar = crate::progress::bar(cfg.steps, "steps");
    bar.set_position(start);
    let delay = std::env::var("FEWLABELS_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());

    let mut scalars = Scalars::default();
    let mut lines = crate::progress::LogLines::new();
    let t_start = Instant::now();
    let mut last = BTreeMap::new();
    let mut evals: Vec<(u64, Vec<(String, f64)>)> = Vec::new();
    let (mut t_data, mut t_train) = (0.0, 0.0);
    let mut images_since = 0u64;
    let mut since = Instant::now();
    let mut images_per_s = 0.0;
    for step in start + 1..=cfg.steps {
        for d in 0..cfg.d_steps {
            let t0 = Instant::now();
            let mut batches = Vec::new();
            for k in 0..cfg.accumulation {
                let b = loader
                    .next()
                    .ok_or_else(|| Error::invalid("the training loader stopped early"))??;
                let images = if factor > 1 {
                    b.images.avg_pool2d(
                        [factor, factor],
                        [factor, factor],
                        [0, 0],
                        false,
                        true,
                        None,
                    )
                } else {
                    b.images
                };
                let k = gan.draw_index(k as u64);
                batches.push(gan.real_batch(&images, &b.labels, step, d * 1000 + k));
            }
            let t1 = Instant::now();
            t_data += (t1 - t0).as_secs_f64();
            gan.d_step(step, d, &batches, &mut scalars)?;
            t_train += t1.elapsed().as_secs_f64();
            images_since += (cfg.batch_size * cfg.accumulation) as u64;
        }
        let t1 = Instant::now();
        gan.g_step(step, &mut scalars)?;
        t_train += t1.elapsed().as_secs_f64();
        bar.inc(1);
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }

        let last_step = step == cfg.steps;
        let eval_now = cfg.eval_every > 0 && (step % cfg.eval_every == 0 || last_step);
        if step % cfg.log_every == 0 || last_step || eval_now {
            let secs = since.elapsed().as_secs_f64();
            images_per_s = images_since as f64 / secs.max(1e-9);
            images_since = 0;
            let mut vals = scalars.take(dist)?;
            vals.push(("speed/images_per_s".to_string(), images_per_s));
            // The scoring is not training: its time stays out of images/s.
            if let (true, Some(sc), true) = (eval_now, scorer.as_mut(), writes) {
                gan.standing();
                let t_eval = Instant::now();
                let figures = sc.score(&gan.g_ema, step)?;
                vals.extend(figures.iter().map(|(k, v)| (format!("eval/{k}"), *v)));
                vals.push(("eval/seconds".to_string(), t_eval.elapsed().as_secs_f64()));
                evals.push((step, figures));
            }
            since = Instant::now();
            let mut rec = serde_json::Map::new();
            rec.insert("step".into(), json!(step));
            for (k, v) in &vals {
                rec.insert(k.clone(), json!(v));
                last.insert(k.clone(), *v);
            }
            if let (Some(log), Some(events)) = (log.as_mut(), events.as_mut()) {
                log.write(&rec)?;
                let refs: Vec<(&str, f64)> = vals.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                events.scalars(step as i64, &refs)?;
            }
            bar.set_message(format!(
                "D {:.3} G {:.3} {:.0} img/s",
                last.get("d/loss").copied().unwrap_or(f64::NAN),
                last.get("g/loss").copied().unwrap_or(f64::NAN),
                images_per_s
            ));
            if writes && lines.due(last_step) {
                // The log a batch scheduler keeps: what the bar shows.
                let done = (step - start) as f64;
                let eta = t_start.elapsed().as_secs_f64() / done * (cfg.steps - step) as f64;
                let fid = last
                    .get("eval/fid")
                    .map(|f| format!(", FID {f:.2}"))
                    .unwrap_or_default();
                crate::progress::note(format!(
                    "train-gan: step {step}/{} ({:.1}%), D {:.4}, G {:.4}{fid}, {:.0} images/s, ETA {}",
                    cfg.steps,
                    100.0 * step as f64 / cfg.steps as f64,
                    last.get("d/loss").copied().unwrap_or(f64::NAN),
                    last.get("g/loss").copied().unwrap_or(f64::NAN),
                    images_per_s,
                    crate::progress::human_duration(eta)
                ));
            }
        }
        let Some(events) = events.as_mut() else {
            continue; // the other ranks write nothing
        };
        if step % cfg.sample_every == 0 || last_step {
            let (png, gw, gh) = gan.grid()?;
            let path = samples.join(format!("step-{step:08}.png"));
            write_atomic(&path, &png)?;
            events.image(step as i64, "samples/ema", &png, gw, gh)?;
        }
        if step % cfg.log_every == 0 || step % cfg.sample_every == 0 || last_step {
            events.flush()?;
        }
        if step % cfg.checkpoint_every == 0 || last_step {
            let read = step * per_step * dist.world() as u64;
            let meta = json!({"batches_read": read, "mode": cfg.mode});
            ckpts.save(step, &gan.state(), &meta)?;
        }
    }
    bar.finish_and_clear();
    let outcome = TrainOutcome {
        steps: cfg.steps,
        evals,
        resumed_from: start,
        g_params: parameter_count(&gan.vs_g),
        d_params: parameter_count(&gan.vs_d),
        images_per_s,
        last,
        seconds_data: t_data,
        seconds_train: t_train,
    };
    if !writes {
        return Ok(outcome);
    }

    // The sampling artefacts: the EMA weights and what rebuilds the network.
    let ema_path = out.join(EMA_FILE);
    // The temporary name keeps the extension: VarStore::save picks the format by it.
    let tmp = out.join(".ema.tmp.safetensors");
    gan.vs_ema.save(&tmp).at(&tmp)?;
    fs::rename(&tmp, &ema_path).at(&ema_path)?;
    let info = ModelInfo {
        mode: cfg.mode,
        model: cfg.model.clone(),
        class_names: cfg.class_names.clone(),
        step: cfg.steps,
        standing_batches: cfg.standing_batches,
        standing_batch_size: cfg.batch_size,
    };
    let info_path = out.join(MODEL_FILE);
    write_atomic(
        &info_path,
        &serde_json::to_vec_pretty(&info).at(&info_path)?,
    )?;
    Ok(outcome)
}

/// G-step (and D-step) throughput on synthetic data, for the GPU benchmark:
/// the same step code as training, timed after `warmup` steps with the
/// device synchronised.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub resolution: i64,
    pub ch: i64,
    pub batch_size: i64,
    pub bf16: bool,
    pub device: String,
    pub g_params: i64,
    pub d_params: i64,
    /// D steps per update; `update_seconds` is all of them plus the G step.
    pub d_steps: u64,
    pub update_seconds: f64,
    pub g_step_seconds: f64,
    pub g_step_images_per_s: f64,
    pub d_step_seconds: f64,
    pub d_step_images_per_s: f64,
}

pub fn bench(cfg: &TrainConfig, device: Device, steps: u64, warmup: u64) -> Result<BenchResult> {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut gan = Gan::new(cfg, device)?;
    let b = cfg.batch_size;
    let r = cfg.model.resolution;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut scalars = Scalars::default();
    let (mut tg, mut td) = (0.0, 0.0);
    for step in 1..=warmup + steps {
        seed_all(cfg.seed, &[step, 99]);
        let images = Tensor::rand([b, 3, r, r], (Kind::Float, device)) * 2.0 - 1.0;
        let labels: Vec<Option<i64>> = (0..b).map(|i| Some(i % cfg.model.n_classes)).collect();
        let real = gan.real_batch(&images, &labels, step, 0);
        sync();
        let t0 = Instant::now();
        // One full update: `d_steps` D steps (each on the real batch and fresh fakes), then G.
        for d in 0..cfg.d_steps {
            gan.d_step(step, d, std::slice::from_ref(&real), &mut scalars)?;
        }
        sync();
        let t1 = Instant::now();
        gan.g_step(step, &mut scalars)?;
        sync();
        if step > warmup {
            td += (t1 - t0).as_secs_f64();
            tg += t1.elapsed().as_secs_f64();
        }
    }
    let n = steps.max(1) as f64;
    let d_steps = cfg.d_steps.max(1) as f64;
    Ok(BenchResult {
        resolution: r,
        ch: cfg.model.ch,
        batch_size: b,
        bf16: cfg.bf16,
        device: format!("{device:?}"),
        g_params: parameter_count(&gan.vs_g),
        d_params: parameter_count(&gan.vs_d),
        d_steps: cfg.d_steps,
        update_seconds: (td + tg) / n,
        g_step_seconds: tg / n,
        g_step_images_per_s: b as f64 * n / tg,
        d_step_seconds: td / n / d_steps,
        d_step_images_per_s: b as f64 * n * d_steps / td,
    })
}
