"""Task-level cost of quantized tables: MovieLens-100K RMSE, MiniLM neighbours and analogies.

(a) MovieLens-100K: the demo's recommender (``MatrixFactorization``, D = 32, side features,
    fused Adam, 10 epochs, random 80/20 split, seed 0) trained once in float32, then
    ``embtable.quantize(model, fmt)`` for every format (min/max ranges, and the greedy range
    search for int4 / int2): test RMSE and its change from float32.  Targets (issue 14): int8
    within 0.001 of fp32, int4 within 0.01.
(b) all-MiniLM-L6-v2's token embeddings (30,522 x 384): ``Vectors.quantize(fmt)``; the
    top-10 neighbours (query excluded) of 2,000 probe tokens (every 15th whole-word token)
    on the codes vs float32: mean overlap (targets: int8 >= 0.95, int4 >= 0.8); bytes.
(c) gensim's questions-words analogies (lower-cased, questions whose four words are MiniLM
    tokens): top-1 accuracy (3CosAdd, a, b, c excluded) on the codes vs float32.

Usage:
    python benchmarks/quantized_quality.py          # about 3 minutes on 2 loaded cores
    python benchmarks/quantized_quality.py --quick  # 2 epochs, 300 probes, 1,000 questions
"""

from __future__ import annotations

import argparse
import time

import torch

import embtable
from embtable.data.fetch import gensim_test_file, minilm_model_dir
from embtable.data.movielens import load_movielens
from embtable.models import MatrixFactorization
from embtable.models.fit import FitConfig, fit_ratings, predict_ratings
from embtable.models.metrics import rmse
from embtable.vectors import Vectors

FORMATS = ("fp16", "bf16", "int8", "int4", "int2")


def movielens(epochs: int) -> None:
    data = load_movielens()
    tr, te = data.split("random", seed=0)
    users, items, ratings = data.users[tr], data.items[tr], data.ratings[tr]
    torch.manual_seed(0)
    model = MatrixFactorization(data.num_users, data.num_items, 32, global_mean=float(ratings.mean()),
                                **data.cardinalities())  # fmt: skip
    config = FitConfig(epochs=epochs, batch_size=256, lr=0.005, l2=0.05, optimizer="fused", seed=0)
    fit_ratings(model, users, items, ratings, features=data.features, config=config)
    model.eval()

    def test_rmse(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return rmse(predict_ratings(m, data.users[te], data.items[te], data.features), data.ratings[te])

    base = test_rmse(model)
    floats = sum(p.numel() * 4 for p in model.parameters() if p.dim() == 2)
    print(f"(a) MovieLens-100K test RMSE, D=32, {epochs} epochs fused Adam ({len(te):,} test ratings)")
    print(f"  {'format':<14}{'RMSE':>9}{'vs fp32':>10}{'table bytes':>13}")
    print(f"  {'fp32':<14}{base:>9.4f}{0:>+10.4f}{floats:>13,}")
    for fmt in FORMATS:
        for search in ("minmax", "greedy") if fmt in ("int4", "int2") else ("minmax",):
            small = embtable.quantize(model, fmt, search=search)
            size = sum(m.nbytes() for m in small.modules() if hasattr(m, "packed_weight"))
            score = test_rmse(small)
            label = fmt if search == "minmax" else f"{fmt} greedy"
            print(f"  {label:<14}{score:>9.4f}{score - base:>+10.4f}{size:>13,}")


def minilm(probes: int, questions: int) -> None:
    vectors = Vectors.load_hf(minilm_model_dir())
    words = [i for i, t in enumerate(vectors.tokens) if t.isalpha() and t.islower()]
    probe = [vectors.tokens[i] for i in words[::15][:probes]]
    quads = []
    with open(gensim_test_file("questions-words.txt"), encoding="utf-8") as fin:
        for line in fin:
            parts = line.lower().split()
            if len(parts) == 4 and not line.startswith(":") and all(p in vectors for p in parts):
                quads.append(parts)
    quads = quads[:questions]
    triples = [tuple(q[:3]) for q in quads]

    def accuracy(answers) -> float:
        return sum(a[0][0] == q[3] for a, q in zip(answers, quads)) / max(len(quads), 1)

    start = time.perf_counter()
    base = accuracy(vectors.analogies(triples, topn=1))
    seconds = time.perf_counter() - start
    print(f"(b, c) all-MiniLM-L6-v2 tokens {len(vectors):,} x {vectors.dim}: top-10 overlap over "
          f"{len(probe):,} probes; questions-words accuracy over {len(quads):,} in-vocab questions")
    print(f"  {'format':<8}{'bytes/row':>10}{'top-10 overlap':>16}{'analogy acc.':>14}{'analogy s':>11}")
    print(f"  {'fp32':<8}{4 * vectors.dim:>10}{1.0:>16.3f}{base:>14.4f}{seconds:>11.1f}")
    for fmt in FORMATS:
        small = vectors.quantize(fmt)
        overlap = small.topn_overlap(vectors, probe, topn=10)
        start = time.perf_counter()
        acc = accuracy(small.analogies(triples, topn=1))
        seconds = time.perf_counter() - start
        print(f"  {fmt:<8}{small.packed.shape[1]:>10}{overlap:>16.3f}{acc:>14.4f}{seconds:>11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.probes, args.questions = 2, 300, 1000
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, embtable {embtable.__version__}, 1 thread (machine shared)")
    movielens(args.epochs)
    minilm(args.probes, args.questions)


if __name__ == "__main__":
    main()
