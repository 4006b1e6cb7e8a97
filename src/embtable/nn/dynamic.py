r"""Dynamic vocabularies: ``DynamicEmbedding`` and ``DynamicEmbeddingBag``.

A dynamic table takes raw int64 ids of any value (user ids, item ids, hashed strings from
:func:`embtable.hash_ids`) and gives each its own row of a fixed-capacity table, without
collisions, through a :class:`~embtable.storage.slots.SlotMap` (a compiled open-addressing
map whose state lives in tensors).  New ids are admitted after ``min_count`` occurrences
(until then they read the default row and their gradient goes nowhere); when the table is
full, an eviction policy (LRU, LFU, TTL, CLOCK) frees a row, which is re-initialized, with
its fused-optimizer state reset, before its new id uses it.  See docs/dynamic.md.

Layout: ``weight`` has ``capacity + 1`` rows; row ``capacity`` is the default row (zeros, or
one shared untrained row with ``default="row"``).  A dynamic table has no ``padding_idx``:
every id is a key, and "no row" is what the default row means.

Rows are initialized deterministically from ``(seed, id)`` (:func:`init_rows`), so the row an
id starts with does not depend on when it arrives or on the random state.

Only training-mode forwards change the map (admission, recency, eviction); in ``eval()``
ids are only looked up, and unknown ids read the default row.

Example:
    >>> import torch
    >>> from embtable.nn.dynamic import DynamicEmbedding
    >>> table = DynamicEmbedding(1000, 4)
    >>> out = table(torch.tensor([[10**15, -3], [10**15, 42]]))
    >>> out.shape
    torch.Size([2, 2, 4])
    >>> torch.equal(out[0, 0], out[1, 0])
    True
    >>> table.stats()
    {'size': 3, 'admitted': 3, 'evicted': 0, 'default_hits': 0, 'lookups': 4}
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from embtable import functional
from embtable.config import DynamicConfig, TableConfig
from embtable.functional import FUSED_ATTR
from embtable.nn.bag import EmbeddingBag
from embtable.nn.embedding import Embedding
from embtable.nn.hashed import GOLDEN, hash_rows, mix64
from embtable.storage.slots import SlotLookup, SlotMap, _as_ids, _compiled_available

__all__ = [
    "DynamicEmbedding",
    "DynamicEmbeddingBag",
    "DynamicRows",
    "DynamicTableState",
    "fresh_rows_reference",
    "init_rows",
    "init_rows_reference",
    "plan_configs",
    "prefetch_batch",
    "remap_batch",
    "reset_dynamic_tables",
]

_DEFAULT_KEY = 0x5DEECE66D  # salt of the default row's initialization


def init_rows(
    ids: Tensor, dim: int, *, seed: int = 0, std: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Rows ~``N(0, std**2)`` that depend only on ``(seed, id, column)``: ``[len(ids), dim]``.

    One splitmix64 hash per entry; its four 16-bit quarters are summed (Irwin-Hall: a
    bell-shaped sum, bounded at +-sqrt(12) std), centred and scaled to variance ``std**2``.
    The same id gets the same row whenever, wherever and in whatever order it is admitted.
    Compiled (``embtable::slot_init_rows``) on CPU; :func:`init_rows_reference` is its twin
    (bit-identical).

    Example:
        >>> import torch
        >>> a = init_rows(torch.tensor([7, 10**18]), 3, seed=1)
        >>> b = init_rows(torch.tensor([10**18]), 3, seed=1)
        >>> a.shape, torch.equal(a[1], b[0])
        (torch.Size([2, 3]), True)
    """
    ids = ids.reshape(-1).to(torch.int64)
    if ids.device.type == "cpu" and _compiled_available():
        return torch.ops.embtable.slot_init_rows(ids, dim, seed, float(std)).to(dtype)
    return init_rows_reference(ids, dim, seed=seed, std=std, dtype=dtype)


def init_rows_reference(
    ids: Tensor, dim: int, *, seed: int = 0, std: float = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The pure-PyTorch twin of :func:`init_rows` (the compiled kernel's oracle)."""
    ids = ids.reshape(-1).to(torch.int64)
    cols = torch.arange(dim, dtype=torch.int64, device=ids.device)
    key = mix64(ids ^ mix64(torch.tensor(seed, dtype=torch.int64)))
    z = mix64(key.unsqueeze(1) + (cols.unsqueeze(0) + 1) * GOLDEN)
    total = (z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) + ((z >> 48) & 0xFFFF)
    centred = (total + 2).to(torch.float64) * (1.0 / 65536.0) - 2.0
    return (centred * math.sqrt(3.0) * std).to(dtype)


def _optimizer_rows(weight: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The fused-optimizer state tensors of ``weight`` that hold one row per row of it, and
    one row of a fresh table's state for each (empty lists before the first step)."""
    optimizer = getattr(weight, FUSED_ATTR, None)
    if optimizer is None:
        return [], []
    state = optimizer.state.get(weight)
    if not state:
        return [], []  # no step yet: the state is created fresh at the first backward
    group = optimizer._group_of[id(weight)]
    fresh = optimizer.rule.init_state(weight.detach()[:1], group)
    tensors, rows = [], []
    for key, value in fresh.items():
        tensor = state.get(key)
        if isinstance(tensor, Tensor) and tensor.dim() >= 1 and tensor.shape[0] == weight.shape[0]:
            tensors.append(tensor)
            rows.append(value[0])
    return tensors, rows


def fresh_rows_reference(
    weight: Tensor, offset: int, slots: Tensor, ids: Tensor, seed: int, std: float,
    states: Sequence[Tensor], fresh: Sequence[Tensor], values: Tensor | None = None,
) -> None:
    """The pure-PyTorch twin of the compiled ``embtable::slot_fresh_rows`` (its oracle):
    ``weight[offset + slots] = init_rows(ids)`` (or ``= values``, computed ahead) and
    ``states[k][offset + slots] = fresh[k]``.

    Example:
        >>> import torch
        >>> w, s = torch.zeros(4, 2), torch.ones(4)
        >>> fresh_rows_reference(w, 1, torch.tensor([2]), torch.tensor([9]), 0, 1.0,
        ...                      [s], [torch.tensor(0.5)])
        >>> torch.equal(w[3], init_rows(torch.tensor([9]), 2)[0]), s.tolist()
        (True, [1.0, 1.0, 1.0, 0.5])
    """
    rows = slots.to(weight.device) + offset
    if values is None:
        values = init_rows(ids.to(weight.device), weight.shape[1], seed=seed, std=std, dtype=weight.dtype)
    with torch.no_grad():
        weight[rows] = values.to(weight.device, weight.dtype)
        for tensor, value in zip(states, fresh, strict=True):
            tensor[rows] = value


def _fresh_rows(
    weight: Tensor, offset: int, slots: Tensor, ids: Tensor, seed: int, std: float,
    values: Tensor | None = None,
) -> None:
    """New rows ``offset + slots`` of ``weight``: ``init_rows(ids)`` (``values`` where it was
    computed ahead), their fused-optimizer state reset; one compiled pass for contiguous
    float32 CPU tables and states, else :func:`fresh_rows_reference`."""
    states, fresh = _optimizer_rows(weight)
    w = weight.detach()
    if (
        w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous()
        and all(t.device.type == "cpu" and t.is_contiguous() for t in states)
        and _compiled_available()
    ):
        fresh = [f.contiguous() for f in fresh]
        torch.ops.embtable.slot_fresh_rows(w, offset, slots, ids, seed, float(std), states, fresh, values)
    else:
        fresh_rows_reference(w, offset, slots, ids, seed, std, states, fresh, values)


_PREFETCH: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child makes its own


def _prefetch_executor() -> ThreadPoolExecutor:
    """The one background thread that runs every dynamic table's prefetched lookups, in the
    order they were asked for (one per process: a forked child does not inherit the thread)."""
    pid = os.getpid()
    if pid not in _PREFETCH:
        _PREFETCH.clear()
        _PREFETCH[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embtable-prefetch")
    return _PREFETCH[pid]


class _Prefetched(NamedTuple):
    key: Any  # what the consuming remap is recognized by: its ids, or its batch's values
    future: Future[tuple[SlotLookup, Tensor | None]]  # the lookup, the new rows' values
    weight: Tensor
    row_offset: int
    pid: int  # the process that asked for it (its thread does not exist in a forked child)

    def result(self) -> tuple[SlotLookup, Tensor | None]:
        """The lookup's result (waits for it).

        Raises:
            RuntimeError: it was still running when this process was forked from the one
                that asked for it (the thread is not here: waiting would never end).
        """
        if self.pid != os.getpid() and not self.future.done():
            raise RuntimeError(
                "DynamicRows: a prefetched lookup was still running when this process was forked; "
                "its thread is not in this process and the table's map may be half-updated here. "
                "Call flush() (or a forward of the prefetched batch) before forking."
            )
        return self.future.result()


class DynamicRows:
    """The id -> row engine of one dynamic table: a SlotMap plus row and optimizer-state care.

    Shared by :class:`DynamicEmbedding`, :class:`DynamicEmbeddingBag` and the collections.
    The table's rows are ``weight[row_offset : row_offset + capacity + 1]`` (the last is the
    default row).

    Args:
        capacity: rows for ids (the default row comes on top).
        embedding_dim: row size.
        config: the :class:`~embtable.config.DynamicConfig`.
        init_std: standard deviation of the rows' N(0, init_std**2) initialization.
        on_evict: called as ``on_evict(ids, rows)`` with each lookup's evicted ids and their
            rows (copies) before the rows are reused.
        keep_evicted: also keep the evicted pairs until :meth:`evicted` drains them.
    """

    def __init__(
        self,
        capacity: int,
        embedding_dim: int,
        config: DynamicConfig,
        *,
        init_std: float = 1.0,
        on_evict: Callable[[Tensor, Tensor], Any] | None = None,
        keep_evicted: bool = False,
    ) -> None:
        if not isinstance(config, DynamicConfig):
            raise TypeError(f"DynamicRows: config must be a DynamicConfig, got {type(config).__name__}")
        if not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ValueError(f"DynamicRows: init_std must be > 0, got {init_std!r}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"DynamicRows: on_evict must be callable, got {on_evict!r}")
        self.capacity = capacity
        self.embedding_dim = embedding_dim
        self.config = config
        self.init_std = float(init_std)
        self.on_evict = on_evict
        self.keep_evicted = keep_evicted
        self._slot_map = SlotMap(
            capacity, config.policy, ttl=config.ttl, min_count=config.min_count,
            exact_counts=config.exact_counts, seed=config.seed, decay_every=config.decay_every,
        )
        self._evicted: list[tuple[Tensor, Tensor]] = []
        self._pending: collections.deque[_Prefetched] = collections.deque()

    @property
    def slot_map(self) -> SlotMap:
        """The id -> row map (after :meth:`flush`: every prefetched lookup is in it)."""
        self.flush()
        return self._slot_map

    def __getstate__(self) -> dict[str, Any]:  # copy / deepcopy / pickle: no threads inside
        self.flush()
        return dict(self.__dict__)

    @property
    def default_row(self) -> int:
        """Index (within the table's rows) of the default row."""
        return self.capacity

    def init_table(self, rows: Tensor) -> None:
        """Fill a fresh table's ``[capacity + 1, D]`` rows: zeros, and the default row (after
        committing pending prefetched lookups, which would write their new rows later)."""
        self.flush()
        with torch.no_grad():
            rows.zero_()
            if self.config.default == "row":
                rows[self.capacity] = self._default_values(rows)

    def _default_values(self, rows: Tensor) -> Tensor:
        key = torch.tensor([_DEFAULT_KEY], device=rows.device)
        return init_rows(key, rows.shape[1], seed=self.config.seed ^ 0x7F4A7C15, std=self.init_std,
                         dtype=rows.dtype)[0]

    def remap(
        self, ids: Tensor, weight: Tensor, row_offset: int, training: bool, *, key: Any = None
    ) -> Tensor:
        """Rows (within the table, ``0 .. capacity``) of raw ``ids``; same shape, int64.

        In training: admits, evicts (exporting evicted rows), initializes new rows and
        resets their optimizer state, advances the map's clock by one step.  Otherwise a
        read-only lookup.  Not-admitted ids get ``capacity`` (the default row).  A training
        call with the very tensor given to the oldest pending :meth:`prefetch` (or the same
        ``key``) takes that lookup's result; any other call first :meth:`flush` es the
        pending lookups (a training call warns: those lookups are then committed before its
        own, and a later forward of their batches looks them up again).
        """
        if self._pending:
            head = self._pending[0]
            mine = head.key is (ids if key is None else key)
            if training and mine and head.weight is weight and head.row_offset == row_offset:
                self._pending.popleft()
                slots = self._commit(*head.result(), weight, row_offset)
                self._refresh_default(weight, row_offset)
                return slots
            if training:
                warnings.warn(
                    f"DynamicRows.remap: a training lookup of a batch that was not prefetched, while "
                    f"{len(self._pending)} prefetched lookup(s) are pending: they are committed first, "
                    "and a later forward of their batches looks them up again (so training differs "
                    "from training without prefetch). Prefetch every batch, the first one included, "
                    "and forward the very tensor (or batch) that was prefetched.",
                    stacklevel=3,
                )
            self.flush()
        if not training:
            found = self._slot_map.find(ids)
            slots = torch.where(found < 0, self.capacity, found)
        else:
            slots = self._commit(self._lookup(ids), None, weight, row_offset)
        self._refresh_default(weight, row_offset)
        return slots

    def _lookup(self, ids: Tensor) -> SlotLookup:
        """The map's side of a training remap: the lookup, then one clock step."""
        result = self._slot_map.lookup(ids, missing=self.capacity)
        self._slot_map.step()
        return result

    def _lookup_ahead(self, ids: Tensor, dim: int | None) -> tuple[SlotLookup, Tensor | None]:
        """The prefetch thread's job: :meth:`_lookup`, and the new rows' initial values
        (``init_rows``, float32, where ``dim`` is given) so that the step only copies them."""
        result = self._lookup(ids)
        if dim is None or not result.new_ids.numel():
            return result, None
        return result, init_rows(result.new_ids, dim, seed=self.config.seed, std=self.init_std)

    def _commit(self, result: SlotLookup, values: Tensor | None, weight: Tensor, row_offset: int) -> Tensor:
        """The rows' side of a training remap: export the evicted rows, then initialize the
        new rows (from ``values`` where computed ahead) and reset their optimizer state.
        Returns the lookup's slots."""
        rows = weight.detach().narrow(0, row_offset, self.capacity + 1)
        if result.evicted_ids.numel() and (self.on_evict is not None or self.keep_evicted):
            old = rows[result.evicted_slots.to(rows.device)].clone()
            if self.on_evict is not None:
                self.on_evict(result.evicted_ids, old)
            if self.keep_evicted:
                self._evicted.append((result.evicted_ids, old))
        if result.new_ids.numel():
            _fresh_rows(weight, row_offset, result.new_slots, result.new_ids, self.config.seed,
                        self.init_std, values)
        return result.slots

    def _refresh_default(self, weight: Tensor, row_offset: int) -> None:
        if self.config.default == "row":
            rows = weight.detach().narrow(0, row_offset, self.capacity + 1)
            with torch.no_grad():  # undo any update the default row got through pooling
                rows[self.capacity] = self._default_values(rows)

    def prefetch(self, ids: Tensor, weight: Tensor, row_offset: int, *, key: Any = None) -> None:
        """Start the training lookup of ``ids`` on a background thread (the map's side only).

        The thread also computes the new rows' initial values (float32 CPU tables).  The next
        training :meth:`remap` with this very tensor (or with the same ``key`` object, as
        collections pass their batch's values) takes the result and only writes the new
        rows and resets their state (after the previous step's update, so the rows of a batch
        in flight are never overwritten early).  Lookups run in the order they were asked for,
        so every decision, row and optimizer state is the same as without prefetching.

        Raises:
            TypeError: ``ids`` is not an integer tensor (checked here; too many distinct ids
                for the capacity raises at the :meth:`remap` that takes the result).
        """
        _as_ids("prefetch", ids)
        ahead = weight.dtype == torch.float32 and weight.device.type == "cpu"
        job = _prefetch_executor().submit(self._lookup_ahead, ids, weight.shape[1] if ahead else None)
        self._pending.append(_Prefetched(ids if key is None else key, job, weight, row_offset, os.getpid()))

    def flush(self) -> None:
        """Wait for every pending :meth:`prefetch` and commit each, oldest first (the rows'
        side: export, initialization, state reset)."""
        while self._pending:
            job = self._pending.popleft()
            self._commit(*job.result(), job.weight, job.row_offset)

    def evicted(self) -> tuple[Tensor, Tensor]:
        """The evicted ``(ids, rows)`` kept since the last call (``keep_evicted=True``), oldest
        first; the buffer is emptied."""
        self.flush()
        pairs, self._evicted = self._evicted, []
        if not pairs:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, self.embedding_dim)
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def live(self, weight: Tensor, row_offset: int) -> tuple[Tensor, Tensor]:
        """``(ids, rows)`` of the live ids, ordered by row (rows are copies)."""
        ids, slots = self.slot_map.items()
        rows = weight.detach().narrow(0, row_offset, self.capacity + 1)
        return ids, rows[slots.to(rows.device)].clone()

    def state_dict(self) -> dict[str, Tensor]:
        return self.slot_map.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.slot_map.load_state_dict(state)


def _to_vectors(ids: Tensor, rows: Tensor) -> Any:
    from embtable.vectors import Vectors

    return Vectors([str(i) for i in ids.tolist()], rows)


class _DynamicMixin:
    """What both dynamic modules add to their static base class."""

    dynamic: DynamicRows
    weight: Parameter

    def _setup(self, capacity: int, embedding_dim: int, config: DynamicConfig, init_std: float,
               on_evict: Any, keep_evicted: bool) -> None:
        self.dynamic = DynamicRows(
            capacity, embedding_dim, config, init_std=init_std, on_evict=on_evict,
            keep_evicted=keep_evicted,
        )

    @property
    def capacity(self) -> int:
        """Rows available to ids (``weight`` has one more: the default row)."""
        return self.dynamic.capacity

    @property
    def slot_map(self) -> SlotMap:
        """The id -> row map (:class:`~embtable.storage.slots.SlotMap`)."""
        return self.dynamic.slot_map

    def reset_parameters(self) -> None:
        """Zero every row but the default row (rows get their values when their id arrives)."""
        if hasattr(self, "dynamic"):
            self.dynamic.init_table(self.weight)

    def stats(self) -> dict[str, int]:
        """``size`` (live ids), ``admitted``, ``evicted``, ``default_hits``, ``lookups``."""
        return self.dynamic.slot_map.stats()

    def evicted(self) -> tuple[Tensor, Tensor]:
        """Evicted ``(ids, rows)`` since the last call (needs ``keep_evicted=True``)."""
        return self.dynamic.evicted()

    def live(self) -> tuple[Tensor, Tensor]:
        """``(ids, rows)`` of every id that has a row, ordered by row."""
        return self.dynamic.live(self.weight, 0)

    def prefetch(self, input: Tensor) -> None:
        """Start the id -> row lookup of a coming training batch on a background thread.

        A prefetch pipeline (as FBGEMM's SSD table ``prefetch()`` and TorchRec's
        ``TrainPipelinePrefetch``): call ``prefetch(next_ids)`` before the current step, then
        ``forward(next_ids)`` with the very same tensor at the next step.  The map's work
        (admission, eviction) overlaps the current step; the forward then only initializes
        the new rows.  Every decision, row and optimizer state is the same as without it.

        Raises:
            ValueError: the module is in eval mode (only training forwards change the map).
            TypeError: ``input`` is not an integer tensor.

        Example:
            >>> import torch
            >>> table = DynamicEmbedding(100, 4)
            >>> batches = [torch.tensor([1, 2]), torch.tensor([2, 3])]
            >>> table.prefetch(batches[0])
            >>> for i, ids in enumerate(batches):
            ...     if i + 1 < len(batches):
            ...         table.prefetch(batches[i + 1])
            ...     table(ids).sum().backward()
            >>> table.stats()["size"]
            3
        """
        if not self.training:  # type: ignore[attr-defined]
            raise ValueError(
                f"{type(self).__name__}.prefetch: the module is in eval mode; only training "
                "forwards use a prefetched lookup"
            )
        self.dynamic.prefetch(input, self.weight, 0)

    def lookup_rows(self, ids: Tensor) -> Tensor:
        """The rows of ``weight`` that ``ids`` read now (no side effects)."""
        return self.dynamic.remap(ids, self.weight, 0, training=False)

    def to_vectors(self) -> Any:
        """The live ``(id, row)`` pairs as :class:`embtable.vectors.Vectors`, ids as tokens."""
        return _to_vectors(*self.live())

    def get_extra_state(self) -> dict[str, Tensor]:
        return self.dynamic.state_dict()

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.dynamic.load_state_dict(state)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # Pending prefetched lookups are committed before the weight is overwritten (not into
        # the loaded rows afterwards); the loaded map then replaces the map they changed.
        self.dynamic.flush()
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[misc]

    def _dynamic_repr(self) -> str:
        c = self.dynamic.config
        text = f"capacity={self.capacity}, {self.embedding_dim}, policy={c.policy!r}"  # type: ignore[attr-defined]
        if c.ttl is not None:
            text += f", ttl={c.ttl}"
        if c.min_count != 1:
            text += f", min_count={c.min_count}"
        if c.decay_every is not None:
            text += f", decay_every={c.decay_every}"
        if c.default != "zeros":
            text += f", default={c.default!r}"
        return text


_DYNAMIC_DOC_ARGS = """
        capacity: rows for ids (>= 1); ``weight`` has ``capacity + 1`` rows, the last being
            the default row.
        embedding_dim: size of each row.
        policy, ttl, min_count, exact_counts, default, seed, decay_every: the dynamic
            vocabulary's options (:class:`~embtable.config.DynamicConfig`); or pass
            ``config=``.
        init_std: rows start as N(0, init_std**2), drawn from ``(seed, id)``.
        on_evict: ``on_evict(ids, rows)`` is called with each training lookup's evicted ids
            and copies of their rows, before the rows are reused.
        keep_evicted: keep evicted pairs for :meth:`evicted`.
        device, dtype: factory arguments for the weight.
"""


def _config(config: DynamicConfig | None, **options: Any) -> DynamicConfig:
    if config is None:
        return DynamicConfig(**options)
    if not isinstance(config, DynamicConfig):
        raise TypeError(f"config must be a DynamicConfig, got {type(config).__name__}")
    return config


class DynamicEmbedding(_DynamicMixin, Embedding):
    __doc__ = (
        """``Embedding`` over raw int64 ids of any value: one row per admitted id, no collisions.

    Args:"""
        + _DYNAMIC_DOC_ARGS
        + """
    Shape:
        - Input: ``(*)`` integer ids (any int64 values).  Output: ``(*, embedding_dim)``.

    Raises:
        ValueError: ``capacity < 1``, ``min_count < 1``, an unknown policy (nothing built);
            in forward, more distinct admitted ids in one batch than ``capacity``.
        TypeError: non-integer ids (hash strings with :func:`embtable.hash_ids`).

    Example:
        >>> import torch
        >>> from embtable.nn.dynamic import DynamicEmbedding
        >>> table = DynamicEmbedding(2, 3, policy="lru", min_count=2, exact_counts=True)
        >>> table(torch.tensor([5, 6])).abs().sum().item()    # seen once: default (zeros)
        0.0
        >>> _ = table(torch.tensor([5, 5, 6]))
        >>> table.stats()["size"], table.live()[0]
        (2, tensor([5, 6]))
    """
    )

    def __init__(
        self,
        capacity: int,
        embedding_dim: int,
        *,
        policy: str = "lru",
        ttl: int | None = None,
        min_count: int = 1,
        exact_counts: bool = False,
        default: str = "zeros",
        seed: int = 0,
        decay_every: int | None = None,
        config: DynamicConfig | None = None,
        init_std: float = 1.0,
        on_evict: Callable[[Tensor, Tensor], Any] | None = None,
        keep_evicted: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        config = _config(config, policy=policy, ttl=ttl, min_count=min_count,
                         exact_counts=exact_counts, default=default, seed=seed,
                         decay_every=decay_every)
        _check_capacity(capacity, type(self).__name__)
        self._setup(capacity, embedding_dim, config, init_std, on_evict, keep_evicted)
        super().__init__(capacity + 1, embedding_dim, padding_idx=capacity, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        rows = self.dynamic.remap(input, self.weight, 0, self.training)
        return functional.embedding(rows.to(self.weight.device), self.weight, self.capacity)

    def extra_repr(self) -> str:
        return self._dynamic_repr()


class DynamicEmbeddingBag(_DynamicMixin, EmbeddingBag):
    __doc__ = (
        """``EmbeddingBag`` over raw int64 ids of any value: one row per admitted id.

    With ``default="zeros"`` the ids without a row are skipped by pooling (as padding: not
    counted in a mean); with ``default="row"`` they pool the shared default row, which no
    gradient reaches.

    Args:"""
        + _DYNAMIC_DOC_ARGS
        + """        mode, include_last_offset: as :class:`embtable.EmbeddingBag`.

    Shape:
        - Input: 1-D ids with ``offsets``, or 2-D ``(B, N)``.  Output: ``(B, embedding_dim)``.

    Raises:
        As :class:`DynamicEmbedding`, plus the bag errors of :class:`embtable.EmbeddingBag`.

    Example:
        >>> import torch
        >>> from embtable.nn.dynamic import DynamicEmbeddingBag
        >>> bags = DynamicEmbeddingBag(100, 8, mode="sum", policy="lfu")
        >>> bags(torch.tensor([[3, 10**12], [7, 7]])).shape
        torch.Size([2, 8])
    """
    )

    def __init__(
        self,
        capacity: int,
        embedding_dim: int,
        mode: str = "mean",
        *,
        policy: str = "lru",
        ttl: int | None = None,
        min_count: int = 1,
        exact_counts: bool = False,
        default: str = "zeros",
        seed: int = 0,
        decay_every: int | None = None,
        config: DynamicConfig | None = None,
        init_std: float = 1.0,
        on_evict: Callable[[Tensor, Tensor], Any] | None = None,
        keep_evicted: bool = False,
        include_last_offset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        config = _config(config, policy=policy, ttl=ttl, min_count=min_count,
                         exact_counts=exact_counts, default=default, seed=seed,
                         decay_every=decay_every)
        _check_capacity(capacity, type(self).__name__)
        self._setup(capacity, embedding_dim, config, init_std, on_evict, keep_evicted)
        super().__init__(
            capacity + 1, embedding_dim, mode=mode, include_last_offset=include_last_offset,
            padding_idx=capacity if config.default == "zeros" else None, device=device, dtype=dtype,
        )

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        rows = self.dynamic.remap(input, self.weight, 0, self.training)
        return functional.embedding_bag(
            rows.to(self.weight.device), self.weight, offsets, mode=self.mode,
            per_sample_weights=per_sample_weights, include_last_offset=self.include_last_offset,
            padding_idx=self.padding_idx,
        )

    def extra_repr(self) -> str:
        return self._dynamic_repr() + f", mode={self.mode!r}"


def _check_capacity(capacity: Any, api: str) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"{api}: capacity must be an int >= 1, got {capacity!r}")


# ---------------------------------------------------------------------- collections


class DynamicTableState(Module):
    """A collection's dynamic table: its :class:`DynamicRows`, saved in ``state_dict`` as
    the map's state (``<collection>.dynamic_tables.<table>._extra_state``)."""

    def __init__(self, rows: DynamicRows) -> None:
        super().__init__()
        self.rows = rows

    def get_extra_state(self) -> dict[str, Tensor]:
        return self.rows.state_dict()

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.rows.load_state_dict(state)

    def extra_repr(self) -> str:
        c = self.rows.config
        return f"capacity={self.rows.capacity}, policy={c.policy!r}, min_count={c.min_count}"


def plan_configs(tables: Sequence[TableConfig]) -> tuple[list[TableConfig], dict[str, DynamicRows]]:
    """The configs a collection lays out, and the :class:`DynamicRows` of each dynamic table.

    A table with ``dynamic=DynamicConfig(...)`` is laid out as ``num_embeddings + 1`` rows
    (the last is its default row, a padding row when ``default="zeros"``); other configs
    pass through unchanged.
    """
    planned: list[TableConfig] = []
    dynamic: dict[str, DynamicRows] = {}
    for config in tables:
        options = getattr(config, "dynamic", None)
        if options is None:
            planned.append(config)
            continue
        capacity = config.num_embeddings
        dynamic[config.name] = DynamicRows(capacity, config.embedding_dim, options, init_std=config.init_std)
        planned.append(
            dataclasses.replace(
                config, num_embeddings=capacity + 1, dynamic=None,
                padding_idx=capacity if options.default == "zeros" else None,
            )
        )
    return planned, dynamic


def _table_spans(collection: Any, features: Any, name: str) -> list[tuple[int, int]]:
    """The value spans of ``features`` that belong to table ``name`` (its features present)."""
    index_of = {key: i for i, key in enumerate(features.keys())}
    starts = features.offset_per_key()
    return [
        (starts[index_of[f]], starts[index_of[f] + 1])
        for f in collection.plan.configs[name].feature_names
        if f in index_of  # a missing feature: the collection's checks name it
    ]


def remap_batch(collection: Any, features: Any) -> Any:
    """``features`` with every dynamic table's raw ids replaced by its rows (one SlotMap
    call per table, all its features together) and every hashed table's ids by
    ``hash_rows``; the batch itself when there is nothing to remap.  Training collections
    admit and evict (taking the lookups :func:`prefetch_batch` started for this batch); in
    ``eval()`` ids are only looked up."""
    from embtable.jagged import KeyedJagged

    states = getattr(collection, "dynamic_tables", None) or {}
    hashed = [c.name for c in collection.tables if getattr(c, "hashed", False)]
    if not (states or hashed) or not isinstance(features, KeyedJagged):
        return features
    values = features.values()
    new_values = None
    for name in [*states, *hashed]:
        spans = _table_spans(collection, features, name)
        if not spans:
            continue
        ids = torch.cat([values[a:b] for a, b in spans])
        if name in states:
            place = collection.plan.tables[name]
            weight = collection.grouped_weights[place.group]
            rows = states[name].rows.remap(ids, weight, place.row_offset, collection.training, key=values)
        else:
            rows = hash_rows(ids, collection.plan.configs[name].num_embeddings)
        if new_values is None:
            new_values = values.clone()
        pos = 0
        for a, b in spans:
            new_values[a:b] = rows[pos : pos + b - a].to(values.dtype)
            pos += b - a
    if new_values is None:
        return features
    per_key = tuple(features.stride_per_key()) if features.variable_stride_per_key() else None
    out = KeyedJagged._trusted(
        features.keys(), new_values, features.lengths(), features.weights(), features.stride(), per_key
    )
    out._inverse_indices = features._inverse_indices
    return out


def prefetch_batch(collection: Any, features: Any) -> None:
    """Start the lookups of a coming batch's dynamic tables on the prefetch thread.

    The collection's prefetch pipeline: call it with batch ``i + 1`` before step ``i``, then
    pass the same batch to the collection's forward at step ``i + 1`` (see
    :meth:`DynamicRows.prefetch`; the batch is recognized by its values tensor, so a
    TorchRec ``KeyedJaggedTensor`` works too).  Results are the same as without it.

    Raises:
        ValueError: the collection is in eval mode.

    Example:
        >>> import torch
        >>> from embtable import DynamicConfig, EmbeddingBagCollection, KeyedJagged, TableConfig
        >>> ebc = EmbeddingBagCollection([TableConfig(name="u", num_embeddings=100,
        ...                               embedding_dim=4, dynamic=DynamicConfig())])
        >>> batches = [KeyedJagged.from_dict({"u": [[10**15], [7, 8]]}),
        ...            KeyedJagged.from_dict({"u": [[7], [9]]})]
        >>> prefetch_batch(ebc, batches[0])
        >>> for i, batch in enumerate(batches):
        ...     if i + 1 < len(batches):
        ...         prefetch_batch(ebc, batches[i + 1])
        ...     ebc(batch).values().sum().backward()
        >>> ebc.dynamic_tables["u"].rows.slot_map.stats()["size"]
        4
    """
    from embtable.jagged import KeyedJagged
    from embtable.nn._torchrec import as_keyed_jagged

    if not collection.training:
        raise ValueError(
            f"prefetch_batch: {type(collection).__name__} is in eval mode; only training "
            "forwards use a prefetched lookup"
        )
    features = as_keyed_jagged(features)
    states = getattr(collection, "dynamic_tables", None) or {}
    if not states or not isinstance(features, KeyedJagged):
        return
    values = features.values()
    for name, state in states.items():
        spans = _table_spans(collection, features, name)
        if not spans:
            continue
        ids = torch.cat([values[a:b] for a, b in spans])
        place = collection.plan.tables[name]
        weight = collection.grouped_weights[place.group]
        state.rows.prefetch(ids, weight, place.row_offset, key=values)


def reset_dynamic_tables(collection: Any) -> None:
    """Zero each dynamic table's rows of a collection and set its default row."""
    for name, state in getattr(collection, "dynamic_tables", {}).items():
        state.rows.init_table(collection.table_weight(name))
