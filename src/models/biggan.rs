//! BigGAN (Brock, Donahue, Simonyan, "Large Scale GAN Training for High
//! Fidelity Natural Image Synthesis", ICLR 2019) as used by S3GAN (Lucic et
//! al. 2019): ResNet generator with hierarchical z and a shared class
//! embedding feeding conditional batch norm, projection discriminator,
//! self-attention, spectral norm everywhere, orthogonal init. The layout is
//! data ([`g_arch`], [`d_arch`]) so 32x32, 64x64 and 128x128 share the code.
//!
//! Two variants ([`GanArch`], docs/method.md "The two BigGANs"): the one of
//! compare_gan (`architectures/resnet_biggan.py`, the paper's own code) and
//! the one of BigGAN-PyTorch (`BigGAN.py`). They differ in four places:
//! the conditional batch norm's gain (`gamma(c)` vs `1 + gamma(c)`), G's
//! upsampling (compare_gan's `unpool`, which puts each value at the top-left
//! of its 2x2 and zeros elsewhere, vs nearest neighbour), D's residual path
//! (compare_gan adds a 1x1-convolution shortcut only where the channels
//! change, so the last D block has none; BigGAN-PyTorch adds the identity
//! there), and biases in the attention block's 1x1 convolutions (none in
//! compare_gan); and, at 32x32 and 64x64, in their channel tables.
//!
//! The discriminator also carries the S3GAN heads on its pooled
//! representation: a linear class predictor (co-training) and a 4-way
//! rotation classifier (self-supervision), both spectrally normalised as in
//! compare_gan's `s3gan.py`.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::layers::{
    orthogonal, BatchNorm, ConditionalBatchNorm, LayerCtx, SelfAttention, SnConv2d, SnEmbedding,
    SnLinear,
};

/// Which implementation's BigGAN (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanArch {
    /// google/compare_gan's `resnet_biggan`, the paper's.
    CompareGan,
    /// ajbrock/BigGAN-PyTorch's `BigGAN.py` (what this tool trained before
    /// the choice existed, so models without the field read as it).
    #[default]
    BigganPytorch,
}

impl GanArch {
    /// The conditional batch norm's gain is `offset + gamma(c)`.
    pub fn gain_offset(self) -> f64 {
        match self {
            GanArch::CompareGan => 0.0,
            GanArch::BigganPytorch => 1.0,
        }
    }
    /// Biases in the attention block's 1x1 convolutions.
    pub fn attention_bias(self) -> bool {
        self == GanArch::BigganPytorch
    }
}

/// The networks' shape. `n_classes`, `conditional` and the heads are set
/// from the training mode; the presets fix the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// compare_gan's or BigGAN-PyTorch's layout.
    #[serde(default)]
    pub arch: GanArch,
    /// Output side in pixels: 32, 64 or 128.
    pub resolution: i64,
    /// Channel multiplier (BigGAN: 96 at 128x128).
    pub ch: i64,
    /// Latent size (split hierarchically over G's blocks).
    pub z_dim: i64,
    /// Size of G's shared class embedding.
    pub shared_dim: i64,
    pub n_classes: i64,
    /// Class-conditional G (embedding in conditional BN) and projection in D.
    pub conditional: bool,
    /// A linear class head on D's representation (S2GAN-CO, S3GAN).
    pub class_head: bool,
    /// A 4-way rotation head on D's representation (S3GAN, SS-GAN, Clustering(SS)).
    pub rotation_head: bool,
    /// Resolutions after which a self-attention block runs (G and D).
    pub attention: Vec<i64>,
}

impl Config {
    /// BigGAN at 128x128, ch = 96 (about 70M parameters in G, 88M in D).
    pub fn biggan_128() -> Self {
        Config {
            arch: GanArch::default(),
            resolution: 128,
            ch: 96,
            z_dim: 120,
            shared_dim: 128,
            n_classes: 1000,
            conditional: true,
            class_head: false,
            rotation_head: false,
            attention: vec![64],
        }
    }
    /// 64x64 with attention at 64 (G) as in BigGAN-PyTorch's arch table.
    pub fn biggan_64(ch: i64) -> Self {
        Config {
            resolution: 64,
            ch,
            ..Self::biggan_128()
        }
    }
    /// 32x32 (BigGAN-PyTorch's CIFAR layout); no attention by default.
    pub fn biggan_32(ch: i64) -> Self {
        Config {
            resolution: 32,
            ch,
            attention: vec![],
            ..Self::biggan_128()
        }
    }
    /// The resolutions with a preset.
    pub const RESOLUTIONS: [i64; 3] = [32, 64, 128];

    pub fn preset(resolution: i64, ch: i64) -> Result<Self> {
        match resolution {
            32 => Ok(Self::biggan_32(ch)),
            64 => Ok(Self::biggan_64(ch)),
            128 => Ok(Config {
                ch,
                ..Self::biggan_128()
            }),
            r => Err(Error::invalid(format!(
                "resolution {r}: BigGAN presets exist for 32, 64 and 128"
            ))),
        }
    }
    /// Number of z chunks: one for the first linear layer and one per G block.
    pub fn z_chunk(&self) -> i64 {
        let slots = g_arch(self.resolution, self.ch).in_ch.len() as i64 + 1;
        self.z_dim / slots
    }
    /// The z size actually used (BigGAN-PyTorch rounds `z_dim` down to a multiple of the slots).
    pub fn z_used(&self) -> i64 {
        let slots = g_arch(self.resolution, self.ch).in_ch.len() as i64 + 1;
        self.z_chunk() * slots
    }
}

/// One network's layout: per block, channels in and out, the block's output
/// resolution and whether it resamples.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub in_ch: Vec<i64>,
    pub out_ch: Vec<i64>,
    pub resolution: Vec<i64>,
    pub resample: Vec<bool>,
}

fn times(ch: i64, m: &[i64]) -> Vec<i64> {
    m.iter().map(|x| x * ch).collect()
}

/// G's blocks (BigGAN-PyTorch `G_arch`; compare_gan's `Generator` has the
/// same channel multipliers at every resolution): every block upsamples 2x
/// from 4x4.
pub fn g_arch(resolution: i64, ch: i64) -> Arch {
    let (i, o): (&[i64], &[i64]) = match resolution {
        128 => (&[16, 16, 8, 4, 2], &[16, 8, 4, 2, 1]),
        64 => (&[16, 16, 8, 4], &[16, 8, 4, 2]),
        _ => (&[4, 4, 4], &[4, 4, 4]),
    };
    let n = i.len();
    Arch {
        in_ch: times(ch, i),
        out_ch: times(ch, o),
        resolution: (0..n).map(|k| 8 << k).collect(),
        resample: vec![true; n],
    }
}

/// D's blocks (BigGAN-PyTorch `D_arch`, compare_gan `Discriminator`'s
/// channel multipliers); the first block's input is RGB. The two agree at
/// 128; compare_gan's last block never downsamples, and at 32 and 64 its
/// channels differ.
pub fn d_arch(arch: GanArch, resolution: i64, ch: i64) -> Arch {
    let (i, o, down): (&[i64], &[i64], &[bool]) = match (arch, resolution) {
        (_, 128) => (
            &[1, 2, 4, 8, 16],
            &[1, 2, 4, 8, 16, 16],
            &[true, true, true, true, true, false],
        ),
        (GanArch::BigganPytorch, 64) => (
            &[1, 2, 4, 8],
            &[1, 2, 4, 8, 16],
            &[true, true, true, true, false],
        ),
        (GanArch::CompareGan, 64) => (
            &[2, 4, 8, 16],
            &[2, 4, 8, 16, 16],
            &[true, true, true, true, false],
        ),
        (GanArch::BigganPytorch, _) => (&[4, 4, 4], &[4, 4, 4, 4], &[true, true, false, false]),
        (GanArch::CompareGan, _) => (&[2, 2, 2], &[2, 2, 2, 2], &[true, true, true, false]),
    };
    let mut in_ch = vec![3];
    in_ch.extend(times(ch, i));
    let mut res = Vec::new();
    let mut r = resolution;
    for &d in down {
        if d {
            r /= 2;
        }
        res.push(r);
    }
    Arch {
        in_ch,
        out_ch: times(ch, o),
        resolution: res,
        resample: down.to_vec(),
    }
}

/// G's residual block: CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3, shortcut up-conv1x1.
#[derive(Debug)]
struct GBlock {
    bn1: ConditionalBatchNorm,
    conv1: SnConv2d,
    bn2: ConditionalBatchNorm,
    conv2: SnConv2d,
    conv_sc: Option<SnConv2d>,
    up: bool,
    arch: GanArch,
}

/// 2x upsampling: nearest neighbour (BigGAN-PyTorch), or compare_gan's
/// `unpool`: each value at the top-left of its 2x2 block, zeros elsewhere.
/// [N, C, H, W] -> [N, C, 2H, 2W].
fn upsample(x: &Tensor, arch: GanArch) -> Tensor {
    let s = x.size();
    match arch {
        GanArch::BigganPytorch => x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0),
        GanArch::CompareGan => {
            // -1, not the batch size: a traced generator (`export`) takes any batch.
            let (c, h, w) = (s[1], s[2], s[3]);
            // [N, C, H, W, 2] -> [N, C, H, 2W]: zeros after each column.
            let cols =
                Tensor::stack(&[x.shallow_clone(), x.zeros_like()], 4).view([-1, c, h, 2 * w]);
            // [N, C, H, 2, 2W] -> [N, C, 2H, 2W]: a row of zeros after each row.
            Tensor::stack(&[cols.shallow_clone(), cols.zeros_like()], 3).view([-1, c, 2 * h, 2 * w])
        }
    }
}

fn downsample(x: &Tensor) -> Tensor {
    x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)
}

impl GBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: Path,
        c_in: i64,
        c_out: i64,
        cond: i64,
        up: bool,
        arch: GanArch,
        ctx: &Arc<LayerCtx>,
    ) -> Self {
        let offset = arch.gain_offset();
        GBlock {
            bn1: ConditionalBatchNorm::new(&p / "bn1", c_in, cond, offset, ctx),
            conv1: SnConv2d::new(&p / "conv1", c_in, c_out, 3, ctx),
            bn2: ConditionalBatchNorm::new(&p / "bn2", c_out, cond, offset, ctx),
            conv2: SnConv2d::new(&p / "conv2", c_out, c_out, 3, ctx),
            conv_sc: (c_in != c_out || up)
                .then(|| SnConv2d::new(&p / "conv_sc", c_in, c_out, 1, ctx)),
            up,
            arch,
        }
    }
    fn forward_t(&self, x: &Tensor, cond: &Tensor, train: bool) -> Tensor {
        let mut h = self.bn1.forward_t(x, cond, train).relu();
        let mut sc = x.shallow_clone();
        if self.up {
            h = upsample(&h, self.arch);
            sc = upsample(&sc, self.arch);
        }
        let h = self.conv1.forward_t(&h, train);
        let h = self.bn2.forward_t(&h, cond, train).relu();
        let h = self.conv2.forward_t(&h, train);
        if let Some(c) = &self.conv_sc {
            sc = c.forward_t(&sc, train);
        }
        let k = h.kind();
        h + sc.to_kind(k)
    }
}

/// The generator: z [N, z_used] and labels [N] (int64) -> images [N, 3, R, R] in [-1, 1].
#[derive(Debug)]
pub struct Generator {
    pub cfg: Config,
    pub ctx: Arc<LayerCtx>,
    pub device: tch::Device,
    shared: Option<Tensor>,
    linear: SnLinear,
    blocks: Vec<GBlock>,
    attention: Vec<Option<SelfAttention>>,
    out_bn: BatchNorm,
    out_conv: SnConv2d,
    bottom: i64,
    /// Channels of the first block's input (the linear layer's output, as [C, 4, 4]).
    bottom_ch: i64,
}

impl Generator {
    pub fn new(p: &Path, cfg: &Config, ctx: &Arc<LayerCtx>) -> Self {
        let arch = g_arch(cfg.resolution, cfg.ch);
        let chunk = cfg.z_chunk();
        // BigGAN-PyTorch's shared embedding is a plain (not normalised) embedding.
        let shared = cfg
            .conditional
            .then(|| orthogonal(p, "shared", &[cfg.n_classes, cfg.shared_dim]));
        let cond = chunk + if cfg.conditional { cfg.shared_dim } else { 0 };
        let bottom = 4;
        let linear = SnLinear::new(
            p / "linear",
            chunk,
            arch.in_ch[0] * bottom * bottom,
            true,
            ctx,
        );
        let mut blocks = Vec::new();
        let mut attention = Vec::new();
        for k in 0..arch.in_ch.len() {
            blocks.push(GBlock::new(
                p / format!("block{k}"),
                arch.in_ch[k],
                arch.out_ch[k],
                cond,
                arch.resample[k],
                cfg.arch,
                ctx,
            ));
            attention.push(cfg.attention.contains(&arch.resolution[k]).then(|| {
                SelfAttention::new(
                    p / format!("attn{k}"),
                    arch.out_ch[k],
                    cfg.arch.attention_bias(),
                    ctx,
                )
            }));
        }
        let last = *arch.out_ch.last().expect("G has blocks");
        Generator {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
            device: p.device(),
            shared,
            linear,
            blocks,
            attention,
            out_bn: BatchNorm::new(p / "out_bn", last, ctx),
            out_conv: SnConv2d::new(p / "out_conv", last, 3, 3, ctx),
            bottom,
            bottom_ch: arch.in_ch[0],
        }
    }

    pub fn forward_t(&self, z: &Tensor, y: &Tensor, train: bool) -> Tensor {
        let chunk = self.cfg.z_chunk();
        let zs = z.narrow(1, 0, self.cfg.z_used()).split(chunk, 1);
        let emb = self
            .shared
            .as_ref()
            .map(|w| Tensor::embedding(w, y, -1, false, false));
        // [N, 16ch * 4 * 4] -> [N, 16ch, 4, 4]
        let mut h = self.linear.forward_t(&zs[0], train).view([
            -1,
            self.bottom_ch,
            self.bottom,
            self.bottom,
        ]);
        for (k, block) in self.blocks.iter().enumerate() {
            let cond = match &emb {
                Some(e) => Tensor::cat(&[e.shallow_clone(), zs[k + 1].shallow_clone()], 1),
                None => zs[k + 1].shallow_clone(),
            };
            h = block.forward_t(&h, &cond, train);
            if let Some(a) = &self.attention[k] {
                h = a.forward_t(&h, train);
            }
        }
        let h = self.out_bn.forward_t(&h, train).relu();
        self.out_conv
            .forward_t(&h, train)
            .to_kind(Kind::Float)
            .tanh()
    }

    /// Resets every batch-norm running statistic (before standing stats).
    pub fn reset_bn_stats(&self) {
        for b in &self.blocks {
            b.bn1.reset_stats();
            b.bn2.reset_stats();
        }
        self.out_bn.reset_stats();
    }
}

/// D's residual block (BigGAN-PyTorch `DBlock`, wide; compare_gan
/// `BigGanResNetBlock`): pre-activation except the first block (whose
/// input is the image). BigGAN-PyTorch's shortcut is a 1x1 conv when
/// channels or size change, else the identity; compare_gan's is a 1x1 conv
/// when the channels change, else there is none.
#[derive(Debug)]
struct DBlock {
    conv1: SnConv2d,
    conv2: SnConv2d,
    conv_sc: Option<SnConv2d>,
    /// Whether the block adds its input (or its 1x1 conv) back.
    residual: bool,
    preactivation: bool,
    down: bool,
}

impl DBlock {
    fn new(
        p: Path,
        c_in: i64,
        c_out: i64,
        pre: bool,
        down: bool,
        arch: GanArch,
        ctx: &Arc<LayerCtx>,
    ) -> Self {
        let conv_shortcut = match arch {
            GanArch::BigganPytorch => c_in != c_out || down,
            GanArch::CompareGan => c_in != c_out,
        };
        DBlock {
            conv1: SnConv2d::new(&p / "conv1", c_in, c_out, 3, ctx),
            conv2: SnConv2d::new(&p / "conv2", c_out, c_out, 3, ctx),
            conv_sc: conv_shortcut.then(|| SnConv2d::new(&p / "conv_sc", c_in, c_out, 1, ctx)),
            residual: conv_shortcut || arch == GanArch::BigganPytorch,
            preactivation: pre,
            down,
        }
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = if self.preactivation {
            x.relu()
        } else {
            x.shallow_clone()
        };
        let h = self.conv1.forward_t(&h, train).relu();
        let mut h = self.conv2.forward_t(&h, train);
        if self.down {
            h = downsample(&h);
        }
        if !self.residual {
            return h;
        }
        let mut sc = x.shallow_clone();
        if self.preactivation {
            if let Some(c) = &self.conv_sc {
                sc = c.forward_t(&sc, train);
            }
            if self.down {
                sc = downsample(&sc);
            }
        } else {
            if self.down {
                sc = downsample(&sc);
            }
            if let Some(c) = &self.conv_sc {
                sc = c.forward_t(&sc, train);
            }
        }
        let k = h.kind();
        h + sc.to_kind(k)
    }
}

/// What D says about a batch.
#[derive(Debug)]
pub struct DOutput {
    /// Real/fake logit, with the class projection added [N].
    pub logit: Tensor,
    /// Class head logits [N, n_classes] (when the config has the head).
    pub class_logits: Option<Tensor>,
    /// Rotation head logits [N, 4] (when the config has the head).
    pub rotation_logits: Option<Tensor>,
}

/// The projection discriminator with the optional S3GAN heads.
#[derive(Debug)]
pub struct Discriminator {
    pub cfg: Config,
    pub ctx: Arc<LayerCtx>,
    blocks: Vec<DBlock>,
    attention: Vec<Option<SelfAttention>>,
    linear: SnLinear,
    embed: Option<SnEmbedding>,
    class_head: Option<SnLinear>,
    rotation_head: Option<SnLinear>,
}

/// How D picks the label it projects for each image.
pub enum Projection<'a> {
    /// No projection (unconditional D).
    None,
    /// These labels [N].
    Labels(&'a Tensor),
    /// These labels where `known` [N] (bool) is true, else the class head's
    /// stop-gradient argmax (co-training, compare_gan `use_predictor`).
    FillIn {
        labels: &'a Tensor,
        known: &'a Tensor,
    },
}

impl Discriminator {
    pub fn new(p: &Path, cfg: &Config, ctx: &Arc<LayerCtx>) -> Self {
        let arch = d_arch(cfg.arch, cfg.resolution, cfg.ch);
        let mut blocks = Vec::new();
        let mut attention = Vec::new();
        for k in 0..arch.out_ch.len() {
            blocks.push(DBlock::new(
                p / format!("block{k}"),
                arch.in_ch[k],
                arch.out_ch[k],
                k > 0,
                arch.resample[k],
                cfg.arch,
                ctx,
            ));
            // Attention after the first block that lands on an attention resolution.
            let first = arch
                .resolution
                .iter()
                .position(|r| *r == arch.resolution[k])
                == Some(k);
            let here = first && arch.resample[k] && cfg.attention.contains(&arch.resolution[k]);
            attention.push(here.then(|| {
                SelfAttention::new(
                    p / format!("attn{k}"),
                    arch.out_ch[k],
                    cfg.arch.attention_bias(),
                    ctx,
                )
            }));
        }
        let last = *arch.out_ch.last().expect("D has blocks");
        Discriminator {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
            blocks,
            attention,
            linear: SnLinear::new(p / "linear", last, 1, true, ctx),
            embed: cfg
                .conditional
                .then(|| SnEmbedding::new(p / "embed", cfg.n_classes, last, ctx)),
            class_head: cfg
                .class_head
                .then(|| SnLinear::new(p / "class_head", last, cfg.n_classes, true, ctx)),
            rotation_head: cfg
                .rotation_head
                .then(|| SnLinear::new(p / "rotation_head", last, 4, true, ctx)),
        }
    }

    /// The pooled representation: blocks, ReLU, sum over space. [N, 3, R, R] -> [N, C].
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (k, block) in self.blocks.iter().enumerate() {
            h = block.forward_t(&h, train);
            if let Some(a) = &self.attention[k] {
                h = a.forward_t(&h, train);
            }
        }
        h.relu()
            .to_kind(Kind::Float)
            .sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float)
    }

    pub fn forward_t(&self, x: &Tensor, projection: Projection<'_>, train: bool) -> DOutput {
        let h = self.features(x, train);
        let mut logit = self
            .linear
            .forward_t(&h, train)
            .to_kind(Kind::Float)
            .squeeze_dim(1);
        let class_logits = self
            .class_head
            .as_ref()
            .map(|c| c.forward_t(&h, train).to_kind(Kind::Float));
        let rotation_logits = self
            .rotation_head
            .as_ref()
            .map(|c| c.forward_t(&h, train).to_kind(Kind::Float));
        let y = match projection {
            Projection::None => None,
            Projection::Labels(y) => Some(y.shallow_clone()),
            Projection::FillIn { labels, known } => {
                let predicted = match &class_logits {
                    Some(c) => c.detach().argmax(1, false),
                    None => labels.shallow_clone(),
                };
                Some(fill_in(labels, known, &predicted))
            }
        };
        if let (Some(e), Some(y)) = (&self.embed, y) {
            let emb = e.forward_t(&y, train).to_kind(Kind::Float);
            logit += (emb * &h).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        }
        DOutput {
            logit,
            class_logits,
            rotation_logits,
        }
    }
}

/// Co-training label fill-in: the known label where there is one, the
/// prediction elsewhere. `known` is a bool tensor; unknown labels may hold
/// any value (the loader stores -1).
pub fn fill_in(labels: &Tensor, known: &Tensor, predicted: &Tensor) -> Tensor {
    labels.where_self(known, predicted)
}

/// Number of trainable parameters under a VarStore.
pub fn parameter_count(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn tiny(res: i64) -> Config {
        Config {
            n_classes: 3,
            class_head: true,
            rotation_head: true,
            attention: vec![res / 2],
            ..Config::preset(res, 4).expect("preset")
        }
    }

    #[test]
    fn shapes_at_every_resolution() {
        tch::manual_seed(1);
        for res in [32, 64] {
            let cfg = tiny(res);
            let ctx = LayerCtx::new(false);
            let vg = VarStore::new(Device::Cpu);
            let vd = VarStore::new(Device::Cpu);
            let g = Generator::new(&vg.root(), &cfg, &ctx);
            let d = Discriminator::new(&vd.root(), &cfg, &ctx);
            let z = Tensor::randn([2, cfg.z_dim], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 2]);
            let x = g.forward_t(&z, &y, true);
            assert_eq!(x.size(), vec![2, 3, res, res]);
            assert!(x.abs().max().double_value(&[]) <= 1.0);
            let out = d.forward_t(&x, Projection::Labels(&y), true);
            assert_eq!(out.logit.size(), vec![2]);
            assert_eq!(out.class_logits.expect("head").size(), vec![2, 3]);
            assert_eq!(out.rotation_logits.expect("head").size(), vec![2, 4]);
        }
    }

    #[test]
    fn fill_in_keeps_known_labels_and_takes_predictions_elsewhere() {
        let labels = Tensor::from_slice(&[3i64, -1, 1, -1]);
        let known = Tensor::from_slice(&[true, false, true, false]);
        let predicted = Tensor::from_slice(&[0i64, 2, 0, 5]);
        let y = fill_in(&labels, &known, &predicted);
        assert_eq!(Vec::<i64>::try_from(&y).expect("vec"), vec![3, 2, 1, 5]);
    }

    fn counts(cfg: &Config) -> (i64, i64) {
        let ctx = LayerCtx::new(false);
        let (vg, vd) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let _g = Generator::new(&vg.root(), cfg, &ctx);
        let _d = Discriminator::new(&vd.root(), cfg, &ctx);
        (parameter_count(&vg), parameter_count(&vd))
    }

    /// Parameters of BigGAN 128x128 at ch = 96. Counts are quadratic in ch
    /// (for ch a multiple of 8), so three small builds give the ch = 96
    /// count exactly without allocating 158M weights.
    fn counts_at_96(arch: GanArch) -> (i64, i64) {
        let at = |ch: i64| {
            counts(&Config {
                ch,
                arch,
                ..Config::biggan_128()
            })
        };
        let (g8, d8) = at(8);
        let (g16, d16) = at(16);
        let (g24, d24) = at(24);
        // Newton forward differences at 8, 16, 24 evaluated at 96 = 8 + 11 * 8.
        let extrapolate = |a: i64, b: i64, c: i64| {
            let (d1, d2) = (b - a, c - 2 * b + a);
            a + 11 * d1 + 11 * 10 / 2 * d2
        };
        (extrapolate(g8, g16, g24), extrapolate(d8, d16, d24))
    }

    /// compare_gan's `resnet_biggan.py` states its 128x128 counts in its
    /// docstring: D 87,982,370 and G 70,433,988 (docs/method.md).
    #[test]
    fn compare_gan_variant_has_compare_gans_parameter_count() {
        let (g, d) = counts_at_96(GanArch::CompareGan);
        assert_eq!((g, d), (70_433_988, 87_982_370));
    }

    /// The BigGAN-PyTorch variant equals the PyTorch model of
    /// benches/gan/biggan_torch.py: `sum(p.numel() for p in
    /// Generator(128, 96, 1000, [64]).parameters())`; the 336 (G) and 168
    /// (D) over compare_gan's are the attention blocks' biases.
    #[test]
    fn biggan_pytorch_variant_has_70m_and_88m_parameters() {
        let (g, d) = counts_at_96(GanArch::BigganPytorch);
        assert_eq!((g, d), (70_434_324, 87_982_538));
    }

    /// compare_gan's unpool: values at even rows and columns, zeros between.
    #[test]
    fn unpool_puts_each_value_at_the_top_left_of_its_block() {
        let x = Tensor::from_slice(&[1f32, 2., 3., 4.]).view([1, 1, 2, 2]);
        let y = upsample(&x, GanArch::CompareGan);
        let want = [
            1f32, 0., 2., 0., //
            0., 0., 0., 0., //
            3., 0., 4., 0., //
            0., 0., 0., 0.,
        ];
        assert_eq!(y.size(), vec![1, 1, 4, 4]);
        assert_eq!(Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(), want);
    }

    /// The compare_gan variant at every resolution: the same shapes, and a
    /// last D block that is its convolutions alone (no residual path).
    #[test]
    fn compare_gan_variant_runs_at_every_resolution() {
        tch::manual_seed(3);
        for res in [32, 64, 128] {
            let cfg = Config {
                arch: GanArch::CompareGan,
                ..tiny(res)
            };
            let ctx = LayerCtx::new(false);
            let (vg, vd) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
            let g = Generator::new(&vg.root(), &cfg, &ctx);
            let d = Discriminator::new(&vd.root(), &cfg, &ctx);
            let z = Tensor::randn([2, cfg.z_dim], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 2]);
            let x = g.forward_t(&z, &y, true);
            assert_eq!(x.size(), vec![2, 3, res, res]);
            let out = d.forward_t(&x, Projection::Labels(&y), true);
            assert_eq!(out.logit.size(), vec![2]);
            let last = d.blocks.last().unwrap();
            assert!(!last.residual && last.conv_sc.is_none(), "{res}");
            assert!(vd
                .variables()
                .keys()
                .all(|k| !k.contains("attn") || !k.ends_with(".bias")));
        }
    }

    #[test]
    fn arch_tables_match_biggan_pytorch() {
        let g = g_arch(128, 96);
        assert_eq!(g.in_ch, vec![1536, 1536, 768, 384, 192]);
        assert_eq!(g.resolution, vec![8, 16, 32, 64, 128]);
        let d = d_arch(GanArch::BigganPytorch, 128, 96);
        assert_eq!(d, d_arch(GanArch::CompareGan, 128, 96));
        // compare_gan's 32x32 D: [2, 2, 2, 2] x ch, the last block not downsampling.
        let d32 = d_arch(GanArch::CompareGan, 32, 8);
        assert_eq!(d32.out_ch, vec![16, 16, 16, 16]);
        assert_eq!(d32.resolution, vec![16, 8, 4, 4]);
        assert_eq!(d.in_ch, vec![3, 96, 192, 384, 768, 1536]);
        assert_eq!(d.out_ch, vec![96, 192, 384, 768, 1536, 1536]);
        assert_eq!(d.resolution, vec![64, 32, 16, 8, 4, 4]);
        assert_eq!(Config::biggan_128().z_chunk(), 20);
    }
}
