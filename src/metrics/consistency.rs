//! Class consistency: of the images drawn (or labelled) as class c, the
//! fraction a classifier assigns to c. It is what a user asks first of a
//! conditional GAN trained on pseudo-labels: do its rows mean anything?
//! FID cannot say: a GAN that ignores its label can still score well.
//!
//! The classifier ("judge") is a `pretrain` extractor with a linear head
//! (its `model.json` + `model.safetensors`) or a TorchScript file returning
//! class logits. Both take `[N, 3, H, W]` float images in [-1, 1], the
//! training loader's scale; a pretrained extractor gets them resized to the
//! size it was trained on, a TorchScript file as they come.
use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::metrics::inception::Inception;
use crate::models::resnet::{RotationNet, SavedModel, MODEL_INFO};

/// A classifier that labels images for class consistency.
pub enum ClassJudge {
    Pretrained {
        net: Box<RotationNet>,
        _vs: nn::VarStore,
        /// (height, width) it was trained on.
        size: (usize, usize),
        classes: i64,
        device: Device,
    },
    /// A TorchScript file, loaded and run as the Inception is.
    Script(Inception),
}

impl ClassJudge {
    /// A `pretrain` folder (with a class head) or a TorchScript file.
    /// `Ok(None)`: a pretrained extractor without a class head (trained on
    /// rotations only), which cannot judge classes.
    pub fn load(path: &Path, device: Device) -> Result<Option<Self>> {
        if path.join(MODEL_INFO).is_file() {
            let (info, vs, net) = SavedModel::load(path, device)?;
            return Ok(info.num_classes.map(|classes| ClassJudge::Pretrained {
                net: Box::new(net),
                _vs: vs,
                size: info.image_size,
                classes,
                device,
            }));
        }
        if !path.is_file() {
            return Err(Error::file(
                path,
                "neither a `pretrain` folder (model.json) nor a TorchScript file",
            ));
        }
        let net = Inception::load(path, device)?;
        if net.has_logits() {
            // pytorch-fid's weights: an ImageNet classifier, not one of these classes.
            return Err(Error::file(
                path,
                "is the FID Inception's weights, not a classifier of the samples' classes: give a TorchScript file returning their logits",
            ));
        }
        Ok(Some(ClassJudge::Script(net)))
    }

    /// Classes of a pretrained head (a TorchScript file's are known only from its output).
    pub fn classes(&self) -> Option<i64> {
        match self {
            ClassJudge::Pretrained { classes, .. } => Some(*classes),
            ClassJudge::Script(_) => None,
        }
    }

    /// The predicted class of each image of `[N, 3, H, W]` (float, [-1, 1]).
    pub fn predict(&self, images: &Tensor) -> Result<Vec<i64>> {
        let logits = tch::no_grad(|| -> Result<Tensor> {
            match self {
                ClassJudge::Pretrained {
                    net, size, device, ..
                } => {
                    let x = images.to_device(*device).to_kind(Kind::Float);
                    let (h, w) = (size.0 as i64, size.1 as i64);
                    let s = x.size();
                    let x = if (s[2], s[3]) == (h, w) {
                        x
                    } else {
                        // Generated and stored sizes differ (ImageNet: 128 vs
                        // 160); plain bilinear, the classifier's only need.
                        x.f_upsample_bilinear2d([h, w], false, None, None)
                            .map_err(Error::Torch)?
                    };
                    net.forward_t(&x, false)
                        .classes
                        .ok_or_else(|| Error::invalid("the extractor has no class head"))
                }
                ClassJudge::Script(net) => net.forward(&images.to_kind(Kind::Float)),
            }
        })?;
        if logits.dim() != 2 || logits.size()[0] != images.size()[0] {
            return Err(Error::invalid(format!(
                "the classifier must return [N, classes] logits, got {:?}",
                logits.size()
            )));
        }
        Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu)).map_err(Error::Torch)
    }
}

/// Counts of (target class, predicted class) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Confusion {
    counts: BTreeMap<(i64, i64), u64>,
}

impl Confusion {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image per pair; targets below 0 (unlabelled) are skipped.
    pub fn add(&mut self, targets: &[i64], predicted: &[i64]) {
        for (&t, &p) in targets.iter().zip(predicted) {
            if t >= 0 {
                *self.counts.entry((t, p)).or_default() += 1;
            }
        }
    }

    /// Adds another confusion's counts (another run's).
    pub fn merge(&mut self, other: &Confusion) {
        for (&k, &c) in &other.counts {
            *self.counts.entry(k).or_default() += c;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The fraction of images assigned to their own class (NaN when empty).
    pub fn consistency(&self) -> f64 {
        let hits: u64 = self
            .counts
            .iter()
            .filter(|((t, p), _)| t == p)
            .map(|(_, c)| c)
            .sum();
        hits as f64 / self.total() as f64
    }

    /// Per target class: (images assigned to it, images), in class order.
    pub fn per_class(&self) -> BTreeMap<i64, (u64, u64)> {
        let mut out: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        for (&(t, p), &c) in &self.counts {
            let e = out.entry(t).or_default();
            e.1 += c;
            if t == p {
                e.0 += c;
            }
        }
        out
    }

    /// The fraction of images whose predicted class is their target's most
    /// frequent one: what consistency means when the generator's classes
    /// are clusters, whose numbers need not match the classifier's.
    pub fn purity(&self) -> f64 {
        let mut best: BTreeMap<i64, u64> = BTreeMap::new();
        for (&(t, _), &c) in &self.counts {
            let b = best.entry(t).or_default();
            *b = (*b).max(c);
        }
        best.values().sum::<u64>() as f64 / self.total() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_purity_and_per_class_counts() {
        let mut c = Confusion::new();
        // Class 0: 3 of 4 right; class 1: 0 of 2 (both as class 2); one unlabelled.
        c.add(&[0, 0, 0, 0, 1, 1, -1], &[0, 0, 0, 1, 2, 2, 0]);
        assert_eq!(c.total(), 6);
        assert!((c.consistency() - 0.5).abs() < 1e-12);
        // Clusters: class 1's images all land together, so it is pure.
        assert!((c.purity() - 5.0 / 6.0).abs() < 1e-12);
        let per = c.per_class();
        assert_eq!(per[&0], (3, 4));
        assert_eq!(per[&1], (0, 2));
        assert!(Confusion::new().consistency().is_nan());
    }
}
