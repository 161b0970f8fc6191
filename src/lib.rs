//! `fewlabels`: self-labelled image datasets and class-conditional GANs
//! trained with few labels (Lucic et al., "High-Fidelity Image Generation
//! With Fewer Labels", ICML 2019).
//!
//! Layers, top to bottom (arrows only point down): [`pipeline`] (pipeline
//! files, the run loop) -> [`stages`] (one module per stage) -> building
//! blocks ([`shard`], [`codec`], [`dedup`], [`models`], [`gan`], [`metrics`]) -> core
//! ([`error`], [`manifest`], [`stage`], [`progress`], [`fsutil`], and
//! [`dist`], the data-parallel process group).
pub mod codec;
pub mod dedup;
pub mod device;
pub mod dist;
pub mod error;
pub mod fsutil;
pub mod gan;
pub mod input;
pub mod kmeans;
pub mod manifest;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod report;
pub mod shard;
pub mod stage;
pub mod stages;
pub mod train;

pub use error::{Error, Result};
