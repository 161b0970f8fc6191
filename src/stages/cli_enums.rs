//! The building blocks' option enums as command-line values. The blocks
//! (codec, device, k-means, models, GAN modes, optimiser schedules) know
//! nothing of the command line; their enums are serde values for pipeline
//! files and manifests, and this module gives them to clap under the same
//! names (a test holds the two spellings together).
use clap::builder::PossibleValue;

use crate::codec::{Codec, Filter, JpegScaling, PngCompression, Resize};
use crate::device::DeviceChoice;
use crate::gan::modes::GanMode;
use crate::kmeans::{Backend, Init};
use crate::models::biggan::GanArch;
use crate::models::resnet::Arch;
use crate::train::optim::ScheduleKind;

/// `impl clap::ValueEnum` for a building block's enum: each variant with
/// its serde name and its help line.
macro_rules! value_enum {
    ($ty:ident { $($variant:ident => $name:literal: $help:literal),+ $(,)? }) => {
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),+]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($ty::$variant => PossibleValue::new($name).help($help)),+
                })
            }
        }
    };
}

value_enum!(Codec {
    Png => "png": "Lossless PNG (what Hugging Face `datasets` and PIL read by default)",
    Jpeg => "jpeg": "JPEG at --quality",
    Raw => "raw": "Uncompressed RGB bytes, row-major HWC, size*size*3 of them",
});

value_enum!(PngCompression {
    Fast => "fast": "fdeflate's fast mode: slightly larger files for a fraction of the time",
    Default => "default": "zlib level 6",
});

value_enum!(JpegScaling {
    Auto => "auto": "Scale in the DCT domain while the decode still covers the target size (no upscaling)",
    Off => "off": "Always decode at full size",
});

value_enum!(Resize {
    Crop => "crop": "The centred square of the shorter side (the default)",
    Pad => "pad": "The whole image inside the square, centred, on a --pad-color border",
    Squash => "squash": "The whole image resized to the square, aspect ratio not kept",
    KeepRatio => "keep-ratio": "The whole image, its shorter side resized to --size, aspect ratio kept (not a square; for train-gan's distorted crops)",
});

value_enum!(Filter {
    Box => "box": "Equal weights over the pixels each output pixel covers",
    Bilinear => "bilinear": "Triangle filter, PIL's BILINEAR (the default; what prepare always used)",
    Hamming => "hamming": "Hamming window: bicubic-like sharpness at bilinear's cost",
    CatmullRom => "catmull-rom": "Catmull-Rom cubic, PIL's BICUBIC",
    Mitchell => "mitchell": "Mitchell-Netravali cubic: softer than Catmull-Rom",
    Gaussian => "gaussian": "Gaussian, standard deviation 0.5",
    Lanczos3 => "lanczos3": "Lanczos with 3 lobes, PIL's LANCZOS",
});

value_enum!(DeviceChoice {
    Auto => "auto": "CUDA when available, else CPU",
    Cpu => "cpu": "The CPU",
    Cuda => "cuda": "The first CUDA device",
});

value_enum!(GanMode {
    Biggan => "biggan": "Fully supervised: all true labels",
    S2gan => "s2gan": "Labels from a pre-trained semi-supervised classifier (pseudo-labels)",
    Clustering => "clustering": "k-means cluster labels (pseudo-labels)",
    S2ganCo => "s2gan-co": "Co-training: a class head on D labels the unlabelled real images",
    S3gan => "s3gan": "The paper's S3GAN: s2gan's classifier pseudo-labels plus the rotation head in D",
    S3ganCo => "s3gan-co": "Co-training plus the rotation head (the paper's S3GAN-CO)",
    ClusteringSs => "clustering-ss": "Cluster labels plus the rotation head",
    Ssgan => "ssgan": "Unconditional plus the rotation head",
    Unconditional => "unconditional": "No labels",
    SingleLabel => "single-label": "Every image has class 0",
    RandomLabel => "random-label": "Uniformly random classes",
});

value_enum!(GanArch {
    CompareGan => "compare-gan": "google/compare_gan's resnet_biggan, the paper's own (docs/method.md)",
    BigganPytorch => "biggan-pytorch": "ajbrock/BigGAN-PyTorch's BigGAN.py",
});

value_enum!(Init {
    Auto => "auto": "k-means++ for up to 100 clusters, k-means|| above",
    KmeansPlusPlus => "kmeans++": "k-means++ (Arthur and Vassilvitskii 2007)",
    KmeansParallel => "kmeans-parallel": "k-means|| (Bahmani et al. 2012) on a sample of 32 points per cluster",
    Random => "random": "k distinct points drawn uniformly (faiss's default)",
});

value_enum!(Backend {
    Auto => "auto": "linfa for small problems, libtorch above (by size, never by device)",
    Linfa => "linfa": "linfa-clustering",
    Torch => "torch": "libtorch matrix products (CPU or CUDA)",
});

value_enum!(Arch {
    Resnet50 => "resnet50": "ResNet-50, ImageNet stem: the paper's extractor at 128x128",
    Resnet18 => "resnet18": "ResNet-18, ImageNet stem",
    Small => "small": "Basic blocks [1,1,1,1] x [32,64,128,256], small stem: 32x32 data on a CPU",
    Micro => "micro": "Basic blocks [1,1,1] x [16,32,64], small stem: ~5x cheaper than small",
    Tiny => "tiny": "Basic blocks [1,1] x [8,16]: tests",
});

value_enum!(ScheduleKind {
    Constant => "constant": "The base rate throughout",
    Cosine => "cosine": "Linear warm-up, then cosine decay to zero at the last step",
    Step => "step": "Linear warm-up, then x0.1 at 50% and 75% of the steps",
});

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use serde::Serialize;

    /// The command line spells every value as pipeline files and manifests do.
    fn same_names<T: ValueEnum + Serialize>() {
        for v in T::value_variants() {
            let cli = v
                .to_possible_value()
                .expect("visible")
                .get_name()
                .to_string();
            let serde = serde_json::to_value(v).expect("serialise");
            assert_eq!(serde, serde_json::Value::String(cli));
        }
    }

    #[test]
    fn command_line_names_are_the_serde_names() {
        same_names::<Codec>();
        same_names::<PngCompression>();
        same_names::<JpegScaling>();
        same_names::<Resize>();
        same_names::<Filter>();
        same_names::<DeviceChoice>();
        same_names::<GanMode>();
        same_names::<GanArch>();
        same_names::<Init>();
        same_names::<Backend>();
        same_names::<Arch>();
        same_names::<ScheduleKind>();
    }
}
