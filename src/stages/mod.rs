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

/// Test helper: a stage's parameters default to the same values from the
/// command line (clap's `default_value_t`) as from an empty pipeline table
/// (serde's `Default`), so `fewlabels STAGE` and `fewlabels run` agree.
#[cfg(test)]
pub(crate) fn assert_defaults_agree<P>()
where
    P: clap::Args + Default + PartialEq + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let matches = P::augment_args(clap::Command::new("x"))
        .try_get_matches_from(["x"])
        .expect("parse no flags");
    let from_cli = P::from_arg_matches(&matches).expect("from matches");
    assert_eq!(from_cli, P::default(), "command-line defaults");
    let from_toml: P = toml::from_str("").expect("empty table");
    assert_eq!(from_toml, P::default(), "pipeline-file defaults");
}
