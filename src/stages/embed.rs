//! Stage `embed`: writes one feature vector per image to `features/`:
//! either raw downscaled pixels (`--model pixels`, the baseline) or the
//! pooled features of a `pretrain` extractor (`--model DIR`), with the linear
//! head's logits when the extractor has one.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::device;
use crate::error::{Error, Result, ResultExt};
use crate::manifest::Manifest;
use crate::models::resnet::SavedModel;
use crate::progress::{self, Outcome};
use crate::shard::{schema, table_files, TableWriter};
use crate::stage::{self, Input};
use crate::stages::Exec;
use crate::train::loader::{Loader, LoaderConfig};

pub const NAME: &str = "embed";
/// Rows per `features-*.arrow` file.
const ROWS_PER_SHARD: usize = 100_000;
/// Images per forward pass (execution only: outputs do not depend on it).
const BATCH: usize = 256;

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {}

#[derive(clap::Args, Debug)]
pub struct Cli {
    /// The `images/` folder of `prepare`.
    #[arg(long)]
    pub images: PathBuf,
    /// A `pretrain/` folder, or `pixels` for raw pixels.
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub exec: Exec,
}

/// What this stage reads, for fingerprinting (shared by `run` and the pipeline's plan).
pub fn inputs(images: &Path, model: Option<&Path>) -> Vec<Input> {
    let mut v = vec![Input::stage(images, "prepare")];
    if let Some(m) = model {
        v.push(Input::stage(m, "pretrain"));
    }
    v
}

pub fn run(
    images: &Path,
    model: Option<&Path>,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    match model {
        Some(dir) => run_model(images, dir, output, params, exec),
        None => Err(Error::invalid(
            "embed --model pixels is built on the datapath branch; use --model DIR here",
        )),
    }
}

pub fn main(cli: Cli) -> Result<()> {
    device::set_threads(cli.exec.threads);
    let model = (cli.model != "pixels").then(|| PathBuf::from(&cli.model));
    run(
        &cli.images,
        model.as_deref(),
        &cli.output,
        &cli.params,
        &cli.exec,
    )
    .map(|_| ())
}

/// `embed --model DIR`: the extractor's pooled features (and class logits
/// when it has a head) for every image, in table order, streamed to
/// `features-*.arrow`.
pub fn run_model(
    images: &Path,
    model: &Path,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    let device = exec.device.resolve()?;
    stage::run_stage(NAME, output, params, &inputs(images, Some(model)), |run| {
        let (info, _vs, net) = SavedModel::load(model, device)?;
        let images_m = Manifest::read_complete(images, "prepare")?;
        let files = table_files(images, &images_m, "images");
        let loader = Loader::new(files, LoaderConfig::sequential(BATCH))?;
        if loader.image_size() != info.image_size {
            return Err(Error::file(
                images,
                format!(
                    "images are {:?} (h, w) but the model in {} was trained on {:?}; embed the images it was trained on",
                    loader.image_size(),
                    model.display(),
                    info.image_size
                ),
            ));
        }
        let dim = info.feature_dim as usize;
        let logits_dim = info.num_classes.unwrap_or(0) as usize;
        let sch = schema::features(dim, logits_dim);
        let mut writer = TableWriter::new(&run.dir, "features", sch.clone(), ROWS_PER_SHARD);
        let pb = progress::bar(loader.rows() as u64, "images");
        pb.set_prefix(NAME);
        let t0 = Instant::now();
        let mut rows = 0u64;
        for b in loader {
            let b = b?;
            let heads = tch::no_grad(|| net.forward_t(&b.images.to_device(device), false));
            let to_vec = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(Vec::<f32>::try_from(
                    &t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1),
                )?)
            };
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(b.ids.clone())),
                fixed_list(to_vec(&heads.features)?, dim).at(&run.dir)?,
            ];
            if logits_dim > 0 {
                let logits = heads.classes.as_ref().ok_or_else(|| {
                    Error::file(model, "model.json names classes but the net has no head")
                })?;
                cols.push(fixed_list(to_vec(logits)?, logits_dim).at(&run.dir)?);
            }
            let rb = RecordBatch::try_new(sch.clone(), cols).at(&run.dir)?;
            writer.write(&rb)?;
            rows += b.ids.len() as u64;
            pb.inc(b.ids.len() as u64);
        }
        pb.finish_and_clear();
        for (file, n) in writer.finish()? {
            run.add_output(file, Some(n))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        run.phase("embed", secs);
        run.count("images", rows);
        run.count("feature_dim", dim as u64);
        run.count("logits_dim", logits_dim as u64);
        run.count("images_per_s", rows as f64 / secs.max(1e-9));
        Ok(())
    })
}

fn fixed_list(
    values: Vec<f32>,
    dim: usize,
) -> std::result::Result<ArrayRef, arrow::error::ArrowError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        item,
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}
