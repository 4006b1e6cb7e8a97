"""The ``Disk`` spec of a disk-backed table and its deterministic initializer
(``init_rows``).  Both are re-exported by :mod:`embtable.storage.disk`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Disk", "init_rows"]

_POLICIES = ("lru", "lfu", "clock")


@dataclass(frozen=True)
class Disk:
    """Where a disk-backed table lives and how large its row cache in RAM is.

    Pass it as ``storage=`` to :class:`embtable.nn.disk.DiskEmbedding`,
    :class:`embtable.nn.disk.DiskEmbeddingBag` or :class:`embtable.TableConfig`.  The
    directory is created on first use; an existing table there is reopened (its shape
    and dtype must match).

    Args:
        path: the table's directory.
        cache_rows: rows held in RAM (at least the number of distinct ids of one batch).
        cache_bytes: alternatively, the cache size in bytes of weights (rows of
            ``embedding_dim`` values; optimizer state comes on top: docs/storage.md).
        policy: which cached row is evicted on a miss: ``"lru"`` (default: the least recently
            used), ``"lfu"`` (the least often used; no aging) or ``"clock"`` (second chance;
            on a hot-set stream it evicts hot rows that LRU keeps: docs/storage.md).
        read_only: open for lookups only (serving); training or writing raises.
        seed: the initializer's seed: row ``r`` starts as ``init_rows(seed, r)``.
        io_threads: threads that issue the reads and writes of one batch.
        compact_ratio: a flush moves the write-back log to the rows' home places once the
            log's bytes reach this multiple of the page bytes the move writes; larger keeps
            a longer log (more disk space) and writes fewer bytes per updated row (at most
            ``1 + 1 / compact_ratio`` logged records each).  Default 2.0.

    Raises:
        ValueError: neither or both of ``cache_rows`` / ``cache_bytes``, values < 1, an
            unknown policy, a negative ``compact_ratio``.
        TypeError: ``path`` is not a string or path.

    Example:
        >>> from embtable.storage.disk import Disk
        >>> Disk("/tmp/user_table", cache_rows=100_000)
        Disk(path='/tmp/user_table', cache_rows=100000, policy='lru')
    """

    path: str | os.PathLike[str]
    _: KW_ONLY
    cache_rows: int | None = None
    cache_bytes: int | None = None
    policy: str = "lru"
    read_only: bool = False
    seed: int = 0
    io_threads: int = 4
    compact_ratio: float = 2.0

    def __post_init__(self) -> None:
        api = "Disk"
        if not isinstance(self.path, (str, os.PathLike)):
            raise TypeError(f"{api}: path must be a str or os.PathLike, got {type(self.path).__name__}")
        object.__setattr__(self, "path", os.fspath(self.path))
        if (self.cache_rows is None) == (self.cache_bytes is None):
            raise ValueError(
                f"{api}: give exactly one of cache_rows and cache_bytes, got cache_rows="
                f"{self.cache_rows!r}, cache_bytes={self.cache_bytes!r}"
            )
        for name in ("cache_rows", "cache_bytes", "io_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{api}: {name} must be a positive int, got {value!r}")
        if self.policy not in _POLICIES:
            raise ValueError(f"{api}: policy must be one of {_POLICIES}, got {self.policy!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{api}: seed must be an int >= 0, got {self.seed!r}")
        ratio = self.compact_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0:
            raise ValueError(f"{api}: compact_ratio must be a number >= 0, got {ratio!r}")

    def __repr__(self) -> str:
        size = f"cache_rows={self.cache_rows}" if self.cache_rows else f"cache_bytes={self.cache_bytes}"
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("read_only", False), ("seed", 0), ("io_threads", 4), ("compact_ratio", 2.0))
            if getattr(self, name) != default
        )
        return f"Disk(path={self.path!r}, {size}, policy={self.policy!r}{extra})"

    def cache_size(self, row_bytes: int) -> int:
        """The cache's capacity in rows for rows of ``row_bytes`` bytes."""
        if self.cache_rows is not None:
            return self.cache_rows
        rows = self.cache_bytes // row_bytes
        if rows < 1:
            raise ValueError(f"Disk: cache_bytes={self.cache_bytes} holds no row of {row_bytes} bytes")
        return rows


# ---------------------------------------------------------------------------------------------
# Deterministic initializer: a counter-based hash of (seed, row, column)
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def init_rows(
    seed: int,
    rows: Tensor | Sequence[int],
    embedding_dim: int,
    *,
    init: str = "normal",
    init_std: float = 1.0,
    init_bound: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The initial values of ``rows`` of a disk-backed table: a pure function of
    ``(seed, row, column)``.

    Each value comes from one 64-bit SplitMix64 output, the one of position
    ``row * embedding_dim + column`` of the stream seeded by ``seed``: its two 32-bit halves are uniforms, turned into a
    normal by Box-Muller (``init="normal"``: ``N(0, init_std**2)``) or, from the first
    half alone, ``U(-init_bound, init_bound)`` (``init="uniform"``).  Computed in float64,
    rounded once to ``dtype``.  Not torch's generator: a disk table and an in-RAM table
    built from the same seed differ; export one into the other to compare them.

    Example:
        >>> from embtable.storage.disk import init_rows
        >>> init_rows(0, [3], 4)
        tensor([[-0.5046, -0.9590, -0.8816, -1.0199]])
        >>> bool((init_rows(0, [7, 3], 4)[1] == init_rows(0, [3], 4)[0]).all())
        True
    """
    ids = np.asarray(rows.cpu().numpy() if isinstance(rows, Tensor) else rows, dtype=np.int64)
    cols = np.arange(embedding_dim, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
        position = ids.astype(np.uint64)[:, None] * np.uint64(embedding_dim) + cols[None, :]
        bits = _splitmix64(position * _GOLDEN + key)
    low = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64)
    high = (bits >> np.uint64(32)).astype(np.float64)
    if init == "uniform":
        values = ((low + 0.5) / 2.0**32 * 2.0 - 1.0) * init_bound
    elif init == "normal":
        u1 = (low + 1.0) / 2.0**32  # (0, 1]
        u2 = high / 2.0**32
        values = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2) * init_std
    else:
        raise ValueError(f"init_rows: init must be 'normal' or 'uniform', got {init!r}")
    return torch.from_numpy(values).to(dtype)
