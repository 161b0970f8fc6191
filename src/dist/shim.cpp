// libtorch's own distributed engine (c10d) behind a small C ABI for
// src/dist/ffi.rs: the TCPStore that torchrun and init_process_group use
// for rendezvous, Gloo process groups for CPU tensors, and the collectives
// the training loops need (all-reduce, broadcast). NCCL groups are made in
// shim_nccl.cpp; the collectives here serve both, since they go through
// c10d's Backend interface. Compiled by build.rs against the same libtorch
// the crate links.
#include "shim.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

void fl_set_error(char* err, size_t cap, const std::string& msg) {
  if (err == nullptr || cap == 0) {
    return;
  }
  // First line only: c10 messages go on with "Exception raised from ...".
  std::string line = msg.substr(0, msg.find('\n'));
  size_t n = line.size() < cap - 1 ? line.size() : cap - 1;
  std::memcpy(err, line.data(), n);
  err[n] = '\0';
}

void fl_set_current_error(char* err, size_t cap) {
  try {
    throw;
  } catch (const c10::Error& e) {
    fl_set_error(err, cap, e.what_without_backtrace());
  } catch (const std::exception& e) {
    fl_set_error(err, cap, e.what());
  } catch (...) {
    fl_set_error(err, cap, "unknown C++ exception");
  }
}

namespace {

std::vector<at::Tensor> tensors_of(void* const* ptrs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*static_cast<at::Tensor*>(ptrs[i]));
  }
  return out;
}

// Starts one collective per tensor (so buckets pipeline), then waits for all.
template <typename Start>
void each_then_wait(std::vector<at::Tensor>& tensors, Start start) {
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  works.reserve(tensors.size());
  for (auto& t : tensors) {
    std::vector<at::Tensor> one{t};
    works.push_back(start(one));
  }
  for (auto& w : works) {
    w->wait();
  }
}

}  // namespace

extern "C" {

int fl_store_open(const char* host, uint16_t port, int is_server,
                  int64_t timeout_ms, fl_store** out, char* err, size_t cap) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    // Arrival is checked by the caller, rank by rank, so that a timeout can
    // name the ranks that are missing; the store itself waits for nobody.
    opts.numWorkers = std::nullopt;
    opts.waitWorkers = false;
    opts.multiTenant = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new fl_store{store};
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

void fl_store_free(fl_store* s) { delete s; }

int fl_store_set(fl_store* s, const char* key, const uint8_t* value, size_t len,
                 char* err, size_t cap) {
  try {
    s->store->set(key, std::vector<uint8_t>(value, value + len));
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

// *found = whether every key exists (no waiting).
int fl_store_check(fl_store* s, const char* const* keys, size_t n, int* found,
                   char* err, size_t cap) {
  try {
    std::vector<std::string> k(keys, keys + n);
    *found = s->store->check(k) ? 1 : 0;
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

// Waits up to timeout_ms for `key`, then copies its value into a buffer that
// the caller frees with fl_free.
int fl_store_get(fl_store* s, const char* key, int64_t timeout_ms,
                 uint8_t** value, size_t* len, char* err, size_t cap) {
  try {
    s->store->wait({key}, std::chrono::milliseconds(timeout_ms));
    auto v = s->store->get(key);
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (*value == nullptr) {
      fl_set_error(err, cap, "out of memory");
      return 1;
    }
    if (!v.empty()) {
      std::memcpy(*value, v.data(), v.size());
    }
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

int fl_store_add(fl_store* s, const char* key, int64_t delta, int64_t* result,
                 char* err, size_t cap) {
  try {
    *result = s->store->add(key, delta);
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

void fl_free(void* p) { std::free(p); }

int fl_has_gloo() {
#ifdef USE_C10D_GLOO
  return 1;
#else
  return 0;
#endif
}

// A Gloo group over the store under `prefix`. `hostname` is the address
// this rank's Gloo device binds (NULL: the interface GLOO_SOCKET_IFNAME
// names, else the machine's hostname, as torch.distributed does).
int fl_group_new_gloo(fl_store* s, const char* prefix, int rank, int world,
                      const char* hostname, int threads, int64_t timeout_ms,
                      fl_group** out, char* err, size_t cap) {
#ifdef USE_C10D_GLOO
  try {
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, s->store);
    auto opts = c10d::ProcessGroupGloo::Options::create(
        std::chrono::milliseconds(timeout_ms));
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (hostname != nullptr) {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    } else if (ifname != nullptr && *ifname != '\0') {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = threads;
    auto pg =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
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
  (void)hostname;
  (void)threads;
  (void)timeout_ms;
  (void)out;
  fl_set_error(err, cap,
               "this build has no Gloo (build.rs found no gloo headers: "
               "install Debian's libgloo-dev and rebuild)");
  return 1;
#endif
}

void fl_group_free(fl_group* g) { delete g; }

// Sums each tensor in place over the group's ranks.
int fl_allreduce_sum(fl_group* g, void* const* tensors, size_t n, char* err,
                     size_t cap) {
  try {
    auto ts = tensors_of(tensors, n);
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    each_then_wait(ts, [&](std::vector<at::Tensor>& one) {
      return g->backend->allreduce(one, opts);
    });
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

// Overwrites each tensor with rank `root`'s.
int fl_broadcast(fl_group* g, void* const* tensors, size_t n, int root,
                 char* err, size_t cap) {
  try {
    auto ts = tensors_of(tensors, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    each_then_wait(ts, [&](std::vector<at::Tensor>& one) {
      return g->backend->broadcast(one, opts);
    });
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

}  // extern "C"
