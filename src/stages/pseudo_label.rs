//! Stage `pseudo-label`: one label per image, its source and a confidence,
//! as `pseudo_labels/` (id, label, source, confidence), plus a quality
//! report whenever the images carry true labels (hidden from the labelling,
//! as in the paper's ImageNet runs).
//!
//! `--method kmeans` ("Clustering" in Lucic et al. 2019): k-means over
//! `features/`; the label is the cluster index (classes `cluster-0`, ...),
//! the source `cluster`, the confidence `1 - d1/d2` from the distances to the
//! nearest and second-nearest centroid. `--method classifier` (S2GAN) labels
//! the unlabelled images with the extractor's linear head (`predicted`) and
//! keeps the given labels (`given`).
//!
//! Quality report (`quality.json`, `confusion.png`, and the summary): for
//! clusters, accuracy after Hungarian matching of clusters to classes, NMI,
//! ARI and purity; for predicted labels also accuracy on the unlabelled
//! images and per-class precision and recall.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ResultExt};
use crate::fsutil::write_atomic;
use crate::kmeans;
use crate::manifest::Manifest;
use crate::metrics::clustering::{self, Contingency};
use crate::progress;
use crate::shard::{mapped, schema, table_files, TableReader, TableWriter};
use crate::stage::{StageName, StageRun};
use crate::stages::{at_least, in_range, tables, Exec, ParamError, RunDirs, Slot, Stage};

/// How labels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// k-means clusters of the features (the paper's "Clustering").
    #[default]
    Kmeans,
    /// The pretrained extractor's linear head (S2GAN); needs features with logits.
    Classifier,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    #[arg(long, value_enum, default_value_t = Method::Kmeans)]
    pub method: Method,
    /// Number of clusters; 0 = the number of classes of the images table.
    #[arg(long, default_value_t = 0)]
    pub clusters: usize,
    /// Seed of the k-means initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// k-means initialisation.
    #[arg(long, value_enum, default_value_t = kmeans::Init::Auto)]
    pub init: kmeans::Init,
    /// k-means implementation (by problem size when auto).
    #[arg(long, value_enum, default_value_t = kmeans::Backend::Auto)]
    pub backend: kmeans::Backend,
    /// k-means iterations at most, on the training points (faiss's default).
    #[arg(long, default_value_t = 25)]
    pub max_iter: usize,
    /// k-means also stops when the squared centroid shift is at most this
    /// times the mean feature variance (scikit-learn's rule); 0 (as faiss):
    /// only when no training point changes cluster, or at --max-iter.
    #[arg(long, default_value_t = 0.0)]
    pub tol: f64,
    /// k-means trains on at most this many points per cluster, drawn with
    /// --seed (faiss's default), then assigns every point; 0 = train on all.
    #[arg(long, default_value_t = kmeans::SAMPLE_PER_CENTROID)]
    pub sample_per_centroid: usize,
    /// k-means runs from this many seeds and keeps the one of lowest inertia
    /// on the training points (scikit-learn's n_init).
    #[arg(long, default_value_t = 1)]
    pub n_init: usize,
    /// Mini-batch size of the linfa back-end (0 = automatic).
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
    /// With `--method classifier`, also cluster the same features with k-means
    /// and score those clusters (`kmeans_quality.json`, `kmeans_confusion.png`)
    /// next to the classifier's labels; the labels written are the classifier's.
    #[arg(long, default_value_t = false)]
    pub compare_kmeans: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            method: Method::Kmeans,
            clusters: 0,
            seed: 0,
            init: kmeans::Init::Auto,
            backend: kmeans::Backend::Auto,
            max_iter: 25,
            tol: 0.0,
            sample_per_centroid: kmeans::SAMPLE_PER_CENTROID,
            n_init: 1,
            batch_size: 0,
            compare_kmeans: false,
        }
    }
}

/// `fewlabels pseudo-label`.
pub struct PseudoLabel;

pub const FEATURES: Slot = Slot::required(
    "features",
    StageName::Embed,
    "The `features/` folder of `embed`.",
);
pub const LABELS: Slot = Slot::optional(
    "labels",
    StageName::SampleLabels,
    "The `labels/` folder of `sample-labels` (the classifier keeps these labels).",
);
pub const TRUTH: Slot = Slot::required(
    "images",
    StageName::Prepare,
    "The `images/` folder of `prepare`: true labels for the quality report.",
);

impl Stage for PseudoLabel {
    const NAME: StageName = StageName::PseudoLabel;
    const ABOUT: &'static str = "Label every image by k-means clusters or by the classifier head.";
    const OUTPUT: &'static str = "Where `pseudo_labels/` goes.";
    const SLOTS: &'static [Slot] = &[FEATURES, LABELS, TRUTH];
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        at_least("max-iter", p.max_iter as u64, 1)?;
        at_least("n-init", p.n_init as u64, 1)?;
        in_range("tol", p.tol, 0.0, f64::MAX)
    }

    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let features = dirs.need(&FEATURES)?;
        let images = dirs.need(&TRUTH)?;
        let labels = dirs.get(&LABELS);
        let labelling = match params.method {
            Method::Kmeans => label_by_kmeans(features, images, params, exec, run)?,
            Method::Classifier => label_by_classifier(features, labels, images, params, exec, run)?,
        };
        write_labelling(run, &labelling)?;
        quality_report(run, images, &labelling, "")?;
        if params.compare_kmeans && params.method == Method::Classifier {
            let clusters = label_by_kmeans(features, images, params, exec, run)?;
            quality_report(run, images, &clusters, "kmeans_")?;
        }
        Ok(())
    }
}

/// Where a label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A label of the kept labelled subset.
    Given,
    /// A k-means cluster index.
    Cluster,
    /// The classifier's prediction for an unlabelled image.
    Predicted,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Given => "given",
            Source::Cluster => "cluster",
            Source::Predicted => "predicted",
        }
    }
}

/// The labels a method made, before they are written.
pub struct Labelling {
    pub ids: Vec<u64>,
    /// Indices into `label_names`.
    pub labels: Vec<i64>,
    pub sources: Vec<Source>,
    pub confidence: Vec<f32>,
    /// Names of the label values (the table's class names).
    pub label_names: Vec<String>,
    /// True when labels are class indices (classifier); false for cluster indices.
    pub labels_are_classes: bool,
}

/// The whole `features/` table: ids, and the feature vectors as the record
/// batches of the memory-mapped files (`shard::mapped`), which k-means reads
/// in place. k-means needs every point (1.28M x 2048 f32 is 10.5 GB): mapped,
/// the page cache holds the only copy.
pub struct FeatureMatrix {
    pub ids: Vec<u64>,
    pub dim: usize,
    /// Each batch and its file (for errors).
    batches: Vec<(PathBuf, RecordBatch)>,
    /// The linear head's logits (n x logits_dim), when the table has them.
    pub logits: Option<(usize, Vec<f32>)>,
}

impl FeatureMatrix {
    /// The features as k-means points: one block per record batch, no copy.
    pub fn points(&self) -> Result<kmeans::Points<'_>> {
        let blocks = self
            .batches
            .iter()
            .map(|(file, b)| Ok(list_values(b, "feature", file)?.map_or(&[][..], |v| v.1)))
            .collect::<Result<Vec<_>>>()?;
        kmeans::Points::new(blocks, self.dim)
    }
}

/// The values of the fixed-size list of f32 column `name` (width, row-major
/// values), read where they lie; `None` when the batch has no such column.
fn list_values<'b>(
    batch: &'b RecordBatch,
    name: &str,
    file: &Path,
) -> Result<Option<(usize, &'b [f32])>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let l = col
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| {
            Error::file(
                file,
                format!("`{name}` is not a fixed-size list; re-run `embed`"),
            )
        })?;
    let v = l
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| {
            Error::file(
                file,
                format!("`{name}` is not a list of f32; re-run `embed`"),
            )
        })?;
    if l.null_count() > 0 || v.null_count() > 0 {
        return Err(Error::file(
            file,
            format!("`{name}` has missing values; re-run `embed`"),
        ));
    }
    let dim = l.value_length() as usize;
    let start = l.offset() * dim;
    Ok(Some((dim, &v.values()[start..start + l.len() * dim])))
}

pub fn read_features(features: &Path) -> Result<FeatureMatrix> {
    let m = Manifest::read_complete(features, StageName::Embed)?;
    let mut out = FeatureMatrix {
        ids: Vec::new(),
        dim: 0,
        batches: Vec::new(),
        logits: None,
    };
    let files = table_files(features, &m, "features");
    // k-means reads every page: start reading them all in before the first
    // fault (the page cache may have dropped the files since `embed`).
    for file in &files {
        mapped::prefetch(file)?;
    }
    for file in files {
        for batch in mapped::map_file(&file, None)?.batches {
            out.ids.extend(
                tables::u64_column(&batch, "id", &file)?
                    .values()
                    .iter()
                    .copied(),
            );
            let (dim, _) = list_values(&batch, "feature", &file)?
                .ok_or_else(|| Error::file(&file, "has no `feature` column; re-run `embed`"))?;
            if !out.batches.is_empty() && dim != out.dim {
                return Err(Error::file(
                    &file,
                    format!(
                        "features of {dim} dims after {} dims; re-run `embed`",
                        out.dim
                    ),
                ));
            }
            out.dim = dim;
            if let Some((ld, lv)) = list_values(&batch, "logits", &file)? {
                out.logits
                    .get_or_insert_with(|| (ld, Vec::new()))
                    .1
                    .extend_from_slice(lv);
            }
            out.batches.push((file.clone(), batch));
        }
    }
    if out.ids.is_empty() {
        return Err(Error::file(
            features,
            "the features table is empty; nothing to label",
        ));
    }
    Ok(out)
}

/// `--method kmeans`: cluster indices for every image.
fn label_by_kmeans(
    features: &Path,
    images: &Path,
    params: &Params,
    exec: &Exec,
    run: &mut StageRun,
) -> Result<Labelling> {
    let t0 = std::time::Instant::now();
    let f = read_features(features)?;
    let points = f.points()?;
    run.phase("read", t0.elapsed().as_secs_f64());
    let k = if params.clusters > 0 {
        params.clusters
    } else {
        let m = Manifest::read_complete(images, StageName::Prepare)?;
        let n = tables::class_names(images, &m, "images")?.len();
        if n == 0 {
            return Err(Error::invalid(
                "--clusters 0 means the number of classes, but the images table names none; give --clusters K",
            ));
        }
        n
    };
    let n = points.n();
    if k > n {
        return Err(Error::invalid(format!(
            "--clusters {k}: more clusters than the {n} images"
        )));
    }
    let cfg = kmeans::Config {
        k,
        max_iter: params.max_iter,
        tol: params.tol,
        init: params.init,
        seed: params.seed,
        backend: params.backend,
        batch_size: params.batch_size,
        device: exec.device.resolve()?,
        sample_per_centroid: params.sample_per_centroid,
        n_init: params.n_init,
    };
    let (backend, init) = kmeans::resolve(&cfg, n, f.dim);
    progress::note(format!(
        "pseudo-label: k-means, {n} points x {} dims, k = {k}, trained on {}, {backend:?} back-end, {init:?} init",
        f.dim,
        cfg.train_points(n)
    ));
    let c = kmeans::fit_points(&points, &cfg)?;
    run.phase("kmeans_init", c.init_seconds);
    run.phase("kmeans_iterate", c.iterate_seconds);
    run.phase("kmeans_assign", c.assign_seconds);
    run.count("kmeans_backend", format!("{:?}", c.backend).to_lowercase());
    run.count("kmeans_init", format!("{:?}", c.init).to_lowercase());
    run.count("kmeans_minibatch", c.minibatch);
    run.count("kmeans_train_points", c.train_points as u64);
    run.count("kmeans_best_run", c.best_run as u64);
    run.count("kmeans_iterations", c.iterations as u64);
    run.count("kmeans_converged", c.converged);
    run.count("kmeans_train_inertia", c.train_inertia);
    run.count("kmeans_inertia", c.inertia);
    run.count("clusters", k as u64);
    run.count("dim", f.dim as u64);
    let mut sizes = vec![0u64; k];
    for &l in &c.labels {
        sizes[l as usize] += 1;
    }
    run.count("cluster_size_min", sizes.iter().copied().min().unwrap_or(0));
    run.count("cluster_size_max", sizes.iter().copied().max().unwrap_or(0));
    Ok(Labelling {
        labels: c.labels.iter().map(|&l| l as i64).collect(),
        sources: vec![Source::Cluster; n],
        confidence: c.confidence,
        ids: f.ids,
        label_names: tables::numbered_names("cluster", k),
        labels_are_classes: false,
    })
}

/// `--method classifier` (S2GAN): the extractor's linear head labels the
/// unlabelled images (source `predicted`, confidence = softmax max); the
/// labelled subset keeps its labels (source `given`, confidence 1).
fn label_by_classifier(
    features: &Path,
    labels: Option<&Path>,
    images: &Path,
    params: &Params,
    exec: &Exec,
    run: &mut StageRun,
) -> Result<Labelling> {
    let _ = (images, params, exec);
    let labels = labels.ok_or_else(|| {
        Error::invalid("--method classifier needs --labels (the `labels/` folder of sample-labels)")
    })?;
    let lm = Manifest::read_complete(labels, StageName::SampleLabels)?;
    let class_names = tables::class_names(labels, &lm, "labels")?;
    let k = class_names.len();
    let (given, holdout) = read_given(labels, &lm)?;
    let f = read_features(features)?;
    let (ld, logits) = f.logits.as_ref().ok_or_else(|| {
        Error::file(
            features,
            "has no `logits` column: embed with a model pretrained with --labels (objective s2l or supervised)",
        )
    })?;
    if *ld != k {
        return Err(Error::file(
            features,
            format!("logits have {ld} classes, the labels table {k}; embed with the model trained on these labels"),
        ));
    }
    let n = f.ids.len();
    let mut out = Labelling {
        ids: f.ids.clone(),
        labels: Vec::with_capacity(n),
        sources: Vec::with_capacity(n),
        confidence: Vec::with_capacity(n),
        label_names: class_names,
        labels_are_classes: true,
    };
    let (mut holdout_right, mut holdout_seen) = (0u64, 0u64);
    for (i, id) in f.ids.iter().enumerate() {
        let (pred, conf) = argmax_softmax(&logits[i * k..(i + 1) * k]);
        if let Some(&h) = holdout.get(id) {
            holdout_seen += 1;
            holdout_right += (h == pred) as u64;
        }
        match given.get(id) {
            Some(&l) => {
                out.labels.push(l);
                out.sources.push(Source::Given);
                out.confidence.push(1.0);
            }
            None => {
                out.labels.push(pred);
                out.sources.push(Source::Predicted);
                out.confidence.push(conf);
            }
        }
    }
    run.count("given", given.len() as u64);
    run.count(
        "predicted",
        out.sources
            .iter()
            .filter(|s| **s == Source::Predicted)
            .count() as u64,
    );
    if holdout_seen > 0 {
        run.count(
            "holdout_accuracy",
            holdout_right as f64 / holdout_seen as f64,
        );
    }
    Ok(out)
}

/// The class with the largest logit and its softmax probability.
fn argmax_softmax(row: &[f32]) -> (i64, f32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (j, &v) in row.iter().enumerate() {
        if v > max {
            best = j;
            max = v;
        }
    }
    let denom: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    (best as i64, 1.0 / denom)
}

/// Every labelled id -> label (both splits), and the holdout ids -> label.
fn read_given(dir: &Path, m: &Manifest) -> Result<(HashMap<u64, i64>, HashMap<u64, i64>)> {
    let (mut given, mut holdout) = (HashMap::new(), HashMap::new());
    for rb in TableReader::from_manifest(dir, m, "labels", Some(&["id", "label", "split"])) {
        let rb = rb?;
        let ids = tables::u64_column(&rb, "id", dir)?;
        let labels = tables::i64_column(&rb, "label", dir)?;
        let splits = tables::str_column(&rb, "split", dir)?;
        for i in 0..rb.num_rows() {
            given.insert(ids.value(i), labels.value(i));
            if splits.value(i) == "holdout" {
                holdout.insert(ids.value(i), labels.value(i));
            }
        }
    }
    Ok((given, holdout))
}

fn write_labelling(run: &mut StageRun, l: &Labelling) -> Result<()> {
    let schema = schema::pseudo_labels(&l.label_names);
    let mut w = TableWriter::new(&run.dir, "pseudo_labels", schema.clone(), 1 << 22);
    let n = l.ids.len();
    let step = 1 << 16;
    let mut s = 0;
    while s < n {
        let e = (s + step).min(n);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(l.ids[s..e].to_vec())),
            Arc::new(Int64Array::from(l.labels[s..e].to_vec())),
            Arc::new(StringArray::from_iter_values(
                l.sources[s..e].iter().map(|x| x.as_str()),
            )),
            Arc::new(Float32Array::from(l.confidence[s..e].to_vec())),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).at(&run.dir)?)?;
        s = e;
    }
    for (file, rows) in w.finish()? {
        run.add_output(file, Some(rows))?;
    }
    run.count("images", n as u64);
    for src in [Source::Given, Source::Cluster, Source::Predicted] {
        let c = l.sources.iter().filter(|s| **s == src).count();
        if c > 0 {
            run.count(&format!("source_{}", src.as_str()), c as u64);
        }
    }
    let mean_conf = l.confidence.iter().map(|&c| c as f64).sum::<f64>() / n.max(1) as f64;
    run.count("confidence_mean", mean_conf);
    Ok(())
}

/// What `quality.json` holds.
#[derive(Debug, Serialize)]
pub struct QualityReport {
    /// Images with a true label that were scored.
    pub scored: u64,
    pub class_names: Vec<String>,
    pub label_names: Vec<String>,
    /// Cluster-style scores over every scored image.
    pub clustering: clustering::ClusterQuality,
    /// For class labels: scores on the images whose label was predicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted: Option<clustering::PredictionQuality>,
    /// Rows: true classes; columns: labels.
    pub contingency: Vec<Vec<u64>>,
}

/// Scores the labelling against the images' true labels, when there are any:
/// writes `{prefix}quality.json` and `{prefix}confusion.png` and puts the
/// figures in the summary as `{prefix}quality_*`.
fn quality_report(run: &mut StageRun, images: &Path, l: &Labelling, prefix: &str) -> Result<()> {
    let m = Manifest::read_complete(images, StageName::Prepare)?;
    let class_names = tables::class_names(images, &m, "images")?;
    let truth = tables::read_id_labels(images, &m, "images")?;
    let truth: HashMap<u64, i64> = truth
        .ids
        .iter()
        .zip(&truth.labels)
        .filter_map(|(&id, l)| l.map(|l| (id, l)))
        .collect();
    let n_classes = class_names.len();
    let mut t = Vec::new();
    let mut p = Vec::new();
    let mut predicted_rows = Vec::new();
    for (i, id) in l.ids.iter().enumerate() {
        if let Some(&c) = truth.get(id) {
            if c < 0 || c as usize >= n_classes {
                continue;
            }
            t.push(c as usize);
            p.push(l.labels[i] as usize);
            if l.sources[i] == Source::Predicted {
                predicted_rows.push(t.len() - 1);
            }
        }
    }
    if t.is_empty() {
        run.count(
            &format!("{prefix}quality"),
            "no true labels in the images table: no quality report",
        );
        return Ok(());
    }
    let (cq, contingency) = clustering::cluster_quality(&t, &p, n_classes, l.label_names.len())?;
    let predicted = if l.labels_are_classes && !predicted_rows.is_empty() {
        let tt: Vec<usize> = predicted_rows.iter().map(|&i| t[i]).collect();
        let pp: Vec<usize> = predicted_rows.iter().map(|&i| p[i]).collect();
        Some(clustering::prediction_quality(&tt, &pp, n_classes)?.0)
    } else {
        None
    };
    let key = |k: &str| format!("{prefix}quality_{k}");
    run.count(&key("scored"), t.len() as u64);
    run.count(&key("accuracy"), cq.accuracy);
    run.count(&key("nmi"), cq.nmi);
    run.count(&key("ari"), cq.ari);
    run.count(&key("purity"), cq.purity);
    if let Some(pq) = &predicted {
        run.count(&key("predicted_accuracy"), pq.accuracy);
        run.count(&key("predicted_macro_precision"), pq.macro_precision);
        run.count(&key("predicted_macro_recall"), pq.macro_recall);
    }
    // Heat map: clusters in matched order; classes in their own order.
    let order = if l.labels_are_classes {
        None
    } else {
        Some(clustering::matched_order(&cq.matching, n_classes))
    };
    let title = match &predicted {
        Some(pq) => format!(
            "{} images: accuracy {:.3} (unlabelled: {:.3})",
            t.len(),
            cq.accuracy,
            pq.accuracy
        ),
        None => format!(
            "{} images, {} clusters: accuracy {:.3}, NMI {:.3}, ARI {:.3}",
            t.len(),
            l.label_names.len(),
            cq.accuracy,
            cq.nmi,
            cq.ari
        ),
    };
    let img = clustering::confusion_image(
        &contingency,
        &class_names,
        &l.label_names,
        order.as_deref(),
        &title,
    );
    let png = format!("{prefix}confusion.png");
    crate::plot::save_png(&img, &run.dir.join(&png))?;
    run.add_output(&png, None)?;
    let report = QualityReport {
        scored: t.len() as u64,
        class_names,
        label_names: l.label_names.clone(),
        clustering: cq,
        predicted,
        contingency: contingency_rows(&contingency),
    };
    let file = format!("{prefix}quality.json");
    let path = run.dir.join(&file);
    write_atomic(&path, &serde_json::to_vec_pretty(&report).at(&path)?)?;
    run.add_output(&file, None)?;
    Ok(())
}

fn contingency_rows(c: &Contingency) -> Vec<Vec<u64>> {
    (0..c.n_true)
        .map(|t| (0..c.n_pred).map(|p| c.get(t, p)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_choices_parse_from_pipeline_files() {
        let p: Params = toml::from_str("init = \"kmeans++\"\nbackend = \"torch\"").unwrap();
        assert_eq!(p.init, kmeans::Init::KmeansPlusPlus);
        assert_eq!(p.backend, kmeans::Backend::Torch);
    }

    #[test]
    fn argmax_softmax_is_right() {
        let (c, p) = argmax_softmax(&[0.0, 2.0, 1.0]);
        assert_eq!(c, 1);
        let want = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p - want).abs() < 1e-6);
    }
}
