"""``embtable analogy``: ``A - B + C = ?`` (king - man + woman)."""

from __future__ import annotations

import argparse
import json

from embtable.cli._common import VECTOR_FORMATS, load_vectors, positive_int, say
from embtable.cli._tokens import resolve_token

NAME = "analogy"
HELP = "solve A - B + C = ? (e.g. king - man + woman), 3CosAdd or 3CosMul"
EXAMPLES = """\
  embtable analogy vectors.txt king man woman          # king - man + woman
  embtable analogy vectors.txt paris france italy -k 3 --method 3cosmul
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vectors", help="vectors file or folder")
    p.add_argument("a", help="A (added)")
    p.add_argument("b", help="B (subtracted)")
    p.add_argument("c", help="C (added)")
    p.add_argument("-k", "--topn", type=positive_int, default=5, help="answers to show (default 5)")
    p.add_argument("--method", choices=("3cosadd", "3cosmul"), default="3cosadd")
    p.add_argument("--format", choices=VECTOR_FORMATS, help="skip format detection")
    p.add_argument("--json", action="store_true", help="print [[answer, score], ...]")


def analogy(vectors, a: str, b: str, c: str, topn: int = 5, method: str = "3cosadd"):
    """Answers to ``a - b + c`` as ``[(token, score), ...]`` (the three inputs excluded)."""
    a, b, c = (resolve_token(vectors, t) for t in (a, b, c))
    # Vectors.analogy(x, y, z) answers "x is to y as z is to ?" = y - x + z.
    answers = vectors.analogy(b, a, c, topn=topn, method=method)
    return [(t, round(float(s), 4)) for t, s in answers]


def run(args: argparse.Namespace) -> int:
    if args.topn < 1:
        raise ValueError(f"--topn must be >= 1, got {args.topn}")
    vectors = load_vectors(args.vectors, args.format)
    answers = analogy(vectors, args.a, args.b, args.c, args.topn, args.method)
    if args.json:
        say(json.dumps(answers, ensure_ascii=False))
        return 0
    say(f"{args.a} - {args.b} + {args.c} = ?  ({args.method})")
    for rank, (token, score) in enumerate(answers, 1):
        say(f"  {rank:>2}. {score:+.4f}  {token}")
    return 0
