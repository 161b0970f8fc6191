//! The pipeline's stages by name: a type, so that a misspelt stage is a
//! compile error, and the one place that knows each stage's folder in a run
//! directory and the counts its manifest must agree with.
use std::fmt;

use serde::{Deserialize, Serialize};

/// A stage of the pipeline, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageName {
    Prepare,
    Duplicates,
    SampleLabels,
    Pretrain,
    Embed,
    PseudoLabel,
    Shard,
    TrainGan,
    Evaluate,
}

/// A rule a finished stage's manifest obeys: the named counts add up to the
/// rows of a table (`NAME-*.arrow` outputs), or to another count.
#[derive(Debug, Clone, Copy)]
pub enum CountRule {
    /// The sum of these counts equals the rows of this table.
    Rows(&'static [&'static str], &'static str),
    /// This count equals the sum of those.
    Sum(&'static str, &'static [&'static str]),
}

impl StageName {
    pub const ALL: [StageName; 9] = [
        StageName::Prepare,
        StageName::Duplicates,
        StageName::SampleLabels,
        StageName::Pretrain,
        StageName::Embed,
        StageName::PseudoLabel,
        StageName::Shard,
        StageName::TrainGan,
        StageName::Evaluate,
    ];

    /// The command and pipeline-table name.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Prepare => "prepare",
            StageName::Duplicates => "duplicates",
            StageName::SampleLabels => "sample-labels",
            StageName::Pretrain => "pretrain",
            StageName::Embed => "embed",
            StageName::PseudoLabel => "pseudo-label",
            StageName::Shard => "shard",
            StageName::TrainGan => "train-gan",
            StageName::Evaluate => "evaluate",
        }
    }

    /// The stage's folder inside a run directory.
    pub fn folder(self) -> &'static str {
        match self {
            StageName::Prepare => "images",
            StageName::Duplicates => "duplicates",
            StageName::SampleLabels => "labels",
            StageName::Pretrain => "pretrain",
            StageName::Embed => "features",
            StageName::PseudoLabel => "pseudo_labels",
            StageName::Shard => "train",
            StageName::TrainGan => "gan",
            StageName::Evaluate => "eval",
        }
    }

    pub fn parse(name: &str) -> Option<StageName> {
        StageName::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// What this stage's manifest counts must agree with (checked whenever a
    /// finished stage is verified, so an edited count is caught).
    pub fn count_rules(self) -> &'static [CountRule] {
        match self {
            StageName::Prepare => &[
                CountRule::Rows(&["written"], "images"),
                CountRule::Rows(&["rejected"], "rejects"),
                CountRule::Sum("seen", &["written", "rejected"]),
            ],
            StageName::Duplicates => &[
                CountRule::Rows(&["within_pairs", "reference_pairs"], "duplicates"),
                CountRule::Sum("within_pairs", &["within_exact", "within_near"]),
                CountRule::Sum("reference_pairs", &["reference_exact", "reference_near"]),
            ],
            StageName::SampleLabels => &[CountRule::Rows(&["labelled", "holdout"], "labels")],
            StageName::Embed => &[CountRule::Rows(&["images"], "features")],
            StageName::PseudoLabel => &[CountRule::Rows(&["images"], "pseudo_labels")],
            // Every images row is a training row or a reject (a duplicate
            // dropped with `--duplicates`).
            StageName::Shard => &[
                CountRule::Rows(&["images"], "train"),
                CountRule::Sum("images", &["labelled", "unlabelled"]),
                CountRule::Rows(&["dropped"], "rejects"),
                CountRule::Sum("seen", &["images", "dropped"]),
                CountRule::Sum("dropped", &["dropped_reference", "dropped_within"]),
            ],
            StageName::Pretrain | StageName::TrainGan | StageName::Evaluate => &[],
        }
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
