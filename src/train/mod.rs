//! Training infrastructure shared by every network this crate trains (the
//! rotation extractor of `pretrain`, the GAN of `train-gan`): a shard loader
//! with parallel decode and prefetch ([`loader`]), optimisers whose state is
//! named tensors ([`optim`]), atomic safetensors checkpoints that carry the
//! step and RNG state ([`checkpoint`]) and a JSON-lines metrics log
//! ([`log`]). Nothing here knows about stages or the command line.
pub mod checkpoint;
pub mod loader;
pub mod log;
pub mod optim;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// A seeded random generator whose exact position can be saved in a
/// checkpoint and restored, so a resumed run draws the same numbers as an
/// uninterrupted one.
#[derive(Debug, Clone)]
pub struct TrainRng(pub ChaCha20Rng);

/// The saved position of a [`TrainRng`] (JSON-friendly: u128 as a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    pub word_pos: String,
}

impl TrainRng {
    pub fn seed_from_u64(seed: u64) -> Self {
        TrainRng(ChaCha20Rng::seed_from_u64(seed))
    }

    pub fn state(&self) -> RngState {
        RngState {
            seed: self.0.get_seed(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos().to_string(),
        }
    }

    pub fn from_state(s: &RngState) -> crate::Result<Self> {
        let pos: u128 = s.word_pos.parse().map_err(|_| {
            crate::Error::invalid(format!("bad RNG word position `{}`", s.word_pos))
        })?;
        let mut r = ChaCha20Rng::from_seed(s.seed);
        r.set_stream(s.stream);
        r.set_word_pos(pos);
        Ok(TrainRng(r))
    }
}

// libtorch's CUDA autocast runs in float16 unless told otherwise, and tch
// exposes no call to change that; bf16 needs no loss scaling, so we call
// `at::autocast::set_autocast_dtype(DeviceType::CUDA, ScalarType::BFloat16)`
// from libtorch_cpu directly (both enums are int8 in c10).
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, scalar_type: i8);
}
const C10_DEVICE_CUDA: i8 = 1;
const C10_SCALAR_BFLOAT16: i8 = 15;

/// Runs `f` under CUDA autocast in bfloat16 when `enabled` and CUDA is
/// present; otherwise runs it as is (float32).
pub fn autocast_bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled || !tch::Cuda::is_available() {
        return f();
    }
    static SET: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter of a global in libtorch, with valid enum values.
    SET.call_once(|| unsafe { at_set_autocast_dtype(C10_DEVICE_CUDA, C10_SCALAR_BFLOAT16) });
    tch::autocast(true, f)
}

/// Seeds every generator libtorch uses (CPU and CUDA) for weight init.
pub fn seed_torch(seed: u64) {
    tch::manual_seed(seed as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn rng_state_round_trips() {
        let mut a = TrainRng::seed_from_u64(7);
        for _ in 0..13 {
            a.0.random::<u32>();
        }
        let mut b = TrainRng::from_state(&a.state()).unwrap();
        let xs: Vec<u64> = (0..5).map(|_| a.0.random()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.0.random()).collect();
        assert_eq!(xs, ys);
    }
}
