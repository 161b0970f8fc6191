//! Stage `train-gan`: trains the BigGAN of the paper in one of its labelling
//! modes on the `train/` shards (docs/method.md; compare_gan's settings by
//! default: Adam (0, 0.999), lr G 1e-4 / D 5e-4, 2 D steps per G step, batch
//! 256 x 8 accumulated, EMA 0.9999). Writes `gan/`: checkpoints, sample
//! grids, metrics.jsonl, TensorBoard event files, and the EMA generator
//! (`model.json` + `ema.safetensors`) that `generate` and `evaluate` sample.
//! Also the `generate` and `bench-gan` subcommands.
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::{self, DeviceChoice};
use crate::error::{Error, Result, ResultExt};
use crate::gan::modes::{check, DataSummary};
use crate::gan::sample::{load_generator, png, to_rgb8};
use crate::gan::train::{bench, train, Scorer, TrainConfig};
use crate::manifest::Manifest;
use crate::models::biggan::{Config, GanArch};
use crate::shard::schema::class_names_of;
use crate::shard::{shard_schema, table_files, TableReader};
use crate::stage::{StageName, StageRun};
use crate::stages::evaluate::GeneratorScorer;
use crate::stages::{at_least, in_range, positive, tables, Exec, ParamError, RunDirs, Slot, Stage};

pub use crate::gan::modes::{GanMode, LabelsNeeded};

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// The labelling mode of the paper (docs/method.md).
    #[arg(long, value_enum, default_value_t = GanMode::S2gan)]
    pub mode: GanMode,
    /// Generator updates (BigGAN iterations).
    #[arg(long, default_value_t = 250_000)]
    pub steps: u64,
    /// Images per batch (per accumulation step).
    #[arg(long, default_value_t = 256)]
    pub batch_size: i64,
    /// Batches accumulated per update (BigGAN-PyTorch: 256 x 8 = 2048).
    #[arg(long, default_value_t = 8)]
    pub accumulation: i64,
    /// Discriminator updates per generator update.
    #[arg(long, default_value_t = 2)]
    pub d_steps: u64,
    /// Generator learning rate (Adam; compare_gan: 1e-4 at batch 2048).
    #[arg(long, default_value_t = 1e-4)]
    pub lr_g: f64,
    /// Discriminator learning rate (Adam; compare_gan: 5e-4).
    #[arg(long, default_value_t = 5e-4)]
    pub lr_d: f64,
    /// Adam's beta1 for G and D (BigGAN: 0).
    #[arg(long, default_value_t = 0.0)]
    pub beta1: f64,
    /// Adam's beta2 for G and D.
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// Decay of the exponential moving average of G's weights.
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    /// Step from which the EMA averages (before it, it copies G).
    #[arg(long, default_value_t = 40_000)]
    pub ema_start: u64,
    /// Image side: 32, 64 or 128 (BigGAN presets); by default the size the
    /// shards store (with `augment = distorted`, set it: the crops are resized to it).
    #[arg(long)]
    pub resolution: Option<i64>,
    /// Training augmentation: `none`, or compare_gan's ImageNet `distorted`
    /// crops (a square of 50-100% of the stored image's area, anywhere in
    /// it, redrawn every epoch, resized to the resolution; store whole
    /// photos with `prepare --resize keep-ratio`, at least 1.42 x the
    /// resolution on the shorter side).
    #[arg(long, value_enum, default_value_t = Augment::None)]
    pub augment: Augment,
    /// Channel multiplier (BigGAN: 96).
    #[arg(long, default_value_t = 96)]
    pub ch: i64,
    /// Whose BigGAN: compare_gan's (the paper's code) or BigGAN-PyTorch's;
    /// they differ in four details (docs/method.md, "The two BigGANs").
    #[arg(long, value_enum, default_value_t = GanArch::BigganPytorch)]
    pub arch: GanArch,
    /// Batch-norm statistics over every rank's images (compare_gan's
    /// cross-replica batch norm) instead of each rank's own; no effect in
    /// one process.
    #[arg(long, default_value_t = false)]
    pub sync_bn: bool,
    /// One in this many images of a batch is rotated (x4 angles) for the rotation loss.
    #[arg(long, default_value_t = 4)]
    pub rotated_batch_fraction: i64,
    /// Weight of D's rotation loss on real images.
    #[arg(long, default_value_t = 1.0)]
    pub weight_rotation_d: f64,
    /// Weight of G's rotation loss on fake images.
    #[arg(long, default_value_t = 0.2)]
    pub weight_rotation_g: f64,
    /// Weight of the co-training class-head loss.
    #[arg(long, default_value_t = 1.0)]
    pub weight_class: f64,
    /// Seed of the weights, the latents and the data order: the same seed,
    /// the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (what a killed run resumes from).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Steps between sample grids of the EMA generator (samples/, TensorBoard).
    #[arg(long, default_value_t = 1000)]
    pub sample_every: u64,
    /// Steps between lines of metrics.jsonl and TensorBoard scalars.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Score the EMA generator every this many steps and at the last (FID,
    /// and IS when the Inception network has logits) against the
    /// reference's cached statistics, into metrics.jsonl, TensorBoard and
    /// the report; 0 = never. Needs --reference (in a pipeline: [evaluate]
    /// reference).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Samples per scoring during training (a small sample: its FID sits
    /// above a 50,000-sample FID of the same generator).
    #[arg(long, default_value_t = 10_000)]
    pub eval_samples: usize,
    /// Reference images whose statistics --eval-every compares with: a
    /// seeded sample of this many (0 = all), as `evaluate --reference-limit`
    /// draws it (the same value shares evaluate's cached statistics).
    #[arg(long, default_value_t = 0)]
    pub eval_reference_limit: usize,
    /// The feature network for --eval-every, as `evaluate --inception`
    /// (default: the FID Inception `make setup` installs).
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Checkpoints kept (the newest).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Batches of standing batch-norm statistics before sampling.
    #[arg(long, default_value_t = 16)]
    pub standing_batches: usize,
    /// Classes shown in the sample grid (one row each).
    #[arg(long, default_value_t = 10)]
    pub grid_rows: i64,
    /// Samples per class row in the grid.
    #[arg(long, default_value_t = 8)]
    pub grid_cols: i64,
    /// Run convolutions and matrix products in bfloat16 (fp32 weights and batch norm).
    #[arg(long, default_value_t = false)]
    pub bf16: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mode: GanMode::S2gan,
            steps: 250_000,
            batch_size: 256,
            accumulation: 8,
            d_steps: 2,
            lr_g: 1e-4,
            lr_d: 5e-4,
            beta1: 0.0,
            beta2: 0.999,
            ema_decay: 0.9999,
            ema_start: 40_000,
            resolution: None,
            augment: Augment::None,
            ch: 96,
            arch: GanArch::BigganPytorch,
            sync_bn: false,
            rotated_batch_fraction: 4,
            weight_rotation_d: 1.0,
            weight_rotation_g: 0.2,
            weight_class: 1.0,
            seed: 0,
            checkpoint_every: 1000,
            sample_every: 1000,
            log_every: 50,
            eval_every: 0,
            eval_samples: 10_000,
            eval_reference_limit: 0,
            inception: None,
            keep_checkpoints: 2,
            standing_batches: 16,
            grid_rows: 10,
            grid_cols: 8,
            bf16: false,
        }
    }
}

impl Params {
    /// The loop's configuration, with the class names of the data and the
    /// resolution it trains at.
    pub fn train_config(&self, class_names: &[String], resolution: i64) -> Result<TrainConfig> {
        let model = Config {
            arch: self.arch,
            n_classes: self.mode.n_classes(class_names.len() as i64),
            conditional: self.mode.conditional(),
            class_head: self.mode.class_head(),
            rotation_head: self.mode.rotation(),
            ..Config::preset(resolution, self.ch)?
        };
        Ok(TrainConfig {
            mode: self.mode,
            model,
            class_names: class_names.to_vec(),
            steps: self.steps,
            batch_size: self.batch_size,
            accumulation: self.accumulation,
            d_steps: self.d_steps,
            lr_g: self.lr_g,
            lr_d: self.lr_d,
            beta1: self.beta1,
            beta2: self.beta2,
            ema_decay: self.ema_decay,
            ema_start: self.ema_start,
            rotated_batch_fraction: self.rotated_batch_fraction,
            weight_rotation_d: self.weight_rotation_d,
            weight_rotation_g: self.weight_rotation_g,
            weight_class: self.weight_class,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            sample_every: self.sample_every,
            log_every: self.log_every,
            eval_every: self.eval_every,
            keep_checkpoints: self.keep_checkpoints,
            standing_batches: self.standing_batches,
            grid_rows: self.grid_rows,
            grid_cols: self.grid_cols,
            bf16: self.bf16,
            sync_bn: self.sync_bn,
            distorted_crops: self.augment == Augment::Distorted,
        })
    }
}

/// Training augmentation of the real images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// The stored images as they are.
    #[default]
    None,
    /// compare_gan's ImageNet training crops (src/train/loader.rs).
    Distorted,
}

/// The resolution a run trains at: the one asked for, or the shards' image
/// size; either way one a BigGAN preset exists for, and one the stored
/// images can give.
fn resolution(params: &Params, stored: u32) -> Result<i64> {
    let stored = stored as i64;
    let r = match params.resolution {
        Some(r) => r,
        None if params.augment == Augment::Distorted => {
            return Err(Error::usage(
                "augment distorted: give the resolution to train at (the crops are resized to it)",
            ))
        }
        None if Config::RESOLUTIONS.contains(&stored) => stored,
        None => {
            return Err(Error::usage(format!(
                "the shards hold {stored}x{stored} images and BigGAN presets exist for 32, 64 and 128: prepare the images at one of those sizes, or give the resolution"
            )))
        }
    };
    if let Some(why) = fit_problem(params.augment, stored, r) {
        return Err(Error::usage(format!("resolution {r}: {why}")));
    }
    Ok(r)
}

/// Why images stored at `stored` (the side, or the shorter side of whole
/// photos) cannot train at `resolution` with `augment`, if they cannot:
/// without augmentation they are average-pooled by a whole factor; the
/// smallest distorted crop (half the area) must not be enlarged.
pub fn fit_problem(augment: Augment, stored: i64, resolution: i64) -> Option<String> {
    match augment {
        Augment::None if stored < resolution || stored % resolution != 0 => Some(format!(
            "the training images are {stored}x{stored}; prepare them at the resolution (or a multiple of it), or train at their size"
        )),
        Augment::Distorted => {
            let need = crate::train::loader::distorted_min_side(resolution as u32) as i64;
            (stored < need).then(|| format!(
                "the shards hold images of side {stored}, and compare_gan's distorted crops of half their area would be enlarged to {resolution}; store at least {need} (prepare --size {need}, with --resize keep-ratio for whole photos)"
            ))
        }
        Augment::None => None,
    }
}

/// `fewlabels train-gan`.
pub struct TrainGan;

pub const DATA: Slot = Slot::required(
    "data",
    StageName::Shard,
    "The `train/` folder written by `fewlabels shard`.",
);

/// The real images `--eval-every` scores against (wired by the pipeline
/// from `[evaluate] reference` only when train-gan scores, so that the
/// reference is no input of a run that does not).
pub const REFERENCE: Slot = Slot {
    in_pipeline: false,
    ..Slot::optional(
        "reference",
        StageName::Prepare,
        "The real images --eval-every scores against: a finished `prepare` folder at the training resolution.",
    )
};

impl Stage for TrainGan {
    const NAME: StageName = StageName::TrainGan;
    const ABOUT: &'static str = "Train the BigGAN in one of the paper's labelling modes.";
    const OUTPUT: &'static str = "Where the checkpoints, grids, logs and EMA generator go.";
    const SLOTS: &'static [Slot] = &[DATA, REFERENCE];
    const DISTRIBUTED: bool = true;
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        at_least("steps", p.steps, 1)?;
        at_least("batch-size", p.batch_size.max(0) as u64, 1)?;
        at_least("accumulation", p.accumulation.max(0) as u64, 1)?;
        at_least("d-steps", p.d_steps, 1)?;
        positive("lr-g", p.lr_g)?;
        positive("lr-d", p.lr_d)?;
        in_range("beta1", p.beta1, 0.0, 0.999_999)?;
        in_range("beta2", p.beta2, 0.0, 0.999_999)?;
        if !(p.ema_decay >= 0.0 && p.ema_decay < 1.0) {
            return Err(ParamError::new("ema-decay", "must be in [0, 1)"));
        }
        if p.resolution
            .is_some_and(|r| !Config::RESOLUTIONS.contains(&r))
        {
            return Err(ParamError::new(
                "resolution",
                "BigGAN presets exist for 32, 64 and 128",
            ));
        }
        at_least("ch", p.ch.max(0) as u64, 1)?;
        at_least(
            "rotated-batch-fraction",
            p.rotated_batch_fraction.max(0) as u64,
            1,
        )?;
        if p.mode.rotation() {
            // The rotated part of a batch: batch / fraction images, 4 rotations each.
            if p.batch_size % p.rotated_batch_fraction != 0 {
                return Err(ParamError::new(
                    "rotated-batch-fraction",
                    format!("must divide batch-size ({})", p.batch_size),
                ));
            }
            if p.batch_size / p.rotated_batch_fraction < 4 {
                return Err(ParamError::new(
                    "rotated-batch-fraction",
                    format!(
                        "leaves fewer than 4 of batch-size {} to rotate (one per angle)",
                        p.batch_size
                    ),
                ));
            }
        }
        in_range("weight-rotation-d", p.weight_rotation_d, 0.0, f64::MAX)?;
        in_range("weight-rotation-g", p.weight_rotation_g, 0.0, f64::MAX)?;
        in_range("weight-class", p.weight_class, 0.0, f64::MAX)?;
        at_least("checkpoint-every", p.checkpoint_every, 1)?;
        at_least("sample-every", p.sample_every, 1)?;
        at_least("log-every", p.log_every, 1)?;
        if p.eval_every > 0 {
            at_least("eval-samples", p.eval_samples as u64, 2)?;
        }
        at_least("keep-checkpoints", p.keep_checkpoints as u64, 1)?;
        at_least("standing-batches", p.standing_batches as u64, 1)?;
        at_least("grid-rows", p.grid_rows.max(0) as u64, 1)?;
        at_least("grid-cols", p.grid_cols.max(0) as u64, 1)
    }

    fn check(dirs: &RunDirs, p: &Params) -> Result<()> {
        if p.eval_every > 0 && dirs.get(&REFERENCE).is_none() {
            return Err(Error::usage(
                "train-gan: --eval-every scores against real images: give --reference DIR (a finished `prepare` folder; in a pipeline, [evaluate] reference)",
            ));
        }
        Ok(())
    }

    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let data = dirs.need(&DATA)?;
        let (files, summary) = summarize(data)?;
        check(params.mode, &summary)?;
        let resolution = resolution(params, summary.image_size)?;
        let cfg = params.train_config(&summary.class_names, resolution)?;
        let dist = run.dist;
        check_world(params, dist.world() as i64)?;
        let device = dist.local_device(exec.device.resolve()?);
        // Rank 0 scores; the others train on while it does.
        let mut scorer = match (params.eval_every, dirs.get(&REFERENCE)) {
            (n, Some(reference)) if n > 0 && dist.is_rank0() => Some(GeneratorScorer::new(
                reference,
                params.inception.as_deref(),
                params.eval_reference_limit,
                params.eval_samples,
                params.seed,
                device,
            )?),
            _ => None,
        };
        let outcome = train(
            &cfg,
            files,
            &run.dir,
            device,
            run.resuming,
            dist,
            scorer.as_mut().map(|s| s as &mut dyn Scorer),
        )?;
        run.count("world_size", dist.world() as u64);
        run.phase("data", outcome.seconds_data);
        run.phase("train", outcome.seconds_train);
        run.count("mode", params.mode.name());
        run.count("steps", outcome.steps);
        run.count("resumed_from_step", outcome.resumed_from);
        run.count("rows", summary.rows);
        run.count("labelled_rows", summary.labelled);
        run.count("human_labelled_rows", summary.human_labelled);
        run.count("label_fraction", params.mode.label_fraction(&summary));
        run.count("classes", cfg.model.n_classes);
        run.count("g_parameters", outcome.g_params);
        run.count("d_parameters", outcome.d_params);
        run.count("images_per_s", outcome.images_per_s);
        for (k, v) in &outcome.last {
            if v.is_finite() {
                run.count(&format!("last/{k}"), *v);
            }
        }
        if params.eval_every > 0 && run.writes() {
            // From the log, which a resumed run continues: every scoring of the run.
            let scored = scored_fids(&run.dir.join("metrics.jsonl"))?;
            run.count("eval_points", scored.len() as u64);
            if let Some(&(step, fid)) = scored.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
                run.count("best_fid", fid);
                run.count("best_fid_step", step);
            }
        }
        if run.writes() {
            for rel in output_files(&run.dir)? {
                run.add_output(&rel, None)?;
            }
        }
        Ok(())
    }
}

/// (step, FID) of every scoring a run's metrics.jsonl records (`eval/fid`).
pub fn scored_fids(metrics: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(crate::train::log::read(metrics)?
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("eval/fid")?.as_f64()?)))
        .collect())
}

/// The batch split over `world` ranks: each takes batch-size / world images
/// (and, with rotation, a fraction of those to rotate).
fn check_world(p: &Params, world: i64) -> Result<()> {
    if world == 1 {
        return Ok(());
    }
    if p.batch_size % world != 0 {
        return Err(Error::usage(format!(
            "--batch-size {}: must be a multiple of the {world} ranks (each takes an equal share)",
            p.batch_size
        )));
    }
    let local = p.batch_size / world;
    if p.mode.rotation()
        && (local % p.rotated_batch_fraction != 0 || local / p.rotated_batch_fraction < 4)
    {
        return Err(Error::usage(format!(
            "--rotated-batch-fraction {}: must divide each rank's batch (batch-size {} / {world} ranks = {local}) and leave at least 4 of it to rotate",
            p.rotated_batch_fraction, p.batch_size
        )));
    }
    Ok(())
}

/// The training table's files, class names and label counts.
pub fn summarize(data: &Path) -> Result<(Vec<PathBuf>, DataSummary)> {
    let m = Manifest::read_complete(data, StageName::Shard)?;
    let files = table_files(data, &m, "train");
    let first = files.first().ok_or_else(|| {
        Error::file(
            data,
            "the shard manifest lists no train-*.arrow file; re-run `fewlabels shard`",
        )
    })?;
    let schema = shard_schema(first)?;
    let class_names = class_names_of(schema.as_ref());
    let image_size = tables::image_side(first)?;
    let mut s = DataSummary {
        class_names,
        image_size,
        dir: data.to_path_buf(),
        ..DataSummary::default()
    };
    for batch in TableReader::new(files.clone(), Some(&["label", "label_source"])) {
        let batch = batch?;
        let col = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| Error::file(first, "`label` is not an int64 column"))?;
        let source = tables::str_column(&batch, "label_source", first)?;
        s.human_labelled += source
            .iter()
            .filter(|v| matches!(v, Some("given") | Some("true")))
            .count() as u64;
        s.rows += col.len() as u64;
        for v in col.iter().flatten() {
            if v < 0 {
                return Err(Error::file(first, format!("negative label {v}")));
            }
            s.labelled += 1;
            s.max_label = s.max_label.max(v + 1);
        }
    }
    Ok((files, s))
}

/// Every file the run left (relative, sorted), bar the framework's own and temporaries.
fn output_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).at(&d)? {
            let p = e.at(&d)?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .map_err(|_| Error::file(&p, "outside the output folder"))?
                .to_string_lossy()
                .replace('\\', "/");
            let name = rel.rsplit('/').next().unwrap_or("");
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

/// `fewlabels generate`: samples from a trained GAN's EMA generator.
#[derive(clap::Args, Debug)]
pub struct GenerateCli {
    /// A finished `train-gan` output folder.
    #[arg(long)]
    pub gan: PathBuf,
    /// Number of images.
    #[arg(long)]
    pub count: usize,
    /// Folder for the PNG files (created).
    #[arg(long)]
    pub output: PathBuf,
    /// Only this class (default: uniform over the classes).
    #[arg(long)]
    pub class: Option<i64>,
    /// Seed of the latents and labels: the same seed, the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BigGAN's truncation trick: z drawn from a normal truncated to
    /// [-T, T] (e.g. 0.5; smaller trades variety for fidelity). Default:
    /// untruncated, as the paper samples.
    #[arg(long, value_name = "T")]
    pub truncation: Option<f64>,
    #[command(flatten)]
    pub exec: Exec,
}

/// Writes `NNNNNN-class-C.png` files and `labels.csv` (file, label, class name).
pub fn generate_main(cli: GenerateCli) -> Result<()> {
    device::set_threads(cli.exec.threads);
    let device = cli.exec.device.resolve()?;
    let g = load_generator(&cli.gan, cli.seed, device)?;
    let n_classes = g.g.cfg.n_classes;
    if let Some(c) = cli.class.filter(|c| *c < 0 || *c >= n_classes) {
        return Err(Error::usage(format!(
            "--class {c}: this generator has classes 0..{}",
            n_classes - 1
        )));
    }
    if let Some(t) = cli.truncation.filter(|t| !(*t > 0.0 && t.is_finite())) {
        return Err(Error::usage(format!(
            "--truncation {t}: must be a positive number (e.g. 0.5)"
        )));
    }
    fs::create_dir_all(&cli.output).at(&cli.output)?;
    let bar = crate::progress::bar(cli.count as u64, "images");
    let mut csv = String::from("file,label,class_name\n");
    let mut done = 0usize;
    let chunk = 64usize;
    let mut k = 0u64;
    while done < cli.count {
        let n = chunk.min(cli.count - done);
        // A per-chunk seed: the first files are the same whatever the count.
        let (x, labels) =
            g.sample_truncated(n, cli.class, cli.seed.wrapping_add(k), n, cli.truncation)?;
        let s = x.size();
        let (h, w) = (s[2] as u32, s[3] as u32);
        for (i, (rgb, label)) in to_rgb8(&x)?.iter().zip(&labels).enumerate() {
            let name = format!("{:06}-class-{label}.png", done + i);
            let path = cli.output.join(&name);
            crate::fsutil::write_atomic(&path, &png(rgb, w, h)?)?;
            let cname = g
                .info
                .class_names
                .get(*label as usize)
                .cloned()
                .unwrap_or_default();
            csv.push_str(&format!("{name},{label},{}\n", cname.replace(',', " ")));
        }
        bar.inc(n as u64);
        done += n;
        k += 1;
    }
    bar.finish_and_clear();
    let labels = cli.output.join("labels.csv");
    crate::fsutil::write_atomic(&labels, csv.as_bytes())?;
    crate::progress::note(format!(
        "generate: {} images from {} (step {}) -> {}",
        cli.count,
        cli.gan.display(),
        g.info.step,
        cli.output.display()
    ));
    Ok(())
}

/// `fewlabels export`: the EMA generator as TorchScript, for use outside
/// this tool.
#[derive(clap::Args, Debug)]
pub struct ExportCli {
    /// A finished `train-gan` output folder.
    #[arg(long)]
    pub gan: PathBuf,
    /// The TorchScript file to write (e.g. G.pt).
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the standing batch-norm statistics recomputed before export.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub exec: Exec,
}

/// Traces the EMA generator (standing statistics recomputed, eval mode)
/// into a TorchScript module whose `forward(z, y)` takes z `[N, z_dim]`
/// float32 and class indices `[N]` int64 and returns images `[N, 3, R, R]`
/// in [-1, 1]: what `generate` samples, loadable with `torch.jit.load`.
pub fn export_main(cli: ExportCli) -> Result<()> {
    device::set_threads(cli.exec.threads);
    let device = cli.exec.device.resolve()?;
    let mut g = load_generator(&cli.gan, cli.seed, device)?;
    g.freeze();
    let cfg = &g.g.cfg;
    // Two examples: the trace holds no batch size (the model takes any N).
    let z = tch::Tensor::randn([2, cfg.z_dim], (tch::Kind::Float, device));
    let y = tch::Tensor::zeros([2], (tch::Kind::Int64, device));
    let module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("FewlabelsGenerator", "forward", &[z, y], &mut |xs| {
            vec![g.g.forward_t(&xs[0], &xs[1], false)]
        })
    })
    .map_err(|e| Error::invalid(format!("export: tracing the generator failed: {e}")))?;
    if let Some(dir) = cli.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).at(dir)?;
    }
    let tmp = cli.output.with_extension("pt.tmp");
    module.save(&tmp).at(&tmp)?;
    fs::rename(&tmp, &cli.output).at(&cli.output)?;
    let info = serde_json::json!({
        "output": cli.output, "z_dim": cfg.z_dim, "classes": cfg.n_classes,
        "class_names": g.info.class_names, "resolution": cfg.resolution, "step": g.info.step,
    });
    if crate::progress::is_json() {
        println!("{info}");
    } else {
        crate::progress::note(format!(
            "export: {} (z [N, {}] float32, class [N] int64 in 0..{} -> images [N, 3, {r}, {r}] in [-1, 1])",
            cli.output.display(),
            cfg.z_dim,
            cfg.n_classes,
            r = cfg.resolution
        ));
    }
    Ok(())
}

/// `fewlabels bench-gan`: G-step and D-step images/s on synthetic data with
/// the training code (for the GPU comparison with PyTorch, benches/gan/).
#[derive(clap::Args, Debug)]
pub struct BenchCli {
    /// Image side: 32, 64 or 128.
    #[arg(long, default_value_t = 128)]
    pub resolution: i64,
    /// Channel multiplier (BigGAN: 96).
    #[arg(long, default_value_t = 96)]
    pub ch: i64,
    /// Images per step (real and fake each).
    #[arg(long, default_value_t = 256)]
    pub batch_size: i64,
    /// Classes of the conditional networks.
    #[arg(long, default_value_t = 1000)]
    pub classes: i64,
    /// Convolutions and matrix products in bfloat16.
    #[arg(long, default_value_t = false)]
    pub bf16: bool,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub steps: u64,
    /// Untimed updates before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    #[arg(long, value_enum, default_value_t = GanMode::Biggan)]
    pub mode: GanMode,
    /// Whose BigGAN (as train-gan --arch).
    #[arg(long, value_enum, default_value_t = GanArch::BigganPytorch)]
    pub arch: GanArch,
    /// D steps per timed update (compare_gan: 2).
    #[arg(long, default_value_t = 2)]
    pub d_steps: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn bench_main(cli: BenchCli) -> Result<()> {
    device::set_threads(cli.threads);
    let device = cli.device.resolve()?;
    let names: Vec<String> = (0..cli.classes).map(|c| format!("c{c}")).collect();
    let params = Params {
        mode: cli.mode,
        resolution: Some(cli.resolution),
        ch: cli.ch,
        batch_size: cli.batch_size,
        accumulation: 1,
        bf16: cli.bf16,
        arch: cli.arch,
        d_steps: cli.d_steps,
        ..Params::default()
    };
    let cfg = params.train_config(&names, cli.resolution)?;
    let r = bench(&cfg, device, cli.steps, cli.warmup)?;
    println!(
        "{}",
        serde_json::to_string(&r).map_err(|e| Error::invalid(e.to_string()))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_keys_are_kebab_case() {
        let toml_set: Params = toml::from_str("mode = \"s3gan\"\nbatch-size = 64").expect("toml");
        assert_eq!(toml_set.mode, GanMode::S3gan);
        assert_eq!(toml_set.batch_size, 64);
    }
}
