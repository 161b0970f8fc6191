//! Stage `train-gan`: trains the BigGAN in one of the paper's modes. Placeholder until its issue lands.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::Outcome;
use crate::stage::Input;
use crate::stages::Exec;

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The labelling mode of the paper (METHOD.md).
    #[arg(long, value_enum, default_value_t = GanMode::S2gan)]
    pub mode: GanMode,
}

/// The GAN modes of the paper (DESIGN.md, METHOD.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GanMode {
    /// Fully supervised: all true labels.
    Biggan,
    /// Labels from a pre-trained semi-supervised classifier (pseudo-labels).
    #[default]
    S2gan,
    /// k-means cluster labels (pseudo-labels).
    Clustering,
    /// Co-training: a class head on D labels the unlabelled real images.
    S2ganCo,
    /// Co-training plus the rotation head.
    S3gan,
    /// Cluster labels plus the rotation head.
    ClusteringSs,
    /// Unconditional plus the rotation head.
    Ssgan,
    Unconditional,
    /// Every image has class 0.
    SingleLabel,
    /// Uniformly random classes.
    RandomLabel,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mode: GanMode::S2gan,
        }
    }
}

/// Which labels a mode's training shards must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsNeeded {
    /// Pseudo-labels for every image.
    PseudoLabels,
    /// The labelled subset; the rest unlabelled.
    Subset,
    /// True labels (or none at all, for modes that ignore them).
    True,
}

impl GanMode {
    pub fn labels_needed(self) -> LabelsNeeded {
        match self {
            GanMode::S2gan | GanMode::Clustering | GanMode::ClusteringSs => {
                LabelsNeeded::PseudoLabels
            }
            GanMode::S2ganCo | GanMode::S3gan => LabelsNeeded::Subset,
            GanMode::Biggan
            | GanMode::Ssgan
            | GanMode::Unconditional
            | GanMode::SingleLabel
            | GanMode::RandomLabel => LabelsNeeded::True,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Cli {
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub exec: Exec,
}

/// What this stage reads, for fingerprinting (shared by `run` and the pipeline's plan).
pub fn inputs(data: &Path) -> Vec<Input> {
    vec![Input::stage(data, "shard")]
}

pub fn run(
    data: &Path,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    let _ = (data, output, params, exec);
    Err(Error::invalid("stage `train-gan` is not built yet"))
}

pub fn main(_cli: Cli) -> Result<()> {
    Err(Error::invalid("stage `train-gan` is not built yet"))
}
