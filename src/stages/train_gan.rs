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

pub use crate::gan::modes::{GanMode, LabelsNeeded};

impl Default for Params {
    fn default() -> Self {
        Params {
            mode: GanMode::S2gan,
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
