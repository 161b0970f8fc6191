//! Stage `embed`: writes one feature vector per image. Placeholder until its issue lands.
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
pub fn inputs(images: &Path, model: Option<&Path>) -> Vec<Input> {
    let mut v = vec![Input::stage(images, "prepare")];
    if let Some(m) = model {
        v.push(Input::stage(m, "pretrain"));
    }
    v
}

pub fn run(
    images: &Path,
    model: Option<&Path>,
    output: &Path,
    params: &Params,
    exec: &Exec,
) -> Result<(Manifest, Outcome)> {
    let _ = (images, model, output, params, exec);
    Err(Error::invalid("stage `embed` is not built yet"))
}

pub fn main(_cli: Cli) -> Result<()> {
    Err(Error::invalid("stage `embed` is not built yet"))
}
