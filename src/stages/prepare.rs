//! Stage `prepare`: [prepare] reads an image folder, tar, list file or IDX files and writes `images/`. Placeholder until its issue lands.
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
pub struct Params {
    /// Image folder, tar, list file (CSV/Parquet) or IDX file.
    #[arg(long)]
    pub input: std::path::PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct Cli {
    #[command(flatten)]
    pub params: Params,
    #[command(flatten)]
    pub exec: Exec,
}

/// What this stage reads, for fingerprinting (shared by `run` and the pipeline's plan).
pub fn inputs(params: &Params) -> Vec<Input> {
    vec![Input::Path(params.input.clone())]
}

pub fn run(output: &Path, params: &Params, exec: &Exec) -> Result<(Manifest, Outcome)> {
    let _ = (output, params, exec);
    Err(Error::invalid("stage `prepare` is not built yet"))
}

pub fn main(_cli: Cli) -> Result<()> {
    Err(Error::invalid("stage `prepare` is not built yet"))
}
