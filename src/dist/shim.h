// The C ABI between src/dist/ffi.rs and libtorch's c10d (TCPStore, Gloo,
// NCCL). Every call returns 0 on success; on failure it writes one line
// (libtorch's message without its C++ backtrace) into `err` and returns
// nonzero. Tensors travel as tch's `C_tensor` pointers, which are
// `at::Tensor*`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

struct fl_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct fl_group {
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Copies the message of the exception being handled into err (one line).
void fl_set_error(char* err, size_t cap, const std::string& msg);
void fl_set_current_error(char* err, size_t cap);

extern "C" {
// Built by shim_nccl.cpp when the NCCL headers were found, else a stub
// that reports why.
int fl_group_new_nccl(fl_store* store, const char* prefix, int rank, int world,
                      int device_index, int64_t timeout_ms, fl_group** out,
                      char* err, size_t cap);
int fl_has_nccl();
}
