//! Metrics: how good labels and images are. [`clustering`] scores cluster
//! or predicted labels against true labels (the pseudo-label quality
//! report). Building blocks: plain functions over slices, no stage knowledge.
pub mod clustering;
