// Batched positional reads of the disk row store (storage/_disk_io.py): one call reads many
// runs of records with pread(2), so a batch of misses costs no Python per run and runs
// without the GIL on the store's I/O threads.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cerrno>
#include <cstdint>
#include <unistd.h>

namespace embtable {

namespace {
// Lets other Python threads run while this one waits for the disk (torch.ops calls hold the
// GIL); a no-op when the caller does not hold it (C++ callers, interpreter finalized).
class WithoutGil {
 public:
  WithoutGil() {
    if (Py_IsInitialized() && PyGILState_Check()) state_ = PyEval_SaveThread();
  }
  ~WithoutGil() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;

 private:
  PyThreadState* state_ = nullptr;
};
}  // namespace

// Reads runs[i] = bytes [offsets[i], offsets[i] + lengths[i]) of fd into buffer, one after
// another from its start.  Returns int64 [3]: (index of the first run that failed or -1,
// errno of the failure or 0 for a file that ended first, bytes of that run read).
at::Tensor disk_pread_runs_cpu(int64_t fd, const at::Tensor& offsets, const at::Tensor& lengths,
                               at::Tensor& buffer) {
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() &&
                  offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
              "embtable::disk_pread_runs: offsets and lengths must be 1-D int64 tensors of one "
              "length, got ", offsets.sizes(), " ", offsets.scalar_type(), " and ", lengths.sizes(),
              " ", lengths.scalar_type());
  TORCH_CHECK(buffer.scalar_type() == at::kByte && buffer.is_contiguous(),
              "embtable::disk_pread_runs: buffer must be a contiguous uint8 tensor, got ",
              buffer.scalar_type());
  TORCH_CHECK(fd >= 0, "embtable::disk_pread_runs: fd must be >= 0, got ", fd);
  const at::Tensor off = offsets.contiguous();
  const at::Tensor len = lengths.contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t* l = len.data_ptr<int64_t>();
  const int64_t n = off.numel();
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(o[i] >= 0 && l[i] >= 0, "embtable::disk_pread_runs: run ", i, " has offset ", o[i],
                " and length ", l[i], "; both must be >= 0");
    total += l[i];
  }
  TORCH_CHECK(total <= buffer.numel(), "embtable::disk_pread_runs: the runs hold ", total,
              " bytes, the buffer ", buffer.numel());
  uint8_t* dst = buffer.data_ptr<uint8_t>();
  int64_t failed = -1, error = 0, got = 0;
  {
  WithoutGil released;  // below: no Python and no torch calls, only pread
  for (int64_t i = 0; i < n && failed < 0; ++i) {
    int64_t done = 0;
    while (done < l[i]) {
      const ssize_t r = ::pread(static_cast<int>(fd), dst + done, static_cast<size_t>(l[i] - done),
                                static_cast<off_t>(o[i] + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        failed = i;
        error = r < 0 ? errno : 0;
        got = done;
        break;
      }
      done += r;
    }
    dst += l[i];
  }
  }
  at::Tensor out = at::empty({3}, off.options());
  int64_t* result = out.data_ptr<int64_t>();
  result[0] = failed;
  result[1] = error;
  result[2] = got;
  return out;
}

}  // namespace embtable

TORCH_LIBRARY_FRAGMENT(embtable, m) {
  m.def("disk_pread_runs(int fd, Tensor offsets, Tensor lengths, Tensor(a!) buffer) -> Tensor");
}

TORCH_LIBRARY_IMPL(embtable, CPU, m) { m.impl("disk_pread_runs", &embtable::disk_pread_runs_cpu); }
