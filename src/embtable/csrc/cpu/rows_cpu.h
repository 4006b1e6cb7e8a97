// Row kernels of embtable's compiled CPU extension (declarations).
//
// gather_rows_cpu:      rows weight[ids] as a new [len(ids), D] tensor (prefetched copies).
// pool_bags_cpu:        pooled gather (sum / mean / max, per-sample weights) over bags; ids
//                       and offsets are checked while pooling (RuntimeError when invalid).
// pool_bags_grouped_cpu: the same for feature-major bags, written into the [batch,
//                       num_features * D] concatenated layout of the collections.
// pool_bags_backward_cpu: dense [V, D] weight gradient of sum / mean pooling, accumulated in
//                       place (no [N, D] per-id gradient), in input order per row.
// bucket_ids_cpu:       a collection bucket's ids checked against, and shifted by, their
//                       tables' rows, and the bag offsets of its lengths, in one pass.
// pool_bucket_cpu:      bucket_ids and pool_bags_grouped (sum / mean) fused, for the
//                       collections' forward without autograd: the ids are read once.
// fused_update_rows_cpu: reduce output-gradient contributions per distinct row, then apply
//                        an optimizer update to each touched row and its state, in place.
// The pure-PyTorch twins live in embtable/ops/_fused_reference.py; both must agree to 1e-6.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace embtable {

// Pooling codes shared with Python (embtable.ops._compiled.POOLING).
constexpr int64_t kPoolNone = 0;  // one gradient row per id (Embedding)
constexpr int64_t kPoolSum = 1;
constexpr int64_t kPoolMean = 2;
constexpr int64_t kPoolMax = 3;

// Optimizer codes shared with Python (embtable.ops._compiled.OPTIMIZER).
constexpr int64_t kOptSgd = 0;
constexpr int64_t kOptAdagrad = 1;
constexpr int64_t kOptRowWiseAdagrad = 2;
constexpr int64_t kOptAdam = 3;

// Prefetch the `bytes` starting at `p` (a table row) into cache: rows are scattered across a
// large table, so hiding their cache misses is what makes these kernels fast.  Rows to be
// read go to L2 (prefetcht1), not L1: fewer L1 miss buffers are held, so more rows can be in
// flight (benchmarks/bags.py: the collection forward went from 0.80-0.85 to 0.62-0.63 of the
// torch loop's time with this and the longer distance).  Rows to be written are prefetched
// for writing (prefetchw).
//
// (The empty asm statement keeps the loop: a loop of prefetches has no side effects the
// compiler must keep, and GCC deleted it where `bytes` is not a compile-time constant.)
inline void prefetch_row(const void* p, int64_t bytes, int write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) {
    if (write) {
      __builtin_prefetch(c + o, 1, 3);
    } else {
      __builtin_prefetch(c + o, 0, 2);
    }
    asm volatile("" : : "r"(c + o));
  }
}

std::tuple<at::Tensor, at::Tensor> pool_bags_cpu(
    const at::Tensor& weight,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx);

at::Tensor pool_bags_grouped_cpu(
    const at::Tensor& weight,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    int64_t num_features);

at::Tensor pool_bags_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t num_rows,
    int64_t pooling,
    int64_t padding_idx);

at::Tensor gather_rows_cpu(const at::Tensor& weight, const at::Tensor& ids);

std::tuple<at::Tensor, at::Tensor> bucket_ids_cpu(
    const at::Tensor& values,
    const at::Tensor& lengths,
    const at::Tensor& feature_rows,
    int64_t batch);

at::Tensor pool_bucket_cpu(
    const at::Tensor& weight,
    const at::Tensor& values,
    const at::Tensor& lengths,
    const at::Tensor& feature_rows,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    int64_t batch);

void fused_update_rows_cpu(
    const at::Tensor& weight,
    at::TensorList state,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const at::Tensor& grad,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    bool scale_grad_by_freq,
    int64_t optimizer,
    at::ArrayRef<double> hparams);

}  // namespace embtable
