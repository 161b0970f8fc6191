//! ResNet feature extractor with a 4-way rotation head and an optional linear
//! class head: the self-supervised (Gidaris et al., "Unsupervised
//! Representation Learning by Predicting Image Rotations", ICLR 2018) and
//! semi-supervised S4L-Rotation (Zhai et al., "S4L: Self-Supervised
//! Semi-Supervised Learning", ICCV 2019) extractor that Lucic et al. 2019 use
//! to label images for S2GAN (ResNet-50 at 128x128, He et al. 2016).
//!
//! The architecture is data ([`Config`]): block kind, blocks and widths per
//! stage, and the stem. ResNet-50 for 128x128 and small basic-block nets for
//! 32x32 data and tests come from the same code. Variable names follow
//! torchvision (`layer1.0.conv1.weight`, ...) under `backbone.`, so
//! checkpoints load by name.
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 with 4x expansion (ResNet-50+).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The first layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// 7x7 stride-2 convolution + 3x3 stride-2 max pool (ImageNet: 128 -> 32).
    Imagenet,
    /// One 3x3 stride-1 convolution (CIFAR-style, for 32x32 images).
    Small,
}

/// A ResNet as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub block: BlockKind,
    /// Blocks per stage; the first stage keeps the resolution, each later one halves it.
    pub layers: Vec<usize>,
    /// Base width per stage (a bottleneck stage outputs 4x this).
    pub widths: Vec<i64>,
    pub stem: Stem,
    pub stem_width: i64,
}

/// Named configurations for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// ResNet-50, ImageNet stem: the paper's extractor at 128x128.
    Resnet50,
    /// ResNet-18, ImageNet stem.
    Resnet18,
    /// Basic blocks [1,1,1,1] x [32,64,128,256], small stem: 32x32 data on a CPU.
    #[default]
    Small,
    /// Basic blocks [1,1,1] x [16,32,64], small stem: 32x32 data on a busy CPU (~5x cheaper than small).
    Micro,
    /// Basic blocks [1,1] x [8,16]: tests.
    Tiny,
}

impl Arch {
    pub fn config(self) -> Config {
        match self {
            Arch::Resnet50 => Config::resnet50(),
            Arch::Resnet18 => Config::resnet18(),
            Arch::Small => Config::small(),
            Arch::Micro => Config::micro(),
            Arch::Tiny => Config::tiny(),
        }
    }
}

impl Config {
    pub fn resnet50() -> Self {
        Config {
            block: BlockKind::Bottleneck,
            layers: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            stem_width: 64,
        }
    }
    pub fn resnet18() -> Self {
        Config {
            block: BlockKind::Basic,
            layers: vec![2, 2, 2, 2],
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            stem_width: 64,
        }
    }
    pub fn small() -> Self {
        Config {
            block: BlockKind::Basic,
            layers: vec![1, 1, 1, 1],
            widths: vec![32, 64, 128, 256],
            stem: Stem::Small,
            stem_width: 32,
        }
    }
    pub fn micro() -> Self {
        Config {
            block: BlockKind::Basic,
            layers: vec![1, 1, 1],
            widths: vec![16, 32, 64],
            stem: Stem::Small,
            stem_width: 16,
        }
    }
    pub fn tiny() -> Self {
        Config {
            block: BlockKind::Basic,
            layers: vec![1, 1],
            widths: vec![8, 16],
            stem: Stem::Small,
            stem_width: 8,
        }
    }

    /// Whether the CPU may run this net channels-last. libtorch 2.11's
    /// oneDNN corrupts the heap in the weight gradient of a strided 1x1
    /// convolution (the downsampling shortcut) over fewer than 16
    /// channels-last input channels (seen at 64x64 and up; reproduced in
    /// PyTorch itself: docs/method.md, "Known library faults"). Such nets
    /// (the `tiny` test net) stay in the default layout.
    pub fn channels_last_is_safe(&self) -> bool {
        let mut c_in = self.stem_width;
        for (s, &w) in self.widths.iter().enumerate() {
            if s > 0 && c_in < 16 {
                return false;
            }
            c_in = w * self.block.expansion();
        }
        true
    }

    /// Length of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        self.widths.last().copied().unwrap_or(self.stem_width) * self.block.expansion()
    }

    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() || self.layers.len() != self.widths.len() {
            return Err(Error::invalid(
                "ResNet config: `layers` and `widths` must be non-empty and of equal length",
            ));
        }
        if self.layers.contains(&0) || self.widths.iter().any(|&w| w <= 0) || self.stem_width <= 0 {
            return Err(Error::invalid(
                "ResNet config: every stage needs >= 1 block and a positive width",
            ));
        }
        Ok(())
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(p: &nn::Path, kind: BlockKind, c_in: i64, width: i64, stride: i64) -> Self {
        let c_out = width * kind.expansion();
        let convs = match kind {
            BlockKind::Basic => vec![
                (
                    conv(p / "conv1", c_in, width, 3, stride),
                    bn(p / "bn1", width),
                ),
                (conv(p / "conv2", width, width, 3, 1), bn(p / "bn2", width)),
            ],
            // Stride on the 3x3 convolution (torchvision's "ResNet v1.5").
            BlockKind::Bottleneck => vec![
                (conv(p / "conv1", c_in, width, 1, 1), bn(p / "bn1", width)),
                (
                    conv(p / "conv2", width, width, 3, stride),
                    bn(p / "bn2", width),
                ),
                (conv(p / "conv3", width, c_out, 1, 1), bn(p / "bn3", c_out)),
            ],
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            (
                conv(p / "downsample" / "0", c_in, c_out, 1, stride),
                bn(p / "downsample" / "1", c_out),
            )
        });
        Block { convs, downsample }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            ys = ys.apply(c).apply_t(b, train);
            if i != last {
                ys = ys.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((c, b)) => xs.apply(c).apply_t(b, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// The backbone: images `[B, 3, H, W]` to pooled features `[B, D]`.
#[derive(Debug)]
pub struct ResNet {
    cfg: Config,
    stem: (nn::Conv2D, nn::BatchNorm),
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let stem = match cfg.stem {
            Stem::Imagenet => (
                conv(p / "conv1", 3, cfg.stem_width, 7, 2),
                bn(p / "bn1", cfg.stem_width),
            ),
            Stem::Small => (
                conv(p / "conv1", 3, cfg.stem_width, 3, 1),
                bn(p / "bn1", cfg.stem_width),
            ),
        };
        let mut c_in = cfg.stem_width;
        let mut stages = Vec::new();
        for (s, (&n, &w)) in cfg.layers.iter().zip(&cfg.widths).enumerate() {
            let sp = p / format!("layer{}", s + 1);
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    &(&sp / b.to_string()),
                    cfg.block,
                    c_in,
                    w,
                    stride,
                ));
                c_in = w * cfg.block.expansion();
            }
            stages.push(blocks);
        }
        Ok(ResNet {
            cfg: cfg.clone(),
            stem,
            stages,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn feature_dim(&self) -> i64 {
        self.cfg.feature_dim()
    }

    /// Pooled features `[B, D]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // Channels-last strides on the CPU: oneDNN then runs every
        // convolution, batch norm and their gradients in NHWC without
        // reordering each activation (the layout follows the input). The
        // S2L ResNet-50 step at 128x128 went from 12.9 to 15.6 images/s on
        // 2 cores, past PyTorch eager's 14.5 (BENCHMARKS.md, issue 29).
        let xs = if self.cfg.channels_last_is_safe() && xs.device() == Device::Cpu && xs.dim() == 4
        {
            xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
        } else {
            xs.shallow_clone()
        };
        let mut h = xs.apply(&self.stem.0).apply_t(&self.stem.1, train).relu();
        if self.cfg.stem == Stem::Imagenet {
            h = h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for stage in &self.stages {
            for block in stage {
                h = block.forward_t(&h, train);
            }
        }
        // [B, D, h, w] -> [B, D]
        h.mean_dim([2i64, 3].as_slice(), false, h.kind())
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train)
    }
}

/// The outputs of [`RotationNet::forward_t`].
pub struct Heads {
    /// Pooled features `[B, D]`.
    pub features: Tensor,
    /// Rotation logits `[B, 4]`.
    pub rotation: Tensor,
    /// Class logits `[B, C]` when the net has a class head.
    pub classes: Option<Tensor>,
}

/// Backbone + 4-way rotation head + optional linear class head.
#[derive(Debug)]
pub struct RotationNet {
    pub backbone: ResNet,
    pub rotation_head: nn::Linear,
    pub class_head: Option<nn::Linear>,
}

impl RotationNet {
    /// Variables are `backbone.*`, `rotation_head.*`, `class_head.*`.
    pub fn new(p: &nn::Path, cfg: &Config, num_classes: Option<i64>) -> Result<Self> {
        let backbone = ResNet::new(&(p / "backbone"), cfg)?;
        let d = backbone.feature_dim();
        let rotation_head = nn::linear(p / "rotation_head", d, 4, Default::default());
        let class_head =
            num_classes.map(|c| nn::linear(p / "class_head", d, c, Default::default()));
        Ok(RotationNet {
            backbone,
            rotation_head,
            class_head,
        })
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Heads {
        let features = self.backbone.features_t(xs, train);
        let rotation = features.apply(&self.rotation_head);
        let classes = self.class_head.as_ref().map(|h| features.apply(h));
        Heads {
            features,
            rotation,
            classes,
        }
    }
}

/// What `pretrain` writes beside `model.safetensors` (as `model.json`), so
/// that `embed` rebuilds the same network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedModel {
    pub config: Config,
    /// Classes of the linear head; `None` when it has none.
    pub num_classes: Option<i64>,
    pub class_names: Vec<String>,
    /// (height, width) of the training images.
    pub image_size: (usize, usize),
    pub feature_dim: i64,
}

pub const MODEL_WEIGHTS: &str = "model.safetensors";
pub const MODEL_INFO: &str = "model.json";

impl SavedModel {
    /// Writes `model.json` and `model.safetensors` (every variable of `vs`) atomically.
    pub fn save(&self, dir: &std::path::Path, vs: &nn::VarStore) -> Result<()> {
        use crate::error::ResultExt;
        let weights = dir.join(MODEL_WEIGHTS);
        let tmp = crate::fsutil::temp_path(&weights);
        let named = crate::train::checkpoint::named_variables(vs, "");
        let cpu: Vec<(String, Tensor)> = named
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    t.detach()
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float)
                        .contiguous(),
                )
            })
            .collect();
        Tensor::write_safetensors(cpu.as_slice(), &tmp).at(&tmp)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .at(&tmp)?;
        std::fs::rename(&tmp, &weights).at(&weights)?;
        let info = dir.join(MODEL_INFO);
        crate::fsutil::write_atomic(&info, &serde_json::to_vec_pretty(self).at(&info)?)
    }

    /// Reads `model.json` and builds the network on `device` with the saved weights.
    pub fn load(
        dir: &std::path::Path,
        device: Device,
    ) -> Result<(SavedModel, nn::VarStore, RotationNet)> {
        use crate::error::ResultExt;
        let info_path = dir.join(MODEL_INFO);
        let info: SavedModel =
            serde_json::from_slice(&std::fs::read(&info_path).at(&info_path)?).at(&info_path)?;
        let mut vs = nn::VarStore::new(device);
        let net = RotationNet::new(&vs.root(), &info.config, info.num_classes)?;
        let weights = dir.join(MODEL_WEIGHTS);
        vs.load(&weights).at(&weights)?;
        Ok((info, vs, net))
    }
}

/// All four rotations of a batch of square images: `[4B, C, H, W]` (the B
/// images at 0, then at 90, 180 and 270 degrees) and the targets `[4B]`.
pub fn rotate4(xs: &Tensor) -> Result<(Tensor, Tensor)> {
    let size = xs.size();
    if size.len() != 4 || size[2] != size[3] {
        return Err(Error::invalid(format!(
            "rotation needs square images [B, C, H, H]; got {size:?}"
        )));
    }
    let b = size[0];
    let rotated: Vec<Tensor> = (0..4).map(|k| xs.rot90(k, [2, 3])).collect();
    let targets = Tensor::arange(4, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(b, 0, None::<i64>)
        .to_device(xs.device());
    Ok((Tensor::cat(&rotated, 0), targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = RotationNet::new(&vs.root(), &Config::tiny(), Some(10)).unwrap();
        let x = Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let h = net.forward_t(&x, false);
        assert_eq!(h.features.size(), [2, 16]);
        assert_eq!(h.rotation.size(), [2, 4]);
        assert_eq!(h.classes.unwrap().size(), [2, 10]);
        let vars = vs.variables();
        for name in [
            "backbone.conv1.weight",
            "backbone.layer1.0.conv1.weight",
            "backbone.layer2.0.downsample.0.weight",
            "backbone.layer2.0.bn2.running_mean",
            "rotation_head.weight",
            "class_head.bias",
        ] {
            assert!(vars.contains_key(name), "missing {name}: {:?}", vars.keys());
        }
    }

    #[test]
    fn channels_last_only_where_onednn_takes_it() {
        // Every downsampling 1x1 convolution of these sees >= 16 channels.
        for arch in [Arch::Resnet50, Arch::Resnet18, Arch::Small, Arch::Micro] {
            assert!(arch.config().channels_last_is_safe(), "{arch:?}");
        }
        assert!(!Arch::Tiny.config().channels_last_is_safe());
        // The case that crashed (8 -> 16 channels, stride 2, at 128x128): a
        // backward step runs and gives finite gradients.
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), &Config::tiny()).unwrap();
        for _ in 0..3 {
            let x = Tensor::randn([16, 3, 128, 128], (Kind::Float, Device::Cpu));
            net.features_t(&x, true).sum(Kind::Float).backward();
        }
        for (name, v) in vs.trainable_variables().iter().enumerate() {
            let g = v.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(bool::try_from(g.isfinite().all()).unwrap(), "{name}");
        }
    }

    #[test]
    fn resnet50_has_torchvision_parameter_count() {
        // torchvision.models.resnet50() without its fc layer: 23,508,032 parameters.
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), &Config::resnet50()).unwrap();
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 23_508_032);
        assert_eq!(net.feature_dim(), 2048);
        let x = Tensor::zeros([1, 3, 128, 128], (Kind::Float, Device::Cpu));
        assert_eq!(net.features_t(&x, false).size(), [1, 2048]);
    }

    #[test]
    fn rotate4_matches_targets() {
        let x = Tensor::arange(2 * 4, (Kind::Float, Device::Cpu)).view([2, 1, 2, 2]);
        let (r, t) = rotate4(&x).unwrap();
        assert_eq!(r.size(), [8, 1, 2, 2]);
        assert_eq!(
            Vec::<i64>::try_from(&t).unwrap(),
            vec![0, 0, 1, 1, 2, 2, 3, 3]
        );
        // 90 degrees counter-clockwise (torch.rot90 over dims (2, 3)): [[0,1],[2,3]] -> [[1,3],[0,2]].
        assert_eq!(
            Vec::<f32>::try_from(&r.get(2).flatten(0, -1)).unwrap(),
            vec![1.0, 3.0, 0.0, 2.0]
        );
        assert!(rotate4(&Tensor::zeros([1, 1, 2, 3], (Kind::Float, Device::Cpu))).is_err());
    }
}
