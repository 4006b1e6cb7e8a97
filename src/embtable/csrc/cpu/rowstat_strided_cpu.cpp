// Column shards' gradient reduction read in place from the example-major gradient (issue 17).
//
//   rowstat_reduce_strided(ids, offsets, grad, per_sample_weights, num_rows, pooling,
//                          padding_idx) -> (rows, summed)
//       rowstat_reduce (fused_rowstat_cpu.cpp) of bags whose gradient is a 3-D view
//       grad[F, nb, D] with any strides but a unit last one: bag k = f * nb + b reads
//       grad[f, b].  A column collection pools its bags example-major ([nb, F * D], the
//       layout its rows are sent in), so its gradient arrives example-major too; reading it
//       through the transposed view grad.view(nb, F, D).transpose(0, 1) drops the
//       feature-major copy rowstat_reduce needs.  Same result, bit for bit: the distinct
//       non-padding rows (sorted) and each row's summed gradient, contributions added in
//       input order (a row's first contribution written as 0 + t), mean bags scaled by
//       1 / (non-padding size) computed in float64, per-sample weights as rowstat_reduce.
//       Rows are found by a byte mark per table row (one pass over the ids, one over the
//       marks); a row's first contribution is chosen without a branch (a select of the
//       zero row), and D = 32 / 64 rows run a loop of compile-time length.
// The oracle is embtable/distributed/_rowstat.py::reference_bag_rows on the feature-major
// copy of the gradient.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "rowstat_distinct.h"

#pragma GCC optimize("fp-contract=off")

namespace embtable {
namespace {

constexpr int64_t kAhead = 8;  // prefetch distance in ids
constexpr int64_t kBagsAhead = 16;  // prefetch distance of the gradient, in bags

// y[j] = base[j] + g[j] * f (scaled) or base[j] + g[j]; base is y or a zero row
template <int64_t D, bool kScaled>
inline void add_row(float* y, const float* base, const float* __restrict g, float f,
                    int64_t d) {
  const int64_t n = D > 0 ? D : d;
  for (int64_t j = 0; j < n; ++j) {
    if constexpr (kScaled) {
      const float t = g[j] * f;
      y[j] = base[j] + t;
    } else {
      y[j] = base[j] + g[j];
    }
  }
}

template <int64_t D, bool kScaled>
void reduce_bags(const int64_t* ip, const int64_t* op, const float* gp, int64_t features,
                 int64_t nb, int64_t stride_f, int64_t stride_b, int64_t d, const float* pp,
                 int64_t pooling, int64_t padding_idx, const int32_t* position, float* yp,
                 uint8_t* sp, const float* zero, int64_t n) {
  for (int64_t f = 0; f < features; ++f) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k = f * nb + b;
      const int64_t lo = op[k], hi = op[k + 1];
      double inverse = 1.0;
      if (pooling == 2) {
        int64_t size = 0;
        for (int64_t i = lo; i < hi; ++i) size += ip[i] != padding_idx;
        inverse = 1.0 / static_cast<double>(std::max<int64_t>(size, 1));
      }
      const float mean_scale = static_cast<float>(inverse);
      const float* g = gp + f * stride_f + b * stride_b;
      if (b + kBagsAhead < nb) {  // (strided bags: no hardware prefetch across pages)
        const char* next = reinterpret_cast<const char*>(g + kBagsAhead * stride_b);
        for (int64_t line = 0; line < d * 4; line += 64) __builtin_prefetch(next + line, 0);
      }
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kAhead < n && ip[i + kAhead] != padding_idx) {
          __builtin_prefetch(yp + static_cast<int64_t>(position[ip[i + kAhead]]) * d, 1);
        }
        const int64_t id = ip[i];
        if (id == padding_idx) continue;
        const int64_t p = position[id];
        float* y = yp + p * d;
        float scale = 1.0f;
        if constexpr (kScaled) {
          if (pp != nullptr) {
            scale = pooling == 2 ? static_cast<float>(static_cast<double>(pp[i]) * inverse) : pp[i];
          } else {
            scale = mean_scale;
          }
        }
        const float* base = sp[p] ? y : zero;  // (a select: first contributions are random)
        sp[p] = 1;
        add_row<D, kScaled>(y, base, g, scale, d);
      }
    }
  }
}

template <bool kScaled>
void reduce_dispatch(int64_t d, const int64_t* ip, const int64_t* op, const float* gp,
                     int64_t features, int64_t nb, int64_t stride_f, int64_t stride_b,
                     const float* pp, int64_t pooling, int64_t padding_idx,
                     const int32_t* position, float* yp, uint8_t* sp, const float* zero,
                     int64_t n) {
  if (d == 32) {
    reduce_bags<32, kScaled>(ip, op, gp, features, nb, stride_f, stride_b, d, pp, pooling,
                             padding_idx, position, yp, sp, zero, n);
  } else if (d == 64) {
    reduce_bags<64, kScaled>(ip, op, gp, features, nb, stride_f, stride_b, d, pp, pooling,
                             padding_idx, position, yp, sp, zero, n);
  } else {
    reduce_bags<0, kScaled>(ip, op, gp, features, nb, stride_f, stride_b, d, pp, pooling,
                            padding_idx, position, yp, sp, zero, n);
  }
}

}  // namespace

namespace rowstat {

std::tuple<at::Tensor, at::Tensor> reduce_feature_bags(
    const char* kApi, const at::Tensor& ids, const at::Tensor& offsets, const at::Tensor& grad,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows, int64_t pooling,
    int64_t padding_idx) {
  TORCH_CHECK(pooling == 1 || pooling == 2, kApi, ": pooling must be 1 (sum) or 2 (mean), got ",
              pooling);
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == at::kLong && ids.dim() == 1 &&
                  offsets.device().is_cpu() && offsets.scalar_type() == at::kLong &&
                  offsets.dim() == 1,
              kApi, ": ids and offsets must be 1-D int64 CPU tensors, got ", ids.scalar_type(),
              " ", ids.sizes(), " and ", offsets.scalar_type(), " ", offsets.sizes());
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kFloat && grad.dim() == 3, kApi,
              ": grad must be a float32 CPU tensor [features, bags per feature, D], got ",
              grad.scalar_type(), " of shape ", grad.sizes());
  TORCH_CHECK(num_rows >= 0 && num_rows < (int64_t{1} << 31), kApi,
              ": num_rows must be in [0, 2^31), got ", num_rows);
  const int64_t features = grad.size(0), nb = grad.size(1), d = grad.size(2);
  const int64_t bags = features * nb;
  TORCH_CHECK(offsets.numel() == bags + 1 || (bags == 0 && offsets.numel() <= 1), kApi,
              ": offsets must hold ", bags + 1, " entries (one bag per feature and bag of grad ",
              grad.sizes(), "), got ", offsets.numel());
  // (a unit last stride; a one-column grad may report any)
  const at::Tensor g3 = grad.stride(2) == 1 || d <= 1 ? grad : grad.contiguous();
  const at::Tensor c = ids.contiguous(), o = offsets.contiguous();
  const int64_t n = c.numel();
  const int64_t* ip = c.data_ptr<int64_t>();
  const int64_t* op = o.data_ptr<int64_t>();
  TORCH_CHECK(bags == 0 ? n == 0 : (op[0] == 0 && op[bags] == n), kApi,
              ": offsets must run from 0 to ", n);
  for (int64_t k = 0; k < bags; ++k) {
    TORCH_CHECK(op[k] <= op[k + 1], kApi, ": offsets must not decrease (bag ", k, ")");
  }
  const float* pp = nullptr;
  at::Tensor psw;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    psw = per_sample_weights->contiguous();
    TORCH_CHECK(psw.device().is_cpu() && psw.scalar_type() == at::kFloat && psw.numel() == n,
                kApi, ": per_sample_weights must be float32 with one weight per id (", n,
                "), got ", psw.scalar_type(), " of shape ", psw.sizes());
    pp = psw.data_ptr<float>();
  }
  // distinct rows by a byte mark per table row (range-checked first: nothing is written
  // outside this call before a bad id raises)
  const rowstat::Distinct distinct =
      rowstat::distinct_by_marks(kApi, ip, n, num_rows, padding_idx, c.options());
  const int32_t* position = distinct.position.get();
  const at::Tensor rows = distinct.rows;
  const int64_t count = rows.numel();
  at::Tensor out = at::empty({count, d}, g3.options().memory_format(at::MemoryFormat::Contiguous));
  if (count == 0 || d == 0) return {rows, out};
  std::vector<uint8_t> seen(static_cast<size_t>(count), 0);
  std::vector<float> zero(static_cast<size_t>(d), 0.0f);
  const float* gp = g3.data_ptr<float>();
  const bool scaled = pp != nullptr || pooling == 2;
  if (scaled) {
    reduce_dispatch<true>(d, ip, op, gp, features, nb, g3.stride(0), g3.stride(1), pp, pooling,
                          padding_idx, position, out.data_ptr<float>(), seen.data(),
                          zero.data(), n);
  } else {
    reduce_dispatch<false>(d, ip, op, gp, features, nb, g3.stride(0), g3.stride(1), pp, pooling,
                           padding_idx, position, out.data_ptr<float>(), seen.data(),
                           zero.data(), n);
  }
  return {rows, out};
}

}  // namespace rowstat

namespace {

std::tuple<at::Tensor, at::Tensor> rowstat_reduce_strided_cpu(
    const at::Tensor& ids, const at::Tensor& offsets, const at::Tensor& grad,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows, int64_t pooling,
    int64_t padding_idx) {
  return rowstat::reduce_feature_bags("embtable::rowstat_reduce_strided", ids, offsets, grad,
                                      per_sample_weights, num_rows, pooling, padding_idx);
}

}  // namespace
}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def(
      "rowstat_reduce_strided(Tensor ids, Tensor offsets, Tensor grad, Tensor? per_sample_weights, "
      "int num_rows, int pooling, int padding_idx) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("rowstat_reduce_strided", &embtable::rowstat_reduce_strided_cpu);
}
