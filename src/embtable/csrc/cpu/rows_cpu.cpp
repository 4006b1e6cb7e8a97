// Row kernels of embtable's compiled CPU extension: the row gather of Embedding, the pooled
// gather over bags (and its feature-major variant for the collections), its dense backward,
// and the bucketing of a collection's ids.  float32 tables only; the Python dispatcher (embtable.ops._compiled)
// routes every other case to the pure-PyTorch reference.  The fused optimizer update lives in
// fused_update_cpu.cpp.

#include "rows_cpu.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace embtable {
namespace {

constexpr int64_t kPrefetchDistance = 24;  // ids ahead, in the gathers

// The pooled gather prefetches only the first cache line of the row `ahead` ids on, into
// L1 (prefetcht0), and leaves the row's other lines to the hardware prefetchers that this
// first access starts.  A software prefetch holds one of the core's few L1 miss buffers
// until its line arrives; prefetching every line of the row (into L2 for D >= 64) put most
// perf samples of the loop on the prefetch instructions.  Issue 11, one process alternating
// the two kernels (one thread, 4 KiB pages, the shared 2-core Xeon VM at load ~5-7): one line
// took 0.89-0.97x the time of every line at D = 32 .. 256 (sum; at D = 64 also mean and
// weighted sum), 1.00-1.01x at D = 16 and for the 26-table collection.  Rows of at most two lines (D <= 32) go further ahead: each
// id costs less time, so the same lead takes more ids.
constexpr int64_t kShortRowPrefetchDistance = 48;
// In the collections' [batch, num_features * D] layout each bag's row block lies one output row
// (num_features * D floats) past the previous bag's, so no hardware prefetcher predicts it and
// every line of it is a read-for-ownership miss when the bag's sum is stored.  The pooled loop
// prefetches the block of the bag kOutputAhead bags on for writing.  Issue 11 (s4 D), one
// process alternating the kernels (benchmarks/pool_kernel_ab.py --new-source, the 26-table
// collection, one thread, load 2-4): 0.87-1.00x the time without (median 0.96) for the grouped
// pooling, both page sizes; 4 bags ahead 0.94-1.00x, 1 bag 0.98-1.01x.
constexpr int64_t kOutputAhead = 2;
template <int64_t kD>
inline void prefetch_pooled_row(const float* row) {
  __builtin_prefetch(row, 0, 3);
  asm volatile("" : : "r"(row));
}

// Where bag b's pooled row goes: row b of a [num_bags, D] output (num_features == 1), or,
// for bags ordered feature-major (bag f * batch + e is example e of feature f), the column
// block f of row e of a [batch, num_features * D] output (the collections' concatenated layout).
struct OutLayout {
  int64_t batch;         // bags per feature
  int64_t row_stride;    // floats per output row
  int64_t block_stride;  // floats between the blocks of consecutive features
  float* at(float* Y, int64_t b) const {
    return Y + (b % batch) * row_stride + (b / batch) * block_stride;
  }
};

// Sum / mean pooling for a row size known at compile time: the bag's running sum stays in
// registers and is stored once per bag.  Ids outside [0, V) are skipped and reported (bad).
// kBucket (pool_bucket_cpu): I holds a collection bucket's raw ids; bag b belongs to feature
// f = b / batch, whose ids must lie in [0, R[2f + 1]) and are shifted by R[2f] into the grouped
// table W, so that the ids are read once, here, instead of once by bucket_ids (which writes a
// shifted copy) and once more by this loop.
template <int64_t kD, bool kWeighted, bool kBucket>
int pool_sum_fixed_impl(const float* W, int64_t V, const int64_t* I, const int64_t* O,
                        const int64_t* R, const float* P, float* Y, const OutLayout& layout,
                        int64_t num_bags, int64_t num_features, int64_t padding_idx, bool mean) {
  const int64_t total = O[num_bags];
  constexpr int64_t ahead = kD <= 32 ? kShortRowPrefetchDistance : kPrefetchDistance;
  // Columns per pass over a bag's ids: at most 128 floats, so that the accumulator stays in
  // registers (a 256-float one spills).  Wider rows take several passes; the first prefetches
  // whole rows, so the later passes read them from cache (issue 11: D = 256 went from 1.56x
  // to 0.95x torch's time, scratch kernel, one thread, 4 KiB pages, load ~10).
  constexpr int64_t kC = kD < 128 ? kD : 128;
  static_assert(kD % kC == 0);
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t b = 0; b < num_bags; ++b) {
    int64_t shift = 0, next_shift = 0, feature_end = total;
    uint64_t rows = static_cast<uint64_t>(V);
    if constexpr (kBucket) {
      const int64_t f = b / layout.batch;
      shift = R[2 * f];
      rows = static_cast<uint64_t>(R[2 * f + 1]);
      // the id `ahead` on may belong to the next feature: prefetch it with that one's shift
      feature_end = O[(f + 1) * layout.batch];
      next_shift = f + 1 < num_features ? R[2 * f + 2] : shift;
    }
    float* __restrict__ y = layout.at(Y, b);
    if (num_features > 1 && b + kOutputAhead < num_bags) {  // see kOutputAhead
      float* z = layout.at(Y, b + kOutputAhead);
      for (int64_t o = 0; o < kD; o += 16) __builtin_prefetch(z + o, 1, 3);
    }
    for (int64_t c = 0; c < kD; c += kC) {
      float acc[kC] = {};
      int64_t count = 0;
      for (int64_t i = O[b]; i < O[b + 1]; ++i) {
        // (a bad id ahead only prefetches a wild address, which never faults)
        if (c == 0 && i + ahead < total) {
          const int64_t s = kBucket && i + ahead >= feature_end ? next_shift : shift;
          prefetch_pooled_row<kD>(W + (I[i + ahead] + s) * kD);
        }
        const int64_t raw = I[i];
        if (static_cast<uint64_t>(raw) >= rows) {
          bad = 1;
          continue;
        }
        const int64_t id = raw + shift;
        if (id == padding_idx) continue;
        const float* __restrict__ w = W + id * kD + c;
        if constexpr (kWeighted) {
          const float s = P[i];
          for (int64_t d = 0; d < kC; ++d) acc[d] += s * w[d];
        } else {
          for (int64_t d = 0; d < kC; ++d) acc[d] += w[d];
        }
        ++count;
      }
      if (mean && count > 0) {
        const float n = static_cast<float>(count);
        for (int64_t d = 0; d < kC; ++d) y[c + d] = acc[d] / n;
      } else {
        for (int64_t d = 0; d < kC; ++d) y[c + d] = acc[d];
      }
    }
  }
  return bad;
}

// The weighted and unweighted loops (and the bucket's raw-id loop, R != nullptr) compiled
// apart: no per-id branch in the hot loop.
template <int64_t kD>
int pool_sum_fixed(const float* W, int64_t V, const int64_t* I, const int64_t* O,
                   const int64_t* R, const float* P, float* Y, const OutLayout& layout,
                   int64_t num_bags, int64_t num_features, int64_t padding_idx, bool mean) {
  if (R != nullptr) {
    return P != nullptr ? pool_sum_fixed_impl<kD, true, true>(W, V, I, O, R, P, Y, layout, num_bags,
                                                              num_features, padding_idx, mean)
                        : pool_sum_fixed_impl<kD, false, true>(W, V, I, O, R, P, Y, layout, num_bags,
                                                               num_features, padding_idx, mean);
  }
  return P != nullptr ? pool_sum_fixed_impl<kD, true, false>(W, V, I, O, R, P, Y, layout, num_bags,
                                                             num_features, padding_idx, mean)
                      : pool_sum_fixed_impl<kD, false, false>(W, V, I, O, R, P, Y, layout, num_bags,
                                                              num_features, padding_idx, mean);
}

// Row sizes with a compiled sum / mean loop (pool_sum_fixed).
inline bool fixed_row_size(int64_t D) {
  return D == 16 || D == 32 || D == 64 || D == 128 || D == 256;
}

// pool_sum_fixed for the row size D, one of fixed_row_size's.
int pool_sum_fixed_any(int64_t D, const float* W, int64_t V, const int64_t* I, const int64_t* O,
                       const int64_t* R, const float* P, float* Y, const OutLayout& layout,
                       int64_t num_bags, int64_t num_features, int64_t padding_idx, bool mean) {
  switch (D) {
    case 16: return pool_sum_fixed<16>(W, V, I, O, R, P, Y, layout, num_bags, num_features, padding_idx, mean);
    case 32: return pool_sum_fixed<32>(W, V, I, O, R, P, Y, layout, num_bags, num_features, padding_idx, mean);
    case 64: return pool_sum_fixed<64>(W, V, I, O, R, P, Y, layout, num_bags, num_features, padding_idx, mean);
    case 128: return pool_sum_fixed<128>(W, V, I, O, R, P, Y, layout, num_bags, num_features, padding_idx, mean);
    case 256: return pool_sum_fixed<256>(W, V, I, O, R, P, Y, layout, num_bags, num_features, padding_idx, mean);
    default: TORCH_CHECK(false, "pool_sum_fixed_any: no compiled loop for rows of ", D);
  }
  return 0;
}

// The bag offsets of a bucket's feature-major lengths (F * batch + 1 of them, written to O),
// each length checked to fit in what is left of the n values; `api` names the caller.
void bucket_offsets(const int64_t* L, int64_t count, int64_t n, int64_t* O, const char* api) {
  int64_t total = 0;
  O[0] = 0;
  for (int64_t j = 0; j < count; ++j) {
    // never trust the lengths: each must fit in what is left of the values (so no sum wraps)
    TORCH_CHECK(L[j] >= 0 && L[j] <= n - total, api, ": lengths[", j, "] = ", L[j],
                " is negative or runs past the ", n, " values");
    total += L[j];
    O[j + 1] = total;
  }
  TORCH_CHECK(total == n, api, ": lengths (sum ", total, ") do not match ", n, " values");
}

// Bag boundaries must start at 0, never decrease and end within the ids: checked before any
// row is read, so that a bad call reads nothing out of bounds (Python then raises the
// precise ValueError from its own checks).
void check_bounds(const int64_t* O, int64_t num_bounds, int64_t num_ids, const char* api) {
  bool ok = num_bounds == 0 || O[0] == 0;
  for (int64_t b = 0; ok && b + 1 < num_bounds; ++b) ok = O[b] <= O[b + 1];
  ok = ok && (num_bounds == 0 || O[num_bounds - 1] <= num_ids);
  TORCH_CHECK(ok, api, ": invalid bag offsets (expected 0 first, non-decreasing, at most ",
              num_ids, ")");
}

// The pooled gather behind pool_bags (num_features == 1) and pool_bags_grouped.
std::tuple<at::Tensor, at::Tensor> pool_bags_impl(
    const at::Tensor& weight_in,
    const at::Tensor& ids_in,
    const at::Tensor& offsets_in,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    int64_t num_features,
    const char* api) {
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.scalar_type() == at::kFloat,
              api, ": weight must be a 2-D float32 tensor, got ",
              weight_in.scalar_type(), " of shape ", weight_in.sizes());
  TORCH_CHECK(pooling == kPoolSum || pooling == kPoolMean || pooling == kPoolMax,
              api, ": pooling must be 1 (sum), 2 (mean) or 3 (max), got ", pooling);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const at::Tensor offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t num_bags = std::max<int64_t>(offsets.numel() - 1, 0);
  const int64_t V = weight.size(0);
  const int64_t D = weight.size(1);
  TORCH_CHECK(num_features >= 1 && num_bags % num_features == 0, api, ": ", num_bags,
              " bags do not split into ", num_features, " features");
  const int64_t* O = offsets.data_ptr<int64_t>();
  check_bounds(O, offsets.numel(), ids.numel(), api);
  const float* P = nullptr;
  at::Tensor psw;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
    TORCH_CHECK(psw.numel() == ids.numel(), api, ": per_sample_weights has ", psw.numel(),
                " values for ", ids.numel(), " ids");
    P = psw.data_ptr<float>();
  }
  const int64_t batch = num_bags / num_features;
  const OutLayout layout{std::max<int64_t>(batch, 1), num_features * D, D};
  const bool fixed = pooling != kPoolMax && fixed_row_size(D);
  at::Tensor out = num_features == 1 ? (fixed ? at::empty({num_bags, D}, weight.options())
                                              : at::zeros({num_bags, D}, weight.options()))
                                     : (fixed ? at::empty({batch, num_features * D}, weight.options())
                                              : at::zeros({batch, num_features * D}, weight.options()));
  at::Tensor max_ids = pooling == kPoolMax ? at::full({num_bags, D}, -1, ids.options())
                                           : at::empty({0}, ids.options());
  const float* W = weight.data_ptr<float>();
  const int64_t* I = ids.data_ptr<int64_t>();
  float* Y = out.data_ptr<float>();
  int64_t* M = pooling == kPoolMax ? max_ids.data_ptr<int64_t>() : nullptr;
  const int64_t total = O[num_bags];
  int bad = 0;
  if (fixed) {
    bad = pool_sum_fixed_any(D, W, V, I, O, nullptr, P, Y, layout, num_bags, num_features,
                             padding_idx, pooling == kPoolMean);
  } else {
    // One loop per mode, so that each inner loop is a plain vectorizable row operation.
    auto pool = [&](auto mode_tag, bool weighted) {
      constexpr int64_t mode = decltype(mode_tag)::value;
      int found_bad = 0;
#pragma omp parallel for schedule(static) reduction(| : found_bad)
      for (int64_t b = 0; b < num_bags; ++b) {
        float* __restrict__ y = layout.at(Y, b);
        int64_t* __restrict__ mi = mode == kPoolMax ? M + b * D : nullptr;
        int64_t count = 0;
        for (int64_t i = O[b]; i < O[b + 1]; ++i) {
          if (i + kPrefetchDistance < total) prefetch_row(W + I[i + kPrefetchDistance] * D, D * 4, 0);
          const int64_t id = I[i];
          if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
            found_bad = 1;
            continue;
          }
          if (id == padding_idx) continue;
          const float* __restrict__ w = W + id * D;
          if constexpr (mode == kPoolMax) {
            if (count == 0) {
              for (int64_t d = 0; d < D; ++d) {
                y[d] = w[d];
                mi[d] = id;
              }
            } else {
              for (int64_t d = 0; d < D; ++d) {
                if (w[d] > y[d]) {  // as torch: ties and later NaNs keep the first value
                  y[d] = w[d];
                  mi[d] = id;
                }
              }
            }
          } else {
            if (weighted) {
              const float c = P[i];
              for (int64_t d = 0; d < D; ++d) y[d] += c * w[d];
            } else {
              for (int64_t d = 0; d < D; ++d) y[d] += w[d];
            }
          }
          ++count;
        }
        if (mode == kPoolMean && count > 0) {
          const float n = static_cast<float>(count);
          for (int64_t d = 0; d < D; ++d) y[d] = y[d] / n;
        }
      }
      return found_bad;
    };
    if (pooling == kPoolMax) {
      bad = pool(std::integral_constant<int64_t, kPoolMax>{}, false);
    } else if (pooling == kPoolMean) {
      bad = pool(std::integral_constant<int64_t, kPoolMean>{}, P != nullptr);
    } else {
      bad = pool(std::integral_constant<int64_t, kPoolSum>{}, P != nullptr);
    }
  }
  TORCH_CHECK(!bad, api, ": an id lies outside the table of ", V, " rows");
  return {out, max_ids};
}

// A zeroed [rows, D] float32 tensor.  A big one (>= kLazyZeroBytes) is a fresh anonymous
// mapping, whose pages the OS zeroes when first touched (`lazy` says which one it is): the
// dense gradients of large tables are mostly rows no id touched, and at::zeros wrote every
// page of them (a page fault and a cleared page per 4 KiB, then zeros written again by the
// fill).  Untouched pages read as zeros (the shared zero page).  Issue 11: this fill was most
// of the 26-table collection's dense fwd+bwd (2.7M rows, 690 MB) and the part that scaled
// worst to two threads.
constexpr int64_t kLazyZeroBytes = 32 << 20;  // glibc mmaps blocks this big anyway
constexpr int64_t kPageBytes = 4096;
struct Mapping {
  void* base;
  size_t bytes;
};
void unmap_mapping(void* context) {
  auto* mapping = static_cast<Mapping*>(context);
  munmap(mapping->base, mapping->bytes);
  delete mapping;
}
at::Tensor zeroed_rows(int64_t rows, int64_t D, const at::TensorOptions& options, bool& lazy) {
  const int64_t bytes = rows * D * static_cast<int64_t>(sizeof(float));
  lazy = false;
  if (bytes < kLazyZeroBytes) return at::zeros({rows, D}, options);
  void* p = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return at::zeros({rows, D}, options);
  lazy = true;
  // A resizable storage with the default CPU allocator, as at::zeros gives: `grad.resize_` to a
  // bigger shape reallocates (and unmaps this mapping) instead of failing.
  auto* mapping = new Mapping{p, static_cast<size_t>(bytes)};
  c10::DataPtr data(p, mapping, &unmap_mapping, at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(data),
                       c10::GetDefaultCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(storage, 0, {rows, D}, {D, 1});
}

// Fault in, writable, the pages [first, last] of `base` that `touched` marks, one madvise per
// run of marked pages: the first `+=` into a fresh page would otherwise fault twice (a read
// fault mapping the zero page, then a write fault copying it), one trap per page each time.
void populate_touched(char* base, const std::vector<uint8_t>& touched, int64_t first, int64_t last) {
#ifdef MADV_POPULATE_WRITE
  for (int64_t p = first; p <= last;) {
    if (!touched[p]) {
      ++p;
      continue;
    }
    int64_t q = p;
    while (q + 1 <= last && touched[q + 1]) ++q;
    // (a failure, e.g. a kernel before 5.14, leaves the pages to be faulted in one by one)
    madvise(base + p * kPageBytes, static_cast<size_t>((q - p + 1) * kPageBytes), MADV_POPULATE_WRITE);
    p = q + 1;
  }
#else
  (void)base, (void)touched, (void)first, (void)last;
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pool_bags_cpu(
    const at::Tensor& weight,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx) {
  return pool_bags_impl(weight, ids, offsets, per_sample_weights, pooling, padding_idx, 1,
                        "embtable::pool_bags");
}

at::Tensor pool_bags_grouped_cpu(
    const at::Tensor& weight,
    const at::Tensor& ids,
    const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    int64_t num_features) {
  TORCH_CHECK(pooling == kPoolSum || pooling == kPoolMean,
              "embtable::pool_bags_grouped: pooling must be 1 (sum) or 2 (mean), got ", pooling);
  return std::get<0>(pool_bags_impl(weight, ids, offsets, per_sample_weights, pooling,
                                    padding_idx, num_features, "embtable::pool_bags_grouped"));
}

at::Tensor pool_bags_backward_cpu(
    const at::Tensor& grad_in,
    const at::Tensor& ids_in,
    const at::Tensor& offsets_in,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t num_rows,
    int64_t pooling,
    int64_t padding_idx) {
  const char* api = "embtable::pool_bags_backward";
  TORCH_CHECK(pooling == kPoolSum || pooling == kPoolMean, api,
              ": pooling must be 1 (sum) or 2 (mean), got ", pooling);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.scalar_type() == at::kFloat, api,
              ": grad must be a 2-D float32 tensor, got ", grad_in.scalar_type(), " of shape ",
              grad_in.sizes());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const at::Tensor offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t num_bags = std::max<int64_t>(offsets.numel() - 1, 0);
  const int64_t D = grad.size(1);
  TORCH_CHECK(grad.size(0) == num_bags, api, ": grad has ", grad.size(0), " rows for ", num_bags,
              " bags");
  const int64_t* O = offsets.data_ptr<int64_t>();
  check_bounds(O, offsets.numel(), ids.numel(), api);
  const int64_t* I = ids.data_ptr<int64_t>();
  at::Tensor psw;
  const float* P = nullptr;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
    P = psw.data_ptr<float>();
  }
  // One pass over the ids: each checked, and (with several threads) counted per block of
  // rows, so that each thread can own a run of rows holding ~1/T of the ids (an even split
  // of the rows left one of two threads with ~95 % of a 26-table collection's ids: its small
  // tables sit first in the grouped table and get as many ids as its big ones).  For a lazily
  // zeroed result, the pass also marks the pages that the ids' rows lie on.
  const int64_t n = ids.numel();
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), num_rows));
  const int64_t blocks = threads > 1 ? std::min<int64_t>(num_rows, 1024 * threads) : 1;
  const int64_t block_rows = std::max<int64_t>(1, (num_rows + blocks - 1) / blocks);
  bool lazy = false;
  at::Tensor out = zeroed_rows(num_rows, D, grad.options(), lazy);
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(float));
  std::vector<uint8_t> touched(lazy ? (num_rows * row_bytes + kPageBytes - 1) / kPageBytes : 0, 0);
  std::vector<int64_t> count(threads > 1 ? blocks : 0, 0);
  int64_t bad = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = I[i];
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows)) {
      bad = i;
      break;
    }
    if (threads > 1) ++count[id / block_rows];
    if (lazy && id != padding_idx) {
      const int64_t last = ((id + 1) * row_bytes - 1) / kPageBytes;
      for (int64_t p = id * row_bytes / kPageBytes; p <= last; ++p) touched[p] = 1;
    }
  }
  TORCH_CHECK(bad < 0, api, ": id ", bad < 0 ? 0 : I[bad], " outside ", num_rows, " rows");
  // bounds[t] .. bounds[t + 1]: thread t's rows, block-aligned, ~n * t / T ids before bounds[t]
  std::vector<int64_t> bounds(threads + 1, num_rows);
  bounds[0] = 0;
  if (threads > 1) {
    int64_t seen = 0, t = 1;
    for (int64_t k = 0; k < blocks && t < threads; ++k) {
      seen += count[k];
      while (t < threads && seen * threads >= n * t) bounds[t++] = std::min(num_rows, (k + 1) * block_rows);
    }
  }
  float* Y = out.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  // Per bag: 1 / (non-padding ids) for a mean, rounded to float32 from double as the reference.
  std::vector<double> inverse;
  if (pooling == kPoolMean) {
    inverse.assign(num_bags, 1.0);
    for (int64_t b = 0; b < num_bags; ++b) {
      int64_t count = 0;
      for (int64_t i = O[b]; i < O[b + 1]; ++i) count += I[i] != padding_idx;
      inverse[b] = 1.0 / static_cast<double>(std::max<int64_t>(count, 1));
    }
  }
  // Each of T row runs is owned by one thread, which adds, in input order, the contributions
  // that land there: the result does not depend on the number of threads.
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t lo = bounds[t], hi = bounds[t + 1];
    if (lo >= hi) continue;
    if (lazy) {  // this thread's touched pages (a page shared with a neighbour: both, harmless)
      populate_touched(reinterpret_cast<char*>(Y), touched, lo * row_bytes / kPageBytes,
                       (hi * row_bytes - 1) / kPageBytes);
    }
    for (int64_t b = 0; b < num_bags; ++b) {
      const float* __restrict__ g = G + b * D;
      const float mean_scale = pooling == kPoolMean ? static_cast<float>(inverse[b]) : 1.0f;
      for (int64_t i = O[b]; i < O[b + 1]; ++i) {
        const int64_t id = I[i];
        if (id < lo || id >= hi || id == padding_idx) continue;
        float* __restrict__ y = Y + id * D;
        if (P != nullptr) {
          const float c = pooling == kPoolMean
                              ? static_cast<float>(static_cast<double>(P[i]) * inverse[b])
                              : P[i];
          for (int64_t d = 0; d < D; ++d) y[d] += g[d] * c;
        } else if (pooling == kPoolMean) {
          for (int64_t d = 0; d < D; ++d) y[d] += g[d] * mean_scale;
        } else {
          for (int64_t d = 0; d < D; ++d) y[d] += g[d];
        }
      }
    }
  }
  return out;
}

// The gather.  At a width known at compile time (`FixedD` > 0) a row is copied by a
// fixed-length loop the compiler vectorizes (a libc memcpy call per row was 1.03-1.22x torch's
// `Embedding` forward); other widths (`FixedD` = 0) use memcpy.  Only the first line of the row
// `kPrefetchDistance` ids ahead is prefetched, as in the pooled gather.  Issue 11,
// `benchmarks/core.py` (one thread, load ~1, four runs): 0.83-1.12x torch's time, against
// 1.03-1.22x before (RESULTS.md).  Returns 1 if an id lies outside [0, V).
template <int FixedD>
int gather_rows_impl(const float* W, const int64_t* I, float* Y, int64_t n, int64_t V, int64_t D) {
  const int64_t width = FixedD > 0 ? FixedD : D;
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetchDistance < n) {
      const int64_t ahead = I[i + kPrefetchDistance];
      if (static_cast<uint64_t>(ahead) < static_cast<uint64_t>(V)) prefetch_pooled_row<FixedD>(W + ahead * width);
    }
    const int64_t id = I[i];
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
      bad = 1;
      continue;
    }
    const float* __restrict row = W + id * width;
    float* __restrict out = Y + i * width;
    if constexpr (FixedD > 0) {
      for (int k = 0; k < FixedD; ++k) out[k] = row[k];
    } else {
      std::memcpy(out, row, static_cast<size_t>(width) * 4);
    }
  }
  return bad;
}

at::Tensor gather_rows_cpu(const at::Tensor& weight_in, const at::Tensor& ids_in) {
  const char* api = "embtable::gather_rows";
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.scalar_type() == at::kFloat, api,
              ": weight must be a 2-D float32 tensor, got ", weight_in.scalar_type(), " of shape ",
              weight_in.sizes());
  TORCH_CHECK(ids_in.dim() == 1, api, ": ids must be 1-D, got shape ", ids_in.sizes());
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const int64_t n = ids.numel(), V = weight.size(0), D = weight.size(1);
  at::Tensor out = at::empty({n, D}, weight.options());
  const float* W = weight.data_ptr<float>();
  const int64_t* I = ids.data_ptr<int64_t>();
  float* Y = out.data_ptr<float>();
  int bad = 0;
  switch (D) {
    case 16: bad = gather_rows_impl<16>(W, I, Y, n, V, D); break;
    case 32: bad = gather_rows_impl<32>(W, I, Y, n, V, D); break;
    case 64: bad = gather_rows_impl<64>(W, I, Y, n, V, D); break;
    case 128: bad = gather_rows_impl<128>(W, I, Y, n, V, D); break;
    case 256: bad = gather_rows_impl<256>(W, I, Y, n, V, D); break;
    default: bad = gather_rows_impl<0>(W, I, Y, n, V, D);
  }
  TORCH_CHECK_INDEX(!bad, api, ": an id lies outside the table of ", V, " rows");
  return out;
}

std::tuple<at::Tensor, at::Tensor> bucket_ids_cpu(
    const at::Tensor& values_in,
    const at::Tensor& lengths_in,
    const at::Tensor& feature_rows_in,
    int64_t batch) {
  const char* api = "embtable::bucket_ids";
  // int32 ids are read as they are (the sharded collections receive them so): no int64 copy
  const bool narrow = values_in.scalar_type() == at::kInt;
  const at::Tensor values = narrow ? values_in.contiguous() : values_in.to(at::kLong).contiguous();
  const at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const at::Tensor rows = feature_rows_in.to(at::kLong).contiguous();
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == 2, api,
              ": feature_rows must be [num_features, 2] (row offset, rows), got ", rows.sizes());
  const int64_t F = rows.size(0);
  TORCH_CHECK(batch >= 0 && lengths.numel() == F * batch, api, ": expected ", F, " x ", batch,
              " lengths, got ", lengths.numel());
  const int64_t n = values.numel();
  at::Tensor offsets = at::empty({F * batch + 1}, lengths.options());
  at::Tensor ids = at::empty({n}, lengths.options());  // int64, whatever the values' type
  const int64_t* L = lengths.data_ptr<int64_t>();
  const int64_t* R = rows.data_ptr<int64_t>();
  int64_t* O = offsets.data_ptr<int64_t>();
  int64_t* Y = ids.data_ptr<int64_t>();
  bucket_offsets(L, F * batch, n, O, api);
  auto shift_all = [&](const auto* X) {
    int64_t bad = 0;
    for (int64_t f = 0; f < F; ++f) {
      const int64_t shift = R[2 * f], num_rows = R[2 * f + 1];
      const int64_t begin = O[f * batch], end = O[(f + 1) * batch];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t id = X[i];
        bad |= static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows);
        Y[i] = id + shift;
      }
    }
    return bad;
  };
  const int64_t bad = narrow ? shift_all(values.data_ptr<int32_t>())
                             : shift_all(values.data_ptr<int64_t>());
  TORCH_CHECK(!bad, api, ": an id lies outside its table");
  return {ids, offsets};
}


at::Tensor pool_bucket_cpu(
    const at::Tensor& weight_in,
    const at::Tensor& values_in,
    const at::Tensor& lengths_in,
    const at::Tensor& feature_rows_in,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    int64_t batch) {
  const char* api = "embtable::pool_bucket";
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.scalar_type() == at::kFloat,
              api, ": weight must be a 2-D float32 tensor, got ",
              weight_in.scalar_type(), " of shape ", weight_in.sizes());
  TORCH_CHECK(pooling == kPoolSum || pooling == kPoolMean, api,
              ": pooling must be 1 (sum) or 2 (mean), got ", pooling);
  const int64_t D = weight_in.size(1);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor values = values_in.to(at::kLong).contiguous();
  const at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const at::Tensor rows = feature_rows_in.to(at::kLong).contiguous();
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == 2, api,
              ": feature_rows must be [num_features, 2] (row offset, rows), got ", rows.sizes());
  const int64_t F = rows.size(0);
  TORCH_CHECK(F >= 1, api, ": feature_rows is empty");
  TORCH_CHECK(batch >= 0 && lengths.numel() == F * batch, api, ": expected ", F, " x ", batch,
              " lengths, got ", lengths.numel());
  const int64_t n = values.numel();
  const int64_t* R = rows.data_ptr<int64_t>();
  const int64_t V = weight.size(0);
  for (int64_t f = 0; f < F; ++f) {  // every shifted id must be a row of the grouped table
    TORCH_CHECK(R[2 * f] >= 0 && R[2 * f + 1] >= 0 && R[2 * f + 1] <= V - R[2 * f], api,
                ": feature ", f, "'s rows [", R[2 * f], ", +", R[2 * f + 1],
                ") lie outside the table of ", V, " rows");
  }
  if (!fixed_row_size(D)) {  // no compiled row size: shift the ids apart, then pool
    auto [ids, offsets] = bucket_ids_cpu(values, lengths, rows, batch);
    return std::get<0>(pool_bags_impl(weight, ids, offsets, per_sample_weights, pooling,
                                      padding_idx, F, api));
  }
  const float* P = nullptr;
  at::Tensor psw;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
    TORCH_CHECK(psw.numel() == n, api, ": per_sample_weights has ", psw.numel(),
                " values for ", n, " ids");
    P = psw.data_ptr<float>();
  }
  const int64_t num_bags = F * batch;
  std::vector<int64_t> offsets(num_bags + 1);
  int64_t* O = offsets.data();
  bucket_offsets(lengths.data_ptr<int64_t>(), num_bags, n, O, api);
  at::Tensor out = at::empty({batch, F * D}, weight.options());
  const OutLayout layout{std::max<int64_t>(batch, 1), F * D, D};
  const float* W = weight.data_ptr<float>();
  const int64_t* X = values.data_ptr<int64_t>();
  float* Y = out.data_ptr<float>();
  const int bad = pool_sum_fixed_any(D, W, V, X, O, R, P, Y, layout, num_bags, F, padding_idx,
                                     pooling == kPoolMean);
  TORCH_CHECK(!bad, api, ": an id lies outside its table");
  return out;
}

}  // namespace embtable
