//! Metrics: how good labels and images are. [`clustering`] scores cluster
//! or predicted labels against true labels (the pseudo-label quality
//! report); [`fid`] and [`inception`] score generated images (FID, KID, IS
//! on Inception features) and [`precision_recall`] tells poor samples from
//! dropped modes; [`consistency`] checks that a conditional generator's
//! classes are the classes a classifier sees. Building blocks: no stage
//! knowledge.
pub mod clustering;
pub mod consistency;
pub mod fid;
pub mod fid_inception;
pub mod inception;
pub mod precision_recall;
