"""Benchmark: TorchRec's calls on embtable (issue 12) against TorchRec 1.8 itself.

Workload: a DLRM-like batch of F = 26 features x B = 2048 examples, 1-20 ids per cell
(int64 ids and lengths, each feature's ids uniform over its table), optionally weighted; 26 tables of 10 .. 100,000 rows (log-uniformly
spaced), D = 64, sum pooling.

Rows (each contender gets the same tensors, on CPU, in the process's ordinary memory):

* ``permute`` / ``split`` / ``concat``: a fresh ``KeyedJagged`` (embtable, default
  validation) and a fresh ``KeyedJaggedTensor`` (TorchRec) built from the same
  ``values`` / ``lengths``, then ``permute`` of a random order of the 26 keys (TorchRec runs
  FBGEMM's ``permute_2D_sparse_data``), ``split([13, 13])``, ``concat`` of the two halves.
  Second ``permute`` / ``split`` rows build embtable's batch with ``validate=False`` (TorchRec's
  constructor checks nothing; embtable's default checks lengths against values, O(F * B)).
* ``forward``: ``EmbeddingBagCollection.from_torchrec(theirs)`` vs TorchRec's
  ``EmbeddingBagCollection`` (a loop of ``nn.EmbeddingBag``), no autograd, unweighted and
  ``is_weighted=True``.

Each row is first checked (same keys / values / lengths / weights, pooled values within
1e-5), then timed at one thread (``torch.set_num_threads(1)``) with ``time.thread_time``, the
two contenders called in turn, ``--repeats`` rounds after 2 warm-up rounds; the table gives
the median ms of each and their ratio (embtable / TorchRec; below 1 = embtable faster).

Usage:
    python benchmarks/torchrec_interop.py              # the sizes above
    python benchmarks/torchrec_interop.py --quick      # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import embtable
from embtable import KeyedJagged


def thread_times(runners: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median thread-CPU ms of each runner, the runners called in turn each round."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            start = time.thread_time()
            run()
            elapsed = time.thread_time() - start
            if round_index >= warmup:
                samples[name].append(elapsed * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def table_sizes(num_features: int, rows_max: int) -> list[int]:
    """Rows of each feature's table: log-uniformly spaced from 10 to ``rows_max``."""
    return torch.logspace(1, torch.log10(torch.tensor(float(rows_max))), num_features).long().tolist()


def make_batch(sizes: list[int], batch: int, weighted: bool, seed: int = 0):
    """1-20 ids per cell; feature f's ids uniform in its table (``sizes[f]`` rows)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 21, (len(sizes) * batch,), generator=generator)
    per_key = lengths.view(len(sizes), batch).sum(1).tolist()
    values = torch.cat([torch.randint(0, n, (count,), generator=generator)
                        for n, count in zip(sizes, per_key)])
    weights = torch.rand(values.shape, generator=generator) if weighted else None
    keys = [f"f{i}" for i in range(len(sizes))]
    return keys, values, lengths, weights


def check_same_batch(ours: KeyedJagged, theirs) -> None:
    assert ours.keys() == theirs.keys(), "keys differ"
    assert torch.equal(ours.values(), theirs.values()), "values differ"
    assert torch.equal(ours.lengths(), theirs.lengths()), "lengths differ"
    if theirs.weights_or_none() is not None:
        assert torch.equal(ours.weights(), theirs.weights()), "weights differ"
    assert ours.stride() == theirs.stride(), "stride differs"


def measure(weighted: bool, num_features: int, batch: int, rows_max: int, repeats: int,
            order: list[int]) -> list[tuple[str, float, float]]:
    """The checked and timed rows of one workload (unweighted or weighted)."""
    import torchrec
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    half = num_features // 2
    results = []
    sizes = table_sizes(num_features, rows_max)
    keys, values, lengths, weights = make_batch(sizes, batch, weighted)

    def ours_batch(validate=True):
        return KeyedJagged(keys, values, lengths, weights=weights, validate=validate)

    def theirs_batch():
        return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights)

    check_same_batch(ours_batch().permute(order), theirs_batch().permute(order))
    for got, want in zip(ours_batch().split([half, num_features - half]),
                         theirs_batch().split([half, num_features - half])):
        check_same_batch(got, want)
    parts_ours = ours_batch().split([half, num_features - half])
    parts_theirs = theirs_batch().split([half, num_features - half])
    check_same_batch(KeyedJagged.concat(parts_ours), KeyedJaggedTensor.concat(parts_theirs))
    tag = "weighted" if weighted else "unweighted"
    rows = {
        f"permute ({tag})": (lambda: ours_batch().permute(order), lambda: theirs_batch().permute(order)),
        f"permute, validate=False ({tag})": (
            lambda: ours_batch(False).permute(order), lambda: theirs_batch().permute(order)),
        f"split ({tag})": (lambda: ours_batch().split([half, num_features - half]),
                           lambda: theirs_batch().split([half, num_features - half])),
        f"split, validate=False ({tag})": (
            lambda: ours_batch(False).split([half, num_features - half]),
            lambda: theirs_batch().split([half, num_features - half])),
        f"concat ({tag})": (lambda: KeyedJagged.concat(parts_ours),
                            lambda: KeyedJaggedTensor.concat(parts_theirs)),
    }

    tables = [torchrec.EmbeddingBagConfig(name=f"t{i}", num_embeddings=n, embedding_dim=64,
                                          feature_names=[f"f{i}"]) for i, n in enumerate(sizes)]
    torch.manual_seed(0)
    theirs = torchrec.EmbeddingBagCollection(tables=tables, is_weighted=weighted)
    ours = embtable.EmbeddingBagCollection.from_torchrec(theirs)
    kjt, batch_ours = theirs_batch(), ours_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(batch_ours).values(), theirs(kjt).values(), rtol=1e-5, atol=1e-5)

    def forward_ours():
        with torch.no_grad():
            return ours(ours_batch()).values()

    def forward_theirs():
        with torch.no_grad():
            return theirs(theirs_batch()).values()

    rows[f"collection forward ({tag})"] = (forward_ours, forward_theirs)
    for name, (run_ours, run_theirs) in rows.items():
        times = thread_times({"embtable": run_ours, "torchrec": run_theirs}, repeats)
        results.append((name, times["embtable"], times["torchrec"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_features, batch, rows_max = (26, 2048, 100_000) if not args.quick else (6, 64, 1000)
    repeats = args.repeats or (15 if not args.quick else 3)
    order = torch.randperm(num_features, generator=torch.Generator().manual_seed(1)).tolist()
    results = []

    for weighted in (False, True):
        results += measure(weighted, num_features, batch, rows_max, repeats, order)

    print(f"F={num_features} features, B={batch}, 1-20 ids per cell, D=64, tables of 10..{rows_max} "
          f"rows; 1 thread, thread CPU time, median of {repeats} rounds")
    print(f"{'row':44s} {'embtable ms':>12s} {'TorchRec ms':>12s} {'ratio':>7s}")
    for name, mine, theirs_ms in results:
        print(f"{name:44s} {mine:12.3f} {theirs_ms:12.3f} {mine / theirs_ms:7.2f}")


if __name__ == "__main__":
    main()
