// NCCL process groups (c10d's ProcessGroupNCCL in libtorch_cuda) for CUDA
// tensors, bound to one GPU per rank. Kept apart from shim.cpp because it
// needs the CUDA and NCCL headers of the nvidia wheels: build.rs compiles it
// with USE_C10D_NCCL when they are found, and without (a stub that says so)
// when not, so the crate builds everywhere.
#include "shim.h"

#include <chrono>

#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

extern "C" {

int fl_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

int fl_group_new_nccl(fl_store* s, const char* prefix, int rank, int world,
                      int device_index, int64_t timeout_ms, fl_group** out,
                      char* err, size_t cap) {
#ifdef USE_C10D_NCCL
  try {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, s->store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg =
        c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
    pg->setBoundDeviceId(device);
    // Creates the communicator now, so that a broken set-up fails at start
    // rather than at the first all-reduce (init_process_group(device_id=)).
    pg->eagerConnectSingleDevice(device);
    *out = new fl_group{pg};
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
#else
  (void)s;
  (void)prefix;
  (void)rank;
  (void)world;
  (void)device_index;
  (void)timeout_ms;
  (void)out;
  fl_set_error(err, cap,
               "this build has no NCCL (build.rs found no NCCL or CUDA headers "
               "in the torch environment; run `make setup` and rebuild)");
  return 1;
#endif
}

}  // extern "C"
