//! GAN training in the paper's labelling modes (docs/method.md): losses, the
//! modes and what they need, the S3GAN rotation layout, EMA and standing
//! statistics, sampling and grids, TensorBoard event files, and the training
//! loop on top of the shared training infrastructure ([`crate::train`]).
//! Nothing here knows about stages or the command line.
pub mod ema;
pub mod losses;
pub mod modes;
pub mod rotation;
pub mod sample;
pub mod tfevents;
pub mod train;

/// Seeds libtorch's generators (CPU and CUDA) from the run seed and a
/// position (step, sub-step, purpose). Every random draw of training is made
/// right after such a call, so it depends only on where it happens: a
/// resumed run draws exactly what an uninterrupted one would have.
pub fn seed_all(seed: u64, parts: &[u64]) {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    for p in parts {
        h.update(&p.to_le_bytes());
    }
    let bytes = h.finalize();
    let mut s = [0u8; 8];
    s.copy_from_slice(&bytes.as_bytes()[..8]);
    // libtorch takes an i64 seed; keep it non-negative.
    let s = u64::from_le_bytes(s) >> 1;
    tch::manual_seed(s as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(s);
    }
}
