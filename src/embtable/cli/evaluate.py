"""``embtable evaluate``: analogy accuracy (questions-words) or word-pair correlation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embtable.cli._common import VECTOR_FORMATS, CliError, load_vectors, positive_int, say

NAME = "evaluate"
HELP = "score vectors on an analogy file (questions-words) or a similarity-pairs file"
EXAMPLES = """\
  embtable evaluate vectors.txt questions-words.txt        # analogies: accuracy per section
  embtable evaluate vectors.txt wordsim353.tsv             # pairs: Spearman and Pearson
  embtable evaluate vectors.txt simlex999.txt --kind pairs --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vectors", help="vectors file or folder")
    p.add_argument("benchmark", help="questions-words style file, or tab-separated word pairs")
    p.add_argument("--kind", choices=("auto", "analogies", "pairs"), default="auto",
                   help="auto: analogies when a line starts with ':' or has 4 words")  # fmt: skip
    p.add_argument("--restrict-vocab", type=positive_int, default=300000,
                   help="only the first N tokens count (default 300000, as gensim)")  # fmt: skip
    p.add_argument("--format", choices=VECTOR_FORMATS, help="skip format detection")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def detect_kind(path: Path) -> str:
    """``"analogies"`` or ``"pairs"`` from the first meaningful lines of ``path``."""
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith(":") or len(text.split()) == 4:
                return "analogies"
            if len(text.split("\t")) >= 3 or len(text.split()) == 3:
                return "pairs"
            break
    raise CliError(
        f"{path} is neither an analogy file (': section' lines and 'a b c d' questions) nor a "
        "pairs file ('word1<TAB>word2<TAB>score'); pass --kind"
    )


def evaluate(vectors, path: Path, kind: str = "auto", restrict_vocab: int = 300000) -> dict:
    """The scores as a dict (``kind``, then accuracy/sections or spearman/pearson, oov_ratio)."""
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "analogies":
        r = vectors.evaluate_analogies(path, restrict_vocab=restrict_vocab)
        sections = {
            s.name: {"correct": len(s.correct), "total": len(s.correct) + len(s.incorrect)}
            for s in r.sections
        }
        return {"kind": kind, "accuracy": round(float(r.accuracy), 4),
                "oov_ratio": round(float(r.oov_ratio), 4), "sections": sections}  # fmt: skip
    delimiter = "\t" if "\t" in path.read_text(encoding="utf-8", errors="replace")[:4096] else " "
    r = vectors.evaluate_pairs(path, delimiter=delimiter, restrict_vocab=restrict_vocab)
    return {"kind": kind, "spearman": round(float(r.spearman), 4),
            "pearson": round(float(r.pearson), 4), "oov_ratio": round(float(r.oov_ratio), 4),
            "pairs": int(r.pairs)}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    path = Path(args.benchmark).expanduser()
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    vectors = load_vectors(args.vectors, args.format)
    result = evaluate(vectors, path, args.kind, args.restrict_vocab)
    if args.json:
        say(json.dumps(result, ensure_ascii=False))
        return 0
    if result["kind"] == "analogies":
        for name, s in result["sections"].items():
            acc = s["correct"] / s["total"] if s["total"] else 0.0
            say(f"  {name:<32} {s['correct']:>6}/{s['total']:<6} {acc:.4f}")
        say(f"analogy accuracy {result['accuracy']:.4f}  (OOV ratio {result['oov_ratio']:.4f})")
    else:
        say(f"Spearman {result['spearman']:.4f}  Pearson {result['pearson']:.4f}  "
            f"({result['pairs']} pairs, OOV ratio {result['oov_ratio']:.4f})")  # fmt: skip
    return 0
