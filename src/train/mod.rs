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
