//! Stage `embed`: one feature vector per image, as `features/` rows (id,
//! feature as a fixed-size list of f32), in the images table's order.
//! `--model pixels` gives the raw pixels, downscaled to `--pixels-size` and
//! flattened, scaled to [0, 1]: the baseline every learned feature is
//! compared with, and what lets k-means run before any network is trained.
//! `--model DIR` runs a `pretrain` extractor (see `embed_pretrained`).
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field};
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::manifest::Manifest;
use crate::models::resnet::SavedModel;
use crate::progress;
use crate::shard::stored::{self, StoredImage};
use crate::shard::{image_bytes, schema, table_files, TableReader, TableWriter};
use crate::stage::{StageName, StageRun};
use crate::stages::{tables, Exec, ParamError, RunDirs, Slot, Stage, IMAGES};
use crate::train::loader::{Loader, LoaderConfig};

/// Rows per `features-*.arrow` file.
const ROWS_PER_SHARD: usize = 50_000;
/// Images per forward pass of `--model DIR` (execution only: outputs do not depend on it).
const BATCH: usize = 256;

/// Colour channels kept by `--model pixels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PixelColor {
    /// Red, green and blue: 3 x size x size values.
    #[default]
    Rgb,
    /// Luma only: size x size values.
    Gray,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Params {
    /// `--model pixels`: side of the downscaled image (anti-aliased bilinear).
    #[arg(long, default_value_t = 32)]
    pub pixels_size: u32,
    /// `--model pixels`: colour channels kept.
    #[arg(long, value_enum, default_value_t = PixelColor::Rgb)]
    pub pixels_color: PixelColor,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            pixels_size: 32,
            pixels_color: PixelColor::Rgb,
        }
    }
}

/// `fewlabels embed`.
pub struct Embed;

pub const MODEL: Slot = Slot {
    none_word: Some("pixels"),
    ..Slot::optional(
        "model",
        StageName::Pretrain,
        "`pixels` for raw downscaled pixels, or the `pretrain/` folder of an extractor.",
    )
};

impl Stage for Embed {
    const NAME: StageName = StageName::Embed;
    const ABOUT: &'static str =
        "One feature vector per image (raw pixels or a pretrained extractor).";
    const OUTPUT: &'static str = "Where `features/` goes.";
    const SLOTS: &'static [Slot] = &[IMAGES, MODEL];
    type Params = Params;

    fn validate(p: &Params) -> Result<(), ParamError> {
        if p.pixels_size == 0 || p.pixels_size > 1024 {
            return Err(ParamError::new("pixels-size", "must be between 1 and 1024"));
        }
        Ok(())
    }

    /// Embeds every image; without a model, as raw pixels.
    fn run(dirs: &RunDirs, params: &Params, exec: &Exec, run: &mut StageRun) -> Result<()> {
        let images = dirs.need(&IMAGES)?;
        match dirs.get(&MODEL) {
            None => embed_pixels(images, params, run),
            Some(dir) => embed_pretrained(images, dir, params, exec, run),
        }
    }
}

/// `embed --model DIR`: the extractor's pooled features (and class logits
/// when it has a head) for every image, in table order, streamed to
/// `features-*.arrow`.
fn embed_pretrained(
    images: &Path,
    model: &Path,
    params: &Params,
    exec: &Exec,
    run: &mut StageRun,
) -> Result<()> {
    let _ = params; // the pixels-only parameters do not apply to a model
    let device = exec.device.resolve()?;
    let (info, _vs, net) = SavedModel::load(model, device)?;
    let images_m = Manifest::read_complete(images, StageName::Prepare)?;
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
    pb.set_prefix(StageName::Embed.as_str());
    let t0 = std::time::Instant::now();
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
    run.count("dim", dim as u64);
    run.count("logits_dim", logits_dim as u64);
    run.count("model", model.display().to_string());
    run.count("images_per_s", rows as f64 / secs.max(1e-9));
    Ok(())
}

/// A `FixedSizeList<f32>` column of `dim`-long rows from flat values.
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

/// The pixel feature of one encoded image: decoded, resized to size x size
/// if needed, channels per `color`, values in [0, 1], row-major (HWC).
pub fn pixel_feature(
    bytes: &[u8],
    format: Option<&StoredImage>,
    size: u32,
    color: PixelColor,
) -> std::result::Result<Vec<f32>, String> {
    let img = image::DynamicImage::ImageRgb8(stored::decode_square(bytes, format)?);
    let img = if img.width() != size || img.height() != size {
        img.resize_exact(size, size, FilterType::Triangle)
    } else {
        img
    };
    let out: Vec<f32> = match color {
        PixelColor::Rgb => img
            .to_rgb8()
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
        PixelColor::Gray => img
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
    };
    Ok(out)
}

fn embed_pixels(images: &Path, params: &Params, run: &mut StageRun) -> Result<()> {
    let m = Manifest::read_complete(images, StageName::Prepare)?;
    let total = tables::table_rows(&m, "images");
    let size = params.pixels_size;
    let dim = (size * size) as usize
        * match params.pixels_color {
            PixelColor::Rgb => 3,
            PixelColor::Gray => 1,
        };
    let schema = schema::features(dim, 0);
    let mut w = TableWriter::new(&run.dir, "features", schema.clone(), ROWS_PER_SHARD);
    let bar = progress::bar(total, "images");
    bar.set_prefix(StageName::Embed.as_str());
    let t0 = std::time::Instant::now();
    let mut rows = 0u64;
    let format = tables::stored_image(images, &m, "images")?;
    for batch in TableReader::from_manifest(images, &m, "images", Some(&["id", "image"])) {
        let batch = batch?;
        let ids = tables::u64_column(&batch, "id", images)?;
        let col = tables::image_column(&batch, images)?;
        let n = batch.num_rows();
        // Decoding is independent per row; collect keeps row order, so the
        // output does not depend on the thread count.
        let feats: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let bytes = image_bytes(col.as_ref(), i)?;
                pixel_feature(bytes, format.as_ref(), size, params.pixels_color).map_err(|e| {
                    Error::file(
                        images,
                        format!("image id {}: {e}; re-run `prepare`", ids.value(i)),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let mut flat = Vec::with_capacity(n * dim);
        for f in &feats {
            flat.extend_from_slice(f);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(ids.values().to_vec())),
            fixed_list(flat, dim).at(&run.dir)?,
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).at(&run.dir)?)?;
        rows += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    run.phase("embed", t0.elapsed().as_secs_f64());
    for (file, n) in w.finish()? {
        run.add_output(file, Some(n))?;
    }
    run.count("images", rows);
    run.count("dim", dim as u64);
    run.count("model", "pixels");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_feature_keeps_values_and_resizes() {
        let img = image::RgbImage::from_fn(4, 4, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 60) as u8, 255])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let f = pixel_feature(png.get_ref(), None, 4, PixelColor::Rgb).unwrap();
        assert_eq!(f.len(), 48);
        assert_eq!(&f[..6], &[0.0, 0.0, 1.0, 60.0 / 255.0, 0.0, 1.0]);
        let g = pixel_feature(png.get_ref(), None, 2, PixelColor::Gray).unwrap();
        assert_eq!(g.len(), 4);
        assert!(g.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(pixel_feature(b"not an image!", None, 2, PixelColor::Gray).is_err());
    }
}
