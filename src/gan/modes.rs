//! The labelling modes of the paper (docs/method.md, "The labelling
//! modes") and what each needs from the training shards. A mode decides:
//! whether G and D are class-conditional, which label D projects for a real
//! image, whether D has the co-training class head and the rotation head.
//!
//! The paper's names, as compare_gan's `S3GAN` class builds them: S2GAN
//! trains on the labels a pre-trained semi-supervised (S2L) classifier
//! gives; S3GAN is S2GAN plus the rotation head in D (compare_gan's
//! `use_predictor=False`, the paper's best route); S2GAN-CO learns the
//! missing labels with a class head on D while the GAN trains, and
//! S3GAN-CO is that plus the rotation head.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The GAN modes of the paper (docs/method.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// S2GAN's pre-trained classifier labels plus the rotation head in D
    /// (the paper's S3GAN).
    S3gan,
    /// Co-training plus the rotation head (the paper's S3GAN-CO).
    S3ganCo,
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

/// Which label D projects for a real image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealLabels {
    /// The row's label (every row must have one).
    FromData,
    /// The row's label where there is one, else the class head's argmax.
    CoTraining,
    /// Class 0 for every image.
    Single,
    /// A fresh uniform class per image and step.
    Random,
    /// No projection.
    None,
}

impl GanMode {
    pub fn labels_needed(self) -> LabelsNeeded {
        match self {
            GanMode::S2gan | GanMode::S3gan | GanMode::Clustering | GanMode::ClusteringSs => {
                LabelsNeeded::PseudoLabels
            }
            GanMode::S2ganCo | GanMode::S3ganCo => LabelsNeeded::Subset,
            GanMode::Biggan
            | GanMode::Ssgan
            | GanMode::Unconditional
            | GanMode::SingleLabel
            | GanMode::RandomLabel => LabelsNeeded::True,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GanMode::Biggan => "biggan",
            GanMode::S2gan => "s2gan",
            GanMode::Clustering => "clustering",
            GanMode::S2ganCo => "s2gan-co",
            GanMode::S3gan => "s3gan",
            GanMode::S3ganCo => "s3gan-co",
            GanMode::ClusteringSs => "clustering-ss",
            GanMode::Ssgan => "ssgan",
            GanMode::Unconditional => "unconditional",
            GanMode::SingleLabel => "single-label",
            GanMode::RandomLabel => "random-label",
        }
    }

    /// Fraction of the training rows whose label came from a person and
    /// reaches the GAN (the paper's label fraction): 0 for modes that use no
    /// labels of the data.
    pub fn label_fraction(self, data: &DataSummary) -> f64 {
        let uses = matches!(
            self.real_labels(),
            RealLabels::FromData | RealLabels::CoTraining
        );
        if uses && data.rows > 0 {
            data.human_labelled as f64 / data.rows as f64
        } else {
            0.0
        }
    }

    pub fn real_labels(self) -> RealLabels {
        match self {
            GanMode::Biggan
            | GanMode::S2gan
            | GanMode::S3gan
            | GanMode::Clustering
            | GanMode::ClusteringSs => RealLabels::FromData,
            GanMode::S2ganCo | GanMode::S3ganCo => RealLabels::CoTraining,
            GanMode::SingleLabel => RealLabels::Single,
            GanMode::RandomLabel => RealLabels::Random,
            GanMode::Ssgan | GanMode::Unconditional => RealLabels::None,
        }
    }

    pub fn conditional(self) -> bool {
        self.real_labels() != RealLabels::None
    }

    pub fn class_head(self) -> bool {
        self.real_labels() == RealLabels::CoTraining
    }

    pub fn rotation(self) -> bool {
        matches!(
            self,
            GanMode::S3gan | GanMode::S3ganCo | GanMode::ClusteringSs | GanMode::Ssgan
        )
    }

    /// The number of classes G and D are built with, from the data's class count.
    pub fn n_classes(self, data_classes: i64) -> i64 {
        match self.real_labels() {
            RealLabels::Single | RealLabels::None => 1,
            _ => data_classes.max(1),
        }
    }
}

/// What the training shards hold, for checking a mode against them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSummary {
    pub rows: u64,
    /// Rows with a non-null label.
    pub labelled: u64,
    /// Rows whose label a person gave (label_source `given` or `true`), not inferred.
    pub human_labelled: u64,
    /// Class names from the table's metadata.
    pub class_names: Vec<String>,
    /// Largest label seen + 1 (0 when none).
    pub max_label: i64,
    /// Side of the stored images (the shorter side for `keep-ratio` tables).
    pub image_size: u32,
    /// The shards' folder, named in messages.
    pub dir: std::path::PathBuf,
}

/// Checks that the shards carry what `mode` needs; the error says what is
/// missing and how to get it.
pub fn check(mode: GanMode, data: &DataSummary) -> Result<()> {
    let m = mode.name();
    if data.rows == 0 {
        return Err(Error::invalid(format!(
            "mode {m}: the training shards hold no rows; re-run `fewlabels shard`"
        )));
    }
    let classes = data.class_names.len() as i64;
    match mode.real_labels() {
        RealLabels::FromData => {
            // Pseudo-label modes train on inferred labels: shards whose every
            // label a person gave would train a BigGAN under another name.
            if mode.labels_needed() == LabelsNeeded::PseudoLabels
                && data.human_labelled >= data.rows
            {
                return Err(Error::file(
                    &data.dir,
                    format!(
                        "mode {m}: every one of the {} training labels was given by a person, none inferred; this mode trains on pseudo-labels: build the shards from the output of `pseudo-label` (or train mode biggan on these)",
                        data.rows
                    ),
                ));
            }
            if data.labelled < data.rows {
                let what = match mode.labels_needed() {
                    LabelsNeeded::PseudoLabels => "a pseudo-label for every image: build the shards from the output of `pseudo-label`",
                    _ => "a true label for every image: build the shards from fully labelled images (`fewlabels shard` without a labelled subset)",
                };
                return Err(Error::invalid(format!(
                    "mode {m}: {} of {} training rows have no label; this mode needs {what}",
                    data.rows - data.labelled,
                    data.rows
                )));
            }
        }
        RealLabels::CoTraining => {
            if data.labelled == 0 {
                return Err(Error::invalid(format!(
                    "mode {m}: no training row has a label; co-training needs the labelled subset: build the shards with the labels `sample-labels` keeps"
                )));
            }
        }
        RealLabels::Random => {}
        RealLabels::Single | RealLabels::None => return Ok(()),
    }
    if classes < 1 {
        return Err(Error::invalid(format!(
            "mode {m}: the training shards carry no class names (schema metadata `fewlabels.class_names`); re-run `fewlabels shard`"
        )));
    }
    if data.max_label > classes {
        return Err(Error::invalid(format!(
            "mode {m}: labels go up to {} but the shards name only {classes} classes; re-run `fewlabels shard`",
            data.max_label - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: u64, labelled: u64) -> DataSummary {
        DataSummary {
            rows,
            labelled,
            human_labelled: labelled.min(1),
            class_names: vec!["a".into(), "b".into()],
            max_label: 2,
            image_size: 32,
            dir: "train".into(),
        }
    }

    #[test]
    fn modes_say_what_is_missing() {
        let e = check(GanMode::S2gan, &data(10, 3)).expect_err("unlabelled rows");
        assert!(e.to_string().contains("7 of 10"), "{e}");
        assert!(e.to_string().contains("output of `pseudo-label`"), "{e}");
        let e = check(GanMode::S3ganCo, &data(10, 0)).expect_err("no labels");
        assert!(e.to_string().contains("sample-labels"), "{e}");
        check(GanMode::S3ganCo, &data(10, 1)).expect("subset is enough");
        check(GanMode::S3gan, &data(10, 10)).expect("pseudo-labelled");
        // Person-given labels only: the pseudo-label modes refuse them.
        let mut given = data(10, 10);
        given.human_labelled = 10;
        for mode in [
            GanMode::S2gan,
            GanMode::S3gan,
            GanMode::Clustering,
            GanMode::ClusteringSs,
        ] {
            let e = check(mode, &given).expect_err("no inferred label");
            assert!(e.to_string().starts_with("train: mode "), "{e}");
            assert!(e.to_string().contains("`pseudo-label`"), "{e}");
        }
        check(GanMode::Biggan, &given).expect("biggan takes them");
        check(GanMode::Unconditional, &data(10, 0)).expect("no labels needed");
        check(GanMode::Biggan, &data(10, 10)).expect("all labelled");
        let mut d = data(10, 10);
        d.class_names.clear();
        assert!(check(GanMode::RandomLabel, &d).is_err());
    }

    #[test]
    fn heads_and_conditioning_follow_the_paper() {
        // S3GAN: S2GAN's labels plus rotation, no class head (compare_gan's
        // S3GAN defaults to use_predictor=False); S3GAN-CO adds co-training.
        assert!(!GanMode::S3gan.class_head() && GanMode::S3gan.rotation());
        assert_eq!(GanMode::S3gan.labels_needed(), LabelsNeeded::PseudoLabels);
        assert!(GanMode::S3ganCo.class_head() && GanMode::S3ganCo.rotation());
        assert_eq!(GanMode::S3ganCo.labels_needed(), LabelsNeeded::Subset);
        assert!(GanMode::S2ganCo.class_head() && !GanMode::S2ganCo.rotation());
        assert!(!GanMode::Ssgan.conditional() && GanMode::Ssgan.rotation());
        assert!(GanMode::ClusteringSs.rotation() && !GanMode::ClusteringSs.class_head());
        assert_eq!(GanMode::SingleLabel.n_classes(10), 1);
        assert_eq!(GanMode::RandomLabel.n_classes(10), 10);
    }
}
