"""Benchmark: the pooled-bag kernel (and the fused Adam update) of two revisions side by side (issue 11).

On a shared, loaded machine the run-to-run spread of a kernel (+-10-20 %) hides a change of a
few per cent, so ``bags.py`` run before and after a change cannot tell it.  This script
compiles ``src/embtable/csrc/cpu/rows_cpu.cpp`` of a base revision (``git show REV:...``) and
of the working tree into one scratch extension (two namespaces, built in a temporary
directory with the package's flags), then times torch's ``embedding_bag``, the base kernel
and the working-tree kernel call after call on the same data: medians of the timing thread's
CPU time (one thread), and the ratios ``new / old`` and each vs torch.  Outputs are checked
equal first.

Workloads: one table (V = 1,000,000, 2048 bags of 20 ids ``floor(V * u**3)``) at the given
``D`` and mode, and ``coll``: the 26-table collection of ``bags.py`` (b) pooled into its
``[B, 26 * 64]`` layout (torch's kernel on the same grouped ids writes ``[26 * B, 64]``).
``bucket``: the same collection from its raw (unshifted) ids and lengths, as the collection's
forward without autograd gets them: the base's ``bucket_ids`` + ``pool_bags_grouped`` (two
passes over the ids) vs the working tree's ``pool_bucket`` (one); the torch column is torch's
kernel on the shifted ids, as in ``coll`` (the shifting not timed there).
``adam:D``: one fused Adam step of that table (the current ``pool_bags`` forward, then
``fused_update_rows`` with float32 moments) with ``fused_update_cpu.cpp`` of the base
revision vs the working tree's; no torch column (SparseAdam is ``train_step.py``'s peer).
``bwd``: the collection's dense weight gradient (``pool_bags_backward`` of the grouped ids,
sum pooling, [26 * B, 64] output gradient) of the base vs the working tree; the torch column
is torch's ``embedding_bag`` forward + backward on the same ids (its backward alone is not
reachable without its forward), so read ``new / old`` only.  ``--threads N`` times
with N threads (wall time when N > 1: only meaningful on an idle machine).
``--batches N`` cycles through N id batches (rows then come from memory, not from the cache
the previous call left warm); the default 1 reuses one batch, as ``bags.py`` does.  Every
contender reads the same table, placed by ``_placement.apply`` (``--placement 4k``: 4 KiB
pages, ``huge``: collapsed onto 2 MiB pages).

Usage:
    python benchmarks/pool_kernel_ab.py --base fbf335d~1 --cases 64:sum,128:sum,coll
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _placement  # benchmarks/ is on sys.path when run as a script
from embtable import ops
from embtable.testing import zipf_ids

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "src/embtable/csrc/cpu/rows_cpu.cpp"
FUSED = "src/embtable/csrc/cpu/fused_update_cpu.cpp"
WRAPPER = """
#include <torch/extension.h>
#include "rows_cpu.h"
#define DECLARE(NS) namespace NS { \\
  std::tuple<at::Tensor, at::Tensor> pool_bags_cpu(const at::Tensor&, const at::Tensor&, \\
      const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t); \\
  at::Tensor pool_bags_grouped_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, \\
      const std::optional<at::Tensor>&, int64_t, int64_t, int64_t); \
  std::tuple<at::Tensor, at::Tensor> bucket_ids_cpu(const at::Tensor&, const at::Tensor&, \
      const at::Tensor&, int64_t); \
  at::Tensor pool_bags_backward_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, \
      const std::optional<at::Tensor>&, int64_t, int64_t, int64_t); }
DECLARE(kernel_old)
DECLARE(kernel_new)
namespace kernel_new { at::Tensor pool_bucket_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t, int64_t); }
#define DECLARE_FUSED(NS) namespace NS { \
  void fused_update_rows_cpu(const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&, \
      const at::Tensor&, const std::optional<at::Tensor>&, int64_t, int64_t, bool, int64_t, \
      at::ArrayRef<double>); }
DECLARE_FUSED(fused_old)
DECLARE_FUSED(fused_new)
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("old", [](at::Tensor w, at::Tensor i, at::Tensor o, std::optional<at::Tensor> p,
                  int64_t pool, int64_t f) {
    return f == 1 ? std::get<0>(kernel_old::pool_bags_cpu(w, i, o, p, pool, -1))
                  : kernel_old::pool_bags_grouped_cpu(w, i, o, p, pool, -1, f); });
  m.def("new", [](at::Tensor w, at::Tensor i, at::Tensor o, std::optional<at::Tensor> p,
                  int64_t pool, int64_t f) {
    return f == 1 ? std::get<0>(kernel_new::pool_bags_cpu(w, i, o, p, pool, -1))
                  : kernel_new::pool_bags_grouped_cpu(w, i, o, p, pool, -1, f); });
  m.def("bucket_old", [](at::Tensor w, at::Tensor v, at::Tensor l, at::Tensor r, int64_t batch) {
    auto [ids, offsets] = kernel_old::bucket_ids_cpu(v, l, r, batch);
    return kernel_old::pool_bags_grouped_cpu(w, ids, offsets, std::nullopt, 1, -1, r.size(0)); });
  m.def("bucket_new", [](at::Tensor w, at::Tensor v, at::Tensor l, at::Tensor r, int64_t batch) {
    return kernel_new::pool_bucket_cpu(w, v, l, r, std::nullopt, 1, -1, batch); });
  m.def("bwd_old", [](at::Tensor g, at::Tensor i, at::Tensor o, int64_t rows) {
    return kernel_old::pool_bags_backward_cpu(g, i, o, std::nullopt, rows, 1, -1); });
  m.def("bwd_new", [](at::Tensor g, at::Tensor i, at::Tensor o, int64_t rows) {
    return kernel_new::pool_bags_backward_cpu(g, i, o, std::nullopt, rows, 1, -1); });
  m.def("adam_old", [](at::Tensor w, std::vector<at::Tensor> st, at::Tensor i, at::Tensor o, at::Tensor g,
                       std::vector<double> h) { fused_old::fused_update_rows_cpu(w, st, i, o, g, std::nullopt, 1, -1,
                                                                                false, 3, h); });
  m.def("adam_new", [](at::Tensor w, std::vector<at::Tensor> st, at::Tensor i, at::Tensor o, at::Tensor g,
                       std::vector<double> h) { fused_new::fused_update_rows_cpu(w, st, i, o, g, std::nullopt, 1, -1,
                                                                                false, 3, h); });
}
"""


def renamed(text: str, namespace: str) -> str:
    """A kernel source with its definitions moved from ``embtable`` into ``namespace``."""
    text = text.replace("namespace embtable {", f"namespace {namespace} {{\nusing namespace ::embtable;", 1)
    if f"namespace {namespace} {{" not in text:
        raise ValueError("pool_kernel_ab: no 'namespace embtable {' in a kernel source")
    return text


def build(base: str, directory: Path, new_source: Path | None = None):
    from torch.utils.cpp_extension import load

    def at_base(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    (directory / "rows_cpu.h").write_text((ROOT / "src/embtable/csrc/cpu/rows_cpu.h").read_text())
    (directory / "old.cpp").write_text(renamed(at_base(SOURCE), "kernel_old"))
    (directory / "new.cpp").write_text(renamed((new_source or ROOT / SOURCE).read_text(), "kernel_new"))
    (directory / "fused_old.cpp").write_text(renamed(at_base(FUSED), "fused_old"))
    (directory / "fused_new.cpp").write_text(renamed((ROOT / FUSED).read_text(), "fused_new"))
    (directory / "wrap.cpp").write_text(WRAPPER)
    names = ("wrap.cpp", "old.cpp", "new.cpp", "fused_old.cpp", "fused_new.cpp")
    return load(name="pool_kernel_ab", sources=[str(directory / n) for n in names],
                build_directory=str(directory), extra_cflags=["-O3", "-fno-math-errno", "-fopenmp", "-std=c++20",
                                                              "-march=native"],
                extra_ldflags=["-fopenmp"])


def case_data(case: str, batches: int, gen: torch.Generator):
    """weight, list of id batches, offsets (with the last), per-sample weights, pooling, features."""
    if case in ("coll", "bucket"):
        rows = [int(round(r)) for r in np.logspace(1, 6, 26)]
        lengths = torch.randint(1, 21, (26, 2048), generator=gen)
        shifts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        ids = [torch.cat([zipf_ids(r, (int(n),), generator=gen) + int(s)
                          for r, n, s in zip(rows, lengths.sum(1), shifts)])]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.reshape(-1).cumsum(0)])
        weight = torch.randn(sum(rows), 64, generator=gen)
        if case == "bucket":  # raw ids per feature, (row offset, rows) per feature, the lengths
            feature_rows = torch.tensor([[int(s), r] for s, r in zip(shifts, rows)])
            shift = torch.repeat_interleave(feature_rows[:, 0], lengths.sum(1))
            return weight, ids, offsets, (ids[0] - shift, lengths.reshape(-1), feature_rows), 1, 26
        return weight, ids, offsets, None, 1, 26
    dim, mode = case.split(":")
    weight = torch.randn(1_000_000, int(dim), generator=gen)
    ids = [zipf_ids(1_000_000, (2048 * 20,), generator=gen) for _ in range(batches)]
    offsets = torch.arange(0, 2048 * 20 + 1, 20)
    psw = torch.rand(2048 * 20, generator=gen) if mode == "wsum" else None
    return weight, ids, offsets, psw, {"sum": 1, "wsum": 1, "mean": 2, "max": 3}[mode], 1


def time_adam(ext, dim: int, batches_wanted: int, repeats: int, placement: str) -> tuple[float, float, float]:
    """Median ms of a fused Adam step (forward + update) with the old and the new update kernel."""
    if not ops.extension_available():  # loads embtable._C: the forward is its pool_bags
        raise RuntimeError("pool_kernel_ab: the adam case needs the built extension embtable._C")
    gen = torch.Generator().manual_seed(0)
    num_rows = 1_000_000
    weight = torch.randn(num_rows, dim, generator=gen)
    state = [torch.zeros(num_rows, dim), torch.zeros(num_rows, dim), torch.zeros(num_rows, dtype=torch.long)]
    batches = [zipf_ids(num_rows, (2048 * 20,), generator=gen) for _ in range(batches_wanted)]
    offsets = torch.arange(0, 2048 * 20 + 1, 20)
    grad = torch.randn(2048, dim, generator=gen)
    hparams = [1e-6, 0.0, 0.0, 0.9, 0.999, 1e-8, 0.0, 0.0]  # lr, wd, wd mode, betas, eps, per-row steps
    _placement.apply(placement)
    probe = [weight[:64].clone(), *(t[:64].clone() for t in state)]  # both kernels agree (small table)
    ids, small_offsets = batches[0][:200] % 64, torch.arange(0, 201, 20)
    results = []
    for name in ("adam_old", "adam_new"):
        w, st = probe[0].clone(), [t.clone() for t in probe[1:]]
        getattr(ext, name)(w, st, ids, small_offsets, grad[:10], hparams)
        results.append((w, st))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)

    def step(kernel, ids: torch.Tensor) -> None:
        torch.ops.embtable.pool_bags(weight, ids, offsets, None, 1, -1)
        kernel(weight, state, ids, offsets, grad, hparams)

    samples: dict[str, list[float]] = {"old": [], "new": []}
    calls = 0
    for round_index in range(2 + repeats):
        for name, kernel in (("old", ext.adam_old), ("new", ext.adam_new)):
            ids = batches[calls % len(batches)]  # every call its own batch when several are cycled
            calls += 1
            start = clock()()
            step(kernel, ids)
            if round_index >= 2:
                samples[name].append((clock()() - start) * 1e3)
    return float("nan"), statistics.median(samples["old"]), statistics.median(samples["new"])


def clock():
    """The timing thread's CPU time at one thread, wall time with more."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_bwd(ext, repeats: int, placement: str) -> tuple[float, float, float]:
    """Median ms of the collection's dense weight gradient, torch (fwd + bwd) / old / new."""
    gen = torch.Generator().manual_seed(0)
    weight, batches, offsets, _, _, _ = case_data("coll", 1, gen)
    ids, rows = batches[0], weight.shape[0]
    grad = torch.randn(offsets.numel() - 1, weight.shape[1], generator=gen)
    table = weight.clone().requires_grad_()
    _placement.apply(placement)
    old, new = ext.bwd_old(grad, ids, offsets, rows), ext.bwd_new(grad, ids, offsets, rows)
    torch.testing.assert_close(new, old, rtol=0, atol=0)  # the same sums in the same order
    del old, new

    def theirs() -> None:
        table.grad = None
        torch.nn.functional.embedding_bag(ids, table, offsets, mode="sum", include_last_offset=True).backward(grad)

    runners = {"torch": theirs, "old": lambda: ext.bwd_old(grad, ids, offsets, rows),
               "new": lambda: ext.bwd_new(grad, ids, offsets, rows)}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    now = clock()
    for round_index in range(2 + repeats):
        for name, run in runners.items():
            start = now()
            run()
            if round_index >= 2:
                samples[name].append((now() - start) * 1e3)
    medians = [statistics.median(samples[k]) for k in ("torch", "old", "new")]
    return medians[0], medians[1], medians[2]


def time_case(ext, case: str, batches_wanted: int, repeats: int, placement: str) -> tuple[float, float, float]:
    """Median ms of torch, the old and the new kernel on one case (outputs checked first)."""
    if case == "bwd":
        return time_bwd(ext, repeats, placement)
    if case.startswith("adam:"):
        return time_adam(ext, int(case.split(":")[1]), batches_wanted, repeats, placement)
    gen = torch.Generator().manual_seed(0)
    weight, batches, offsets, psw, pooling, features = case_data(case, batches_wanted, gen)
    _placement.apply(placement)  # the one table all three read
    mode = {1: "sum", 2: "mean", 3: "max"}[pooling]

    def theirs(ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding_bag(ids, weight, offsets, mode=mode, per_sample_weights=psw,
                                                 include_last_offset=True)

    def ours(kernel, ids: torch.Tensor) -> torch.Tensor:
        return kernel(weight, ids, offsets, psw, pooling, features)

    if case == "bucket":  # psw holds the raw ids, lengths and feature rows (one batch)
        raw, lengths, feature_rows = psw
        psw = None
        old_kernel, new_kernel = ext.bucket_old, ext.bucket_new

        def ours(kernel, ids: torch.Tensor) -> torch.Tensor:  # noqa: F811 - the raw-id variant
            return kernel(weight, raw, lengths, feature_rows, offsets.numel() // features)

        ext = argparse.Namespace(old=old_kernel, new=new_kernel)

    expected = theirs(batches[0])
    if features > 1:  # torch's [F * B, D] rows in the collection's [B, F * D] layout
        dim = weight.shape[1]
        expected = expected.view(features, -1, dim).transpose(0, 1).reshape(-1, features * dim)
    for name in ("old", "new"):
        torch.testing.assert_close(ours(getattr(ext, name), batches[0]), expected, rtol=1e-4, atol=1e-4)
    runners = {"torch": theirs, "old": lambda ids: ours(ext.old, ids), "new": lambda ids: ours(ext.new, ids)}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(2 + repeats):
        ids = batches[round_index % len(batches)]  # the three contenders of a round share it
        for name, run in runners.items():
            start = clock()()
            run(ids)
            if round_index >= 2:
                samples[name].append((clock()() - start) * 1e3)
    medians = [statistics.median(samples[k]) for k in ("torch", "old", "new")]
    return medians[0], medians[1], medians[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="fbf335d~1", help="git revision of the 'old' kernel")
    parser.add_argument("--cases", default="16:sum,32:sum,64:sum,64:mean,64:wsum,128:sum,256:sum,coll",
                        help="D:mode (sum, mean, wsum, max), coll, bucket, bwd or adam:D")
    parser.add_argument("--threads", type=int, default=1, help="threads (wall time when > 1)")
    parser.add_argument("--new-source", type=Path, default=None,
                        help="a scratch copy of rows_cpu.cpp to time as 'new' (default: the working tree's)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batches", type=int, default=1, help="id batches to cycle through")
    parser.add_argument("--placement", choices=_placement.PLACEMENTS, default="4k",
                        help="4k: MADV_NOHUGEPAGE on the table; huge: MADV_HUGEPAGE + MADV_COLLAPSE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pool_kernel_ab_") as tmp:
        ext = build(args.base, Path(tmp), args.new_source)
        load = os.getloadavg()
        clock_name = "one thread, CPU time" if args.threads == 1 else f"{args.threads} threads, wall time"
        print(f"base {args.base} vs working tree; {clock_name} medians (ms) of {args.repeats} rounds; "
              f"{args.batches} id batch(es); placement {args.placement} (THP mode {_placement.thp_mode()}); load average {load[0]:.1f} / {load[1]:.1f}")
        print("| case | torch | old | new | old / torch | new / torch | new / old |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for case in args.cases.split(","):
            t, o, n = time_case(ext, case, args.batches, args.repeats, args.placement)
            if t != t:  # nan: no torch column (adam)
                print(f"| {case} | - | {o:.3f} | {n:.3f} | - | - | {n / o:.2f} |", flush=True)
            else:
                print(f"| {case} | {t:.3f} | {o:.3f} | {n:.3f} | {o / t:.2f} | {n / t:.2f} | {n / o:.2f} |", flush=True)
        load = os.getloadavg()
        print(f"load average at end {load[0]:.1f} / {load[1]:.1f}")


if __name__ == "__main__":
    main()
