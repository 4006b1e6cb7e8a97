// Quantized-table kernels of embtable's compiled CPU extension: decode rows stored in a row
// format of embtable/storage/codecs.py (fp32, fp16, bf16, or row-wise int8 / int4 / int2 codes
// followed by an fp16 scale and an fp16 bias: FBGEMM's fused layout) while pooling them.
//
//   embtable::quantized_pool_bags(packed, format, dim, ids, offsets, per_sample_weights,
//                                 pooling, padding_idx, include_last_offset=True)
//       -> float32 [num_bags, dim]  (offsets: num_bags + 1 boundaries, or with
//          include_last_offset=False the num_bags starts, the last bag ending at len(ids))
//   embtable::quantized_gather_rows(packed, format, dim, ids) -> float32 [len(ids), dim]
//
// An element decodes to scale * q + bias in float32; a weighted sum adds (w * scale) * q +
// w * bias per element, so a bag never forms its decoded rows.  Sum / mean pooling at
// D = 32, 64, 128 runs 16-wide (AVX-512, where the build has it): the running sum in
// registers, the bias summed once per bag, and int4 / int2 codes decoded by code planes
// (one byte per lane, a shift and a mask per plane; the planes are interleaved back into
// element order once per bag).  Other dims multiple of 8 run 8-wide (AVX2); the rest and
// max pooling run the scalar loop.  The pure-PyTorch twins are
// embtable.storage.codecs.dequantize_rows followed by embtable.ops._reference.pool_bags
// (see embtable/nn/quantized.py); both agree to 1e-6 relative.  The ops register themselves
// here (TORCH_LIBRARY_FRAGMENT); their fake kernels are registered from embtable/nn/quantized.py.

#include <ATen/ATen.h>
#include <c10/util/Half.h>
#include <omp.h>
#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "rows_cpu.h"

namespace embtable {
namespace {

// Format codes shared with Python (embtable.storage.codecs.RowCodec.code).
constexpr int64_t kFp16 = 1;
constexpr int64_t kBf16 = 2;
constexpr int64_t kInt8 = 3;
constexpr int64_t kInt4 = 4;
constexpr int64_t kInt2 = 5;
constexpr int64_t kFp32 = 6;

#ifndef EMBTABLE_Q_PREFETCH
#define EMBTABLE_Q_PREFETCH 24
#endif
constexpr int64_t kPrefetchDistance = EMBTABLE_Q_PREFETCH;  // ids ahead
constexpr int64_t kMaxDim = 4096;           // decode buffer (rows of larger dims use the reference)

int64_t code_bytes(int64_t format, int64_t dim) {
  switch (format) {
    case kFp32:
      return 4 * dim;
    case kFp16:
    case kBf16:
      return 2 * dim;
    case kInt8:
      return dim;
    case kInt4:
      return (dim + 1) / 2;
    case kInt2:
      return (dim + 3) / 4;
    default:
      TORCH_CHECK(false, "quantized kernels: unknown row format code ", format,
                  " (expected 1 fp16, 2 bf16, 3 int8, 4 int4, 5 int2, 6 fp32)");
  }
  return 0;
}

int64_t row_bytes(int64_t format, int64_t dim) {
  return code_bytes(format, dim) + (format >= kInt8 && format <= kInt2 ? 4 : 0);
}

// Prefetch a packed row into L1 (prefetcht0, measured a little faster than L2 here): its
// cache lines, including the last one (a row of
// D / 2 + 4 bytes at an arbitrary offset often straddles two lines).
#ifndef EMBTABLE_Q_LOCALITY
#define EMBTABLE_Q_LOCALITY 3
#endif
inline void prefetch_packed_row(const uint8_t* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) {
    __builtin_prefetch(p + o, 0, EMBTABLE_Q_LOCALITY);
    asm volatile("" : : "r"(p + o));
  }
  __builtin_prefetch(p + bytes - 1, 0, EMBTABLE_Q_LOCALITY);
}

inline float half_to_float(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
#endif
}

// Row `r` decoded and added into `acc`: acc[d] += w * decode(r)[d] (for kAssign: acc[d] =
// decode(r)[d]).  `codes` is scratch of at least dim bytes.
template <int64_t kFormat, bool kAssign>
inline void accumulate_row(const uint8_t* __restrict__ r, int64_t dim, float w,
                           float* __restrict__ acc, uint8_t* __restrict__ codes) {
  if constexpr (kFormat == kFp32) {
    const float* f = reinterpret_cast<const float*>(r);
    for (int64_t d = 0; d < dim; ++d) {
      if constexpr (kAssign) acc[d] = f[d]; else acc[d] += w * f[d];
    }
  } else if constexpr (kFormat == kFp16) {
    const c10::Half* h = reinterpret_cast<const c10::Half*>(r);
    for (int64_t d = 0; d < dim; ++d) {
      const float v = static_cast<float>(h[d]);
      if constexpr (kAssign) acc[d] = v; else acc[d] += w * v;
    }
  } else if constexpr (kFormat == kBf16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(r);
    for (int64_t d = 0; d < dim; ++d) {
      const uint32_t bits = static_cast<uint32_t>(h[d]) << 16;
      float v;
      std::memcpy(&v, &bits, 4);
      if constexpr (kAssign) acc[d] = v; else acc[d] += w * v;
    }
  } else {
    const int64_t nbytes = code_bytes(kFormat, dim);
    const float scale = half_to_float(r + nbytes);
    const float bias = half_to_float(r + nbytes + 2);
    const uint8_t* q = r;
    if constexpr (kFormat == kInt4) {
      for (int64_t j = 0; j < nbytes; ++j) {
        codes[2 * j] = r[j] & 15;
        codes[2 * j + 1] = r[j] >> 4;
      }
      q = codes;
    } else if constexpr (kFormat == kInt2) {
      for (int64_t j = 0; j < nbytes; ++j) {
        codes[4 * j] = r[j] & 3;
        codes[4 * j + 1] = (r[j] >> 2) & 3;
        codes[4 * j + 2] = (r[j] >> 4) & 3;
        codes[4 * j + 3] = r[j] >> 6;
      }
      q = codes;
    }
    if constexpr (kAssign) {
      for (int64_t d = 0; d < dim; ++d) acc[d] = scale * static_cast<float>(q[d]) + bias;
    } else {
      const float ws = w * scale;
      const float wb = w * bias;
      for (int64_t d = 0; d < dim; ++d) acc[d] += ws * static_cast<float>(q[d]) + wb;
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EMBTABLE_QUANTIZED_AVX2 1
// Elements 8k .. 8k + 7 of a stored row as floats: the values of a float format, the raw
// integer codes (before scale and bias) of an integer format.  Needs dim % 8 == 0.
template <int64_t kFormat>
inline __m256 load8(const uint8_t* __restrict__ r, int64_t k) {
  if constexpr (kFormat == kFp32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(r) + 8 * k);
  } else if constexpr (kFormat == kFp16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16 * k)));
  } else if constexpr (kFormat == kBf16) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16 * k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  } else if constexpr (kFormat == kInt8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + 8 * k));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
  } else if constexpr (kFormat == kInt4) {
    int32_t word;
    std::memcpy(&word, r + 4 * k, 4);
    const __m128i x = _mm_cvtsi32_si128(word);
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(x, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), mask);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));  // lo0 hi0 lo1 ..
  } else {
    uint16_t half;
    std::memcpy(&half, r + 2 * k, 2);
    const __m128i x = _mm_cvtsi32_si128(half);
    const __m128i mask = _mm_set1_epi8(0x03);
    const __m128i p0 = _mm_and_si128(x, mask);
    const __m128i p1 = _mm_and_si128(_mm_srli_epi16(x, 2), mask);
    const __m128i p2 = _mm_and_si128(_mm_srli_epi16(x, 4), mask);
    const __m128i p3 = _mm_and_si128(_mm_srli_epi16(x, 6), mask);
    const __m128i codes = _mm_unpacklo_epi16(_mm_unpacklo_epi8(p0, p1), _mm_unpacklo_epi8(p2, p3));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
  }
}

// Elements 16k .. 16k + 15 of an int4 / int2 row as two vectors of codes (one load of the
// 8 or 4 bytes that hold them).
template <int64_t kFormat>
inline void load16(const uint8_t* __restrict__ r, int64_t k, __m256& first, __m256& second) {
  __m128i codes;
  if constexpr (kFormat == kInt4) {
    const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + 8 * k));
    const __m128i mask = _mm_set1_epi8(0x0F);
    codes = _mm_unpacklo_epi8(_mm_and_si128(x, mask), _mm_and_si128(_mm_srli_epi16(x, 4), mask));
  } else {
    int32_t word;
    std::memcpy(&word, r + 4 * k, 4);
    const __m128i x = _mm_cvtsi32_si128(word);
    const __m128i mask = _mm_set1_epi8(0x03);
    const __m128i p0 = _mm_and_si128(x, mask);
    const __m128i p1 = _mm_and_si128(_mm_srli_epi16(x, 2), mask);
    const __m128i p2 = _mm_and_si128(_mm_srli_epi16(x, 4), mask);
    const __m128i p3 = _mm_and_si128(_mm_srli_epi16(x, 6), mask);
    codes = _mm_unpacklo_epi16(_mm_unpacklo_epi8(p0, p1), _mm_unpacklo_epi8(p2, p3));
  }
  first = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
  second = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
}

// Sum / mean pooling of rows whose dim is a multiple of 8.  Per row, a weighted row adds
// (w * scale) * q to the running sum and w * bias to one scalar that is added to every
// element at the end (the bias of a row is the same for all its elements).  kD > 0: the
// running sum stays in registers; kD == 0: it lives in the output row.
template <int64_t kFormat, int64_t kD, bool kWeighted>
int pool_sum_avx2_impl(const uint8_t* W, int64_t V, int64_t dim, const int64_t* I, const int64_t* O,
                       const float* P, float* Y, int64_t num_bags, int64_t padding_idx, bool mean) {
  constexpr bool kInteger = kFormat >= kInt8 && kFormat <= kInt2;
  const int64_t D = kD > 0 ? kD : dim;
  const int64_t blocks = D / 8;
  const int64_t stride = row_bytes(kFormat, D);
  const int64_t nbytes = code_bytes(kFormat, D);
  const int64_t total = O[num_bags];
  const int64_t last = std::max<int64_t>(total - 1, 0);
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t b = 0; b < num_bags; ++b) {
    constexpr int64_t kBlocks = kD > 0 ? kD / 8 : 1;
    __m256 acc[kBlocks];
    for (int64_t k = 0; k < kBlocks; ++k) acc[k] = _mm256_setzero_ps();
    float* __restrict__ y = Y + b * D;
    if constexpr (kD == 0) {
      for (int64_t k = 0; k < blocks; ++k) _mm256_storeu_ps(y + 8 * k, _mm256_setzero_ps());
    }
    float bias_sum = 0.0f;
    int64_t count = 0;
    for (int64_t i = O[b]; i < O[b + 1]; ++i) {
      {
        // the row 24 ids ahead (the last id near the end); an id outside the table is
        // clamped to row 0 for the prefetch only (it is reported below when reached)
        const int64_t ahead = I[std::min(i + kPrefetchDistance, last)];
        const int64_t safe = static_cast<uint64_t>(ahead) < static_cast<uint64_t>(V) ? ahead : 0;
        prefetch_packed_row(W + safe * stride, stride);
      }
      const int64_t id = I[i];
      if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
        bad = 1;
        continue;
      }
      if (id == padding_idx) continue;
      const uint8_t* row = W + id * stride;
      const float w = kWeighted ? P[i] : 1.0f;
      float factor = w;
      if constexpr (kInteger) {
        int32_t header;
        std::memcpy(&header, row + nbytes, 4);
        const __m128 sb = _mm_cvtph_ps(_mm_cvtsi32_si128(header));  // scale, bias
        factor = w * _mm_cvtss_f32(sb);
        bias_sum += w * _mm_cvtss_f32(_mm_movehdup_ps(sb));
      }
      const __m256 f = _mm256_set1_ps(factor);
      if constexpr (kD > 0 && kD % 16 == 0 && (kFormat == kInt4 || kFormat == kInt2)) {
        for (int64_t k = 0; k < kBlocks / 2; ++k) {
          __m256 first, second;
          load16<kFormat>(row, k, first, second);
          acc[2 * k] = _mm256_fmadd_ps(f, first, acc[2 * k]);
          acc[2 * k + 1] = _mm256_fmadd_ps(f, second, acc[2 * k + 1]);
        }
      } else if constexpr (kD > 0) {
        for (int64_t k = 0; k < kBlocks; ++k) acc[k] = _mm256_fmadd_ps(f, load8<kFormat>(row, k), acc[k]);
      } else {
        for (int64_t k = 0; k < blocks; ++k) {
          _mm256_storeu_ps(y + 8 * k, _mm256_fmadd_ps(f, load8<kFormat>(row, k), _mm256_loadu_ps(y + 8 * k)));
        }
      }
      ++count;
    }
    const __m256 shift = _mm256_set1_ps(bias_sum);
    if (mean && count > 1) {  // a division only where it changes something (it is slow)
      const __m256 divisor = _mm256_set1_ps(static_cast<float>(count));
      for (int64_t k = 0; k < blocks; ++k) {
        const __m256 sum = kD > 0 ? acc[k] : _mm256_loadu_ps(y + 8 * k);
        _mm256_storeu_ps(y + 8 * k, _mm256_div_ps(_mm256_add_ps(sum, shift), divisor));
      }
    } else {
      for (int64_t k = 0; k < blocks; ++k) {
        const __m256 sum = kD > 0 ? acc[k] : _mm256_loadu_ps(y + 8 * k);
        _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(sum, shift));
      }
    }
  }
  return bad;
}

template <int64_t kFormat, int64_t kD>
int pool_sum_avx2(const uint8_t* W, int64_t V, int64_t dim, const int64_t* I, const int64_t* O,
                  const float* P, float* Y, int64_t num_bags, int64_t padding_idx, bool mean) {
  if (P != nullptr) return pool_sum_avx2_impl<kFormat, kD, true>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
  return pool_sum_avx2_impl<kFormat, kD, false>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
}
#endif

#if defined(__AVX512F__)
#define EMBTABLE_QUANTIZED_AVX512 1
// GCC 12's avx512fintrin.h fills unused lanes from a self-initialized variable, which
// -Wmaybe-uninitialized reports at every inlined use: a false positive
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Elements 16k .. 16k + 15 of a stored row as floats (values of a float format, raw codes of
// an integer format).  Needs dim % 16 == 0.
template <int64_t kFormat>
inline __m512 load16_512(const uint8_t* __restrict__ r, int64_t k) {
  if constexpr (kFormat == kFp32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(r) + 16 * k);
  } else if constexpr (kFormat == kFp16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + 32 * k)));
  } else if constexpr (kFormat == kBf16) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + 32 * k)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  } else if constexpr (kFormat == kInt8) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16 * k))));
  } else if constexpr (kFormat == kInt4) {
    const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + 8 * k));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(x, mask), _mm_and_si128(_mm_srli_epi16(x, 4), mask));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes));  // lo0 hi0 lo1 hi1 ..
  } else {
    int32_t word;
    std::memcpy(&word, r + 4 * k, 4);
    const __m128i x = _mm_cvtsi32_si128(word);
    const __m128i mask = _mm_set1_epi8(0x03);
    const __m128i p0 = _mm_and_si128(x, mask);
    const __m128i p1 = _mm_and_si128(_mm_srli_epi16(x, 2), mask);
    const __m128i p2 = _mm_and_si128(_mm_srli_epi16(x, 4), mask);
    const __m128i p3 = _mm_and_si128(_mm_srli_epi16(x, 6), mask);
    const __m128i codes = _mm_unpacklo_epi16(_mm_unpacklo_epi8(p0, p1), _mm_unpacklo_epi8(p2, p3));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes));
  }
}

// Code planes back to element order, in place: acc[kPerByte * g + j] lane i holds element
// 16 * kPerByte * g + kPerByte * i + j; afterwards acc[k] holds elements 16k .. 16k + 15.
template <int64_t kPerByte>
inline void interleave_planes(__m512* acc, int64_t blocks) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t g = 0; g < blocks / kPerByte; ++g) {
    __m512* a = acc + kPerByte * g;
    if constexpr (kPerByte == 2) {
      const __m512 first = _mm512_permutex2var_ps(a[0], lo, a[1]);
      const __m512 second = _mm512_permutex2var_ps(a[0], hi, a[1]);
      a[0] = first;
      a[1] = second;
    } else {
      // pairs (plane 0, plane 1) and (plane 2, plane 3), then the pairs interleaved as 64-bit lanes
      const __m512d p_lo = _mm512_castps_pd(_mm512_permutex2var_ps(a[0], lo, a[1]));
      const __m512d p_hi = _mm512_castps_pd(_mm512_permutex2var_ps(a[0], hi, a[1]));
      const __m512d q_lo = _mm512_castps_pd(_mm512_permutex2var_ps(a[2], lo, a[3]));
      const __m512d q_hi = _mm512_castps_pd(_mm512_permutex2var_ps(a[2], hi, a[3]));
      const __m512i first = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
      const __m512i second = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
      a[0] = _mm512_castpd_ps(_mm512_permutex2var_pd(p_lo, first, q_lo));
      a[1] = _mm512_castpd_ps(_mm512_permutex2var_pd(p_lo, second, q_lo));
      a[2] = _mm512_castpd_ps(_mm512_permutex2var_pd(p_hi, first, q_hi));
      a[3] = _mm512_castpd_ps(_mm512_permutex2var_pd(p_hi, second, q_hi));
    }
  }
}

// pool_sum_avx2_impl with 16-wide registers for dims kD = 32, 64, 128: the running sum of a
// bag stays in kD / 16 zmm registers (no spills at D = 128), and the row stride is a
// compile-time constant.  Same arithmetic per element: acc += (w * scale) * q, plus the
// bag's summed w * bias once at the end.
template <int64_t kFormat, int64_t kD, bool kWeighted>
int pool_sum_avx512_impl(const uint8_t* W, int64_t V, const int64_t* I, const int64_t* O, const float* P,
                         float* Y, int64_t num_bags, int64_t padding_idx, bool mean) {
  constexpr bool kInteger = kFormat >= kInt8 && kFormat <= kInt2;
  constexpr int64_t kBlocks = kD / 16;
  constexpr int64_t kCodeBytes = kFormat == kFp32 ? 4 * kD
                                 : (kFormat == kFp16 || kFormat == kBf16) ? 2 * kD
                                 : kFormat == kInt8 ? kD
                                 : kFormat == kInt4 ? kD / 2
                                                    : kD / 4;
  constexpr int64_t kStride = kCodeBytes + (kInteger ? 4 : 0);
  // int4 / int2 rows whose codes fill whole 16-byte groups decode by code planes
  constexpr int64_t kPerByte = kFormat == kInt4 ? 2 : kFormat == kInt2 ? 4 : 1;
  constexpr int64_t kBits = 8 / kPerByte;
  constexpr bool kSplit = kPerByte > 1 && kCodeBytes % 16 == 0;
  const int64_t total = O[num_bags];
  const int64_t last = std::max<int64_t>(total - 1, 0);
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t b = 0; b < num_bags; ++b) {
    __m512 acc[kBlocks];
    for (int64_t k = 0; k < kBlocks; ++k) acc[k] = _mm512_setzero_ps();
    __m128 biases = _mm_setzero_ps();
    int64_t count = 0;
    for (int64_t i = O[b]; i < O[b + 1]; ++i) {
      {
        // the row kPrefetchDistance ids ahead (clamped to the last id).  The address is
        // formed as an integer and never dereferenced: a prefetch does not fault, so an id
        // outside the table needs no check here (it is reported when reached)
        const uint64_t ahead = static_cast<uint64_t>(I[std::min(i + kPrefetchDistance, last)]);
        const uintptr_t p = reinterpret_cast<uintptr_t>(W) + ahead * static_cast<uint64_t>(kStride);
        for (int64_t o = 0; o < kStride; o += 64) {
          __builtin_prefetch(reinterpret_cast<const void*>(p + o), 0, EMBTABLE_Q_LOCALITY);
        }
        if constexpr (kStride % 64 != 0) {
          __builtin_prefetch(reinterpret_cast<const void*>(p + kStride - 1), 0, EMBTABLE_Q_LOCALITY);
        }
      }
      const int64_t id = I[i];
      if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
        bad = 1;
        continue;
      }
      if (id == padding_idx) continue;
      const uint8_t* row = W + id * kStride;
      __m512 f;
      if constexpr (kInteger) {
        int32_t header;
        std::memcpy(&header, row + kCodeBytes, 4);
        __m128 sb = _mm_cvtph_ps(_mm_cvtsi32_si128(header));  // scale, bias (lanes 0, 1)
        if constexpr (kWeighted) sb = _mm_mul_ps(_mm_set1_ps(P[i]), sb);  // w * scale, w * bias
        biases = _mm_add_ps(biases, sb);  // lane 1: the bag's sum of w * bias
        f = _mm512_broadcastss_ps(sb);
      } else {
        f = _mm512_set1_ps(kWeighted ? P[i] : 1.0f);
      }
      if constexpr (kSplit) {
        // 16 bytes at a time, one byte per lane: lane i of code plane j holds element
        // kPerByte * i + j of the group (planes are interleaved back once per bag, below)
        for (int64_t g = 0; g < kBlocks / kPerByte; ++g) {
          const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * g)));
          for (int64_t j = 0; j < kPerByte; ++j) {
            __m512i plane = j == 0 ? bytes : _mm512_srli_epi32(bytes, static_cast<unsigned>(j * kBits));
            if (j + 1 < kPerByte) plane = _mm512_and_si512(plane, _mm512_set1_epi32((1 << kBits) - 1));
            acc[kPerByte * g + j] = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(plane), acc[kPerByte * g + j]);
          }
        }
      } else {
        for (int64_t k = 0; k < kBlocks; ++k) acc[k] = _mm512_fmadd_ps(f, load16_512<kFormat>(row, k), acc[k]);
      }
      ++count;
    }
    if constexpr (kSplit) interleave_planes<kPerByte>(acc, kBlocks);
    float* __restrict__ y = Y + b * kD;
    const __m512 shift = _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(biases)));
    if (mean && count > 1) {  // a division only where it changes something (it is slow)
      const __m512 divisor = _mm512_set1_ps(static_cast<float>(count));
      for (int64_t k = 0; k < kBlocks; ++k) _mm512_storeu_ps(y + 16 * k, _mm512_div_ps(_mm512_add_ps(acc[k], shift), divisor));
    } else {
      for (int64_t k = 0; k < kBlocks; ++k) _mm512_storeu_ps(y + 16 * k, _mm512_add_ps(acc[k], shift));
    }
  }
  return bad;
}

template <int64_t kFormat, int64_t kD>
int pool_sum_avx512(const uint8_t* W, int64_t V, const int64_t* I, const int64_t* O, const float* P,
                    float* Y, int64_t num_bags, int64_t padding_idx, bool mean) {
  if (P != nullptr) return pool_sum_avx512_impl<kFormat, kD, true>(W, V, I, O, P, Y, num_bags, padding_idx, mean);
  return pool_sum_avx512_impl<kFormat, kD, false>(W, V, I, O, P, Y, num_bags, padding_idx, mean);
}
#pragma GCC diagnostic pop
#endif

void check_offsets(const int64_t* O, int64_t num_bounds, int64_t num_ids, const char* api) {
  bool ok = num_bounds == 0 || O[0] == 0;
  for (int64_t b = 0; ok && b + 1 < num_bounds; ++b) ok = O[b] <= O[b + 1];
  ok = ok && (num_bounds == 0 || O[num_bounds - 1] <= num_ids);
  TORCH_CHECK(ok, api, ": invalid bag offsets (expected 0 first, non-decreasing, at most ",
              num_ids, ")");
}

at::Tensor check_packed(const at::Tensor& packed_in, int64_t format, int64_t dim, const char* api) {
  TORCH_CHECK(dim >= 0 && dim <= kMaxDim, api, ": dim must lie in 0..", kMaxDim, ", got ", dim);
  const int64_t bytes = row_bytes(format, dim);
  TORCH_CHECK(packed_in.dim() == 2 && packed_in.scalar_type() == at::kByte &&
                  packed_in.size(1) == bytes,
              api, ": packed must be uint8 [num_rows, ", bytes, "] for format code ", format,
              " and dim ", dim, ", got ", packed_in.scalar_type(), " of shape ",
              packed_in.sizes());
  return packed_in.contiguous();
}

template <int64_t kFormat, int64_t kMode>
int pool(const uint8_t* W, int64_t V, int64_t dim, const int64_t* I, const int64_t* O,
         const float* P, float* Y, int64_t num_bags, int64_t padding_idx) {
  const int64_t stride = row_bytes(kFormat, dim);
  const int64_t total = O[num_bags];
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t b = 0; b < num_bags; ++b) {
    alignas(64) uint8_t codes[kMaxDim + 8];
    alignas(64) float value[kMaxDim];
    float* __restrict__ y = Y + b * dim;
    int64_t count = 0;
    for (int64_t i = O[b]; i < O[b + 1]; ++i) {
      if (i + kPrefetchDistance < total) {
        const int64_t ahead = I[i + kPrefetchDistance];
        if (static_cast<uint64_t>(ahead) < static_cast<uint64_t>(V)) {
          prefetch_row(W + ahead * stride, stride, 0);
        }
      }
      const int64_t id = I[i];
      if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
        bad = 1;
        continue;
      }
      if (id == padding_idx) continue;
      const uint8_t* row = W + id * stride;
      if constexpr (kMode == kPoolMax) {
        if (count == 0) {
          accumulate_row<kFormat, true>(row, dim, 1.0f, y, codes);
        } else {
          accumulate_row<kFormat, true>(row, dim, 1.0f, value, codes);
          for (int64_t d = 0; d < dim; ++d) y[d] = value[d] > y[d] ? value[d] : y[d];
        }
      } else {
        accumulate_row<kFormat, false>(row, dim, P != nullptr ? P[i] : 1.0f, y, codes);
      }
      ++count;
    }
    if (kMode == kPoolMean && count > 0) {
      const float n = static_cast<float>(count);
      for (int64_t d = 0; d < dim; ++d) y[d] = y[d] / n;
    }
  }
  return bad;
}

template <int64_t kFormat>
int pool_format(int64_t pooling, const uint8_t* W, int64_t V, int64_t dim, const int64_t* I,
                const int64_t* O, const float* P, float* Y, int64_t num_bags, int64_t padding_idx) {
#ifdef EMBTABLE_QUANTIZED_AVX2
  if (pooling != kPoolMax && dim % 8 == 0) {
    const bool mean = pooling == kPoolMean;
#ifdef EMBTABLE_QUANTIZED_AVX512
    if (dim == 64) return pool_sum_avx512<kFormat, 64>(W, V, I, O, P, Y, num_bags, padding_idx, mean);
    if (dim == 128) return pool_sum_avx512<kFormat, 128>(W, V, I, O, P, Y, num_bags, padding_idx, mean);
    if (dim == 32) return pool_sum_avx512<kFormat, 32>(W, V, I, O, P, Y, num_bags, padding_idx, mean);
#endif
    if (dim == 64) return pool_sum_avx2<kFormat, 64>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
    if (dim == 128) return pool_sum_avx2<kFormat, 128>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
    if (dim == 32) return pool_sum_avx2<kFormat, 32>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
    return pool_sum_avx2<kFormat, 0>(W, V, dim, I, O, P, Y, num_bags, padding_idx, mean);
  }
#endif
  if (pooling == kPoolMax) return pool<kFormat, kPoolMax>(W, V, dim, I, O, P, Y, num_bags, padding_idx);
  if (pooling == kPoolMean) return pool<kFormat, kPoolMean>(W, V, dim, I, O, P, Y, num_bags, padding_idx);
  return pool<kFormat, kPoolSum>(W, V, dim, I, O, P, Y, num_bags, padding_idx);
}

at::Tensor quantized_pool_bags_cpu(const at::Tensor& packed_in, int64_t format, int64_t dim,
                                   const at::Tensor& ids_in, const at::Tensor& offsets_in,
                                   const std::optional<at::Tensor>& per_sample_weights,
                                   int64_t pooling, int64_t padding_idx, bool include_last_offset) {
  const char* api = "quantized_pool_bags";
  TORCH_CHECK(pooling == kPoolSum || pooling == kPoolMean || pooling == kPoolMax, api,
              ": pooling must be 1 (sum), 2 (mean) or 3 (max), got ", pooling);
  const at::Tensor packed = check_packed(packed_in, format, dim, api);
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const at::Tensor offsets = offsets_in.to(at::kLong).contiguous();
  // include_last_offset=false: offsets hold the B bag starts, the last bag ends at len(ids)
  const int64_t num_bags = include_last_offset ? std::max<int64_t>(offsets.numel() - 1, 0) : offsets.numel();
  const int64_t* O = offsets.data_ptr<int64_t>();
  check_offsets(O, offsets.numel(), ids.numel(), api);
  const float* P = nullptr;
  at::Tensor psw;
  if (per_sample_weights.has_value() && per_sample_weights->defined()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
    TORCH_CHECK(psw.numel() == ids.numel(), api, ": per_sample_weights has ", psw.numel(),
                " values for ", ids.numel(), " ids");
    P = psw.data_ptr<float>();
  }
#ifdef EMBTABLE_QUANTIZED_AVX2
  const bool writes_all = pooling != kPoolMax && dim % 8 == 0;  // pool_sum_avx2 stores every row
#else
  const bool writes_all = false;
#endif
  const auto float_options = packed.options().dtype(at::kFloat);
  at::Tensor out = writes_all && num_bags > 0 && dim > 0 ? at::empty({num_bags, dim}, float_options)
                                                         : at::zeros({num_bags, dim}, float_options);
  if (num_bags == 0 || dim == 0) return out;
  at::Tensor bounds;  // B + 1 boundaries, allocated after the output (which then reuses the
                      // memory a caller just freed, still in cache, as it would without them)
  if (!include_last_offset) {
    bounds = at::empty({num_bags + 1}, offsets.options());
    int64_t* B = bounds.data_ptr<int64_t>();
    std::memcpy(B, O, num_bags * sizeof(int64_t));
    B[num_bags] = ids.numel();
    O = B;
  }
  const uint8_t* W = packed.data_ptr<uint8_t>();
  const int64_t V = packed.size(0);
  const int64_t* I = ids.data_ptr<int64_t>();
  float* Y = out.data_ptr<float>();
  int bad = 0;
  switch (format) {
    case kFp32: bad = pool_format<kFp32>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    case kFp16: bad = pool_format<kFp16>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    case kBf16: bad = pool_format<kBf16>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    case kInt8: bad = pool_format<kInt8>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    case kInt4: bad = pool_format<kInt4>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    case kInt2: bad = pool_format<kInt2>(pooling, W, V, dim, I, O, P, Y, num_bags, padding_idx); break;
    default: TORCH_CHECK(false, api, ": unknown row format code ", format);
  }
  TORCH_CHECK(!bad, api, ": an id lies outside the table of ", V, " rows");
  return out;
}

template <int64_t kFormat>
int gather(const uint8_t* W, int64_t V, int64_t dim, const int64_t* I, int64_t n, float* Y) {
  const int64_t stride = row_bytes(kFormat, dim);
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    alignas(64) uint8_t codes[kMaxDim + 8];
    if (i + kPrefetchDistance < n) {
      const int64_t ahead = I[i + kPrefetchDistance];
      if (static_cast<uint64_t>(ahead) < static_cast<uint64_t>(V)) {
        prefetch_row(W + ahead * stride, stride, 0);
      }
    }
    const int64_t id = I[i];
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(V)) {
      bad = 1;
      continue;
    }
    const uint8_t* row = W + id * stride;
#ifdef EMBTABLE_QUANTIZED_AVX2
    if (dim % 8 == 0) {
      constexpr bool kInteger = kFormat >= kInt8 && kFormat <= kInt2;
      const int64_t nbytes = code_bytes(kFormat, dim);
      const __m256 scale = _mm256_set1_ps(kInteger ? half_to_float(row + nbytes) : 1.0f);
      const __m256 bias = _mm256_set1_ps(kInteger ? half_to_float(row + nbytes + 2) : 0.0f);
      for (int64_t k = 0; k < dim / 8; ++k) {
        // scale * q + bias rounded twice, as the reference decodes (no fused multiply-add)
        _mm256_storeu_ps(Y + i * dim + 8 * k, _mm256_add_ps(_mm256_mul_ps(scale, load8<kFormat>(row, k)), bias));
      }
      continue;
    }
#endif
    accumulate_row<kFormat, true>(row, dim, 1.0f, Y + i * dim, codes);
  }
  return bad;
}

at::Tensor quantized_gather_rows_cpu(const at::Tensor& packed_in, int64_t format, int64_t dim,
                                     const at::Tensor& ids_in) {
  const char* api = "quantized_gather_rows";
  const at::Tensor packed = check_packed(packed_in, format, dim, api);
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  TORCH_CHECK(ids.dim() == 1, api, ": ids must be 1-D, got shape ", ids.sizes());
  const int64_t n = ids.numel();
  at::Tensor out = at::empty({n, dim}, packed.options().dtype(at::kFloat));
  if (n == 0 || dim == 0) return out;
  const uint8_t* W = packed.data_ptr<uint8_t>();
  const int64_t V = packed.size(0);
  const int64_t* I = ids.data_ptr<int64_t>();
  float* Y = out.data_ptr<float>();
  int bad = 0;
  switch (format) {
    case kFp32: bad = gather<kFp32>(W, V, dim, I, n, Y); break;
    case kFp16: bad = gather<kFp16>(W, V, dim, I, n, Y); break;
    case kBf16: bad = gather<kBf16>(W, V, dim, I, n, Y); break;
    case kInt8: bad = gather<kInt8>(W, V, dim, I, n, Y); break;
    case kInt4: bad = gather<kInt4>(W, V, dim, I, n, Y); break;
    case kInt2: bad = gather<kInt2>(W, V, dim, I, n, Y); break;
    default: TORCH_CHECK(false, api, ": unknown row format code ", format);
  }
  TORCH_CHECK(!bad, api, ": an id lies outside the table of ", V, " rows");
  return out;
}

}  // namespace
}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def(
      "quantized_pool_bags(Tensor packed, int format, int dim, Tensor ids, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, int padding_idx, bool include_last_offset=True) -> Tensor");
  m.def("quantized_gather_rows(Tensor packed, int format, int dim, Tensor ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("quantized_pool_bags", &embtable::quantized_pool_bags_cpu);
  m.impl("quantized_gather_rows", &embtable::quantized_gather_rows_cpu);
}
