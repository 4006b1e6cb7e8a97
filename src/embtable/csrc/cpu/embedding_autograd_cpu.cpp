// `embtable::embedding_lookup`: the row lookup of `Embedding` with its autograd formula in C++
// (issue 11, item 4).  The Python `torch.autograd.Function` it replaces on the plain eager path
// cost ~17-19 us more a call in the forward and again in the backward (benchmarks/core.py
// --ids 1x2); this op's forward and backward run without entering Python.
//
//   embedding_lookup(weight, ids, padding_idx, scale_grad_by_freq, sparse) -> out
//     out = weight[ids], shape ids.shape + [D].  padding_idx: a row number, or -1 for none.
//
// Kernels (registered in this translation unit):
//   CPU:      the gather (embtable::gather_rows' kernel for contiguous float32 tables, else
//             index_select), viewed as ids.shape + [D].
//   Autograd: records an EmbeddingLookupBackward node (as torch's generated EmbeddingBackward0)
//             whose backward forms the weight's gradient with the same ATen calls, in the
//             same order, as the Python oracle (embtable/_functions.py, `_embedding_grad`,
//             and embtable/ops/_reference.py), so the results are its results, bit for bit:
//             dense  - zeros [V, D], index_add_ of the (scaled) output-gradient rows, padding
//                      rows dropped first: bit-identical to torch's dense backward (with
//                      scale_grad_by_freq within rounding: torch fuses scale * row + sum);
//             sparse - an uncoalesced COO tensor with one entry per non-padding id in input
//                      order, as torch's sparse backward returns it;
//             inside vmap (`autograd.grad(..., is_grads_batched=True)`) - the vmap-able dense
//                      formula of `embedding_backward_batchable`.
//             Being ATen calls, the backward is itself differentiable (double backward).
// The fake kernel is registered from Python (embtable/_functions.py).  Only float32 and
// float64 tables are accepted: 16-bit tables need torch's in-type accumulation, which the
// Python path implements (`embedding_backward_half`).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "rows_cpu.h"

namespace embtable {
namespace {

using torch::autograd::variable_list;

constexpr const char* kApi = "embtable::embedding_lookup";

void check_arguments(const at::Tensor& weight, const at::Tensor& ids) {
  TORCH_CHECK_VALUE(weight.dim() == 2, kApi, ": weight must be 2-D (num_embeddings, embedding_dim), got shape ",
                    weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, kApi,
                   ": weight must be float32 or float64 (16-bit tables take the Python path), got ",
                   weight.scalar_type());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, kApi,
                   ": ids must be int64 or int32, got ", ids.scalar_type());
}

// weight[ids] as ids.shape + [D] (IndexError for an id outside the table).
at::Tensor embedding_lookup_cpu(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx,
                                bool scale_grad_by_freq, bool sparse) {
  check_arguments(weight, ids);
  const at::Tensor flat = ids.reshape({-1});
  const at::Tensor rows = weight.scalar_type() == at::kFloat && weight.is_contiguous()
                              ? gather_rows_cpu(weight, flat)
                              : at::index_select(weight, 0, flat);
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(weight.size(1));
  return rows.view(shape);
}

// For each position of ids, 1 / (number of times its id occurs in ids), float64
// (embtable.ops._reference.frequency_scale).
at::Tensor frequency_scale(const at::Tensor& ids) {
  auto [unique, inverse, counts] = at::_unique2(ids, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/true);
  return counts.to(at::kDouble).reciprocal().index_select(0, inverse.reshape({-1}));
}

// rows * scale per row, in the rows' dtype (embtable.ops._reference._scaled; float32/64 only).
at::Tensor scaled(const at::Tensor& rows, const at::Tensor& scale) {
  if (!scale.defined()) return rows;
  return rows * scale.to(rows.scalar_type()).unsqueeze(1);
}

// The vmap-able dense gradient (embtable.ops._reference.embedding_backward_batchable).
at::Tensor batchable_grad(int64_t num_rows, const at::Tensor& ids, at::Tensor rows, int64_t padding_idx,
                          bool scale_grad_by_freq) {
  if (scale_grad_by_freq) {
    const at::Tensor ones = at::ones(ids.sizes(), ids.options().dtype(at::kDouble));
    const at::Tensor counts = ones.new_zeros({num_rows}).index_add(0, ids, ones);
    rows = scaled(rows, counts.reciprocal().index_select(0, ids));
  }
  if (padding_idx >= 0) rows = at::where((ids != padding_idx).unsqueeze(1), rows, at::Scalar(0));
  const int64_t dim = rows.size(-1);
  at::Tensor out = rows.numel() == 0
                       ? rows.new_zeros({num_rows, dim})
                       : at::zeros_like(rows.reshape({-1}).slice(0, 0, 1)).expand({num_rows, dim}).clone();
  return out.index_put_(c10::List<std::optional<at::Tensor>>({ids}), rows, /*accumulate=*/true);
}

// The weight's gradient of a lookup of the 1-D `ids` (embtable._functions._embedding_grad).
// Sizes are SymInts, so that AOT autograd can trace it with symbolic shapes (opcheck).
at::Tensor embedding_grad(const c10::SymInt& num_rows, at::Tensor ids, const at::Tensor& grad_output,
                          int64_t padding_idx, bool scale_grad_by_freq, bool sparse) {
  const c10::SymInt dim = grad_output.sym_size(-1);
  at::Tensor rows = grad_output.reshape_symint({ids.sym_size(-1), dim});
  if (grad_output.key_set().has(c10::DispatchKey::FuncTorchBatched)) {
    return batchable_grad(num_rows.expect_int(), ids, rows, padding_idx, scale_grad_by_freq);
  }
  at::Tensor scale = scale_grad_by_freq ? frequency_scale(ids) : at::Tensor();
  if (padding_idx >= 0) {  // embtable.ops._reference._drop_padding_rows
    const c10::List<std::optional<at::Tensor>> mask({ids != padding_idx});
    ids = ids.index(mask);
    rows = rows.index(mask);
    if (scale.defined()) scale = scale.index(mask);
  }
  if (sparse) {  // embtable.ops._reference.sparse_row_grad
    // No branch for "no id left" (the reference's [1, 0] indices and [0, D] values): these
    // views have those shapes then, and a branch would be a data-dependent guard when traced.
    // `rows` is [len(ids), D] already (the reference's reshape of the values is a no-op).
    const at::Tensor long_ids = ids.scalar_type() == at::kLong ? ids : ids.to(at::kLong);
    const at::Tensor indices = long_ids.view_symint({1, ids.sym_numel()});
    const at::Tensor values = scaled(rows, scale);
    const c10::TensorOptions options = values.options().layout(at::kSparse);
    if (at::globalContext().checkSparseTensorInvariants()) {  // validated, as torch's would be
      return at::_sparse_coo_tensor_unsafe_symint(indices, values, {num_rows, dim}, options);
    }
    // What _sparse_coo_tensor_unsafe calls (without its dispatch and argument checks)
    return at::_sparse_coo_tensor_with_dims_and_tensors_symint(1, 1, {num_rows, dim}, indices, values, options);
  }
  at::Tensor out = rows.new_zeros_symint({num_rows, dim});  // embtable.ops._reference.scatter_add_rows
  return out.index_add_(0, ids, scaled(rows, scale));
}

// The backward node, written as torch's generated nodes are (EmbeddingBackward0): a
// torch::autograd::Function would cost a few microseconds more a call (its context's map of
// saved values, the output wrapping of Function::apply).
struct EmbeddingLookupBackward : public torch::autograd::Node {
  std::string name() const override { return "EmbeddingLookupBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    ids_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor ids = ids_.unpack();  // raises if the graph was freed by a first backward
    at::Tensor grad_weight;
    if (task_should_compute_output(0) && grads[0].defined()) {
      grad_weight = embedding_grad(num_rows_, ids.dim() == 1 ? ids : ids.reshape({-1}), grads[0], padding_idx_,
                                   scale_grad_by_freq_, sparse_);
    }
    return {grad_weight};
  }

  torch::autograd::SavedVariable ids_;
  c10::SymInt num_rows_;
  int64_t padding_idx_ = -1;
  bool scale_grad_by_freq_ = false;
  bool sparse_ = false;
};

// The Autograd kernel: records EmbeddingLookupBackward when the weight needs a gradient, and
// runs the lookup below autograd (the CPU kernel, or the fake kernel when traced).
at::Tensor embedding_lookup_autograd(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx,
                                     bool scale_grad_by_freq, bool sparse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("embtable::embedding_lookup", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>();
  TORCH_CHECK_NOT_IMPLEMENTED(!weight._fw_grad(/*level=*/0).defined(), kApi,
                              ": forward-mode AD is not supported here; embtable.functional.embedding "
                              "takes the Python Function (with a jvp rule) under forward AD");
  c10::intrusive_ptr<EmbeddingLookupBackward> grad_fn;
  if (torch::autograd::compute_requires_grad(weight)) {
    grad_fn = c10::make_intrusive<EmbeddingLookupBackward>();
    grad_fn->set_next_edges(torch::autograd::collect_next_edges(weight));
    grad_fn->ids_ = torch::autograd::SavedVariable(ids, /*is_output=*/false);
    grad_fn->num_rows_ = weight.sym_size(0);
    grad_fn->padding_idx_ = padding_idx;
    grad_fn->scale_grad_by_freq_ = scale_grad_by_freq;
    grad_fn->sparse_ = sparse;
  }
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(weight, ids, padding_idx, scale_grad_by_freq, sparse);
  }
  if (grad_fn) torch::autograd::set_history(out, grad_fn);
  return out;
}

}  // namespace
}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def("embedding_lookup(Tensor weight, Tensor ids, int padding_idx, bool scale_grad_by_freq, bool sparse) -> Tensor");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("embedding_lookup", &embtable::embedding_lookup_cpu);
}

TORCH_LIBRARY_IMPL(embtable, Autograd, m) {
  m.impl("embedding_lookup", &embtable::embedding_lookup_autograd);
}
