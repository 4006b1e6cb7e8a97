// Shared by the column shards' row statistics: the distinct rows of a batch of ids by a byte
// mark per table row (fused_rowstat_cpu.cpp's rowstat_distinct, rowstat_strided_cpu.cpp), and
// the distinct rows and summed gradient of sum / mean bags (rowstat_strided_cpu.cpp; behind
// both rowstat_reduce and rowstat_reduce_strided).

#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

namespace embtable {
namespace rowstat {

// The sorted distinct ids of ip[0..n) in [0, num_rows) (range-checked; `skip`, if in range,
// left out) by a byte mark per table row, and position[r] = r's index among them (valid
// only for those rows).
struct Distinct {
  at::Tensor rows;
  std::unique_ptr<int32_t[]> position;
};

inline Distinct distinct_by_marks(const char* api, const int64_t* ip, int64_t n, int64_t num_rows,
                                  int64_t skip, const at::TensorOptions& options) {
  TORCH_CHECK(num_rows >= 0 && num_rows < (int64_t{1} << 31), api,
              ": num_rows must be in [0, 2^31), got ", num_rows);
  std::vector<uint8_t> mark(static_cast<size_t>(num_rows) + 8, 0);  // (8 bytes of padding)
  for (int64_t i = 0; i < n; ++i) {  // (the marks are local: a bad id leaves nothing behind)
    TORCH_CHECK_INDEX(ip[i] >= 0 && ip[i] < num_rows, api, ": id ", ip[i], " at position ", i,
                      " is outside the table's ", num_rows, " rows");
    mark[ip[i]] = 1;
  }
  Distinct out;
  out.position.reset(new int32_t[static_cast<size_t>(std::max<int64_t>(num_rows, 1))]);
  if (skip >= 0 && skip < num_rows) mark[skip] = 0;
  // found[count] is written for every row of a non-zero word and kept by marked ones only
  // (branch-free: the marks are random, a branch per row mispredicts): one spare slot
  std::vector<int64_t> found(static_cast<size_t>(std::min(n, num_rows)) + 1);
  int32_t* position = out.position.get();
  int64_t count = 0;
  for (int64_t r = 0; r < num_rows;) {
    uint64_t word;
    std::memcpy(&word, mark.data() + r, sizeof(word));
    if (word == 0) {  // eight unmarked rows at once
      r += 8;
      continue;
    }
    const int64_t stop = std::min<int64_t>(r + 8, num_rows);
    for (; r < stop; ++r) {
      position[r] = static_cast<int32_t>(count);
      found[count] = r;
      count += mark[r];
    }
  }
  out.rows = at::empty({count}, options);
  std::memcpy(out.rows.data_ptr<int64_t>(), found.data(), sizeof(int64_t) * count);
  return out;
}

// rowstat_reduce_strided's kernel (its checks' messages name `api`): the sorted distinct
// non-padding rows of the bags of ids / offsets and each row's summed gradient, bag
// k = f * nb + b reading grad[f, b] of a float32 [F, nb, D] grad with any strides.
std::tuple<at::Tensor, at::Tensor> reduce_feature_bags(
    const char* api, const at::Tensor& ids, const at::Tensor& offsets, const at::Tensor& grad,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows, int64_t pooling,
    int64_t padding_idx);

}  // namespace rowstat
}  // namespace embtable
