//! Stage `shard`: writes shuffled training shards. Placeholder until its issue lands.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::Outcome;
use crate::stage::Input;
use crate::stages::Exec;

/// Where the training labels come from.
#[derive(Debug, Clone, Copy)]
pub enum LabelSource<'a> {
    /// `pseudo_labels/` from `pseudo-label`.
    PseudoLabels(&'a Path),
    /// `labels/` from `sample-labels`: the labelled subset, the rest unlabelled (co-training).
    Labels(&'a Path),
    /// The true labels of `images/` (the fully supervised baseline).
    TrueLabels,
}

/// Everything that changes this stage's output.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {}

#[derive(clap::Args, Debug)]
pub struct Cli {
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub exec: Exec,
}

/// What this stage reads, for fingerprinting (shared by `run` and the pipeline's plan).
pub fn inputs(images: &Path, labels: LabelSource<'_>) -> Vec<Input> {
    let mut v = vec![Input::stage(images, "prepare")];
    match labels {
        LabelSource::PseudoLabels(d) => v.push(Input::stage(d, "pseudo-label")),
        LabelSource::Labels(d) => v.push(Input::stage(d, "sample-labels")),
        LabelSource::TrueLabels => {}
    }
    v
}

pub fn run(
    images: &Path,
    labels: LabelSource<'_>,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    let _ = (images, labels, output, params, exec);
    Err(Error::invalid("stage `shard` is not built yet"))
}

pub fn main(_cli: Cli) -> Result<()> {
    Err(Error::invalid("stage `shard` is not built yet"))
}
