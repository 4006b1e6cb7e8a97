// Front end of embtable's compiled CPU extension `embtable._C`: registers the operators
// `embtable::gather_rows`, `embtable::pool_bags`, `embtable::pool_bags_grouped`,
// `embtable::pool_bags_backward`, `embtable::bucket_ids`, `embtable::pool_bucket` and
// `embtable::fused_update_rows` (schemas below) with their CPU kernels.
// Fake (meta) kernels are registered from Python in embtable/ops/_compiled.py.

#include <Python.h>
#include <torch/library.h>

#include "cpu/rows_cpu.h"

// A bare Python module so that `import embtable._C` loads this library and runs the
// registrations; all functionality is reached through torch.ops.embtable.*.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(embtable, m) {
  m.def(
      "pool_bags(Tensor weight, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int pooling, int padding_idx) -> (Tensor, Tensor)");
  m.def(
      "pool_bags_grouped(Tensor weight, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int pooling, int padding_idx, int num_features) -> Tensor");
  m.def(
      "pool_bags_backward(Tensor grad, Tensor ids, Tensor offsets, Tensor? per_sample_weights, "
      "int num_rows, int pooling, int padding_idx) -> Tensor");
  m.def("gather_rows(Tensor weight, Tensor ids) -> Tensor");
  m.def("bucket_ids(Tensor values, Tensor lengths, Tensor feature_rows, int batch) -> (Tensor, Tensor)");
  m.def(
      "pool_bucket(Tensor weight, Tensor values, Tensor lengths, Tensor feature_rows, "
      "Tensor? per_sample_weights, int pooling, int padding_idx, int batch) -> Tensor");
  m.def(
      "fused_update_rows(Tensor(a!) weight, Tensor(b!)[] state, Tensor ids, Tensor offsets, "
      "Tensor grad, Tensor? per_sample_weights, int pooling, int padding_idx, "
      "bool scale_grad_by_freq, int optimizer, float[] hparams) -> ()");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) {
  m.impl("pool_bags", &embtable::pool_bags_cpu);
  m.impl("pool_bags_grouped", &embtable::pool_bags_grouped_cpu);
  m.impl("pool_bags_backward", &embtable::pool_bags_backward_cpu);
  m.impl("gather_rows", &embtable::gather_rows_cpu);
  m.impl("bucket_ids", &embtable::bucket_ids_cpu);
  m.impl("pool_bucket", &embtable::pool_bucket_cpu);
  m.impl("fused_update_rows", &embtable::fused_update_rows_cpu);
}
