"""``embtable plot``: a t-SNE or PCA picture of some tokens of a table (PNG or HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path

from embtable.cli._common import VECTOR_FORMATS, CliError, load_vectors, positive_int, say
from embtable.cli._tokens import resolve_token

NAME = "plot"
HELP = "draw a 2-D map (t-SNE, PCA or UMAP) of tokens of a table to PNG or HTML"
EXAMPLES = """\
  embtable plot vectors.txt --tokens cat dog king queen man woman apple orange -o words.png
  embtable plot movielens-model --limit 300 --method pca -o movies.html   # hover: neighbours
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vectors", help="vectors file or folder")
    p.add_argument("-o", "--output", required=True, help="file to write: .png, or .html")
    p.add_argument("--tokens", nargs="+", help="tokens to draw (default: the first --limit)")
    p.add_argument("--limit", type=positive_int, default=40, help="how many tokens without --tokens")
    p.add_argument("--method", choices=("tsne", "pca", "umap"), default="tsne")
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity (default: fits the count)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--title", help="figure title")
    p.add_argument("--format", choices=VECTOR_FORMATS, help="skip format detection")


def run(args: argparse.Namespace) -> int:
    from embtable.viz import plot_tokens

    out = Path(args.output).expanduser()
    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise CliError(f"--output must end in .png or .html, got {out.name!r}")
    if not out.parent.is_dir():
        raise CliError(f"the folder of --output ({out.parent}) does not exist")
    vectors = load_vectors(args.vectors, args.format)
    if args.tokens:
        tokens = list(dict.fromkeys(resolve_token(vectors, t) for t in args.tokens))
    else:
        if args.limit < 2:
            raise CliError(f"--limit must be >= 2, got {args.limit}")
        tokens = vectors.tokens[: args.limit]
    if len(tokens) < 3:
        raise CliError(f"give at least 3 distinct tokens to draw, got {len(tokens)}")
    extra = {"perplexity": args.perplexity} if args.method == "tsne" and args.perplexity else {}
    plot_tokens(vectors, tokens, out, method=args.method, seed=args.seed,
                title=args.title, **extra)  # fmt: skip
    say(f"wrote {out} ({args.method} of {len(tokens)} tokens)")
    return 0
