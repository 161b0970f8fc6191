//! Stage `pretrain`: trains the rotation feature extractor on every image,
//! and with `--labels` a linear class head on the labelled ones (S2L: loss =
//! L_rotation + w * L_CE, the S4L-Rotation recipe; docs/method.md "The
//! labelling modes"). `--objective supervised` trains on the labelled images
//! alone, the baseline S2L is compared with.
//!
//! Each step takes `batch-size` images from the whole table, all four
//! rotations of each (4 x batch-size rotation targets), and with labels
//! `labelled-batch-size` images of the labelled `train` split, unrotated,
//! for the class head (they share the forward pass and batch statistics).
//! Accuracy of the head on the labels' `holdout` split is logged every
//! `eval-every` steps. Checkpoints (weights, optimiser state, step) go to
//! `checkpoints/` every `checkpoint-every` steps; a run killed at any point
//! and started again with the same inputs and parameters resumes from the
//! last one and ends with the same weights as an uninterrupted run (same
//! thread count). Outputs: `model.safetensors` + `model.json` (read by
//! `embed --model`), `metrics.jsonl`.
//!
//! `accumulation` batches make one step (their gradients summed). Launched
//! as W ranks (torchrun, srun; [`crate::dist`]), each rank takes
//! batch-size / W and labelled-batch-size / W of every batch, with its own
//! batch-norm statistics, and the gradients are averaged over the ranks:
//! rank r's k-th batch is batch k x W + r of one process with those batch
//! sizes and accumulation x W, which such a run matches. Rank 0 alone
//! reads checkpoints (its state is broadcast), evaluates and writes; the
//! saved batch-norm running statistics are rank 0's.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, Int64Array, StringArray, UInt64Array};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::manifest::Manifest;
use crate::models::resnet::{rotate4, Arch, RotationNet, SavedModel, MODEL_INFO, MODEL_WEIGHTS};
use crate::progress;
use crate::shard::{schema, shard_schema, table_files, TableReader};
use crate::stage::{StageName, StageRun};
use crate::stages::{at_least, in_range, positive, Exec, ParamError, RunDirs, Slot, Stage, IMAGES};
use crate::train::checkpoint::{load_variables, named_variables, Checkpoints};
use crate::train::loader::{Loader, LoaderConfig};
use crate::train::log::MetricsLog;
use crate::train::optim::{OptimConfig, Optimizer, Schedule, ScheduleKind};
use crate::train::{autocast_bf16, seed_torch};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// What the network learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// `s2l` with `--labels`, `rotation` without.
    #[default]
    Auto,
    /// Rotation prediction only (no class head), even with labels.
    Rotation,
    /// Rotation on all images + w x cross-entropy of a linear head on the labelled ones.
    S2l,
    /// Cross-entropy on the labelled images alone (the baseline).
    Supervised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum (`--momentum`) and weight decay.
    #[default]
    Sgd,
    /// Adam with betas (`--momentum`, `--beta2`) and L2 weight decay.
    Adam,
}

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// bf16 autocast on CUDA, float32 on the CPU.
    #[default]
    Auto,
    /// float32 everywhere.
    Fp32,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Network: resnet50 (the paper's, 128x128), resnet18, small (32x32 on a CPU), tiny (tests).
    #[arg(long, value_enum, default_value_t = Arch::Small)]
    pub arch: Arch,
    /// Training objective.
    #[arg(long, value_enum, default_value_t = Objective::Auto)]
    pub objective: Objective,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Images per step for the rotation loss (each is seen at 4 rotations).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Labelled images per step for the class head.
    #[arg(long, default_value_t = 64)]
    pub labelled_batch_size: usize,
    /// Batches (of both sizes) whose gradients are summed into one step.
    #[arg(long, default_value_t = 1)]
    pub accumulation: u64,
    /// w: weight of the class head's cross-entropy.
    #[arg(long, default_value_t = 1.0)]
    pub class_weight: f64,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum, or Adam's beta1.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Adam's beta2.
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// L2 weight decay added to every weight's gradient (per step; 0 = none).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// How the learning rate moves over the steps (after the warm-up).
    #[arg(long, value_enum, default_value_t = ScheduleKind::Cosine)]
    pub schedule: ScheduleKind,
    /// Steps over which the learning rate rises linearly from 0 to --lr.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: u64,
    /// Seeds weight init and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (there is always one at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Steps between held-out evaluations (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    /// Steps between metrics lines.
    #[arg(long, default_value_t = 20)]
    pub log_every: u64,
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
    /// Random horizontal flips of the training images (seeded per step).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            arch: Arch::Small,
            objective: Objective::Auto,
            steps: 2000,
            batch_size: 64,
            labelled_batch_size: 64,
            accumulation: 1,
            class_weight: 1.0,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            beta2: 0.999,
            weight_decay: 5e-4,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            seed: 0,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            eval_every: 500,
            log_every: 20,
            precision: Precision::Auto,
            flip: true,
        }
    }
}

impl Params {
    fn optim(&self) -> OptimConfig {
        match self.optimizer {
            OptimizerKind::Sgd => OptimConfig::sgd(self.momentum, self.weight_decay),
            OptimizerKind::Adam => OptimConfig::Adam {
                beta1: self.momentum,
                beta2: self.beta2,
                eps: 1e-8,
                weight_decay: self.weight_decay,
                decoupled_weight_decay: false,
            },
        }
    }
}

/// `fewlabels pretrain`.
pub struct Pretrain;

pub const LABELS: Slot = Slot::optional(
    "labels",
    StageName::SampleLabels,
    "The `labels/` folder of `sample-labels` (enables the class head).",
);

impl Pretrain {
    /// The objective `auto` resolves to with or without labels.
    fn objective(dirs: &RunDirs, params: &Params) -> Result<Objective> {
        match (params.objective, dirs.get(&LABELS)) {
            (Objective::Auto, Some(_)) => Ok(Objective::S2l),
            (Objective::Auto, None) => Ok(Objective::Rotation),
            (o @ (Objective::S2l | Objective::Supervised), None) => Err(Error::usage(format!(
                "objective {}: needs the labelled subset (`--labels DIR`, the output of `fewlabels sample-labels`)",
                if o == Objective::S2l { "s2l" } else { "supervised" }
            ))),
            (o, _) => Ok(o),
        }
    }
}

impl Stage for Pretrain {
    const NAME: StageName = StageName::Pretrain;
    const ABOUT: &'static str = "Train the rotation (+ linear head) feature extractor.";
    const OUTPUT: &'static str = "Where the model, checkpoints and metrics go.";
    const SLOTS: &'static [Slot] = &[IMAGES, LABELS];
    const DISTRIBUTED: bool = true;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        at_least("steps", p.steps, 1)?;
        at_least("batch-size", p.batch_size as u64, 1)?;
        at_least("labelled-batch-size", p.labelled_batch_size as u64, 1)?;
        at_least("accumulation", p.accumulation, 1)?;
        positive("lr", p.lr)?;
        in_range("class-weight", p.class_weight, 0.0, f64::MAX)?;
        in_range("momentum", p.momentum, 0.0, 0.999_999)?;
        in_range("beta2", p.beta2, 0.0, 0.999_999)?;
        in_range("weight-decay", p.weight_decay, 0.0, 1.0)?;
        at_least("checkpoint-every", p.checkpoint_every, 1)?;
        at_least("log-every", p.log_every, 1)?;
        at_least("keep-checkpoints", p.keep_checkpoints as u64, 1)
    }

    fn check(dirs: &RunDirs, params: &Params) -> Result<()> {
        Self::objective(dirs, params).map(|_| ())
    }

    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let objective = Self::objective(dirs, params)?;
        let world = run.dist.world();
        for (key, size) in [
            ("batch-size", params.batch_size),
            ("labelled-batch-size", params.labelled_batch_size),
        ] {
            if size % world != 0 {
                return Err(Error::usage(format!(
                    "--{key} {size}: must be a multiple of the {world} ranks (each takes an equal share)"
                )));
            }
        }
        let device = run.dist.local_device(exec.device.resolve()?);
        train(
            run,
            dirs.need(&IMAGES)?,
            dirs.get(&LABELS),
            objective,
            params,
            device,
        )
    }
}

/// The labels table: id -> label for the `train` and `holdout` splits, and the class names.
pub struct LabelSets {
    pub train: HashMap<u64, i64>,
    pub holdout: HashMap<u64, i64>,
    pub class_names: Vec<String>,
}

/// Reads a `labels/` stage folder.
pub fn read_labels(dir: &Path) -> Result<LabelSets> {
    let m = Manifest::read_complete(dir, StageName::SampleLabels)?;
    let files = table_files(dir, &m, "labels");
    let first = files
        .first()
        .ok_or_else(|| Error::file(dir, "lists no labels-*.arrow table"))?;
    let class_names = schema::class_names_of(shard_schema(first)?.as_ref());
    let mut sets = LabelSets {
        train: HashMap::new(),
        holdout: HashMap::new(),
        class_names,
    };
    for rb in TableReader::new(files.clone(), Some(&["id", "label", "split"])) {
        let rb = rb?;
        let bad = || {
            Error::file(
                dir,
                "labels table: expected id u64, label i64, split string",
            )
        };
        let ids = rb
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(bad)?;
        let labels = rb
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        let splits = rb
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        for i in 0..rb.num_rows() {
            let (id, label) = (ids.value(i), labels.value(i));
            match splits.value(i) {
                "train" => sets.train.insert(id, label),
                "holdout" => sets.holdout.insert(id, label),
                other => {
                    return Err(Error::file(
                        dir,
                        format!(
                            "labels table: unknown split `{other}` (expected train or holdout)"
                        ),
                    ))
                }
            };
        }
    }
    if sets.train.is_empty() {
        return Err(Error::file(dir, "labels table has no `train` rows"));
    }
    let max = sets
        .train
        .values()
        .chain(sets.holdout.values())
        .copied()
        .max()
        .unwrap_or(0);
    if sets.class_names.len() as i64 <= max {
        sets.class_names = (0..=max).map(|i| format!("class_{i}")).collect();
    }
    Ok(sets)
}

/// Mean of the running sums since the last log line.
#[derive(Default)]
struct Running {
    n: f64,
    loss: f64,
    rot_loss: f64,
    rot_acc: f64,
    cls_loss: f64,
    cls_acc: f64,
}

fn train(
    run: &mut StageRun,
    images: &Path,
    labels: Option<&Path>,
    objective: Objective,
    params: &Params,
    device: Device,
) -> Result<()> {
    let images_m = Manifest::read_complete(images, StageName::Prepare)?;
    let files = table_files(images, &images_m, "images");
    if files.is_empty() {
        return Err(Error::file(images, "lists no images-*.arrow table"));
    }
    let label_sets = match (objective, labels) {
        (Objective::Rotation, _) | (_, None) => None,
        (_, Some(dir)) => Some(read_labels(dir)?),
    };
    let num_classes = label_sets.as_ref().map(|l| l.class_names.len() as i64);
    let bf16 = params.precision == Precision::Auto && device.is_cuda();

    seed_torch(params.seed);
    let vs = tch::nn::VarStore::new(device);
    let cfg = params.arch.config();
    let net = RotationNet::new(&vs.root(), &cfg, num_classes)?;
    let mut opt = Optimizer::new(params.optim(), &vs);
    let schedule = Schedule {
        kind: params.schedule,
        base_lr: params.lr,
        warmup_steps: params.warmup_steps.min(params.steps / 2),
        total_steps: params.steps,
    };

    // Resume from the last checkpoint of an identical interrupted attempt
    // (rank 0 reads it; the others get its state).
    let dist = run.dist;
    let writes = run.writes();
    let ckpt_dir = run.dir.join(CHECKPOINT_DIR);
    if writes {
        crate::fsutil::remove_temp_files(&ckpt_dir)?;
    }
    let checkpoints = Checkpoints::new(&ckpt_dir, params.keep_checkpoints);
    let mut start = 0u64;
    if run.resuming && writes {
        if let Some(c) = checkpoints.latest()? {
            load_variables(&vs, "model.", &c)?;
            opt.load_state(&c, "optim.")?;
            start = c.step;
            progress::note(format!(
                "pretrain: resuming at step {start} from {}",
                c.path.display()
            ));
        }
    }
    start = dist.broadcast_u64(start)?;
    if dist.is_launched() {
        let mut state: Vec<Tensor> = named_variables(&vs, "")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        // The first entry is the step count, a copy: it travels alone.
        state.extend(opt.state_tensors("").into_iter().skip(1).map(|(_, t)| t));
        dist.broadcast_from_rank0(&state)?;
        opt.set_steps(dist.broadcast_u64(opt.steps())?);
    }
    let metrics_path = run.dir.join(METRICS_FILE);
    let mut log = match (writes, start) {
        (false, _) => None,
        (true, 0) => Some(MetricsLog::create(&metrics_path)?),
        (true, _) => Some(MetricsLog::resume(&metrics_path, start)?),
    };

    // Data: every image for rotation; the labelled train split for the head.
    // Each rank reads every world-th batch of its share's size.
    let (world, accum) = (dist.world(), params.accumulation);
    let share = |mut c: LoaderConfig| {
        (c.rank, c.world) = (dist.rank(), world);
        c.skip_batches = start * accum * world as u64;
        c
    };
    let mut unlabelled = if objective == Objective::Supervised {
        None
    } else {
        let c = LoaderConfig::train(params.batch_size / world, params.seed);
        Some(Loader::new(files.clone(), share(c))?)
    };
    let mut labelled = match &label_sets {
        Some(ls) if objective != Objective::Rotation => {
            let ids: HashSet<u64> = ls.train.keys().copied().collect();
            // A different stream from the unlabelled loader's.
            let mut c = LoaderConfig::train(
                params.labelled_batch_size / world,
                params.seed ^ 0x9E37_79B9_7F4A_7C15,
            );
            c.ids = Some(Arc::new(ids));
            Some(Loader::new(files.clone(), share(c))?)
        }
        _ => None,
    };
    let image_size = unlabelled
        .as_ref()
        .or(labelled.as_ref())
        .map(|l| l.image_size())
        .ok_or_else(|| Error::invalid("nothing to train on"))?;
    let train_labels = label_sets.as_ref().map(|l| &l.train);

    let pb = progress::bar(params.steps, "steps");
    pb.set_prefix(StageName::Pretrain.as_str());
    pb.set_position(start);
    let mut running = Running::default();
    let mut lines = progress::LogLines::new();
    let mut images_seen = 0u64;
    let t_train = Instant::now();
    let mut t_wait = 0.0f64;
    let mut last_holdout = None;
    // One iteration per batch: `accumulation` of them make a step.
    for batch in start * accum..params.steps * accum {
        let (step, k) = (batch / accum, batch % accum);
        // This batch's number among every rank's batches of the step.
        let j = k * world as u64 + dist.rank() as u64;
        if k == 0 {
            opt.zero_grad();
        }
        let t0 = Instant::now();
        let ub = match unlabelled.as_mut() {
            Some(l) => Some(next(l)?),
            None => None,
        };
        let lb = match labelled.as_mut() {
            Some(l) => Some(next(l)?),
            None => None,
        };
        t_wait += t0.elapsed().as_secs_f64();
        // Inputs: [4B rotated | L labelled] in one forward pass.
        let mut parts = Vec::new();
        let mut rot_targets = None;
        let mut flip_rng = ChaCha20Rng::seed_from_u64(params.seed);
        // One stream per step and batch: a resumed run draws the same flips.
        flip_rng.set_stream(step | (j << 40));
        if let Some(b) = &ub {
            let x = maybe_flip(&b.images, params.flip, &mut flip_rng);
            let (x4, t) = rotate4(&x.to_device(device))?;
            images_seen += x4.size()[0] as u64;
            parts.push(x4);
            rot_targets = Some(t);
        }
        let mut cls_targets = None;
        if let (Some(b), Some(map)) = (&lb, train_labels) {
            let y: Vec<i64> = b
                .ids
                .iter()
                .map(|id| {
                    map.get(id)
                        .copied()
                        .ok_or_else(|| Error::invalid(format!("image {id} has no label")))
                })
                .collect::<Result<_>>()?;
            images_seen += y.len() as u64;
            parts.push(maybe_flip(&b.images, params.flip, &mut flip_rng).to_device(device));
            cls_targets = Some(Tensor::from_slice(&y).to_device(device));
        }
        let n_rot = rot_targets.as_ref().map(|t| t.size()[0]).unwrap_or(0);
        let x = Tensor::cat(&parts, 0);
        let (loss, rot_loss, rot_acc, cls_loss, cls_acc) = autocast_bf16(bf16, || {
            let heads = net.forward_t(&x, true);
            let mut loss: Option<Tensor> = None;
            let (mut rl, mut ra, mut cl, mut ca) = (None, None, None, None);
            if let Some(t) = &rot_targets {
                let logits = heads.rotation.narrow(0, 0, n_rot).to_kind(Kind::Float);
                let l = logits.cross_entropy_for_logits(t);
                ra = Some(logits.accuracy_for_logits(t));
                loss = Some(l.shallow_clone());
                rl = Some(l);
            }
            if let (Some(t), Some(c)) = (&cls_targets, &heads.classes) {
                let logits = c.narrow(0, n_rot, c.size()[0] - n_rot).to_kind(Kind::Float);
                let l = logits.cross_entropy_for_logits(t);
                ca = Some(logits.accuracy_for_logits(t));
                let w = if objective == Objective::Supervised {
                    1.0
                } else {
                    params.class_weight
                };
                let term = &l * w;
                loss = Some(match loss {
                    Some(r) => r + term,
                    None => term,
                });
                cl = Some(l);
            }
            (loss, rl, ra, cl, ca)
        });
        let loss = loss.ok_or_else(|| Error::invalid("no loss term: nothing to train"))?;
        let lr = schedule.lr(step);
        if accum > 1 {
            (&loss / accum as f64).f_backward()?;
        } else {
            loss.f_backward()?;
        }
        let lv = loss.double_value(&[]);
        if !lv.is_finite() {
            return Err(Error::NonFinite {
                step: step + 1,
                term: "loss".into(),
                value: lv,
            });
        }
        let val = |t: &Option<Tensor>| t.as_ref().map(|t| t.double_value(&[])).unwrap_or(f64::NAN);
        running.n += 1.0;
        running.loss += lv;
        running.rot_loss += val(&rot_loss);
        running.rot_acc += val(&rot_acc);
        running.cls_loss += val(&cls_loss);
        running.cls_acc += val(&cls_acc);
        if k + 1 < accum {
            continue;
        }
        dist.average_gradients(&vs)?;
        opt.step(lr);
        let done = step + 1;
        pb.set_position(done);
        let rate = (images_seen * world as u64) as f64 / t_train.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!("loss {lv:.3} {rate:.0} img/s"));
        if dist.is_rank0() && lines.due(done == params.steps) {
            let eta = t_train.elapsed().as_secs_f64() / (done - start).max(1) as f64
                * (params.steps - done) as f64;
            progress::note(format!(
                "pretrain: step {done}/{} ({:.1}%), loss {lv:.4}, {rate:.0} images/s, ETA {}",
                params.steps,
                100.0 * done as f64 / params.steps as f64,
                progress::human_duration(eta)
            ));
        }

        if done % params.log_every == 0 || done == params.steps {
            // Means over every rank's batches.
            let r = &mut running;
            let mut sums = [r.n, r.loss, r.rot_loss, r.rot_acc, r.cls_loss, r.cls_acc];
            dist.sum_f64(&mut sums)?;
            [r.n, r.loss, r.rot_loss, r.rot_acc, r.cls_loss, r.cls_acc] = sums;
            let n = running.n;
            let opt_num = |v: f64| {
                if v.is_nan() {
                    serde_json::Value::Null
                } else {
                    json!(v / n)
                }
            };
            if let Some(log) = log.as_mut() {
                log.write(&json!({
                    "step": done, "lr": lr, "loss": running.loss / n,
                    "rotation_loss": opt_num(running.rot_loss), "rotation_accuracy": opt_num(running.rot_acc),
                    "class_loss": opt_num(running.cls_loss), "class_accuracy": opt_num(running.cls_acc),
                }))?;
            }
            run.count("rotation_accuracy", opt_num(running.rot_acc));
            run.count("class_train_accuracy", opt_num(running.cls_acc));
            running = Running::default();
        }
        let Some(log) = log.as_mut() else {
            continue; // the other ranks neither evaluate nor write
        };
        let eval_now =
            (params.eval_every > 0 && done % params.eval_every == 0) || done == params.steps;
        if eval_now {
            if let (Some(ls), Some(_)) = (&label_sets, &net.class_head) {
                if !ls.holdout.is_empty() {
                    let acc = holdout_accuracy(&net, &files, &ls.holdout, device, bf16)?;
                    log.write(&json!({"step": done, "holdout_accuracy": acc}))?;
                    last_holdout = Some(acc);
                }
            }
        }
        if done % params.checkpoint_every == 0 || done == params.steps {
            let mut tensors = named_variables(&vs, "model.");
            tensors.extend(opt.state_tensors("optim."));
            checkpoints.save(
                done,
                &tensors,
                &json!({"objective": objective, "params": params}),
            )?;
        }
    }
    pb.finish_and_clear();
    drop(unlabelled);
    drop(labelled);
    let train_secs = t_train.elapsed().as_secs_f64();
    if !writes {
        return Ok(());
    }

    let saved = SavedModel {
        config: cfg.clone(),
        num_classes: net.class_head.as_ref().and(num_classes),
        class_names: label_sets
            .as_ref()
            .map(|l| l.class_names.clone())
            .unwrap_or_default(),
        image_size,
        feature_dim: cfg.feature_dim(),
    };
    saved.save(&run.dir, &vs)?;
    run.add_output(MODEL_WEIGHTS, None)?;
    run.add_output(MODEL_INFO, None)?;
    run.add_output(METRICS_FILE, None)?;
    run.phase("train", train_secs);
    run.phase("wait_for_data", t_wait);
    let objective_name = serde_json::to_value(objective).at(&run.dir)?;
    run.count("objective", objective_name);
    run.count("steps", params.steps);
    run.count("resumed_at_step", start);
    run.count(
        "images_per_s",
        (images_seen * world as u64) as f64 / train_secs.max(1e-9),
    );
    run.count("world_size", world as u64);
    run.count("device", format!("{device:?}"));
    if let Some(acc) = last_holdout {
        run.count("holdout_accuracy", acc);
    }
    if let Some(ls) = &label_sets {
        run.count("labelled_train", ls.train.len() as u64);
        run.count("labelled_holdout", ls.holdout.len() as u64);
    }
    Ok(())
}

/// Flips each image left-right with probability 1/2 (CPU, before the copy to the device).
fn maybe_flip(x: &Tensor, on: bool, rng: &mut ChaCha20Rng) -> Tensor {
    if !on {
        return x.shallow_clone();
    }
    let n = x.size()[0];
    let mask: Vec<bool> = (0..n).map(|_| rng.random::<bool>()).collect();
    let cond = Tensor::from_slice(&mask).view([n, 1, 1, 1]);
    x.flip([3]).where_self(&cond, x)
}

fn next(loader: &mut Loader) -> Result<crate::train::loader::Batch> {
    loader
        .next()
        .unwrap_or_else(|| Err(Error::invalid("the training loader stopped early")))
}

/// Top-1 accuracy of the class head on `holdout` (eval mode).
fn holdout_accuracy(
    net: &RotationNet,
    files: &[PathBuf],
    holdout: &HashMap<u64, i64>,
    device: Device,
    bf16: bool,
) -> Result<f64> {
    let mut cfg = LoaderConfig::sequential(256);
    cfg.ids = Some(Arc::new(holdout.keys().copied().collect()));
    let (mut right, mut total) = (0i64, 0i64);
    for b in Loader::new(files.to_vec(), cfg)? {
        let b = b?;
        let y: Vec<i64> = b.ids.iter().map(|id| holdout[id]).collect();
        let pred = tch::no_grad(|| {
            autocast_bf16(bf16, || {
                net.forward_t(&b.images.to_device(device), false)
                    .classes
                    .map(|c| c.argmax(1, false).to_device(Device::Cpu))
            })
        })
        .ok_or_else(|| Error::invalid("the network has no class head"))?;
        let pred = Vec::<i64>::try_from(&pred)?;
        right += pred.iter().zip(&y).filter(|(p, t)| p == t).count() as i64;
        total += y.len() as i64;
    }
    Ok(right as f64 / total.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_keys_are_kebab_case_and_checked() {
        let t: Params =
            toml::from_str("objective = \"supervised\"\nlabelled-batch-size = 8").unwrap();
        assert_eq!(t.objective, Objective::Supervised);
        assert_eq!(t.labelled_batch_size, 8);
        assert!(toml::from_str::<Params>("objectiv = \"s2l\"").is_err());
    }
}
