"""``embtable convert``: rewrite vectors in another format."""

from __future__ import annotations

import argparse
from pathlib import Path

from embtable.cli._common import VECTOR_FORMATS, CliError, load_vectors, say

NAME = "convert"
HELP = "convert vectors between native, word2vec (text/binary) and GloVe formats"
EXAMPLES = """\
  embtable convert glove.6B.50d.txt glove-native            # to the native folder
  embtable convert glove-native vectors.bin --to word2vec-binary
  embtable convert minilm-model-folder minilm.txt --to word2vec
  embtable convert glove.6B.50d.txt glove-int8 --quantize int8   # 4x smaller, mmap-opened
"""

TARGETS = ("native", "native-npy", "word2vec", "word2vec-binary", "glove")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="vectors file or folder to read")
    p.add_argument("target", help="file or folder to write")
    p.add_argument("--to", choices=TARGETS, default="native", help="output format (default native)")
    p.add_argument("--from", dest="source_format", choices=VECTOR_FORMATS, help="input format")
    p.add_argument("--force", action="store_true", help="overwrite an existing target")
    p.add_argument(
        "--quantize", choices=("int8", "int4", "int2", "fp16", "bf16"),
        help="write a native quantized folder (row-wise codes, opened by memory map; --to native only)",
    )


def run(args: argparse.Namespace) -> int:
    target = Path(args.target).expanduser()
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; pass --force to overwrite it")
    if getattr(args, "quantize", None) and args.to != "native":
        raise CliError(f"--quantize writes the native quantized folder; drop --to {args.to}")
    vectors = load_vectors(args.source, args.source_format)
    if getattr(args, "quantize", None):
        small = vectors.quantize(args.quantize)
        small.save(target)
        say(f"wrote {len(small):,} x {small.dim} vectors to {target} ({args.quantize}, "
            f"{small.nbytes():,} bytes of rows)")
        return 0
    if args.to in ("native", "native-npy"):
        vectors.save(target, format="npy" if args.to == "native-npy" else "safetensors")
    elif args.to == "glove":
        vectors.save_glove(target)
    else:
        vectors.save_word2vec_format(target, binary=args.to == "word2vec-binary")
    say(f"wrote {len(vectors):,} x {vectors.dim} vectors to {target} ({args.to})")
    return 0
