//! pytorch-fid's FID Inception v3 (PyPI `pytorch-fid`, `pytorch_fid/inception.py`:
//! `fid_inception_v3()` and its `FIDInceptionA/C/E_1/E_2` blocks), the
//! Inception v3 of Szegedy et al., "Rethinking the Inception Architecture
//! for Computer Vision", CVPR 2016, as TensorFlow's 2015-12-05 graph has it,
//! so that the standard `pt_inception-2015-12-05-6726825d.pth` weights
//! (which torch-fidelity uses too) give FID pool features and the 1008 class
//! logits of the Inception Score.
//!
//! It differs from torchvision's Inception v3 where TensorFlow's graph does:
//! the pool branch of Mixed_5b-d, Mixed_6b-e and Mixed_7b averages without
//! the zero padding (`count_include_pad=False`), Mixed_7c's pool branch is a
//! max pool, and the classifier has 1008 outputs. Variable names are the
//! state dict keys of `fid_inception_v3()` (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_var`, ..., `fc.bias`), and the network is
//! built from such a state dict by name (see [`crate::models::state_dict`]).
use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Classes of the TensorFlow graph's softmax (1000 ImageNet classes and 8 unused).
pub const NUM_CLASSES: i64 = 1008;
/// Width of the pool features (FID's "pool3").
pub const FEATURES: i64 = 2048;

/// What [`FidInception::forward_t`] returns.
#[derive(Debug)]
pub struct FidOutput {
    /// [N, 2048]: Mixed_7c averaged over space (FID's features).
    pub pool: Tensor,
    /// [N, 1008]: `fc(pool)`, the network's own logits.
    pub logits: Tensor,
    /// [N, 1008]: `pool @ fc.weight^T`, without the bias. The Inception
    /// Score uses these: the original TF/OpenAI IS code multiplies pool3 by
    /// the softmax weights without adding the bias (torch-fidelity's
    /// `logits_unbiased`), so scores comparable with published ones need it.
    pub logits_unbiased: Tensor,
}

/// The state dict, taken from by name; remembers what was used.
struct Weights<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
    device: Device,
}

impl Weights<'_> {
    /// The tensor `name`, checked to be `shape`, as float32 on the device.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            Error::file(
                self.path,
                format!("state dict has no `{name}`: not pytorch-fid's FID Inception (pt_inception-2015-12-05)"),
            )
        })?;
        if t.size() != shape {
            return Err(Error::file(
                self.path,
                format!(
                    "`{name}` is {:?} where pytorch-fid's FID Inception has {shape:?}: a different network",
                    t.size()
                ),
            ));
        }
        Ok(t.f_to_kind(Kind::Float)?
            .f_to_device(self.device)?
            .contiguous())
    }
}

/// torchvision's `BasicConv2d`: convolution without bias, batch norm
/// (eps 0.001, TensorFlow's), ReLU.
#[derive(Debug)]
struct BasicConv2d {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    stride: i64,
    padding: [i64; 2],
}

/// Geometry of a [`BasicConv2d`]: in, out, kernel (h, w), stride, padding (h, w).
type Geom = (i64, i64, [i64; 2], i64, [i64; 2]);

/// A 1x1 convolution.
fn k1(c_in: i64, c_out: i64) -> Geom {
    (c_in, c_out, [1, 1], 1, [0, 0])
}

impl BasicConv2d {
    fn load(
        w: &mut Weights,
        prefix: &str,
        (c_in, c_out, kernel, stride, padding): Geom,
    ) -> Result<Self> {
        let bn = |w: &mut Weights, what: &str| w.take(&format!("{prefix}.bn.{what}"), &[c_out]);
        Ok(BasicConv2d {
            weight: w.take(
                &format!("{prefix}.conv.weight"),
                &[c_out, c_in, kernel[0], kernel[1]],
            )?,
            bn_weight: bn(w, "weight")?,
            bn_bias: bn(w, "bias")?,
            running_mean: bn(w, "running_mean")?,
            running_var: bn(w, "running_var")?,
            stride,
            padding,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.f_conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride; 2],
            self.padding,
            [1, 1],
            1,
        )?;
        let y = y.f_batch_norm(
            Some(&self.bn_weight),
            Some(&self.bn_bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            0.001,
            true,
        )?;
        Ok(y.f_relu()?)
    }
}

/// Loads the convolutions of one block, `prefix.name` for each (name,
/// geometry); the stem's have no prefix.
fn convs<const N: usize>(
    w: &mut Weights,
    prefix: &str,
    geoms: [(&str, Geom); N],
) -> Result<[BasicConv2d; N]> {
    let mut out = Vec::with_capacity(N);
    for (name, g) in geoms {
        let key = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        out.push(BasicConv2d::load(w, &key, g)?);
    }
    Ok(out.try_into().expect("N convolutions"))
}

/// Runs convolutions one after another.
fn chain(x: &Tensor, convs: &[BasicConv2d], train: bool) -> Result<Tensor> {
    let mut y = x.shallow_clone();
    for c in convs {
        y = c.forward_t(&y, train)?;
    }
    Ok(y)
}

/// TensorFlow's 3x3 stride-1 average pool: the padding is not counted.
fn avg_pool_3x3(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)?)
}

fn max_pool_3x3(x: &Tensor, stride: i64, padding: i64) -> Result<Tensor> {
    Ok(x.f_max_pool2d([3, 3], [stride; 2], [padding; 2], [1, 1], false)?)
}

/// `FIDInceptionA` (Mixed_5b-d): [N, C, 35, 35] -> [N, 224 + pool, 35, 35].
#[derive(Debug)]
struct BlockA {
    /// branch1x1; branch5x5_1, _2; branch3x3dbl_1, _2, _3; branch_pool.
    c: [BasicConv2d; 7],
}

impl BlockA {
    fn load(w: &mut Weights, prefix: &str, c_in: i64, pool: i64) -> Result<Self> {
        let c = convs(
            w,
            prefix,
            [
                ("branch1x1", k1(c_in, 64)),
                ("branch5x5_1", k1(c_in, 48)),
                ("branch5x5_2", (48, 64, [5, 5], 1, [2, 2])),
                ("branch3x3dbl_1", k1(c_in, 64)),
                ("branch3x3dbl_2", (64, 96, [3, 3], 1, [1, 1])),
                ("branch3x3dbl_3", (96, 96, [3, 3], 1, [1, 1])),
                ("branch_pool", k1(c_in, pool)),
            ],
        )?;
        Ok(BlockA { c })
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Result<Tensor> {
        let c = &self.c;
        let b1 = c[0].forward_t(x, t)?;
        let b5 = chain(x, &c[1..3], t)?;
        let b3 = chain(x, &c[3..6], t)?;
        let bp = c[6].forward_t(&avg_pool_3x3(x)?, t)?;
        Ok(Tensor::f_cat(&[b1, b5, b3, bp], 1)?)
    }
}

/// `InceptionB` (Mixed_6a, as torchvision's): [N, 288, 35, 35] -> [N, 768, 17, 17].
#[derive(Debug)]
struct BlockB {
    /// branch3x3; branch3x3dbl_1, _2, _3.
    c: [BasicConv2d; 4],
}

impl BlockB {
    fn load(w: &mut Weights, prefix: &str, c_in: i64) -> Result<Self> {
        let c = convs(
            w,
            prefix,
            [
                ("branch3x3", (c_in, 384, [3, 3], 2, [0, 0])),
                ("branch3x3dbl_1", k1(c_in, 64)),
                ("branch3x3dbl_2", (64, 96, [3, 3], 1, [1, 1])),
                ("branch3x3dbl_3", (96, 96, [3, 3], 2, [0, 0])),
            ],
        )?;
        Ok(BlockB { c })
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Result<Tensor> {
        let b3 = self.c[0].forward_t(x, t)?;
        let b3d = chain(x, &self.c[1..4], t)?;
        let bp = max_pool_3x3(x, 2, 0)?;
        Ok(Tensor::f_cat(&[b3, b3d, bp], 1)?)
    }
}

/// `FIDInceptionC` (Mixed_6b-e): [N, 768, 17, 17] -> [N, 768, 17, 17].
#[derive(Debug)]
struct BlockC {
    /// branch1x1; branch7x7_1.._3; branch7x7dbl_1.._5; branch_pool.
    c: [BasicConv2d; 10],
}

impl BlockC {
    fn load(w: &mut Weights, prefix: &str, c_in: i64, c7: i64) -> Result<Self> {
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        let g = |i, o, (k, p): ([i64; 2], [i64; 2])| (i, o, k, 1, p);
        let c = convs(
            w,
            prefix,
            [
                ("branch1x1", k1(c_in, 192)),
                ("branch7x7_1", k1(c_in, c7)),
                ("branch7x7_2", g(c7, c7, row)),
                ("branch7x7_3", g(c7, 192, col)),
                ("branch7x7dbl_1", k1(c_in, c7)),
                ("branch7x7dbl_2", g(c7, c7, col)),
                ("branch7x7dbl_3", g(c7, c7, row)),
                ("branch7x7dbl_4", g(c7, c7, col)),
                ("branch7x7dbl_5", g(c7, 192, row)),
                ("branch_pool", k1(c_in, 192)),
            ],
        )?;
        Ok(BlockC { c })
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Result<Tensor> {
        let c = &self.c;
        let b1 = c[0].forward_t(x, t)?;
        let b7 = chain(x, &c[1..4], t)?;
        let b7d = chain(x, &c[4..9], t)?;
        let bp = c[9].forward_t(&avg_pool_3x3(x)?, t)?;
        Ok(Tensor::f_cat(&[b1, b7, b7d, bp], 1)?)
    }
}

/// `InceptionD` (Mixed_7a, as torchvision's): [N, 768, 17, 17] -> [N, 1280, 8, 8].
#[derive(Debug)]
struct BlockD {
    /// branch3x3_1, _2; branch7x7x3_1.._4.
    c: [BasicConv2d; 6],
}

impl BlockD {
    fn load(w: &mut Weights, prefix: &str, c_in: i64) -> Result<Self> {
        let c = convs(
            w,
            prefix,
            [
                ("branch3x3_1", k1(c_in, 192)),
                ("branch3x3_2", (192, 320, [3, 3], 2, [0, 0])),
                ("branch7x7x3_1", k1(c_in, 192)),
                ("branch7x7x3_2", (192, 192, [1, 7], 1, [0, 3])),
                ("branch7x7x3_3", (192, 192, [7, 1], 1, [3, 0])),
                ("branch7x7x3_4", (192, 192, [3, 3], 2, [0, 0])),
            ],
        )?;
        Ok(BlockD { c })
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Result<Tensor> {
        let b3 = chain(x, &self.c[0..2], t)?;
        let b7 = chain(x, &self.c[2..6], t)?;
        let bp = max_pool_3x3(x, 2, 0)?;
        Ok(Tensor::f_cat(&[b3, b7, bp], 1)?)
    }
}

/// `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2`
/// (Mixed_7c, max pool): [N, C, 8, 8] -> [N, 2048, 8, 8].
#[derive(Debug)]
struct BlockE {
    /// branch1x1; branch3x3_1, _2a, _2b; branch3x3dbl_1, _2, _3a, _3b; branch_pool.
    c: [BasicConv2d; 9],
    max_pool: bool,
}

impl BlockE {
    fn load(w: &mut Weights, prefix: &str, c_in: i64, max_pool: bool) -> Result<Self> {
        let c = convs(
            w,
            prefix,
            [
                ("branch1x1", k1(c_in, 320)),
                ("branch3x3_1", k1(c_in, 384)),
                ("branch3x3_2a", (384, 384, [1, 3], 1, [0, 1])),
                ("branch3x3_2b", (384, 384, [3, 1], 1, [1, 0])),
                ("branch3x3dbl_1", k1(c_in, 448)),
                ("branch3x3dbl_2", (448, 384, [3, 3], 1, [1, 1])),
                ("branch3x3dbl_3a", (384, 384, [1, 3], 1, [0, 1])),
                ("branch3x3dbl_3b", (384, 384, [3, 1], 1, [1, 0])),
                ("branch_pool", k1(c_in, 192)),
            ],
        )?;
        Ok(BlockE { c, max_pool })
    }

    fn forward_t(&self, x: &Tensor, t: bool) -> Result<Tensor> {
        let c = &self.c;
        let b1 = c[0].forward_t(x, t)?;
        let b3 = c[1].forward_t(x, t)?;
        let b3 = Tensor::f_cat(&[c[2].forward_t(&b3, t)?, c[3].forward_t(&b3, t)?], 1)?;
        let b3d = chain(x, &c[4..6], t)?;
        let b3d = Tensor::f_cat(&[c[6].forward_t(&b3d, t)?, c[7].forward_t(&b3d, t)?], 1)?;
        // pytorch-fid: the graph's Mixed_7c max-pools here (likely a slip in
        // that graph, but it is what the weights were trained with).
        let pooled = if self.max_pool {
            max_pool_3x3(x, 1, 1)?
        } else {
            avg_pool_3x3(x)?
        };
        let bp = c[8].forward_t(&pooled, t)?;
        Ok(Tensor::f_cat(&[b1, b3, b3d, bp], 1)?)
    }
}

/// pytorch-fid's FID Inception v3, built from its state dict.
#[derive(Debug)]
pub struct FidInception {
    /// Conv2d_1a_3x3, 2a_3x3, 2b_3x3 (then a max pool), 3b_1x1, 4a_3x3 (then a max pool).
    stem: [BasicConv2d; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7b: BlockE,
    mixed_7c: BlockE,
    /// [1008, 2048] and [1008].
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl FidInception {
    /// Builds the network from `fid_inception_v3().state_dict()`'s tensors
    /// (read from `path`, named in errors), on `device`. Every key must be
    /// there with its shape; keys the network lacks are refused as
    /// `load_state_dict(strict=True)` would, except batch norm's
    /// `num_batches_tracked`, which inference does not use.
    pub fn from_state_dict(
        tensors: Vec<(String, Tensor)>,
        path: &Path,
        device: Device,
    ) -> Result<Self> {
        let mut w = Weights {
            path,
            tensors: tensors.into_iter().collect(),
            device,
        };
        let w = &mut w;
        let stem = convs(
            w,
            "",
            [
                ("Conv2d_1a_3x3", (3, 32, [3, 3], 2, [0, 0])),
                ("Conv2d_2a_3x3", (32, 32, [3, 3], 1, [0, 0])),
                ("Conv2d_2b_3x3", (32, 64, [3, 3], 1, [1, 1])),
                ("Conv2d_3b_1x1", k1(64, 80)),
                ("Conv2d_4a_3x3", (80, 192, [3, 3], 1, [0, 0])),
            ],
        )?;
        let net = FidInception {
            stem,
            mixed_5: [
                BlockA::load(w, "Mixed_5b", 192, 32)?,
                BlockA::load(w, "Mixed_5c", 256, 64)?,
                BlockA::load(w, "Mixed_5d", 288, 64)?,
            ],
            mixed_6a: BlockB::load(w, "Mixed_6a", 288)?,
            mixed_6: [
                BlockC::load(w, "Mixed_6b", 768, 128)?,
                BlockC::load(w, "Mixed_6c", 768, 160)?,
                BlockC::load(w, "Mixed_6d", 768, 160)?,
                BlockC::load(w, "Mixed_6e", 768, 192)?,
            ],
            mixed_7a: BlockD::load(w, "Mixed_7a", 768)?,
            mixed_7b: BlockE::load(w, "Mixed_7b", 1280, false)?,
            mixed_7c: BlockE::load(w, "Mixed_7c", 2048, true)?,
            fc_weight: w.take("fc.weight", &[NUM_CLASSES, FEATURES])?,
            fc_bias: w.take("fc.bias", &[NUM_CLASSES])?,
        };
        let mut extra: Vec<&String> = w
            .tensors
            .keys()
            .filter(|k| !k.ends_with(".num_batches_tracked"))
            .collect();
        extra.sort();
        if let Some(k) = extra.first() {
            return Err(Error::file(
                path,
                format!(
                    "state dict has `{k}` (and {} more keys) that pytorch-fid's FID Inception lacks: a different network",
                    extra.len() - 1
                ),
            ));
        }
        Ok(net)
    }

    /// Input [N, 3, H, W] in [-1, 1] (299x299 for the features FID means;
    /// at least 75x75 to run) -> pool features and logits. `train` uses
    /// batch statistics in batch norm (and updates the running ones), as
    /// PyTorch's train mode; scoring images passes `false`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<FidOutput> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 || s[2] < 75 || s[3] < 75 {
            return Err(Error::invalid(format!(
                "the FID Inception takes [N, 3, H, W] images of at least 75x75, got {s:?}"
            )));
        }
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        // [N, 3, 299, 299] -> [N, 32, 149, 149] -> [N, 32, 147, 147] -> [N, 64, 147, 147]
        let h = c2b.forward_t(&c2a.forward_t(&c1a.forward_t(x, train)?, train)?, train)?;
        // -> [N, 64, 73, 73] -> [N, 80, 73, 73] -> [N, 192, 71, 71] -> [N, 192, 35, 35]
        let h = max_pool_3x3(&h, 2, 0)?;
        let h = c4a.forward_t(&c3b.forward_t(&h, train)?, train)?;
        let mut h = max_pool_3x3(&h, 2, 0)?;
        // -> [N, 256 | 288 | 288, 35, 35]
        for b in &self.mixed_5 {
            h = b.forward_t(&h, train)?;
        }
        // -> [N, 768, 17, 17]
        h = self.mixed_6a.forward_t(&h, train)?;
        for b in &self.mixed_6 {
            h = b.forward_t(&h, train)?;
        }
        // -> [N, 1280, 8, 8] -> [N, 2048, 8, 8] -> [N, 2048, 8, 8]
        h = self.mixed_7a.forward_t(&h, train)?;
        h = self.mixed_7b.forward_t(&h, train)?;
        h = self.mixed_7c.forward_t(&h, train)?;
        // -> [N, 2048]; dropout (before fc in torchvision) is off at inference.
        let pool = h.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let logits = pool.f_linear(&self.fc_weight, Some(&self.fc_bias))?;
        let logits_unbiased = pool.f_linear::<Tensor>(&self.fc_weight, None)?;
        Ok(FidOutput {
            pool,
            logits,
            logits_unbiased,
        })
    }
}
