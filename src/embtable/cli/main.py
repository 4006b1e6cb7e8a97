"""``embtable``: train, inspect and picture embedding tables from the command line.

Every command lives in its own module of :mod:`embtable.cli` exposing ``NAME``, ``HELP``,
``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``.  A user error (missing
file, wrong format, unknown token, corrupt checkpoint, bad option) ends with one line on
stderr and exit status 1 (2 for a malformed command line); ``--debug`` shows the
traceback instead.

Example:
    >>> from embtable.cli.main import main
    >>> main(["--version"])
    embtable 0.1.0
    0
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

COMMANDS = ("train", "demo", "neighbors", "analogy", "plot", "evaluate", "convert", "info")

_DESCRIPTION = """\
embtable: embedding tables for PyTorch, from the command line.

  embtable demo                            the whole tour on real data -> demo-report/
  embtable train movielens                 train a recommender on MovieLens-100K
  embtable neighbors VECTORS cat dog       nearest tokens (cosine)
  embtable analogy VECTORS king man woman  king - man + woman = ?
  embtable plot VECTORS -o map.png         t-SNE / PCA picture of a table
  embtable evaluate VECTORS questions.txt  analogy or word-pair benchmark
  embtable convert IN OUT --to word2vec    between native, word2vec, GloVe
  embtable info VECTORS                    size, dtype, norms, sample tokens

VECTORS is any vectors file or folder: embtable's native folder, word2vec text or
binary, GloVe, fastText .vec, a Hugging Face model folder, or a model folder written by
`embtable train` (its item table).  See `embtable COMMAND --help` and docs/cli.md.
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``embtable: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from embtable import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The full ``embtable`` argument parser (commands are imported to add their options)."""
    parser = _Parser(
        prog="embtable",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"embtable {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"embtable.cli.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog="examples:\n" + module.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks instead of one-line errors")  # fmt: skip
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


#: Errors whose message is meant for the user as it is; any other is prefixed with its type.
_USER_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError, RuntimeError, ImportError)


def _one_line(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    text = " ".join(text.split()) or type(err).__name__
    if len(text) > 2000:
        text = text[:2000] + " ..."
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``embtable`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from embtable.cli._common import CliError
    from embtable.data.movielens import MovieLensError

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("embtable: interrupted", file=sys.stderr)
        return 130
    except (CliError, MovieLensError, *_USER_ERRORS) as err:
        if debug:
            raise
        print(f"embtable {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - MemoryError, OverflowError, a library's own: one line too
        if debug:
            raise
        name = type(err).__name__
        print(f"embtable {args.command}: error: {name}: {_one_line(err)} (rerun with --debug for "
              "the traceback)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
