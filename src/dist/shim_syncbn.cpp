// Cross-replica batch normalisation (compare_gan's `standardize_batch` with
// `use_cross_replica_mean`, PyTorch's SyncBatchNorm) as a libtorch autograd
// function, for src/models/layers.rs through src/dist/ffi.rs. The moments
// are summed over the ranks in the forward pass, and the two sums the input
// gradient needs (of dy and of dy * x_hat) in the backward pass, so every
// rank normalises with the whole batch's mean and variance and its
// gradients are those of one process holding the whole batch. The sums go
// through a callback into Rust, which owns the process group and its error
// messages. No affine part: the callers apply their own gain and bias.
#include <cstring>
#include <stdexcept>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shim.h"

extern "C" {
// Sums `tensor` (an at::Tensor*) in place over the ranks; nonzero on
// failure, with one line in `err`.
typedef int (*fl_sum_fn)(void* ctx, void* tensor, char* err, size_t cap);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void sum_over_ranks(int64_t fn, int64_t fn_ctx, at::Tensor& t) {
  char err[1024];
  err[0] = '\0';
  auto f = reinterpret_cast<fl_sum_fn>(fn);
  if (f(reinterpret_cast<void*>(fn_ctx), &t, err, sizeof err) != 0) {
    throw std::runtime_error(err[0] ? err : "all-reduce failed");
  }
}

// Every dimension but the channels (1).
std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) {
    dims.push_back(d);
  }
  return dims;
}

// [C] -> [1, C, 1, ...] to broadcast over x.
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return v.to(x.scalar_type()).view(shape);
}

struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  // x [N, C, ...] -> (x - mean) / sqrt(var + eps) with the moments of every
  // rank's x; `stats` (an at::Tensor* of [2C]) receives the mean and the
  // unbiased variance, for the running statistics.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            int64_t fn, int64_t fn_ctx, double eps,
                            int64_t stats) {
    auto dims = reduced_dims(x);
    const int64_t c = x.size(1);
    const double count = static_cast<double>(x.numel() / c);
    // Sums in double: E[x^2] - E[x]^2 loses little at these sizes.
    auto sums = at::cat({x.sum(dims, false, at::kDouble),
                         (x * x).sum(dims, false, at::kDouble),
                         at::full({1}, count, x.options().dtype(at::kDouble))});
    sum_over_ranks(fn, fn_ctx, sums);
    const double total = sums[2 * c].item<double>();
    auto mean = sums.narrow(0, 0, c) / total;
    auto var = (sums.narrow(0, c, c) / total - mean * mean).clamp_min(0.0);
    auto invstd = (var + eps).rsqrt();
    auto y = (x - per_channel(mean, x)) * per_channel(invstd, x);
    {
      at::NoGradGuard guard;
      auto& out = *reinterpret_cast<at::Tensor*>(stats);
      const double unbiased = total > 1.0 ? total / (total - 1.0) : 1.0;
      out.copy_(at::cat({mean, var * unbiased}));
    }
    ctx->save_for_backward({y, invstd});
    ctx->saved_data["fn"] = fn;
    ctx->saved_data["fn_ctx"] = fn_ctx;
    ctx->saved_data["total"] = total;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    const auto& invstd = saved[1];
    auto dy = grads[0].contiguous();
    auto dims = reduced_dims(y);
    const int64_t c = y.size(1);
    auto sums = at::cat({dy.sum(dims, false, at::kDouble),
                         (dy * y).sum(dims, false, at::kDouble)});
    sum_over_ranks(ctx->saved_data["fn"].toInt(),
                   ctx->saved_data["fn_ctx"].toInt(), sums);
    const double total = ctx->saved_data["total"].toDouble();
    auto mean_dy = per_channel(sums.narrow(0, 0, c) / total, dy);
    auto mean_dy_y = per_channel(sums.narrow(0, c, c) / total, dy);
    auto dx = (dy - mean_dy - y * mean_dy_y) * per_channel(invstd, dy);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// *out = a new at::Tensor* (tch takes ownership) holding x normalised by
// the moments of every rank's x.
int fl_sync_batch_norm(void* input, double eps, fl_sum_fn fn, void* fn_ctx,
                       void* stats, void** out, char* err, size_t cap) {
  try {
    const auto& x = *static_cast<at::Tensor*>(input);
    auto y = SyncBatchNorm::apply(x, reinterpret_cast<int64_t>(fn),
                                  reinterpret_cast<int64_t>(fn_ctx), eps,
                                  reinterpret_cast<int64_t>(stats));
    *out = new at::Tensor(std::move(y));
    return 0;
  } catch (...) {
    fl_set_current_error(err, cap);
    return 1;
  }
}

}  // extern "C"
