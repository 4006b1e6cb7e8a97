"""Configuration: frozen dataclasses and enums.  Imports nothing from embtable."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

__all__ = ["DynamicConfig", "PoolingMode", "TableConfig"]


class PoolingMode(str, Enum):
    """How the rows of one bag are combined: torch's ``mode`` strings, plus ``none`` (no pooling)."""

    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    NONE = "none"


_INIT_METHODS = ("normal", "uniform")
_EVICTION_POLICIES = ("lru", "lfu", "ttl", "clock")


@dataclass(frozen=True, kw_only=True)
class DynamicConfig:
    """A dynamic vocabulary: raw int64 ids of any value mapped to a fixed number of rows.

    The options of :class:`embtable.nn.dynamic.DynamicEmbedding` (docs/dynamic.md); on a
    :class:`TableConfig` (``dynamic=DynamicConfig(...)``) ``num_embeddings`` is the capacity.

    Args:
        policy: eviction when all rows are taken: ``"lru"``, ``"lfu"``, ``"ttl"``, ``"clock"``.
        ttl: for ``policy="ttl"``: a row expires after more than ``ttl`` training steps unseen.
        min_count: occurrences before an id gets its own row (until then: the default row).
        exact_counts: count occurrences exactly instead of with a count-min sketch.
        default: what a not-admitted id reads: ``"zeros"`` (skipped by pooling, like padding)
            or ``"row"`` (one shared, untrained row).
        seed: seed of the rows' deterministic initialization and of the sketch's hashes.
        decay_every: LFU aging (``policy="lfu"`` only): every ``decay_every`` training
            lookups each id's count is halved, so old heavy hitters can leave; ``None``: never.

    Example:
        >>> DynamicConfig(policy="lfu", min_count=2).policy
        'lfu'
    """

    policy: str = "lru"
    ttl: int | None = None
    min_count: int = 1
    exact_counts: bool = False
    default: str = "zeros"
    seed: int = 0
    decay_every: int | None = None

    def __post_init__(self) -> None:
        api = "DynamicConfig"
        if self.policy not in _EVICTION_POLICIES:
            raise ValueError(f"{api}: policy must be one of {_EVICTION_POLICIES}, got {self.policy!r}")
        if (self.policy == "ttl") != (self.ttl is not None):
            raise ValueError(f"{api}: ttl must be given exactly when policy='ttl', got policy="
                             f"{self.policy!r}, ttl={self.ttl!r}")
        if self.ttl is not None and (not _is_int(self.ttl) or self.ttl < 0):
            raise ValueError(f"{api}: ttl must be an int >= 0, got {self.ttl!r}")
        if not _is_int(self.min_count) or self.min_count < 1:
            raise ValueError(f"{api}: min_count must be an int >= 1, got {self.min_count!r}")
        if not isinstance(self.exact_counts, bool):
            raise TypeError(f"{api}: exact_counts must be a bool, got {self.exact_counts!r}")
        if self.default not in ("zeros", "row"):
            raise ValueError(f"{api}: default must be 'zeros' or 'row', got {self.default!r}")
        if not _is_int(self.seed):
            raise TypeError(f"{api}: seed must be an int, got {self.seed!r}")
        if self.decay_every is not None:
            if not _is_int(self.decay_every) or self.decay_every < 1:
                raise ValueError(f"{api}: decay_every must be an int >= 1, got {self.decay_every!r}")
            if self.policy != "lfu":
                raise ValueError(f"{api}: decay_every (LFU aging) needs policy='lfu', got {self.policy!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class TableConfig:
    r"""One embedding table of a collection, and the features that read it.

    Plain data: building a collection from a list of configs allocates the
    tables (see :class:`embtable.EmbeddingBagCollection`).  Several features may
    share one table (``feature_names=("query", "title")``); a feature reads
    exactly one table.

    Args:
        name: the table's name; used in ``state_dict`` keys (``embedding_bags.<name>.weight``),
            so it must be a non-empty string without ``"."``.
        num_embeddings: number of rows (ids run from 0 to ``num_embeddings - 1``).
        embedding_dim: size of each row (any positive int; unlike FBGEMM, no multiple of 4).
        feature_names: the features looked up in this table; defaults to ``(name,)``.
        pooling: how the rows of one example's feature are combined: ``"sum"`` (default),
            ``"mean"``, ``"max"`` (as ``torch.nn.EmbeddingBag``'s ``mode``) or ``"none"``
            (no pooling: only for :class:`embtable.EmbeddingCollection`).  Strings or
            :class:`PoolingMode`.
        init: ``"normal"`` (default; ``N(0, init_std**2)``, torch's ``N(0, 1)`` by default),
            ``"uniform"`` (``U(-init_bound, init_bound)``), or a callable that fills the
            ``(num_embeddings, embedding_dim)`` weight in place (called under ``no_grad``).
            The ``padding_idx`` row is zeroed afterwards, as torch does.
        init_std: standard deviation for ``init="normal"``.
        init_bound: bound for ``init="uniform"``; ``None`` means ``sqrt(1 / num_embeddings)``
            (TorchRec's default).
        dtype: a floating dtype for the weight (default ``torch.float32``).
        padding_idx: a row that pooling skips (not counted in ``"mean"``) and that receives
            no gradient, as in ``torch.nn.EmbeddingBag``; negative values count from the end
            and are stored normalized.
        storage: where the rows live: ``None`` (RAM, default) or
            ``embtable.storage.disk.Disk(path, cache_rows=...)`` for a table bigger than
            memory (``init`` must then be ``"normal"`` or ``"uniform"``); a collection with
            such tables is :class:`embtable.nn.disk.DiskEmbeddingBagCollection`
            (docs/storage.md).
        dynamic: a :class:`DynamicConfig` makes this a dynamic table: raw int64 ids of any
            value, each admitted id gets its own row; ``num_embeddings`` is the capacity
            (the grouped weight holds one more row, the default row).  No ``padding_idx``
            (every id is a key; "no row" is the default row).  docs/dynamic.md.
        hashed: the hashing trick: ids may be any int64 values, id ``x`` reads row
            ``embtable.nn.hashed.hash_rows(x, num_embeddings)`` (distinct ids may share a
            row).  Not with ``dynamic`` or ``padding_idx``.
        scale_grad_by_freq: divide the gradient a row gets from a feature by the number of
            times its id occurs among that feature's ids in the batch, as a
            ``torch.nn.Embedding(scale_grad_by_freq=True)`` per feature would, pooled as
            ``torch.nn.EmbeddingBag`` pools (torch 2.13's CPU ``EmbeddingBag`` with the flag
            divides by a wrong count, pytorch #190063, docs/bags.md; a table shared by two
            features counts per feature; ids are counted as rows, after hashing or dynamic
            remapping).  Also in fused training and
            across shards (docs/distributed.md, "Exactness").  Not with ``pooling="max"``
            (torch refuses it too); not held by TorchRec's configs, so ``to_torchrec``
            refuses such a table.

    Raises:
        ValueError: a field is out of range or inconsistent; the message names the table.
        TypeError: a field has the wrong type.

    Example:
        >>> from embtable import TableConfig
        >>> config = TableConfig(name="brand", num_embeddings=500, embedding_dim=16,
        ...                      feature_names=["brand", "last_brand"], pooling="mean",
        ...                      padding_idx=-1)
        >>> config.pooling, config.feature_names, config.padding_idx
        (<PoolingMode.MEAN: 'mean'>, ('brand', 'last_brand'), 499)
        >>> TableConfig(name="bad", num_embeddings=0, embedding_dim=4)
        Traceback (most recent call last):
        ...
        ValueError: TableConfig 'bad': num_embeddings must be a positive int, got 0
        >>> TableConfig(name="query", num_embeddings=50, embedding_dim=4,
        ...             scale_grad_by_freq=True).scale_grad_by_freq
        True
        >>> TableConfig(name="q", num_embeddings=50, embedding_dim=4, pooling="max",
        ...             scale_grad_by_freq=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: TableConfig 'q': pooling='max' does not support scale_grad_by_freq=True ...
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...] = ()
    pooling: PoolingMode | str = PoolingMode.SUM
    init: str | Callable[[torch.Tensor], object] = "normal"
    init_std: float = 1.0
    init_bound: float | None = None
    dtype: torch.dtype = torch.float32
    padding_idx: int | None = None
    storage: object | None = None
    dynamic: DynamicConfig | None = None
    hashed: bool = False
    scale_grad_by_freq: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(
                f"TableConfig: name must be a non-empty string without '.', got {self.name!r}"
            )
        api = f"TableConfig {self.name!r}"
        for attr in ("num_embeddings", "embedding_dim"):
            value = getattr(self, attr)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{api}: {attr} must be a positive int, got {value!r}")
        self._set("feature_names", self._checked_feature_names(api))
        self._set("pooling", self._checked_pooling(api))
        self._check_init(api)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(
                f"{api}: dtype must be a floating torch.dtype such as torch.float32, "
                f"got {self.dtype!r}"
            )
        self._set("padding_idx", self._checked_padding_idx(api))
        if self.storage is not None:  # duck-typed: config imports nothing from embtable
            if not callable(getattr(self.storage, "cache_size", None)):
                raise TypeError(
                    f"{api}: storage must be None or an embtable.storage.disk.Disk, "
                    f"got {type(self.storage).__name__}"
                )
            if callable(self.init):
                raise ValueError(
                    f"{api}: a table with storage initializes each row from (seed, row) when "
                    f"first read; init must be 'normal' or 'uniform', got a callable"
                )

        if not isinstance(self.scale_grad_by_freq, bool):
            raise TypeError(
                f"{api}: scale_grad_by_freq must be a bool, got {self.scale_grad_by_freq!r}"
            )
        if self.scale_grad_by_freq and self.pooling is PoolingMode.MAX:
            raise ValueError(
                f"{api}: pooling='max' does not support scale_grad_by_freq=True (as torch's "
                "EmbeddingBag); use 'sum' or 'mean', or scale_grad_by_freq=False"
            )
        if not isinstance(self.hashed, bool):
            raise TypeError(f"{api}: hashed must be a bool, got {self.hashed!r}")
        if self.hashed and (self.dynamic is not None or self.padding_idx is not None):
            raise ValueError(f"{api}: a hashed table has no dynamic options and no padding_idx")
        if self.dynamic is not None:
            if not isinstance(self.dynamic, DynamicConfig):
                raise TypeError(f"{api}: dynamic must be a DynamicConfig or None, got {self.dynamic!r}")
            if self.padding_idx is not None or self.storage is not None:
                raise ValueError(
                    f"{api}: a dynamic table has no padding_idx and no storage (got "
                    f"padding_idx={self.padding_idx!r}, storage={self.storage!r}); not-admitted "
                    "ids read its default row"
                )

    def _set(self, attr: str, value: object) -> None:
        object.__setattr__(self, attr, value)

    def _checked_feature_names(self, api: str) -> tuple[str, ...]:
        names = self.feature_names
        if isinstance(names, str):
            raise TypeError(
                f"{api}: feature_names must be a sequence of strings, got the string {names!r}; "
                f"write feature_names=[{names!r}]"
            )
        names = tuple(names) if names else (self.name,)
        for feature in names:
            if not isinstance(feature, str) or not feature:
                raise ValueError(f"{api}: feature names must be non-empty strings, got {feature!r}")
        duplicates = sorted({f for f in names if names.count(f) > 1})
        if duplicates:
            raise ValueError(f"{api}: feature_names lists {duplicates} more than once")
        return names

    def _checked_pooling(self, api: str) -> PoolingMode:
        try:
            return PoolingMode(self.pooling)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in PoolingMode)
            raise ValueError(
                f"{api}: pooling must be one of {choices}, got {self.pooling!r}"
            ) from None

    def _check_init(self, api: str) -> None:
        init = self.init
        if not callable(init) and init not in _INIT_METHODS:
            raise ValueError(
                f"{api}: init must be 'normal', 'uniform' or a callable filling the weight "
                f"in place, got {init!r}"
            )
        if not isinstance(self.init_std, (int, float)) or not self.init_std > 0:
            raise ValueError(f"{api}: init_std must be > 0, got {self.init_std!r}")
        if self.init_std != 1.0 and init != "normal":
            raise ValueError(f"{api}: init_std applies only to init='normal', got init={init!r}")
        bound = self.init_bound
        if bound is not None:
            if init != "uniform":
                raise ValueError(
                    f"{api}: init_bound applies only to init='uniform', got init={init!r}"
                )
            if not isinstance(bound, (int, float)) or not (bound > 0 and math.isfinite(bound)):
                raise ValueError(f"{api}: init_bound must be a finite number > 0, got {bound!r}")

    def _checked_padding_idx(self, api: str) -> int | None:
        padding_idx, rows = self.padding_idx, self.num_embeddings
        if padding_idx is None:
            return None
        if not _is_int(padding_idx):
            raise TypeError(f"{api}: padding_idx must be an int or None, got {padding_idx!r}")
        if not -rows <= padding_idx < rows:
            raise ValueError(
                f"{api}: padding_idx={padding_idx} is outside the table of {rows} rows "
                f"(expected -{rows} <= padding_idx < {rows})"
            )
        return padding_idx + rows if padding_idx < 0 else padding_idx

    @property
    def uniform_bound(self) -> float:
        """The bound used by ``init="uniform"``: ``init_bound`` or ``sqrt(1 / num_embeddings)``."""
        return self.init_bound if self.init_bound is not None else math.sqrt(1 / self.num_embeddings)

    def init_weight_(self, weight: torch.Tensor) -> torch.Tensor:
        """Fill ``weight`` (this table's ``(num_embeddings, embedding_dim)`` rows) in place.

        Draws from :attr:`init`, then zeroes the ``padding_idx`` row.  Runs under
        ``no_grad``; returns ``weight``.
        """
        with torch.no_grad():
            if self.init == "normal":
                weight.normal_(0.0, self.init_std)
            elif self.init == "uniform":
                weight.uniform_(-self.uniform_bound, self.uniform_bound)
            else:
                self.init(weight)  # type: ignore[operator]
            if self.padding_idx is not None:
                weight[self.padding_idx].fill_(0)
        return weight
