"""``embtable neighbors``: the nearest tokens (cosine) of one or more tokens."""

from __future__ import annotations

import argparse
import json

from embtable.cli._common import VECTOR_FORMATS, load_vectors, positive_int, say
from embtable.cli._tokens import resolve_token

NAME = "neighbors"
HELP = "nearest tokens (cosine similarity) of each given token"
EXAMPLES = """\
  embtable neighbors vectors.txt cat dog -k 5
  embtable neighbors movielens-model "Toy Story"     # a unique prefix of a title works
  embtable neighbors minilm-folder king --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vectors", help="vectors file or folder")
    p.add_argument("tokens", nargs="+", help="tokens to query (a unique prefix is enough)")
    p.add_argument("-k", "--topn", type=positive_int, default=10, help="neighbours per token (default 10)")
    p.add_argument("--format", choices=VECTOR_FORMATS, help="skip format detection")
    p.add_argument("--json", action="store_true", help="print {token: [[neighbour, score], ...]}")


def neighbors(vectors, tokens: list[str], topn: int = 10) -> dict[str, list[tuple[str, float]]]:
    """``{token: [(neighbour, cosine), ...]}`` for each token (resolved as by ``resolve_token``)."""
    resolved = [resolve_token(vectors, t) for t in tokens]
    results = vectors.most_similar_batch(resolved, topn=topn)
    return {t: [(n, round(float(s), 4)) for n, s in r] for t, r in zip(resolved, results)}


def run(args: argparse.Namespace) -> int:
    if args.topn < 1:
        raise ValueError(f"--topn must be >= 1, got {args.topn}")
    vectors = load_vectors(args.vectors, args.format)
    result = neighbors(vectors, args.tokens, args.topn)
    if args.json:
        say(json.dumps(result, ensure_ascii=False))
        return 0
    for token, items in result.items():
        say(f"{token}:")
        for rank, (neighbour, score) in enumerate(items, 1):
            say(f"  {rank:>2}. {score:+.4f}  {neighbour}")
    return 0
