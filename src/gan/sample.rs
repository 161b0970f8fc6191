//! Sampling a trained GAN: loads the EMA generator a `train-gan` run left
//! (`model.json` + `ema.safetensors`), recomputes its standing batch-norm
//! statistics and draws images; also the sample grid (one row per class)
//! written as PNG with [`crate::plot::image_grid`].
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::gan::ema::standing_stats;
use crate::gan::modes::GanMode;
use crate::models::biggan::{Config, Generator};
use crate::models::layers::LayerCtx;

/// What `train-gan` writes beside the weights so a generator can be rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub mode: GanMode,
    pub model: Config,
    pub class_names: Vec<String>,
    pub step: u64,
    /// Batches of standing statistics recomputed before sampling.
    pub standing_batches: usize,
    pub standing_batch_size: i64,
}

pub const MODEL_FILE: &str = "model.json";
pub const EMA_FILE: &str = "ema.safetensors";

/// The EMA generator of a finished `train-gan` folder, ready to sample
/// (standing statistics computed, eval mode).
pub struct LoadedGenerator {
    pub info: ModelInfo,
    pub g: Generator,
    _vs: VarStore,
}

pub fn load_generator(gan_dir: &Path, seed: u64, device: Device) -> Result<LoadedGenerator> {
    load_generator_with(gan_dir, seed, device, 0)
}

/// As [`load_generator`], with the standing statistics accumulated over
/// `standing_samples` generated images (0: the run's own setting).
/// What a finished train-gan folder's `model.json` says of its generator.
pub fn model_info(gan_dir: &Path) -> Result<ModelInfo> {
    let info_path = gan_dir.join(MODEL_FILE);
    let weights = gan_dir.join(EMA_FILE);
    if !info_path.exists() || !weights.exists() {
        return Err(Error::file(
            gan_dir,
            format!("has no {MODEL_FILE} / {EMA_FILE}; it is not a finished `fewlabels train-gan` output (run or finish train-gan first)"),
        ));
    }
    serde_json::from_slice(&fs::read(&info_path).at(&info_path)?).at(&info_path)
}

pub fn load_generator_with(
    gan_dir: &Path,
    seed: u64,
    device: Device,
    standing_samples: usize,
) -> Result<LoadedGenerator> {
    load_generator_at(gan_dir, None, seed, device, standing_samples)
}

/// The EMA generator of a finished train-gan folder as it was at
/// `checkpoint` (a file of its `checkpoints/`; `None`: the final weights),
/// with its standing statistics recomputed over `standing_samples` (0: the
/// run's own setting).
pub fn load_generator_at(
    gan_dir: &Path,
    checkpoint: Option<&Path>,
    seed: u64,
    device: Device,
    standing_samples: usize,
) -> Result<LoadedGenerator> {
    let weights = gan_dir.join(EMA_FILE);
    let info = model_info(gan_dir)?;
    let mut vs = VarStore::new(device);
    let g = Generator::new(&vs.root(), &info.model, &LayerCtx::new(false));
    match checkpoint {
        None => vs.load(&weights).at(&weights)?,
        Some(path) => {
            let ckpt = crate::train::checkpoint::Checkpoint::load(path)?;
            crate::train::checkpoint::load_variables(&vs, "ema.", &ckpt)?;
        }
    }
    let batches = match standing_samples {
        0 => info.standing_batches,
        n => n.div_ceil(info.standing_batch_size.max(1) as usize),
    };
    standing_stats(&g, batches, info.standing_batch_size, seed, device);
    Ok(LoadedGenerator { info, g, _vs: vs })
}

impl LoadedGenerator {
    /// No variable requires a gradient any more (what tracing needs: a
    /// traced module holds the weights as constants).
    pub fn freeze(&mut self) {
        self._vs.freeze();
    }

    /// `count` images from z drawn with `seed`; labels uniform over the
    /// classes (as the paper samples) unless `class` is given.
    pub fn sample(
        &self,
        count: usize,
        class: Option<i64>,
        seed: u64,
        chunk: usize,
    ) -> Result<(Tensor, Vec<i64>)> {
        sample_from(&self.g, count, class, seed, chunk)
    }

    /// [`LoadedGenerator::sample`] with BigGAN's truncation trick: z from a
    /// normal truncated to [-t, t] (None: no truncation).
    pub fn sample_truncated(
        &self,
        count: usize,
        class: Option<i64>,
        seed: u64,
        chunk: usize,
        truncation: Option<f64>,
    ) -> Result<(Tensor, Vec<i64>)> {
        sample_latents(&self.g, count, class, seed, chunk, truncation)
    }
}

/// `shape` draws of a standard normal truncated to [-t, t] (BigGAN's
/// truncation trick, as its `truncated_z_sample` draws them): every value
/// outside is redrawn until none is, from the global generator, so a seed
/// gives the same z.
pub fn truncated_normal(shape: &[i64], t: f64, device: Device) -> Result<Tensor> {
    if !(t > 0.0 && t.is_finite()) {
        return Err(Error::invalid(format!(
            "truncation {t}: must be a positive number (e.g. 0.5; smaller trades variety for fidelity)"
        )));
    }
    let z = Tensor::randn(shape, (Kind::Float, device));
    loop {
        let outside = z.abs().gt(t);
        if outside.any().int64_value(&[]) == 0 {
            return Ok(z);
        }
        let fresh = Tensor::randn(shape, (Kind::Float, device));
        let _ = tch::no_grad(|| {
            z.shallow_clone()
                .masked_scatter_(&outside, &fresh.masked_select(&outside))
        });
    }
}

/// `count` images `[N, 3, H, W]` (f32 in [-1, 1], CPU) from generator `g`
/// in eval mode (its batch-norm statistics as they are: recompute the
/// standing ones first), drawn `chunk` at a time from z seeded by `seed`;
/// labels uniform over the classes unless `class` is given.
pub fn sample_from(
    g: &Generator,
    count: usize,
    class: Option<i64>,
    seed: u64,
    chunk: usize,
) -> Result<(Tensor, Vec<i64>)> {
    sample_latents(g, count, class, seed, chunk, None)
}

fn sample_latents(
    g: &Generator,
    count: usize,
    class: Option<i64>,
    seed: u64,
    chunk: usize,
    truncation: Option<f64>,
) -> Result<(Tensor, Vec<i64>)> {
    let n_classes = g.cfg.n_classes;
    if let Some(c) = class {
        if c < 0 || c >= n_classes {
            return Err(Error::invalid(format!(
                "class {c}: this generator has classes 0..{}",
                n_classes - 1
            )));
        }
    }
    let device = g.device;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut done = 0usize;
    let mut k = 0u64;
    while done < count {
        let n = chunk.min(count - done) as i64;
        crate::gan::seed_all(seed, &[0x5a3b1e, k]);
        let z = match truncation {
            None => Tensor::randn([n, g.cfg.z_dim], (Kind::Float, device)),
            Some(t) => truncated_normal(&[n, g.cfg.z_dim], t, device)?,
        };
        let y = match class {
            Some(c) => Tensor::full([n], c, (Kind::Int64, device)),
            None => Tensor::randint(n_classes, [n], (Kind::Int64, device)),
        };
        let x = tch::no_grad(|| g.forward_t(&z, &y, false)).to_device(Device::Cpu);
        labels.extend(Vec::<i64>::try_from(&y.to_device(Device::Cpu)).map_err(Error::Torch)?);
        images.push(x);
        done += n as usize;
        k += 1;
    }
    Ok((Tensor::cat(&images, 0), labels))
}

/// `count` samples `[N, 3, H, W]` (f32 in [-1, 1], CPU) from the EMA
/// generator in `gan_dir`, with their labels.
pub fn sample_images(
    gan_dir: &Path,
    count: usize,
    class: Option<i64>,
    seed: u64,
    device: tch::Device,
) -> Result<(Tensor, Vec<i64>)> {
    let g = load_generator(gan_dir, seed, device)?;
    g.sample(count, class, seed, 64)
}

/// Images [N, 3, H, W] in [-1, 1] -> RGB bytes [N][H * W * 3].
pub fn to_rgb8(x: &Tensor) -> Result<Vec<Vec<u8>>> {
    let x = ((x
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let n = x.size()[0];
    (0..n)
        .map(|i| Vec::<u8>::try_from(x.get(i).flatten(0, -1)).map_err(Error::Torch))
        .collect()
}

/// A grid of `rows x cols` images (row-major), 2-pixel grey borders, each
/// row named by `row_labels` in a margin on the left when given.
pub fn grid_png(
    x: &Tensor,
    rows: usize,
    cols: usize,
    row_labels: &[String],
) -> Result<(Vec<u8>, u32, u32)> {
    let s = x.size();
    let (h, w) = (s[2] as u32, s[3] as u32);
    let tiles = to_rgb8(x)?
        .into_iter()
        .take(rows * cols)
        .map(|px| {
            image::RgbImage::from_raw(w, h, px)
                .ok_or_else(|| Error::invalid("sample buffer has the wrong size"))
        })
        .collect::<Result<Vec<_>>>()?;
    let img = crate::plot::image_grid(&tiles, cols, 2, image::Rgb([128, 128, 128]));
    let img = crate::plot::label_rows(img, row_labels, h, 2);
    let (gw, gh) = (img.width(), img.height());
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("PNG encoding of the sample grid: {e}")))?;
    Ok((png, gw, gh))
}

/// One image as PNG bytes.
pub fn png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(width, height, rgb.to_vec())
        .ok_or_else(|| Error::invalid("image buffer has the wrong size"))?;
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("PNG encoding: {e}")))?;
    Ok(out)
}

/// The name of each row of [`grid_inputs`]' grid: its class's name (`class
/// k` where the table names none); none for an unconditional G.
pub fn grid_row_labels(cfg: &Config, max_rows: i64, names: &[String]) -> Vec<String> {
    if !cfg.conditional {
        return Vec::new();
    }
    let rows = cfg.n_classes.clamp(1, max_rows);
    (0..rows)
        .map(|r| r * cfg.n_classes / rows)
        .map(|c| {
            names
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"))
        })
        .collect()
}

/// The fixed z and labels of the training grids: one row per class (up to
/// `max_rows` classes, evenly spaced), the same z down each column; an
/// unconditional G gets a different z in every cell.
pub fn grid_inputs(
    cfg: &Config,
    max_rows: i64,
    cols: i64,
    seed: u64,
    device: Device,
) -> (Tensor, Tensor, usize, usize) {
    crate::gan::seed_all(seed, &[0x6e1d]);
    if !cfg.conditional {
        let rows = max_rows.min(8);
        let n = rows * cols;
        let z = Tensor::randn([n, cfg.z_dim], (Kind::Float, Device::Cpu)).to_device(device);
        let y = Tensor::zeros([n], (Kind::Int64, device));
        return (z, y, rows as usize, cols as usize);
    }
    let rows = cfg.n_classes.clamp(1, max_rows);
    let z = Tensor::randn([cols, cfg.z_dim], (Kind::Float, Device::Cpu))
        .repeat([rows, 1])
        .to_device(device);
    let classes: Vec<i64> = (0..rows).map(|r| r * cfg.n_classes / rows).collect();
    let y = Tensor::from_slice(&classes)
        .repeat_interleave_self_int(cols, 0, None)
        .to_device(device);
    (z, y, rows as usize, cols as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The truncation trick's z: inside [-t, t], a seed gives the same
    /// draw, and the bulk keeps a normal's shape (not clamped to the edges).
    #[test]
    fn truncated_normal_stays_inside_and_repeats() {
        tch::manual_seed(5);
        let z = truncated_normal(&[400, 120], 0.5, Device::Cpu).unwrap();
        assert!(z.abs().max().double_value(&[]) <= 0.5);
        let at_edge = z
            .abs()
            .gt(0.499)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(at_edge < 0.01, "{at_edge} of the values at the edge");
        // A truncated standard normal on [-0.5, 0.5] has standard deviation ~0.2863.
        let sd = z.std(true).double_value(&[]);
        assert!((sd - 0.2863).abs() < 0.005, "{sd}");
        tch::manual_seed(5);
        assert!(z.equal(&truncated_normal(&[400, 120], 0.5, Device::Cpu).unwrap()));
        assert!(truncated_normal(&[2], 0.0, Device::Cpu).is_err());
    }

    #[test]
    fn grid_has_the_right_size_and_pixels() {
        let x = Tensor::ones([4, 3, 5, 5], (Kind::Float, Device::Cpu));
        let (png, w, h) = grid_png(&x, 2, 2, &[]).expect("grid");
        assert_eq!((w, h), (2 * 7 + 2, 2 * 7 + 2));
        let img = image::load_from_memory(&png).expect("png").to_rgb8();
        assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 0).0, [128, 128, 128]);
        // Named rows: a white margin with dark text left of the same grid.
        let names = ["Coat".to_string(), "Bag".to_string()];
        let (png, lw, lh) = grid_png(&x, 2, 2, &names).expect("grid");
        let margin = crate::plot::text_width("Coat", 1) + 8;
        assert_eq!((lw, lh), (w + margin, h));
        let img = image::load_from_memory(&png).expect("png").to_rgb8();
        assert_eq!(img.get_pixel(margin, 0).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(margin + 2, 2).0, [255, 255, 255]);
        let dark = (0..margin)
            .flat_map(|x| (0..lh).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
            .count();
        assert!(dark > 20, "{dark} text pixels in the margin");
    }

    #[test]
    fn grid_rows_are_named_by_their_classes() {
        let mut cfg = Config::biggan_32(4);
        (cfg.n_classes, cfg.conditional) = (10, true);
        let names: Vec<String> = (0..10).map(|c| format!("n{c}")).collect();
        assert_eq!(
            grid_row_labels(&cfg, 5, &names),
            ["n0", "n2", "n4", "n6", "n8"]
        );
        assert_eq!(
            grid_row_labels(&cfg, 3, &[]),
            ["class 0", "class 3", "class 6"]
        );
        cfg.conditional = false;
        assert!(grid_row_labels(&cfg, 5, &names).is_empty());
    }
}
