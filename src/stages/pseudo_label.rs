//! Stage `pseudo-label`: one label per image. `--method classifier` (S2GAN):
//! labelled images keep their label (source `given`); every other image
//! takes the argmax of the pretrained linear head's logits (source
//! `predicted`, confidence = the softmax maximum). `--method kmeans` (the
//! unsupervised route) clusters the features.
//!
//! The quality report compares the labels with the true labels the images
//! table still holds (when it has them): accuracy on the images whose labels
//! were hidden is the figure of merit.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use serde::{Deserialize, Serialize};

use crate::device;
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::write_atomic;
use crate::manifest::Manifest;
use crate::progress::Outcome;
use crate::shard::{schema, shard_schema, table_files, TableReader, TableWriter};
use crate::stage::{self, Input};
use crate::stages::Exec;

pub const NAME: &str = "pseudo-label";
pub const QUALITY_FILE: &str = "quality.json";
const ROWS_PER_SHARD: usize = 1_000_000;

/// How the unlabelled images get a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// k-means clusters of the features.
    #[default]
    Kmeans,
    /// The argmax of the pretrained linear head (needs features with logits).
    Classifier,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    #[arg(long, value_enum, default_value_t = Method::Kmeans)]
    pub method: Method,
}

#[derive(clap::Args, Debug)]
pub struct Cli {
    /// The `features/` folder of `embed`.
    #[arg(long)]
    pub features: PathBuf,
    /// The `labels/` folder of `sample-labels`.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The `images/` folder of `prepare` (true labels for the quality report).
    #[arg(long)]
    pub images: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub exec: Exec,
}

/// What this stage reads, for fingerprinting (shared by `run` and the pipeline's plan).
pub fn inputs(features: &Path, labels: Option<&Path>, images: &Path) -> Vec<Input> {
    let mut v = vec![
        Input::stage(features, "embed"),
        Input::stage(images, "prepare"),
    ];
    if let Some(l) = labels {
        v.push(Input::stage(l, "sample-labels"));
    }
    v
}

pub fn run(
    features: &Path,
    labels: Option<&Path>,
    images: &Path,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    match params.method {
        Method::Classifier => {
            let labels = labels.ok_or_else(|| {
                Error::invalid(
                    "--method classifier needs --labels DIR (the labelled images keep their label)",
                )
            })?;
            run_classifier(features, labels, images, output, params, exec)
        }
        Method::Kmeans => Err(Error::invalid(
            "pseudo-label --method kmeans is built on the datapath branch",
        )),
    }
}

pub fn main(cli: Cli) -> Result<()> {
    device::set_threads(cli.exec.threads);
    run(
        &cli.features,
        cli.labels.as_deref(),
        &cli.images,
        &cli.output,
        &cli.params,
        &cli.exec,
    )
    .map(|_| ())
}

/// The quality of the classifier's labels against the true labels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierQuality {
    pub images: u64,
    pub given: u64,
    pub predicted: u64,
    /// Predicted labels that match the true label, over predicted images with one.
    pub accuracy_hidden: Option<f64>,
    pub hidden_with_truth: u64,
    /// All labels (given + predicted) that match the true label.
    pub accuracy_all: Option<f64>,
    /// The head's accuracy on the labels' holdout split (images it did not train on).
    pub accuracy_holdout: Option<f64>,
    pub mean_confidence_predicted: f64,
    /// rows = true class, columns = assigned label (hidden images only).
    pub confusion_hidden: Vec<Vec<u64>>,
}

/// `pseudo-label --method classifier`.
pub fn run_classifier(
    features: &Path,
    labels: &Path,
    images: &Path,
    output: &Path,
    params: &Params,
    _exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    stage::run_stage(
        NAME,
        output,
        params,
        &inputs(features, Some(labels), images),
        |run| {
            let (given, holdout_ids, class_names) = read_given(labels)?;
            let truth = read_truth(images)?;
            let k = class_names.len();
            let fm = Manifest::read_complete(features, "embed")?;
            let ffiles = table_files(features, &fm, "features");
            if let Some(first) = ffiles.first() {
                if shard_schema(first)?.index_of("logits").is_err() {
                    return Err(Error::file(
                    first,
                    "has no `logits` column: embed with a model pretrained with --labels (objective s2l or supervised)",
                ));
                }
            }
            let sch = schema::pseudo_labels(&class_names);
            let mut writer =
                TableWriter::new(&run.dir, "pseudo_labels", sch.clone(), ROWS_PER_SHARD);
            let mut q = ClassifierQuality {
                images: 0,
                given: 0,
                predicted: 0,
                accuracy_hidden: None,
                hidden_with_truth: 0,
                accuracy_all: None,
                accuracy_holdout: None,
                mean_confidence_predicted: 0.0,
                confusion_hidden: vec![vec![0; k]; k],
            };
            let (mut right_hidden, mut right_all, mut with_truth) = (0u64, 0u64, 0u64);
            let (mut right_holdout, mut n_holdout) = (0u64, 0u64);
            let mut conf_sum = 0.0f64;
            for rb in TableReader::new(ffiles, Some(&["id", "logits"])) {
                let rb = rb?;
                let ids = rb
                    .column(0)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| Error::file(features, "`id` is not uint64"))?;
                let logits = rb
                    .column(1)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .ok_or_else(|| Error::file(features, "`logits` is not a fixed-size list"))?;
                if logits.value_length() as usize != k {
                    return Err(Error::file(
                    features,
                    format!(
                        "logits have {} classes, the labels table {k}; embed with the model trained on these labels",
                        logits.value_length()
                    ),
                ));
                }
                let values = logits
                    .values()
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or_else(|| Error::file(features, "`logits` items are not float32"))?;
                let n = rb.num_rows();
                let (mut out_label, mut out_source, mut out_conf) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for i in 0..n {
                    let id = ids.value(i);
                    let row = &values.values()[i * k..(i + 1) * k];
                    let (pred, conf) = argmax_softmax(row);
                    let t = truth.get(&id).copied();
                    if holdout_ids.contains_key(&id) {
                        n_holdout += 1;
                        right_holdout += (pred == holdout_ids[&id]) as u64;
                    }
                    let (label, source, confidence) = match given.get(&id) {
                        Some(&l) => {
                            q.given += 1;
                            (l, "given", 1.0f32)
                        }
                        None => {
                            q.predicted += 1;
                            conf_sum += conf as f64;
                            if let Some(t) = t {
                                q.hidden_with_truth += 1;
                                right_hidden += (t == pred) as u64;
                                if (0..k as i64).contains(&t) {
                                    q.confusion_hidden[t as usize][pred as usize] += 1;
                                }
                            }
                            (pred, "predicted", conf)
                        }
                    };
                    if let Some(t) = t {
                        with_truth += 1;
                        right_all += (t == label) as u64;
                    }
                    out_label.push(label);
                    out_source.push(source);
                    out_conf.push(confidence);
                }
                q.images += n as u64;
                let out = RecordBatch::try_new(
                    sch.clone(),
                    vec![
                        Arc::new(UInt64Array::from(ids.values().to_vec())),
                        Arc::new(Int64Array::from(out_label)),
                        Arc::new(StringArray::from(out_source)),
                        Arc::new(Float32Array::from(out_conf)),
                    ],
                )
                .at(&run.dir)?;
                writer.write(&out)?;
            }
            let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
            q.accuracy_hidden = ratio(right_hidden, q.hidden_with_truth);
            q.accuracy_all = ratio(right_all, with_truth);
            q.accuracy_holdout = ratio(right_holdout, n_holdout);
            q.mean_confidence_predicted = if q.predicted > 0 {
                conf_sum / q.predicted as f64
            } else {
                0.0
            };
            for (file, n) in writer.finish()? {
                run.add_output(file, Some(n))?;
            }
            let qpath = run.dir.join(QUALITY_FILE);
            write_atomic(&qpath, &serde_json::to_vec_pretty(&q).at(&qpath)?)?;
            run.add_output(QUALITY_FILE, None)?;
            run.count("images", q.images);
            run.count("given", q.given);
            run.count("predicted", q.predicted);
            if let Some(a) = q.accuracy_hidden {
                run.count("accuracy_hidden", a);
            }
            if let Some(a) = q.accuracy_holdout {
                run.count("accuracy_holdout", a);
            }
            if let Some(a) = q.accuracy_all {
                run.count("accuracy_all", a);
            }
            run.count("mean_confidence_predicted", q.mean_confidence_predicted);
            Ok(())
        },
    )
}

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

/// Every labelled id -> label (both splits), the holdout ids, and the class names.
fn read_given(dir: &Path) -> Result<(HashMap<u64, i64>, HashMap<u64, i64>, Vec<String>)> {
    let m = Manifest::read_complete(dir, "sample-labels")?;
    let files = table_files(dir, &m, "labels");
    let first = files
        .first()
        .ok_or_else(|| Error::file(dir, "lists no labels-*.arrow table"))?;
    let names = schema::class_names_of(shard_schema(first)?.as_ref());
    if names.is_empty() {
        return Err(Error::file(first, "has no class names in its metadata"));
    }
    let (mut given, mut holdout) = (HashMap::new(), HashMap::new());
    for rb in TableReader::new(files, Some(&["id", "label", "split"])) {
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
            given.insert(ids.value(i), labels.value(i));
            if splits.value(i) == "holdout" {
                holdout.insert(ids.value(i), labels.value(i));
            }
        }
    }
    Ok((given, holdout, names))
}

/// The true labels the images table holds (null labels are skipped).
fn read_truth(dir: &Path) -> Result<HashMap<u64, i64>> {
    let m = Manifest::read_complete(dir, "prepare")?;
    let mut truth = HashMap::new();
    for rb in TableReader::new(table_files(dir, &m, "images"), Some(&["id", "label"])) {
        let rb = rb?;
        let ids = rb
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| Error::file(dir, "`id` is not uint64"))?;
        let labels = rb
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::file(dir, "`label` is not int64"))?;
        for i in 0..rb.num_rows() {
            if !labels.is_null(i) {
                truth.insert(ids.value(i), labels.value(i));
            }
        }
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_softmax_is_right() {
        let (c, p) = argmax_softmax(&[0.0, 2.0, 1.0]);
        assert_eq!(c, 1);
        let want = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p - want).abs() < 1e-6);
    }
}
