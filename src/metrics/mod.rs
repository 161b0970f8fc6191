//! Metrics: sample quality of generated images (FID, KID, IS on Inception
//! features). The datapath engineer adds clustering quality here too.
pub mod fid;
pub mod inception;
