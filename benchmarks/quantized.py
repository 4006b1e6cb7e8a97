"""Benchmark: quantized bag lookups against torch's quantized ops and FBGEMM's IntNBit TBE.

(a) one table, V = 1,000,000 rows drawn from N(0, 0.1), D = 64 and 128, B = 2048 bags of
    20 skewed ids (floor(V * u**3)), sum pooling, inference (no autograd):
      - fp32 torch: ``torch.nn.functional.embedding_bag`` on the float32 table;
      - embtable ``QuantizedEmbeddingBag`` in fp16 / bf16 / int8 / int4 / int2;
      - torch ``quantized::embedding_bag_{byte,4bit,2bit}_rowwise_offsets`` on
        ``embedding_bag_{byte,4bit,2bit}_prepack`` tables;
      - FBGEMM ``IntNBitTableBatchedEmbeddingBagsCodegen`` (CPU) in FP16 / INT8 / INT4 / INT2,
        holding embtable's bytes (``to_fbgemm``).
(b) the 26-table collection of ``benchmarks/bags.py`` (10 .. 1,000,000 rows, D = 64, 1-20 ids
    per example and feature, sum) in int8: ``QuantizedEmbeddingBagCollection`` vs FBGEMM's
    IntNBit TBE with the same 26 tables (same bytes).

Correctness first: every contender's output is compared with the fp32 result (the error
column: relative RMS error of the pooled output, ||out - fp32|| / ||fp32||), and embtable's
with the same bytes decoded by the peer (FBGEMM must agree to 1e-5).  Then the contenders are
timed in turn, one call each per round (so load changes hit them alike), at one thread
(``torch.set_num_threads(1)``), by thread CPU time (``time.thread_time``); the table shows
medians and ratios to fp32 torch measured in the same run.  Memory placement is equal for
every contender (``benchmarks/_placement.py``): ``--placement 4k`` (every table on 4 KiB
pages), ``huge`` (every table collapsed into 2 MiB pages) or ``both`` (the default: 4k, then
huge, on the same tables); the shares of huge pages actually obtained are printed.

Usage:
    python benchmarks/quantized.py            # the sizes above (about 4 minutes, 3 GB RAM)
    python benchmarks/quantized.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _placement  # noqa: E402 - benchmarks/ is on sys.path when run as a script
import embtable
from embtable.nn.quantized import QuantizedEmbeddingBag, QuantizedEmbeddingBagCollection
from embtable.storage import codecs
from embtable.testing import zipf_ids

Runner = Callable[[], torch.Tensor]
TORCH_OPS = {"int8": "byte", "int4": "4bit", "int2": "2bit"}


def thread_times(runners: dict[str, Runner], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median thread-CPU ms of each runner, timed in turn (one call each per round)."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            start = time.thread_time()
            run()
            elapsed = time.thread_time() - start
            if round_index >= warmup:
                samples[name].append(elapsed * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def fbgemm_modules():
    try:
        import fbgemm_gpu
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
            IntNBitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as error:  # noqa: BLE001 - any import failure skips the FBGEMM rows
        print(f"FBGEMM rows skipped: fbgemm_gpu does not import ({error})")
        return None

    types = {"fp16": SparseType.FP16, "int8": SparseType.INT8, "int4": SparseType.INT4, "int2": SparseType.INT2}

    def make(tables: list[tuple[int, int]], fmt: str, packed: list[torch.Tensor]):
        specs = [(f"t{t}", rows, dim, types[fmt], EmbeddingLocation.HOST) for t, (rows, dim) in enumerate(tables)]
        tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            specs, device="cpu", pooling_mode=PoolingMode.SUM, output_dtype=SparseType.FP32
        )
        tbe.initialize_weights()
        for (_rows, dim), view, mine in zip(tables, tbe.split_embedding_weights(split_scale_shifts=False), packed):
            view[0].copy_(codecs.to_fbgemm(mine, fmt, dim))
        return tbe

    make.version = fbgemm_gpu.__version__  # type: ignore[attr-defined]
    return make


def single_table(args: argparse.Namespace, dim: int, make_tbe) -> list[tuple]:
    gen = torch.Generator().manual_seed(dim)
    weight = torch.randn(args.rows, dim, generator=gen) * 0.1
    ids = zipf_ids(args.rows, (args.batch * args.bag,), generator=gen)
    offsets = torch.arange(0, args.batch * args.bag, args.bag)
    offsets_tbe = torch.arange(0, args.batch * args.bag + 1, args.bag).int()
    ids_tbe = ids.int()
    exact = torch.nn.functional.embedding_bag(ids, weight, offsets, mode="sum")
    runners: dict[str, Runner] = {"fp32 torch": lambda: torch.nn.functional.embedding_bag(ids, weight, offsets, mode="sum")}
    info: dict[str, tuple[int, float]] = {"fp32 torch": (4 * dim, 0.0)}
    tables = {}
    for fmt in ("fp16", "bf16", "int8", "int4", "int2"):
        module = QuantizedEmbeddingBag(args.rows, dim, mode="sum", fmt=fmt)
        module.packed_weight = codecs.quantize_rows(weight, fmt)
        tables[fmt] = module.packed_weight
        name = f"embtable {fmt}"
        runners[name] = (lambda m: lambda: m(ids, offsets))(module)
        info[name] = (module.packed_weight.shape[1], codecs.relative_rms(exact, module(ids, offsets)))
    for fmt, op in TORCH_OPS.items():
        prepacked = getattr(torch.ops.quantized, f"embedding_bag_{op}_prepack")(weight)
        kernel = getattr(torch.ops.quantized, f"embedding_bag_{op}_rowwise_offsets")
        name = f"torch {fmt}"
        runners[name] = (lambda p, k: lambda: k(p, ids, offsets, mode=0))(prepacked, kernel)
        info[name] = (prepacked.shape[1], codecs.relative_rms(exact, runners[name]()))
    if make_tbe is not None:
        for fmt in ("fp16", "int8", "int4", "int2"):
            tbe = make_tbe([(args.rows, dim)], fmt, [tables[fmt]])
            name = f"FBGEMM {fmt}"
            runners[name] = (lambda t: lambda: t(ids_tbe, offsets_tbe))(tbe)
            out = runners[name]()
            ours = runners[f"embtable {fmt}"]()
            gap = float((out - ours).abs().max())
            assert gap <= 1e-5 * float(ours.abs().max()) + 1e-6, f"FBGEMM {fmt} disagrees with embtable by {gap}"
            row = codecs.to_fbgemm(tables[fmt], fmt, dim).shape[1]
            info[name] = (row, codecs.relative_rms(exact, out))
    rows = []
    for placement in _placement.chosen(args):
        _placement.apply(placement)
        shares = _placement.describe(placement, {"fp32": [weight], **{f: [t] for f, t in tables.items()}})
        print(f"  D={dim}: {shares}")
        times = thread_times(runners, args.repeats)
        base = times["fp32 torch"]
        rows += [(dim, f"{name} [{placement}]", times[name], times[name] / base, *info[name]) for name in runners]
    return rows


def collection(args: argparse.Namespace, make_tbe) -> list[tuple]:
    num_tables, dim = 26, 64
    gen = torch.Generator().manual_seed(26)
    table_rows = [int(round(r)) for r in np.logspace(1, np.log10(args.rows), num_tables)]
    tables = [
        embtable.TableConfig(name=f"t{t}", num_embeddings=rows, embedding_dim=dim, feature_names=[f"f{t}"])
        for t, rows in enumerate(table_rows)
    ]
    ours = QuantizedEmbeddingBagCollection(tables, "int8")
    packed = []
    for t, rows in enumerate(table_rows):
        part = codecs.quantize_rows(torch.randn(rows, dim, generator=gen) * 0.1, "int8")
        ours.table_packed(f"t{t}").copy_(part)
        packed.append(ours.table_packed(f"t{t}"))
    lengths = torch.randint(1, 21, (num_tables, args.batch), generator=gen)
    values = torch.cat([zipf_ids(r, (int(n),), generator=gen) for r, n in zip(table_rows, lengths.sum(1))])
    features = embtable.KeyedJagged([f"f{t}" for t in range(num_tables)], values, lengths.reshape(-1))
    runners: dict[str, Runner] = {"embtable int8 collection": lambda: ours(features).values()}
    if make_tbe is not None:
        tbe = make_tbe([(rows, dim) for rows in table_rows], "int8", packed)
        ids_tbe, offsets_tbe = features.values().int(), features.offsets().int()
        runners["FBGEMM int8 TBE"] = lambda: tbe(ids_tbe, offsets_tbe)
        gap = float((runners["FBGEMM int8 TBE"]() - runners["embtable int8 collection"]()).abs().max())
        assert gap <= 1e-5, f"FBGEMM collection disagrees with embtable by {gap}"
    rows = []
    for placement in _placement.chosen(args):
        _placement.apply(placement)
        times = thread_times(runners, args.repeats)
        base = times["embtable int8 collection"]
        rows += [(dim, f"{name} [{placement}]", times[name], times[name] / base, dim + 4, float("nan"))
                 for name in runners]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--bag", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    _placement.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dims, args.batch, args.repeats = 20_000, [64], 256, 5
    torch.set_num_threads(1)
    make_tbe = fbgemm_modules()
    print(f"torch {torch.__version__}, embtable {embtable.__version__}, FBGEMM "
          f"{getattr(make_tbe, 'version', 'absent')}; 1 thread, thread CPU time; machine shared with other jobs")
    print(f"(a) V={args.rows:,}, B={args.batch} bags x {args.bag} skewed ids, sum, N(0, 0.1) rows")
    header = f"{'D':>4}  {'contender':<33}{'ms':>8}{'vs fp32':>9}{'B/row':>7}{'rel. error':>12}"
    print(header)
    for dim in args.dims:
        for row in single_table(args, dim, make_tbe):
            print(f"{row[0]:>4}  {row[1]:<33}{row[2]:>8.3f}{row[3]:>8.2f}x{row[4]:>7}{row[5]:>12.2e}")
    print(f"(b) 26 tables, 10..{args.rows:,} rows, D=64, B={args.batch}, 1-20 ids per feature, int8")
    for row in collection(args, make_tbe):
        print(f"{row[0]:>4}  {row[1]:<33}{row[2]:>8.3f}{row[3]:>8.2f}x{row[4]:>7}")


if __name__ == "__main__":
    main()
