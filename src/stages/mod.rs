//! One module per pipeline stage (DESIGN.md "Stages"). Stages never call each
//! other: they meet only through the tables in the run directory.
//!
//! Each stage module has the same shape: `Params` (everything that changes
//! the output; serde for pipeline files, clap for the command line, both
//! with the same defaults), `Cli` (paths + params + execution options) and
//! a `run` function returning the stage's manifest and whether it ran.
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

pub mod embed;
pub mod evaluate;
pub mod prepare;
pub mod pretrain;
pub mod pseudo_label;
pub mod sample_labels;
pub mod shard;
pub mod tables;
pub mod train_gan;

/// Execution options: they change how fast a stage runs, never its output.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exec {
    /// Worker threads for decoding and libtorch (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where networks run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}
