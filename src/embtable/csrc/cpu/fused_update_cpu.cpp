// The fused "reduce output gradients per row + optimizer update" kernel of embtable._C
// (`embtable::fused_update_rows`).  float32 tables; optimizer moments stored as float32,
// bfloat16 or 8-bit row-wise codes (embtable.optim's `state_dtype`).  The pure-PyTorch twin,
// and the oracle of every formula here, is embtable/ops/_fused_reference.py.
//
// Plan of a call:
//   1. Stable LSD radix sort of the batch's non-padding positions by id.  Each entry is one
//      64-bit key `id << 32 | source`, where `source` is the row of the output gradient the
//      position reads (its bag, or the position itself) - or, when positions carry a
//      coefficient (per-sample weights, 1 / bag size), the position.  All digit histograms
//      are counted in one pass over the ids, and the first scatter builds the keys.  When
//      the id and the source fit in 32 bits together (e.g. V = 1M rows and 2048 bags), the
//      passes before the last move 32-bit keys `id << s | source` and the last pass widens
//      them (issue 11: 0.8x the sort's time at V = 1M, 2048 bags of 20 ids).
//   2. One walk over the sorted keys: each run of equal ids is one touched row; its
//      contributions are summed in input order, then the rule updates the row and its state,
//      each read once and written once.  Rows a few keys ahead are prefetched.
//
// Determinism: OpenMP threads take contiguous key ranges cut at row boundaries, and each row
// is summed by one thread in input order, so results do not depend on the thread count.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "rows_cpu.h"

namespace embtable {
namespace {

// Row helpers are always inlined into the row walk, so that the row size, a compile-time
// constant there for D = 32 / 64 / 128, reaches their loops.
#define EMBTABLE_ROW_INLINE inline __attribute__((always_inline))

constexpr const char* kApi = "embtable::fused_update_rows";

// ----------------------------------------------------------------------------- the sort

// Scratch buffers of one thread, kept between calls: fresh multi-100-KB vectors are fresh
// pages from the kernel on every call, and their page faults cost more than the sort.
struct Scratch {
  std::vector<uint64_t> keys, keys_tmp;
  std::vector<uint32_t> keys32;  // two halves: the 32-bit keys of the passes before the last
  std::vector<uint32_t> count;  // (not int64: the scatters must not alias the 64-bit keys)
  std::vector<int64_t> bag_of;
  std::vector<float> coeff;
};

Scratch& scratch() {
  static thread_local Scratch buffers;
  return buffers;
}

// The batch, sorted: `m` keys `id << 32 | source`, in (id, input position) order.
struct SortedBatch {
  const uint64_t* keys = nullptr;
  int64_t m = 0;
};

// The first scatter of the radix sort: the key `id << shift | source` of each non-padding
// position `i` goes to `out[slot[digit 0 of its id]++]`; its source is its bag (kBags) or `i`.
// Key: uint64_t (shift 32), or uint32_t when the id and the source fit in 32 bits together.
template <bool kBags, class Key>
void scatter_ids(const int64_t* __restrict__ ids, int64_t n, const int64_t* __restrict__ bags,
                 int64_t num_bags, int64_t padding_idx, uint64_t mask, int shift,
                 uint32_t* __restrict__ slot, Key* __restrict__ out) {
  auto place = [&](int64_t i, Key source) {
    const int64_t id = ids[i];
    if (id == padding_idx) return;
    const Key u = static_cast<Key>(id);
    out[slot[u & mask]++] = (u << shift) | source;
  };
  if constexpr (kBags) {
    for (int64_t b = 0; b < num_bags; ++b) {
      const int64_t end = bags[b + 1];
      for (int64_t i = bags[b]; i < end; ++i) place(i, static_cast<Key>(b));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) place(i, static_cast<Key>(i));
  }
}

// A later scatter of the radix sort, on the digit at `shift` of the keys.
template <class Key>
void scatter_keys(const Key* __restrict__ in, int64_t m, int shift, uint64_t mask,
                  uint32_t* __restrict__ slot, Key* __restrict__ out) {
  for (int64_t i = 0; i < m; ++i) {
    const Key key = in[i];
    out[slot[(key >> shift) & mask]++] = key;
  }
}

// The last scatter of a sort of 32-bit keys `id << sbits | source`: it writes the 64-bit
// key `id << 32 | source` of the row walk.
void scatter_widen(const uint32_t* __restrict__ in, int64_t m, int shift, uint64_t mask,
                   int sbits, uint32_t* __restrict__ slot, uint64_t* __restrict__ out) {
  const uint32_t source_mask = (uint32_t{1} << sbits) - 1;
  for (int64_t i = 0; i < m; ++i) {
    const uint32_t key = in[i];
    out[slot[(key >> shift) & mask]++] =
        (static_cast<uint64_t>(key >> sbits) << 32) | (key & source_mask);
  }
}

// Radix-sorts the non-padding positions of `ids` by id.  `bags` (num_bags + 1 offsets) or
// nullptr gives each position's source: its bag when `source_is_bag`, else the position.
// Returns false (sorting nothing) if an id lies outside [0, num_rows).
bool sort_by_row(const int64_t* ids, int64_t n, const int64_t* bags, int64_t num_bags,
                 bool source_is_bag, int64_t num_rows, int64_t padding_idx, SortedBatch* out) {
  Scratch& sc = scratch();
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) < num_rows) ++bits;
  const int passes = (bits + 10) / 11;
  const int digit = (bits + passes - 1) / passes;
  const int64_t buckets = int64_t{1} << digit;
  const uint64_t mask = static_cast<uint64_t>(buckets - 1);
  sc.count.assign(passes * buckets, 0);
  uint32_t* count = sc.count.data();
  int64_t m = 0;
  bool bad = false;
  // One pass over the ids counts the digits of every radix pass (unrolled per pass count).
  auto histogram = [&](auto passes_tag) {
    constexpr int kPasses = decltype(passes_tag)::value;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids[i];
      bad |= static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows);
      if (id == padding_idx) continue;
      ++m;
      for (int p = 0; p < kPasses; ++p) {
        ++count[p * buckets + ((static_cast<uint64_t>(id) >> (p * digit)) & mask)];
      }
    }
  };
  if (passes == 1) {
    histogram(std::integral_constant<int, 1>{});
  } else if (passes == 2) {
    histogram(std::integral_constant<int, 2>{});
  } else {
    histogram(std::integral_constant<int, 3>{});
  }
  if (bad) return false;
  for (int p = 0; p < passes; ++p) {
    uint32_t total = 0;
    for (int64_t b = 0; b < buckets; ++b) {
      const uint32_t c = count[p * buckets + b];
      count[p * buckets + b] = total;
      total += c;
    }
  }
  // Pass 0 scatters straight from the ids; the result of the last pass lands in `keys`.
  sc.keys.resize(m);
  const int64_t sources = source_is_bag ? num_bags : n;
  int sbits = 0;
  while ((int64_t{1} << sbits) < sources) ++sbits;
  if (passes >= 2 && bits + sbits <= 32) {
    sc.keys32.resize(2 * m);
    uint32_t* a = sc.keys32.data();
    uint32_t* b = a + m;
    if (source_is_bag) {
      scatter_ids<true>(ids, n, bags, num_bags, padding_idx, mask, sbits, count, a);
    } else {
      scatter_ids<false>(ids, n, bags, num_bags, padding_idx, mask, sbits, count, a);
    }
    for (int p = 1; p + 1 < passes; ++p) {
      scatter_keys(a, m, sbits + p * digit, mask, count + p * buckets, b);
      std::swap(a, b);
    }
    scatter_widen(a, m, sbits + (passes - 1) * digit, mask, sbits, count + (passes - 1) * buckets,
                  sc.keys.data());
    out->keys = sc.keys.data();
    out->m = m;
    return true;
  }
  sc.keys_tmp.resize(m);
  uint64_t* dst = passes % 2 == 1 ? sc.keys.data() : sc.keys_tmp.data();
  uint64_t* other = passes % 2 == 1 ? sc.keys_tmp.data() : sc.keys.data();
  if (source_is_bag) {
    scatter_ids<true>(ids, n, bags, num_bags, padding_idx, mask, 32, count, dst);
  } else {
    scatter_ids<false>(ids, n, bags, num_bags, padding_idx, mask, 32, count, dst);
  }
  for (int p = 1; p < passes; ++p) {
    std::swap(dst, other);  // `other` holds the previous pass
    scatter_keys(other, m, 32 + p * digit, mask, count + p * buckets, dst);
  }
  out->keys = sc.keys.data();
  out->m = m;
  return true;
}

// ----------------------------------------------------------------------------- moment storage

// A [V, D] optimizer moment, float32, updated in place.
struct MomentF32 {
  float* data;
  int64_t D;
  EMBTABLE_ROW_INLINE float* load(int64_t row, float* /*buffer*/, int64_t /*n*/) const { return data + row * D; }
  EMBTABLE_ROW_INLINE void store(int64_t /*row*/, const float* /*values*/, int64_t /*n*/) const {}
  void prefetch(int64_t row) const { prefetch_row(data + row * D, D * 4, 1); }
  void prefetch_first_line(int64_t row) const { __builtin_prefetch(data + row * D, 1, 3); }
};

// A [V, D] bfloat16 moment: rows are widened to float32, updated, and rounded back to nearest
// even (torch's float -> bfloat16 conversion).
struct MomentBF16 {
  uint16_t* data;
  int64_t D;
  EMBTABLE_ROW_INLINE float* load(int64_t row, float* buffer, int64_t n) const {
    const uint16_t* src = data + row * D;
    for (int64_t d = 0; d < n; ++d) {
      const uint32_t bits = static_cast<uint32_t>(src[d]) << 16;
      std::memcpy(buffer + d, &bits, 4);
    }
    return buffer;
  }
  EMBTABLE_ROW_INLINE void store(int64_t row, const float* values, int64_t n) const {
    uint16_t* dst = data + row * D;
    for (int64_t d = 0; d < n; ++d) {
      uint32_t bits;
      std::memcpy(&bits, values + d, 4);
      const uint32_t rounded = (bits + (((bits >> 16) & 1u) + 0x7fffu)) >> 16;
      dst[d] = std::isnan(values[d]) ? uint16_t{0x7fc0} : static_cast<uint16_t>(rounded);
    }
  }
  void prefetch(int64_t row) const { prefetch_row(data + row * D, D * 2, 1); }
  void prefetch_first_line(int64_t row) const { prefetch(row); }
};

// A [V, D] moment as 8-bit codes and a float32 scale per row (state_dtype="int8_rowwise";
// embtable.ops._fused_reference.encode_rows / decode_rows).  kSigned: int8 codes q in
// [-127, 127], value = sign(q) * (|q| / 127)^2 * scale.  Otherwise uint8 codes in [0, 255],
// value = (q / 255)^4 * scale.  scale is the row's largest magnitude.
template <bool kSigned>
struct MomentQ8 {
  using Code = std::conditional_t<kSigned, int8_t, uint8_t>;
  Code* codes;
  float* scale;
  int64_t D;
  static constexpr float kLevels = kSigned ? 127.0f : 255.0f;
  static constexpr float kInverse = static_cast<float>(1.0 / (kSigned ? 127.0 : 255.0));

  EMBTABLE_ROW_INLINE float* load(int64_t row, float* buffer, int64_t n) const {
    const Code* q = codes + row * D;
    const float s = scale[row];
    for (int64_t d = 0; d < n; ++d) {
      if constexpr (kSigned) {
        const float a = static_cast<float>(q[d] < 0 ? -q[d] : q[d]) * kInverse;
        const float v = (a * a) * s;
        buffer[d] = q[d] < 0 ? -v : v;
      } else {
        const float a = static_cast<float>(q[d]) * kInverse;
        const float b = a * a;
        buffer[d] = (b * b) * s;
      }
    }
    return buffer;
  }
  EMBTABLE_ROW_INLINE void store(int64_t row, const float* values, int64_t n) const {
    Code* q = codes + row * D;
    // The row's largest magnitude, in 16 independent lanes (a single running max is a chain
    // of n dependent instructions; max is exact in any order).
    float lanes[16] = {};
    int64_t e = 0;
    auto magnitude = [](float x) { return kSigned ? std::fabs(x) : std::max(x, 0.0f); };
    for (; e + 16 <= n; e += 16) {
      for (int j = 0; j < 16; ++j) lanes[j] = std::max(lanes[j], magnitude(values[e + j]));
    }
    for (; n % 16 != 0 && e < n; ++e) lanes[0] = std::max(lanes[0], magnitude(values[e]));
    float s = 0.0f;
    for (int j = 0; j < 16; ++j) s = std::max(s, lanes[j]);
    scale[row] = s;
    if (!(s > 0.0f)) {
      std::fill(q, q + n, Code{0});
      return;
    }
    for (int64_t d = 0; d < n; ++d) {
      if constexpr (kSigned) {
        const float r = std::fabs(values[d]) / s;
        const float c = std::min(std::nearbyint(std::sqrt(r) * kLevels), kLevels);
        q[d] = static_cast<Code>(values[d] < 0.0f ? -c : c);
      } else {
        const float r = std::max(values[d], 0.0f) / s;
        const float c = std::min(std::nearbyint(std::sqrt(std::sqrt(r)) * kLevels), kLevels);
        q[d] = static_cast<Code>(c);
      }
    }
  }
  void prefetch(int64_t row) const {
    prefetch_row(codes + row * D, D, 1);
    __builtin_prefetch(scale + row, 1, 3);
  }
  void prefetch_first_line(int64_t row) const { prefetch(row); }
};

// ----------------------------------------------------------------------------- the rules

struct Hyper {
  float lr;
  float weight_decay;
  int64_t wd_mode;  // 0: none, 1: L2 (added to the gradient), 2: decoupled (w *= 1 - lr * wd)
  std::vector<double> raw;
};

// The row updates take the reduced gradient in `g`, a scratch buffer they may modify (L2
// decay is added to it in place), and keep every loop free of branches so that it
// vectorizes.  Their floating-point operations, in order, are those of the reference.

EMBTABLE_ROW_INLINE void add_l2(float* __restrict__ g, const float* __restrict__ w, int64_t D, const Hyper& h) {
  if (h.wd_mode != 1) return;
  for (int64_t d = 0; d < D; ++d) g[d] = g[d] + h.weight_decay * w[d];
}

EMBTABLE_ROW_INLINE void decouple_decay(float* __restrict__ w, int64_t D, const Hyper& h) {
  if (h.wd_mode != 2) return;
  const float decay = static_cast<float>(1.0 - h.raw[0] * h.raw[1]);
  for (int64_t d = 0; d < D; ++d) w[d] = w[d] * decay;
}

EMBTABLE_ROW_INLINE void sgd_row(float* __restrict__ w, float* __restrict__ buf, float* __restrict__ g,
                    int64_t D, const Hyper& h) {
  add_l2(g, w, D, h);
  if (buf != nullptr) {
    const float momentum = static_cast<float>(h.raw[3]);
    for (int64_t d = 0; d < D; ++d) buf[d] = buf[d] * momentum + g[d];
    if (h.raw[4] != 0.0) {  // Nesterov
      for (int64_t d = 0; d < D; ++d) g[d] = g[d] + momentum * buf[d];
    } else {
      for (int64_t d = 0; d < D; ++d) g[d] = buf[d];
    }
  }
  decouple_decay(w, D, h);
  const float lr = h.lr;
  for (int64_t d = 0; d < D; ++d) w[d] = w[d] - lr * g[d];
}

EMBTABLE_ROW_INLINE void adagrad_row(float* __restrict__ w, float* __restrict__ sum, float* __restrict__ g,
                        int64_t D, const Hyper& h) {
  const float eps = static_cast<float>(h.raw[3]);
  const float lr = h.lr;
  add_l2(g, w, D, h);
  decouple_decay(w, D, h);
  for (int64_t d = 0; d < D; ++d) {
    const float s = sum[d] + g[d] * g[d];
    sum[d] = s;
    w[d] = w[d] - lr * (g[d] / (std::sqrt(s) + eps));
  }
}

EMBTABLE_ROW_INLINE void rowwise_adagrad_row(float* __restrict__ w, float* acc, float* __restrict__ g,
                                int64_t D, const Hyper& h) {
  const float eps = static_cast<float>(h.raw[3]);
  // mean of (g + [L2] wd * w)^2, summed in 8 interleaved float lanes (vectorizable)
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  if (h.wd_mode == 1) {
    for (; d + 8 <= D; d += 8) {
      for (int j = 0; j < 8; ++j) {
        const float x = g[d + j] + h.weight_decay * w[d + j];
        lanes[j] += x * x;
      }
    }
    for (; D % 8 != 0 && d < D; ++d) {  // (the tail is empty for D = 32 / 64 / 128)
      const float x = g[d] + h.weight_decay * w[d];
      lanes[0] += x * x;
    }
  } else {
    for (; d + 8 <= D; d += 8) {
      for (int j = 0; j < 8; ++j) lanes[j] += g[d + j] * g[d + j];
    }
    for (; D % 8 != 0 && d < D; ++d) lanes[0] += g[d] * g[d];
  }
  const float square = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                       ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  const float state = *acc + square / static_cast<float>(D);
  *acc = state;
  const float multiplier = h.lr / (std::sqrt(state) + eps);
  float correction = 1.0f;
  if (h.wd_mode == 1) correction = 1.0f - multiplier * h.weight_decay;
  if (h.wd_mode == 2) correction = 1.0f - h.lr * h.weight_decay;
  for (int64_t e = 0; e < D; ++e) w[e] = correction * w[e] - multiplier * g[e];
}

// -lr * sqrt(1 - beta2^t) / (1 - beta1^t), memoized per step count t (direct-mapped cache:
// most rows of a batch share a handful of step counts, and pow is costly).
struct StepSizeCache {
  int64_t t[256];
  float value[256];
  StepSizeCache() { std::fill(t, t + 256, int64_t{-1}); }
  float get(int64_t step, const Hyper& h) {
    const int64_t slot = step & 255;
    if (t[slot] != step) {
      const double bc1 = 1.0 - std::pow(h.raw[3], static_cast<double>(step));
      const double bc2 = 1.0 - std::pow(h.raw[4], static_cast<double>(step));
      value[slot] = static_cast<float>(-(h.raw[0] * std::sqrt(bc2) / bc1));
      t[slot] = step;
    }
    return value[slot];
  }
};

EMBTABLE_ROW_INLINE void adam_row(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                     int64_t* step, float* __restrict__ g, int64_t D, const Hyper& h,
                     StepSizeCache& cache) {
  const float eps = static_cast<float>(h.raw[5]);
  const bool per_row = h.raw[6] == 0.0;
  const int64_t t = per_row ? ++(*step) : static_cast<int64_t>(h.raw[7]);
  if (!per_row) *step = t;
  const float neg_step_size = cache.get(t, h);
  const float one_minus_b1 = static_cast<float>(1.0 - h.raw[3]);
  const float one_minus_b2 = static_cast<float>(1.0 - h.raw[4]);
  add_l2(g, w, D, h);
  decouple_decay(w, D, h);
  for (int64_t d = 0; d < D; ++d) {
    const float m_new = (g[d] - m[d]) * one_minus_b1 + m[d];
    const float v_new = (g[d] * g[d] - v[d]) * one_minus_b2 + v[d];
    m[d] = m_new;
    v[d] = v_new;
    w[d] = w[d] + neg_step_size * (m_new / (std::sqrt(v_new) + eps));
  }
}

// Per-thread buffers of the row walk: the reduced gradient and decoded moment rows.
struct RowWork {
  std::vector<float> acc, first, second;
  StepSizeCache cache;
  explicit RowWork(int64_t D) : acc(D), first(D), second(D) {}
};

// ----------------------------------------------------------------------------- the row walk

// Where the contributions of the sorted batch come from.
struct Contributions {
  const float* G;       // output gradient rows
  const float* coeff;   // per position, or nullptr (then a key's source is its gradient row)
  const int64_t* bag_of;  // per position (pooled, with coefficients), or nullptr
  bool scale_grad_by_freq;
  int64_t source_row(uint64_t key) const {
    const int64_t source = static_cast<int64_t>(key & 0xffffffffu);
    return coeff == nullptr || bag_of == nullptr ? source : bag_of[source];
  }
};

// First key index at or after `k` that starts a row (the cut points of the threads).
inline int64_t row_start_at(const uint64_t* keys, int64_t m, int64_t k) {
  while (k > 0 && k < m && (keys[k] >> 32) == (keys[k - 1] >> 32)) ++k;
  return k;
}

constexpr int64_t kKeysAhead = 8;  // prefetch distance of the walk, in keys (~ rows)

// Sums each touched row's contributions (in input order) into a float32 row, then calls
// `apply(row, reduced, work, dim)` (`dim`: the row size, a std::integral_constant when it is
// fixed at compile time); `prefetch(row)` is called for the row `kKeysAhead` keys ahead, and
// with `prefetch_grad` the output-gradient row of that key is prefetched too.
template <int64_t kD, class Apply, class Prefetch>
void walk_rows(const SortedBatch& batch, const Contributions& src, int64_t D_any,
               const Apply& apply, const Prefetch& prefetch, bool prefetch_grad) {
  constexpr int64_t kFixed = kD;
  const int64_t D = kFixed > 0 ? kFixed : D_any;
  const uint64_t* K = batch.keys;
  const int64_t m = batch.m;
  const float* G = src.G;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t lo = row_start_at(K, m, m * t / threads);
    const int64_t hi = row_start_at(K, m, m * (t + 1) / threads);
    RowWork work(D);
    float* __restrict__ acc = work.acc.data();
    for (int64_t k = lo; k < hi;) {
      if (k + kKeysAhead < hi) {
        const uint64_t ahead = K[k + kKeysAhead];
        prefetch(static_cast<int64_t>(ahead >> 32));
        if (prefetch_grad) prefetch_row(G + src.source_row(ahead) * D, D * 4, 0);
      }
      const uint64_t key = K[k];
      const uint64_t row_bits = key >> 32;
      int64_t e = k + 1;
      if (src.coeff == nullptr) {
        const float* __restrict__ g = G + static_cast<int64_t>(key & 0xffffffffu) * D;
        for (int64_t d = 0; d < D; ++d) acc[d] = g[d];
        for (; e < hi && (K[e] >> 32) == row_bits; ++e) {
          const float* __restrict__ h = G + static_cast<int64_t>(K[e] & 0xffffffffu) * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += h[d];
        }
      } else {
        const int64_t position = static_cast<int64_t>(key & 0xffffffffu);
        const float* __restrict__ g = G + src.source_row(key) * D;
        const float c = src.coeff[position];
        for (int64_t d = 0; d < D; ++d) acc[d] = g[d] * c;
        for (; e < hi && (K[e] >> 32) == row_bits; ++e) {
          const float* __restrict__ h = G + src.source_row(K[e]) * D;
          const float ce = src.coeff[static_cast<int64_t>(K[e] & 0xffffffffu)];
          for (int64_t d = 0; d < D; ++d) acc[d] += h[d] * ce;
        }
      }
      if (src.scale_grad_by_freq) {
        const float count = static_cast<float>(e - k);
        for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] / count;
      }
      if constexpr (kFixed > 0) {
        apply(static_cast<int64_t>(row_bits), acc, work, std::integral_constant<int64_t, kFixed>{});
      } else {
        apply(static_cast<int64_t>(row_bits), acc, work, D);
      }
      k = e;
    }
  }
}

// Runs `walk_rows` with the row size fixed at compile time where it is 32 / 64 / 128.
template <class Apply, class Prefetch>
void walk_rows_any(const SortedBatch& batch, const Contributions& src, int64_t D,
                   const Apply& apply, const Prefetch& prefetch, bool prefetch_grad = true) {
  if (D == 32) {
    walk_rows<32>(batch, src, D, apply, prefetch, prefetch_grad);
  } else if (D == 64) {
    walk_rows<64>(batch, src, D, apply, prefetch, prefetch_grad);
  } else if (D == 128) {
    walk_rows<128>(batch, src, D, apply, prefetch, prefetch_grad);
  } else {
    walk_rows<0>(batch, src, D, apply, prefetch, prefetch_grad);
  }
}

// ----------------------------------------------------------------------------- state parsing

// One optimizer moment from the state list: float32 / bfloat16 [V, D], or 8-bit codes [V, D]
// followed by their float32 scales [V].
struct MomentArg {
  at::ScalarType kind = at::kFloat;
  void* data = nullptr;
  float* scale = nullptr;
};

MomentArg moment_arg(at::TensorList state, size_t* next, int64_t V, int64_t D, const char* name,
                     bool is_signed) {
  TORCH_CHECK(*next < state.size(), kApi, ": missing state tensor ", name);
  const at::Tensor& t = state[(*next)++];
  const at::ScalarType kind = t.scalar_type();
  TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16 || kind == at::kChar || kind == at::kByte,
              kApi, ": ", name, " must be float32, bfloat16, int8 or uint8, got ", kind);
  TORCH_CHECK(t.is_contiguous() && t.dim() == 2 && t.size(0) == V && t.size(1) == D, kApi, ": ",
              name, " must be a contiguous [", V, ", ", D, "] tensor, got shape ", t.sizes());
  MomentArg arg{kind, t.data_ptr(), nullptr};
  if (kind == at::kChar || kind == at::kByte) {
    TORCH_CHECK((kind == at::kChar) == is_signed, kApi, ": 8-bit ", name, " codes must be ",
                is_signed ? "int8 (a signed moment)" : "uint8 (a non-negative moment)", ", got ", kind);
    TORCH_CHECK(*next < state.size(), kApi, ": the 8-bit ", name, " needs its scale tensor next");
    const at::Tensor& s = state[(*next)++];
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.numel() == V, kApi,
                ": the scale of ", name, " must be a contiguous float32 tensor of ", V,
                " values, got ", s.scalar_type(), " of shape ", s.sizes());
    arg.scale = s.data_ptr<float>();
  }
  return arg;
}

// Calls `body(moment)` with the typed storage of `arg` (8-bit codes: int8 when kSigned).
template <bool kSigned, class Body>
void with_moment(const MomentArg& arg, int64_t D, const Body& body) {
  if (arg.kind == at::kBFloat16) {
    body(MomentBF16{static_cast<uint16_t*>(arg.data), D});
  } else if (arg.kind == at::kChar || arg.kind == at::kByte) {
    using Code = typename MomentQ8<kSigned>::Code;
    body(MomentQ8<kSigned>{static_cast<Code*>(arg.data), arg.scale, D});
  } else {
    body(MomentF32{static_cast<float*>(arg.data), D});
  }
}

}  // namespace

void fused_update_rows_cpu(
    const at::Tensor& weight,
    at::TensorList state,
    const at::Tensor& ids_in,
    const at::Tensor& offsets_in,
    const at::Tensor& grad_in,
    const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling,
    int64_t padding_idx,
    bool scale_grad_by_freq,
    int64_t optimizer,
    at::ArrayRef<double> hparams) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.dim() == 2,
              kApi, ": weight must be a contiguous 2-D float32 tensor, got ", weight.scalar_type(),
              " of shape ", weight.sizes());
  TORCH_CHECK(pooling == kPoolNone || pooling == kPoolSum || pooling == kPoolMean, kApi,
              ": pooling must be 0 (none), 1 (sum) or 2 (mean), got ", pooling);
  const int64_t V = weight.size(0), D = weight.size(1);
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const at::Tensor grad = grad_in.to(at::kFloat).contiguous().view({-1, std::max<int64_t>(D, 1)});
  const int64_t n = ids.numel();
  const int64_t* I = ids.data_ptr<int64_t>();

  Hyper h;
  h.raw.assign(hparams.begin(), hparams.end());
  TORCH_CHECK(h.raw.size() >= 3, kApi, ": hparams needs lr, weight_decay, weight_decay_mode, got ",
              h.raw.size(), " values");
  h.lr = static_cast<float>(h.raw[0]);
  h.weight_decay = static_cast<float>(h.raw[1]);
  h.wd_mode = static_cast<int64_t>(h.raw[2]);
  const size_t needed[] = {5, 4, 4, 8};
  TORCH_CHECK(optimizer >= kOptSgd && optimizer <= kOptAdam, kApi, ": unknown optimizer code ",
              optimizer);
  TORCH_CHECK(h.raw.size() == needed[optimizer], kApi, ": optimizer ", optimizer, " takes ",
              needed[optimizer], " hparams, got ", h.raw.size());
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), kApi, ": at most ",
              std::numeric_limits<int32_t>::max() - 1, " ids per call, got ", n);
  TORCH_CHECK(V < (int64_t{1} << 31), kApi, ": at most 2^31 - 1 rows, got ", V);

  // The optimizer state, checked before anything is written.
  size_t next = 0;
  MomentArg first, second;
  float* row_state = nullptr;
  int64_t* steps = nullptr;
  const bool momentum = optimizer == kOptSgd && h.raw[3] != 0.0;
  if (momentum) {
    first = moment_arg(state, &next, V, D, "momentum_buffer", true);
  } else if (optimizer == kOptAdagrad) {
    first = moment_arg(state, &next, V, D, "sum", false);
  } else if (optimizer == kOptRowWiseAdagrad) {
    TORCH_CHECK(state.size() == 1 && state[0].scalar_type() == at::kFloat &&
                    state[0].is_contiguous() && state[0].numel() == V,
                kApi, ": RowWiseAdagrad needs one contiguous float32 state of ", V, " values");
    row_state = state[0].data_ptr<float>();
    next = 1;
  } else if (optimizer == kOptAdam) {
    first = moment_arg(state, &next, V, D, "exp_avg", true);
    second = moment_arg(state, &next, V, D, "exp_avg_sq", false);
    TORCH_CHECK(next < state.size() && state[next].scalar_type() == at::kLong &&
                    state[next].is_contiguous() && state[next].numel() == V,
                kApi, ": Adam's step must be a contiguous int64 tensor of ", V, " values");
    steps = state[next++].data_ptr<int64_t>();
  }
  TORCH_CHECK(next == state.size(), kApi, ": optimizer ", optimizer, " got ", state.size(),
              " state tensors, expected ", next);

  // Per-position coefficients (per-sample weights, 1 / bag size for a mean) and bags.
  Scratch& sc = scratch();
  const bool has_psw = per_sample_weights.has_value() && per_sample_weights->defined();
  at::Tensor psw;
  if (has_psw) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
    TORCH_CHECK(psw.numel() == n, kApi, ": per_sample_weights has ", psw.numel(), " values for ",
                n, " ids");
  }
  at::Tensor offsets;
  const int64_t* O = nullptr;
  int64_t num_bags = 0;
  const bool need_coeff = has_psw || pooling == kPoolMean;
  const float* C = nullptr;
  const int64_t* B = nullptr;
  if (pooling != kPoolNone) {
    offsets = offsets_in.to(at::kLong).contiguous();
    O = offsets.data_ptr<int64_t>();
    num_bags = std::max<int64_t>(offsets.numel() - 1, 0);
    TORCH_CHECK(grad.size(0) == num_bags, kApi, ": grad has ", grad.size(0),
                " rows, expected one per bag (", num_bags, ")");
    bool ok = offsets.numel() >= 1 && O[0] == 0 && O[num_bags] == n;
    for (int64_t b = 0; ok && b < num_bags; ++b) ok = O[b] <= O[b + 1];
    TORCH_CHECK(ok, kApi, ": invalid bag offsets (expected num_bags + 1 values: 0 first, "
                "non-decreasing, ", n, " last)");
    if (need_coeff) {
      sc.bag_of.resize(n);
      sc.coeff.resize(n);
      const float* P = has_psw ? psw.data_ptr<float>() : nullptr;
      for (int64_t b = 0; b < num_bags; ++b) {
        int64_t count = 0;
        for (int64_t i = O[b]; i < O[b + 1]; ++i) {
          sc.bag_of[i] = b;
          count += I[i] != padding_idx;
        }
        const float inv = pooling == kPoolMean && count > 0 ? 1.0f / static_cast<float>(count) : 1.0f;
        for (int64_t i = O[b]; i < O[b + 1]; ++i) {
          const float p = P != nullptr ? P[i] : 1.0f;
          sc.coeff[i] = pooling == kPoolMean ? p * inv : p;
        }
      }
      C = sc.coeff.data();
      B = sc.bag_of.data();
    }
  } else {
    TORCH_CHECK(grad.size(0) == n, kApi, ": grad has ", grad.size(0),
                " rows, expected one per id (", n, ")");
    if (has_psw) C = psw.data_ptr<float>();
  }

  SortedBatch batch;
  const bool source_is_bag = pooling != kPoolNone && C == nullptr;
  TORCH_CHECK(sort_by_row(I, n, O, num_bags, source_is_bag, V, padding_idx, &batch), kApi,
              ": an id lies outside the table of ", V, " rows");
  if (batch.m == 0) return;
  const Contributions src{grad.data_ptr<float>(), C, B, scale_grad_by_freq};
  float* W = weight.data_ptr<float>();
  auto prefetch_weight = [W, D](int64_t row) { prefetch_row(W + row * D, D * 4, 1); };

  // A rule with one [V, D] moment (int8 codes when kSigned): each row's moment is loaded,
  // updated by `rule(w, moment, g, dim)` and stored back.
  auto with_one_moment = [&](auto signed_tag, const auto& rule) {
    with_moment<decltype(signed_tag)::value>(first, D, [&](const auto& moment) {
      walk_rows_any(batch, src, D, [&](int64_t row, float* g, RowWork& work, auto dim) {
        float* values = moment.load(row, work.first.data(), dim);
        rule(W + row * D, values, g, dim);
        moment.store(row, values, dim);
      }, [&](int64_t row) { prefetch_weight(row); moment.prefetch(row); });
    });
  };

  switch (optimizer) {
    case kOptSgd:
      if (!momentum) {
        walk_rows_any(batch, src, D, [&](int64_t row, float* g, RowWork&, auto dim) {
          sgd_row(W + row * D, nullptr, g, dim, h);
        }, prefetch_weight);
      } else {
        with_one_moment(std::true_type{}, [&](float* w, float* buf, float* g, auto dim) {
          sgd_row(w, buf, g, dim, h);
        });
      }
      break;
    case kOptAdagrad:
      with_one_moment(std::false_type{}, [&](float* w, float* sum, float* g, auto dim) {
        adagrad_row(w, sum, g, dim, h);
      });
      break;
    case kOptRowWiseAdagrad:
      walk_rows_any(batch, src, D, [&](int64_t row, float* g, RowWork&, auto dim) {
        rowwise_adagrad_row(W + row * D, row_state + row, g, dim, h);
      }, [&](int64_t row) { prefetch_weight(row); __builtin_prefetch(row_state + row, 1, 3); });
      break;
    default: {
      // Adam moves three rows per touched row (weight and two moments): prefetching every
      // line of all three, and the gradient rows, ran out of L1 miss buffers.  For pooled
      // lookups with float32 moments, the rows get only their first line prefetched (the
      // hardware prefetchers fetch the rest) and the output-gradient rows none (one per bag:
      // 0.5 MiB for 2048 bags of D = 64, read from L2).  Unpooled lookups (one gradient row
      // per id) keep the full prefetch: not measured.  Issue 11, bags of D = 64, one
      // thread, 4 KiB pages, load ~5-7, forward + update alternating with the previous
      // prefetch (a scratch build of it) in one process: 0.91-0.94x its time with 15 id
      // batches cycled (rows come from memory, as in training), 0.96-1.02x with one reused.
      const bool first_line_only = first.kind == at::kFloat && pooling != kPoolNone;
      auto run = [&](const auto& m1, const auto& m2) {
        walk_rows_any(batch, src, D, [&](int64_t row, float* g, RowWork& work, auto dim) {
          float* a = m1.load(row, work.first.data(), dim);
          float* b = m2.load(row, work.second.data(), dim);
          adam_row(W + row * D, a, b, steps + row, g, dim, h, work.cache);
          m1.store(row, a, dim);
          m2.store(row, b, dim);
        }, [&](int64_t row) {
          if (first_line_only) {
            __builtin_prefetch(W + row * D, 1, 3);
            m1.prefetch_first_line(row);
            m2.prefetch_first_line(row);
          } else {
            prefetch_weight(row);
            m1.prefetch(row);
            m2.prefetch(row);
          }
          __builtin_prefetch(steps + row, 1, 3);
        }, !first_line_only);
      };
      TORCH_CHECK(first.kind == second.kind || (first.kind == at::kChar && second.kind == at::kByte),
                  kApi, ": exp_avg and exp_avg_sq must share a state dtype (int8 codes go with "
                  "uint8 codes), got ", first.kind, " and ", second.kind);
      if (first.kind == at::kFloat) {
        run(MomentF32{static_cast<float*>(first.data), D}, MomentF32{static_cast<float*>(second.data), D});
      } else if (first.kind == at::kBFloat16) {
        run(MomentBF16{static_cast<uint16_t*>(first.data), D},
            MomentBF16{static_cast<uint16_t*>(second.data), D});
      } else {
        run(MomentQ8<true>{static_cast<int8_t*>(first.data), first.scale, D},
            MomentQ8<false>{static_cast<uint8_t*>(second.data), second.scale, D});
      }
      break;
    }
  }
}

}  // namespace embtable
