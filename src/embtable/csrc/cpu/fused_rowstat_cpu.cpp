// Row-wise Adagrad of a column shard whose per-row statistic spans other shards (issue 17).
//
// A column-wise table's shards hold disjoint columns of the same rows; row-wise Adagrad's
// accumulator grows by the mean squared gradient of the WHOLE row.  So the update is split in
// two ops around one all_reduce (embtable/distributed/_synced.py):
//   rowstat_square(weight, rows, grad, weight_decay, mode) -> square
//       the local partial statistic: per distinct row i, sum_j g_eff[i, j]^2 over this shard's
//       columns (g_eff = grad + weight_decay * weight[rows[i]] when decay_mode == 1, L2; else grad);
//   rowstat_rowwise_adagrad_(weight, accumulator, rows, grad, square, full_dim, lr,
//                            weight_decay, mode, eps)
//       the update given the summed statistic:
//       total = accumulator[r] + square[i] / full_dim; accumulator[r] = total;
//       m = lr / (sqrt(total) + eps); c = 1 - m * wd (mode 1), 1 - lr * wd (mode 2), else 1;
//       weight[r] = c * weight[r] - m * grad[i].
// The oracle is ColumnUpdate's Python formula in _synced.py.  Every operation is the float32
// operation the oracle makes, in the same order, and contraction into FMAs is switched off
// below, so the update is bit for bit the oracle's.  The square is summed in 8 lanes, as
// fused_update_cpu.cpp's one-process row-wise Adagrad does (torch's sum(1) adds in another
// order: they agree to a few ulp, not bit for bit).
// Rows are distinct (callers pass torch.unique's rows), so rows are updated in parallel.
//   rowstat_reduce(ids, offsets, grad, per_sample_weights, num_rows, pooling, padding_idx)
//       -> (rows, summed): the distinct non-padding rows of sum / mean bags and each row's
//       summed gradient, contributions added in input order (pool_bags_backward's factors:
//       1 / bag size in float64 for a mean, times the per-sample weight), in one call
//       (first contributions written as 0 + t: no zeroed result first; rows prefetched).
//       Since session 6 it runs rowstat_reduce_strided's kernel (rowstat_strided_cpu.cpp) on
//       grad[None]; no library code calls it (bag_rows takes rowstat_reduce_strided).
//   rowstat_distinct(ids, num_rows) -> (rows, inverse)
//       torch.unique(ids, sorted=True, return_inverse=True) by a mark per table row (for
//       tables of at most a few rows per id: one pass over the ids, one over the marks).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "rowstat_distinct.h"

#pragma GCC optimize("fp-contract=off")

namespace embtable {
namespace {

constexpr int64_t kAhead = 8;  // prefetch distance in rows

void check_rows(const char* api, const at::Tensor& weight, const at::Tensor& rows,
                const at::Tensor& grad) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
                  weight.is_contiguous(),
              api, ": weight must be a contiguous 2-D float32 CPU tensor, got ", weight.scalar_type(),
              " of shape ", weight.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1, api,
              ": rows must be a 1-D int64 tensor, got ", rows.scalar_type(), " of shape ", rows.sizes());
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2 && grad.size(0) == rows.size(0) &&
                  grad.size(1) == weight.size(1),
              api, ": grad must be float32 of shape [", rows.size(0), ", ", weight.size(1), "], got ",
              grad.scalar_type(), " of shape ", grad.sizes());
  const int64_t n = weight.size(0);
  const at::Tensor r = rows.contiguous();
  const int64_t* p = r.data_ptr<int64_t>();
  for (int64_t i = 0; i < r.numel(); ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < n, api, ": row ", p[i], " at position ", i,
                      " is outside the table's ", n, " rows");
  }
}

at::Tensor rowstat_square_cpu(const at::Tensor& weight, const at::Tensor& rows, const at::Tensor& grad,
                              double weight_decay, int64_t decay_mode) {
  constexpr const char* kApi = "embtable::rowstat_square";
  check_rows(kApi, weight, rows, grad);
  const at::Tensor r = rows.contiguous();
  const at::Tensor g = grad.contiguous();
  const int64_t u = r.size(0), d = weight.size(1);
  at::Tensor out = at::empty({u}, grad.options());
  const int64_t* rp = r.data_ptr<int64_t>();
  const float* gp = g.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float wd = static_cast<float>(weight_decay);
  const bool l2 = decay_mode == 1;
  at::parallel_for(0, u, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* gi = gp + i * d;
      const float* wi = wp + rp[i] * d;
      // summed in 8 interleaved lanes (vectorisable), combined as fused_update_cpu.cpp's
      // rowwise_adagrad_row does: one shard holding every column gets its square
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      if (l2) {
        for (; j + 8 <= d; j += 8) {
          for (int k = 0; k < 8; ++k) {
            const float t = wd * wi[j + k];
            const float e = gi[j + k] + t;
            const float sq = e * e;
            lanes[k] = lanes[k] + sq;
          }
        }
        for (; j < d; ++j) {
          const float t = wd * wi[j];
          const float e = gi[j] + t;
          const float sq = e * e;
          lanes[0] = lanes[0] + sq;
        }
      } else {
        for (; j + 8 <= d; j += 8) {
          for (int k = 0; k < 8; ++k) {
            const float sq = gi[j + k] * gi[j + k];
            lanes[k] = lanes[k] + sq;
          }
        }
        for (; j < d; ++j) {
          const float sq = gi[j] * gi[j];
          lanes[0] = lanes[0] + sq;
        }
      }
      const float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                      ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
      op[i] = s;
    }
  });
  return out;
}

void rowstat_rowwise_adagrad_cpu(const at::Tensor& weight, const at::Tensor& accumulator,
                                 const at::Tensor& rows, const at::Tensor& grad, const at::Tensor& square,
                                 int64_t full_dim, double lr, double weight_decay, int64_t decay_mode,
                                 double eps) {
  constexpr const char* kApi = "embtable::rowstat_rowwise_adagrad_";
  check_rows(kApi, weight, rows, grad);
  TORCH_CHECK(accumulator.scalar_type() == at::kFloat && accumulator.is_contiguous() &&
                  accumulator.numel() == weight.size(0),
              kApi, ": accumulator must be a contiguous float32 tensor of ", weight.size(0),
              " elements, got ", accumulator.scalar_type(), " of shape ", accumulator.sizes());
  TORCH_CHECK(square.scalar_type() == at::kFloat && square.dim() == 1 && square.size(0) == rows.size(0),
              kApi, ": square must be a 1-D float32 tensor of ", rows.size(0), " elements, got ",
              square.scalar_type(), " of shape ", square.sizes());
  TORCH_CHECK(full_dim > 0, kApi, ": full_dim must be positive, got ", full_dim);
  const at::Tensor r = rows.contiguous();
  const at::Tensor g = grad.contiguous();
  const at::Tensor sq = square.contiguous();
  const int64_t u = r.size(0), d = weight.size(1);
  const int64_t* rp = r.data_ptr<int64_t>();
  const float* gp = g.data_ptr<float>();
  const float* sp = sq.data_ptr<float>();
  float* wp = weight.data_ptr<float>();
  float* ap = accumulator.data_ptr<float>();
  const float lr_f = static_cast<float>(lr), wd_f = static_cast<float>(weight_decay);
  const float eps_f = static_cast<float>(eps), dim_f = static_cast<float>(full_dim);
  const float decay = 1.0f - lr_f * wd_f;
  at::parallel_for(0, u, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kAhead < end) {  // the table rows a few distinct rows ahead (random reads)
        const float* ahead = wp + rp[i + kAhead] * d;
        for (int64_t j = 0; j < d; j += 16) __builtin_prefetch(ahead + j, 1);
        __builtin_prefetch(ap + rp[i + kAhead], 1);
      }
      const int64_t row = rp[i];
      const float mean = sp[i] / dim_f;
      const float total = ap[row] + mean;
      ap[row] = total;
      const float denom = std::sqrt(total) + eps_f;
      const float m = lr_f / denom;
      float c = 1.0f;
      if (decay_mode == 1) {
        const float mw = m * wd_f;
        c = 1.0f - mw;
      } else if (decay_mode == 2) {
        c = decay;
      }
      float* wi = wp + row * d;
      const float* gi = gp + i * d;
      for (int64_t j = 0; j < d; ++j) {
        const float a = c * wi[j];
        const float b = m * gi[j];
        wi[j] = a - b;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rowstat_distinct_cpu(const at::Tensor& ids, int64_t num_rows) {
  constexpr const char* kApi = "embtable::rowstat_distinct";
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == at::kLong && ids.dim() == 1, kApi,
              ": ids must be a 1-D int64 CPU tensor, got ", ids.scalar_type(), " of shape ", ids.sizes());
  const at::Tensor c = ids.contiguous();
  const int64_t n = c.numel();
  const int64_t* ip = c.data_ptr<int64_t>();
  rowstat::Distinct distinct =
      rowstat::distinct_by_marks(kApi, ip, n, num_rows, -1, c.options());
  at::Tensor inverse = at::empty({n}, c.options());
  int64_t* vp = inverse.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) vp[i] = distinct.position[ip[i]];
  return {distinct.rows, inverse};
}

std::tuple<at::Tensor, at::Tensor> rowstat_reduce_cpu(
    const at::Tensor& ids, const at::Tensor& offsets, const at::Tensor& grad_in,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows, int64_t pooling,
    int64_t padding_idx) {
  constexpr const char* kApi = "embtable::rowstat_reduce";
  const int64_t bags = std::max<int64_t>(offsets.numel() - 1, 0);
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat && grad_in.dim() == 2 && grad_in.size(0) == bags,
              kApi, ": grad must be float32 of shape [", bags, ", D], got ", grad_in.scalar_type(),
              " of shape ", grad_in.sizes());
  // the [F, nb, D] kernel with one feature: the same sums, bit for bit (rowstat_strided_cpu.cpp)
  return rowstat::reduce_feature_bags(kApi, ids, offsets, grad_in.unsqueeze(0),
                                      per_sample_weights, num_rows, pooling, padding_idx);
}

}  // namespace
}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def("rowstat_distinct(Tensor ids, int num_rows) -> (Tensor, Tensor)");
  m.def(
      "rowstat_reduce(Tensor ids, Tensor offsets, Tensor grad, Tensor? per_sample_weights, "
      "int num_rows, int pooling, int padding_idx) -> (Tensor, Tensor)");
  m.def("rowstat_square(Tensor weight, Tensor rows, Tensor grad, float weight_decay, int decay_mode) -> Tensor");
  m.def(
      "rowstat_rowwise_adagrad_(Tensor(a!) weight, Tensor(b!) accumulator, Tensor rows, Tensor grad, "
      "Tensor square, int full_dim, float lr, float weight_decay, int decay_mode, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("rowstat_distinct", &embtable::rowstat_distinct_cpu);
  m.impl("rowstat_reduce", &embtable::rowstat_reduce_cpu);
  m.impl("rowstat_square", &embtable::rowstat_square_cpu);
  m.impl("rowstat_rowwise_adagrad_", &embtable::rowstat_rowwise_adagrad_cpu);
}
