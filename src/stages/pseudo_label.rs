//! Stage `pseudo-label`: labels every image by k-means or by the classifier head. Placeholder until its issue lands.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::progress::Outcome;
use crate::stage::Input;
use crate::stages::Exec;

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
pub fn inputs(features: &Path, labels: Option<&Path>, images: &Path) -> Vec<Input> {
    let mut v = vec![
        Input::stage(features, "embed"),
        Input::stage(images, "prepare"),
    ];
    if let Some(l) = labels {
        v.push(Input::stage(l, "sample-labels"));
    }
    v
}

pub fn run(
    features: &Path,
    labels: Option<&Path>,
    images: &Path,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    let _ = (features, labels, images, output, params, exec);
    Err(Error::invalid("stage `pseudo-label` is not built yet"))
}

pub fn main(_cli: Cli) -> Result<()> {
    Err(Error::invalid("stage `pseudo-label` is not built yet"))
}
