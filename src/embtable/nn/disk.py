"""Disk-backed tables: ``DiskEmbedding`` and ``DiskEmbeddingBag`` (tables bigger than memory).

A disk-backed table keeps its rows and their fused-optimizer state in files
(:class:`embtable.storage.disk.DiskRowStore`) and the hot rows in a bounded cache in RAM:
a :class:`~embtable.storage.slots.SlotMap` (policy ``"lru"``, ``"lfu"`` or ``"clock"``) maps ids to
the slots of a dense slot tensor, which is the module's ``weight``.  A lookup

1. remaps the ids to slots: hits cost nothing; misses take a slot (evicting a victim whose
   row, if dirty, is written back first, all victims of the batch in one sorted pass), and
   their rows and optimizer state are faulted in from the files in one sorted pass;
2. runs the ordinary kernels (:mod:`embtable.functional`) on the slot tensor;
3. in training, marks the slots dirty; the fused backward (``embtable.optim.fuse``)
   updates the slots' rows and state in place.

The padding row lives in an extra slot (the last row of ``weight``) that is never
evicted.  Results equal those of an in-RAM table holding the same rows, whatever the
cache size (tests/storage/test_disk.py).

These are subclasses of :class:`embtable.Embedding` / :class:`embtable.EmbeddingBag` (so
``fuse`` and the collections' helpers see them as tables) with the same forward
signatures; ``weight`` is the cache (``cache_rows + 1`` rows), ``state_dict()`` exports the
whole table as a normal ``(num_embeddings, embedding_dim)`` tensor and ``load_state_dict``
imports one.  Training needs a fused optimizer for anything but plain SGD: the state of
a ``torch.optim`` optimizer would belong to slots, not rows.

Example:
    >>> import tempfile, torch
    >>> import embtable
    >>> from embtable.nn.disk import DiskEmbedding
    >>> from embtable.storage.disk import Disk
    >>> path = tempfile.mkdtemp() + "/users"
    >>> table = DiskEmbedding(10**8, 16, storage=Disk(path, cache_rows=1024))
    >>> opt = embtable.optim.fuse(table, "rowwise_adagrad", lr=0.1)
    >>> table(torch.tensor([[3, 99_999_999]])).sum().backward()   # rows updated in the cache
    >>> table.flush()                                             # ... and now on disk
    >>> table.stats()["rows_written"], table.weight.shape
    (2, torch.Size([1025, 16]))
    >>> table.close()
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, ModuleDict, Parameter

from embtable import functional, ops
from embtable.config import PoolingMode, TableConfig
from embtable.functional import FUSED_ATTR
from embtable.jagged import KeyedJagged
from embtable.nn.bag import EmbeddingBag
from embtable.nn.collection import EmbeddingBagCollection, EmbeddingCollection
from embtable.nn.embedding import Embedding, check_table_shape
from embtable.nn.grouping import plan_groups
from embtable.nn.outputs import JaggedEmbeddings, JaggedRows, PooledEmbeddings
from embtable.storage.disk import Disk, DiskRowStore, StateField

__all__ = [
    "DiskEmbedding",
    "DiskEmbeddingBag",
    "DiskEmbeddingBagCollection",
    "DiskEmbeddingCollection",
    "DiskTableMixin",
]

#: Rows per chunk when a whole table is exported or imported.
_CHUNK_ROWS = 1 << 16


def _check_fits(size: int, api: str) -> None:
    """``MemoryError`` unless ``size`` bytes fit in half the machine's physical memory."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    if size > physical // 2:
        raise MemoryError(
            f"{api}: the whole table is {size / 2**30:.1f} GiB, more than half of this machine's "
            f"{physical / 2**30:.1f} GiB of RAM; read it in parts with store.read_rows instead"
        )


class DiskTableMixin:
    """The row cache shared by :class:`DiskEmbedding` and :class:`DiskEmbeddingBag`."""

    weight: Parameter
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    max_norm: float | None

    def _setup_disk(
        self,
        storage: Disk,
        dtype: torch.dtype | None,
        init: str,
        init_std: float,
        init_bound: float | None,
        api: str,
    ) -> None:
        from embtable.storage.slots import SlotMap  # lazily: the compiled map loads on first use

        if not isinstance(storage, Disk):
            raise TypeError(
                f"{api}: storage must be an embtable.storage.disk.Disk, got {type(storage).__name__}"
            )
        dtype = torch.float32 if dtype is None else dtype
        self.storage = storage
        self.store = DiskRowStore.open_or_create(
            storage.path,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            dtype=dtype,
            read_only=storage.read_only,
            io_threads=storage.io_threads,
            init=init,
            init_std=init_std,
            init_bound=init_bound if init_bound is not None else (1 / self.num_embeddings) ** 0.5,
            padding_idx=self.padding_idx,
            seed=storage.seed,
        )
        self.store.compact_ratio = storage.compact_ratio
        capacity = storage.cache_size(self.store.row_bytes)
        self.cache_rows = capacity
        self._slot_map = SlotMap(capacity, policy=storage.policy)
        self._pad_slot = capacity
        weight = torch.zeros((capacity + 1, self.embedding_dim), dtype=dtype)
        if self.padding_idx is not None:
            weight[capacity] = self.store.read_rows(torch.tensor([self.padding_idx]))[0]
        self.weight = Parameter(weight, requires_grad=not storage.read_only)
        self._dirty = torch.zeros(capacity + 1, dtype=torch.bool)
        self._slot_id = torch.full((capacity + 1,), -1, dtype=torch.int64)
        self._faults = 0  # slots (re)assigned so far: a backward checks its slots are still its rows
        self._bound: tuple[int, str] | None = None  # (id of the fused optimizer, its rule)
        self._broken = ""  # set when an I/O error left the cache out of step with the slot map

    # -- the optimizer state of the cached slots ------------------------------------------

    def _optimizer_state(self) -> tuple[Any, list[Tensor]]:
        """The fused optimizer attached to ``weight`` and its state tensors (``[]`` if none),
        binding the store's state file to it on first sight."""
        handle = getattr(self.weight, FUSED_ATTR, None)
        if handle is None:
            return None, []
        group = handle._group_of[id(self.weight)]
        state = handle.state.get(self.weight)
        fresh_state = not state
        if fresh_state:  # created here (as the optimizer would at its first update) to page it
            state = {**handle.rule.init_state(self.weight.detach(), group), "table_step": 0}
            handle.state[self.weight] = state
        tensors = handle.rule.state_tensors(state, group)
        if self._bound != (id(handle), handle.rule.name):
            self._bind(handle, group, state, tensors, fresh_state)
        return handle, tensors

    def _bind(self, handle: Any, group: dict, state: dict, tensors: list[Tensor], fresh_state: bool) -> None:
        template = handle.rule.init_state(torch.empty((1, self.embedding_dim), dtype=self.weight.dtype), group)
        fresh_rows = handle.rule.state_tensors(template, group)
        fields = [StateField(str(i), t.dtype, tuple(t.shape[1:])) for i, t in enumerate(fresh_rows)]
        fresh = b"".join(t[:1].contiguous().view(torch.uint8).numpy().tobytes() for t in fresh_rows)
        had_state = self.store.state_rule is not None
        self.store.bind_state(handle.rule.name, fields, fresh)
        cached = torch.nonzero(self._slot_id >= 0).flatten()
        if cached.numel() and tensors:
            for tensor, rows in zip(tensors, self.store.read_state(self._slot_id[cached])):
                tensor[cached] = rows
        if fresh_state and had_state:
            state["table_step"] = self.store.table_step
        self._bound = (id(handle), handle.rule.name)

    # -- remapping ids to slots -------------------------------------------------------------

    def _will_write(self) -> bool:
        return self.max_norm is not None or (self.weight.requires_grad and torch.is_grad_enabled())

    def _slots(self, ids: Tensor, api: str) -> Tensor:
        """Slots of ``ids`` (same shape), faulting rows in and writing evicted dirty rows back."""
        ops.check_ids(ids, self.num_embeddings, api)
        writing = self._will_write()
        if writing and self.store.read_only:
            raise RuntimeError(
                f"{api}: the table at {self.storage.path!r} is open read-only; run lookups under "
                "torch.no_grad() (or set weight.requires_grad = False) and without max_norm"
            )
        flat = ids.reshape(-1).to(torch.int64)
        keep = None if self.padding_idx is None else flat != self.padding_idx
        wanted = flat if keep is None else flat[keep]
        if self._broken:
            raise RuntimeError(f"{api}: {self._broken}")
        found = self._slot_map.lookup(wanted)
        try:
            _, state = self._optimizer_state()
            self._write_back(found.evicted_ids, found.evicted_slots, state)
            if found.new_ids.numel():
                order = torch.argsort(found.new_ids)
                new_ids, new_slots = found.new_ids[order], found.new_slots[order]
                rows, states = self.store.read(new_ids, with_state=bool(state))
                with torch.no_grad():
                    self.weight[new_slots] = rows
                for tensor, values in zip(state, states):
                    tensor[new_slots] = values
                self._dirty[new_slots] = False
                self._slot_id[new_slots] = new_ids
                self._faults += new_ids.numel()
        except BaseException as error:  # the slot map has moved on: the cache no longer matches it
            self._broken = (
                f"the row cache of {self.storage.path!r} is unusable after a failed read or write "
                f"({type(error).__name__}: {error}); reopen the table (its files are as at the last "
                "flush, or refuse to open)"
            )
            raise
        if keep is None:
            slots = found.slots
        else:
            slots = torch.full_like(flat, self._pad_slot)
            slots[keep] = found.slots
        if writing:
            self._dirty[found.slots] = True
        return slots.reshape(ids.shape)

    def prefetch(self, ids: Tensor) -> None:
        """Start reading the rows (and fused-optimizer state) of the ``ids`` not in the cache
        now, on the I/O threads (``Disk(io_threads=...)``), and return at once: call it with
        the next batch's ids before the current step's backward, so that the next lookup's
        misses are read while this step computes (the way FBGEMM's SSD tables pipeline
        their prefetch).  The next lookup takes the rows it misses from the prefetch,
        waiting for any still being read; results and training are exactly those without
        the prefetch (a row written back since is read again).

        Raises:
            IndexError / TypeError: ids outside the table or not an integer tensor.
            RuntimeError: the cache is unusable after an I/O error.

        Example:
            >>> import tempfile, torch
            >>> from embtable.nn.disk import DiskEmbedding
            >>> from embtable.storage.disk import Disk
            >>> table = DiskEmbedding(1000, 4, storage=Disk(tempfile.mkdtemp() + "/t", cache_rows=8))
            >>> table.prefetch(torch.tensor([3, 4, 3]))   # read in the background
            >>> out = table(torch.tensor([3, 4]))          # the misses come from the prefetch
            >>> table.stats()["prefetch_used"]
            2
        """
        api = f"{type(self).__name__}.prefetch"
        ops.check_ids(ids, self.num_embeddings, api)
        if self._broken:
            raise RuntimeError(f"{api}: {self._broken}")
        wanted = torch.unique(ids.reshape(-1).to(torch.int64))
        if self.padding_idx is not None:
            wanted = wanted[wanted != self.padding_idx]
        missing = wanted[self._slot_map.find(wanted) < 0]
        _, state = self._optimizer_state()
        self.store.prefetch(missing, with_state=bool(state))

    def _write_back(self, ids: Tensor, slots: Tensor, state: list[Tensor]) -> None:
        if not ids.numel():
            return
        dirty = self._dirty[slots]
        if not bool(dirty.any()):
            return
        ids, slots = ids[dirty], slots[dirty]
        self.store.write_rows(ids, self.weight.detach()[slots], [t[slots] for t in state])
        self._dirty[slots] = False

    def _guard(self, out: Tensor, slots: Tensor, ids: Tensor, api: str) -> Tensor:
        """A backward hook raising if another lookup reassigned this lookup's slots before its
        backward (a cache too small for several lookups between forward and backward)."""
        if not out.requires_grad:
            return out
        faults = self._faults
        flat_slots, flat_ids = slots.reshape(-1), ids.reshape(-1).to(torch.int64)

        def check(grad: Tensor) -> Tensor:
            if self._faults != faults:
                real = flat_slots != self._pad_slot
                if not bool((self._slot_id[flat_slots[real]] == flat_ids[real]).all()):
                    raise RuntimeError(
                        f"{api}: rows of this lookup were evicted from the cache by a later "
                        f"lookup before this backward ran; raise cache_rows (now {self.cache_rows}) "
                        "above the distinct ids of all lookups between a forward and its backward"
                    )
            return grad

        out.register_hook(check)
        return out

    # -- durability and export --------------------------------------------------------------

    def flush(self) -> None:
        """Write every dirty cached row (and its optimizer state) back, then make the files
        a complete, clean table (:meth:`embtable.storage.disk.DiskRowStore.flush`)."""
        if self.store.read_only:
            return
        if self._broken:
            raise RuntimeError(f"{type(self).__name__}.flush: {self._broken}")
        handle, state = self._optimizer_state()
        dirty = torch.nonzero(self._dirty[: self._pad_slot]).flatten()
        for chunk in dirty.split(_CHUNK_ROWS):  # bounded temporary memory
            self._write_back(self._slot_id[chunk], chunk, state)
        table_step = handle.state[self.weight].get("table_step") if handle is not None else None
        self.store.flush(table_step=table_step)

    def checkpoint(self, path: str | os.PathLike[str]) -> str:
        """:meth:`flush`, then copy the table's files to the directory ``path`` (a complete
        table whose manifest is written last; open it, or :func:`~embtable.storage.disk.restore`
        it, to resume exactly).  Returns the path."""
        self.flush()
        return str(self.store.checkpoint(path))

    def close(self) -> None:
        """:meth:`flush` and close the files; the module is unusable afterwards."""
        self.flush()
        self.store.close()

    def stats(self) -> dict[str, int]:
        """Cache and I/O counters: the slot map's (``size``, ``admitted``, ``evicted``,
        ``lookups``, ...) and the store's (``rows_read``, ``rows_written``,
        ``rows_initialized``, ``bytes_read``, ``bytes_written``, ``rows_prefetched``,
        ``prefetch_used``)."""
        stats = dict(self._slot_map.stats())
        for name in ("rows_read", "rows_written", "rows_initialized", "bytes_read", "bytes_written",
                     "rows_prefetched", "prefetch_used"):
            stats[name] = getattr(self.store, name)
        return stats

    @torch.no_grad()
    def export_weight(self) -> Tensor:
        """The whole table as a ``(num_embeddings, embedding_dim)`` tensor (cached rows
        included).  Needs the memory of a full in-RAM table."""
        _check_fits(self.num_embeddings * self.store.row_bytes, f"{type(self).__name__}.export_weight")
        out = torch.empty((self.num_embeddings, self.embedding_dim), dtype=self.weight.dtype)
        for start in range(0, self.num_embeddings, _CHUNK_ROWS):
            ids = torch.arange(start, min(start + _CHUNK_ROWS, self.num_embeddings))
            out[ids] = self.store.read_rows(ids)
        cached = torch.nonzero(self._slot_id >= 0).flatten()
        out[self._slot_id[cached]] = self.weight[cached]
        return out

    @torch.no_grad()
    def export_state(self) -> list[Tensor]:
        """The fused optimizer's per-row state of the whole table, one tensor per state field
        (``[]`` without a fused optimizer)."""
        _, state = self._optimizer_state()
        if not state:
            return []
        out = [torch.empty((self.num_embeddings, *t.shape[1:]), dtype=t.dtype) for t in state]
        for start in range(0, self.num_embeddings, _CHUNK_ROWS):
            ids = torch.arange(start, min(start + _CHUNK_ROWS, self.num_embeddings))
            for tensor, rows in zip(out, self.store.read_state(ids)):
                tensor[ids] = rows
        cached = torch.nonzero(self._slot_id >= 0).flatten()
        for tensor, live in zip(out, state):
            tensor[self._slot_id[cached]] = live[cached]
        return out

    @torch.no_grad()
    def import_weight(self, weight: Tensor) -> None:
        """Write a whole ``(num_embeddings, embedding_dim)`` table into the files (the cache
        is emptied; optimizer state is kept)."""
        api = f"{type(self).__name__}.import_weight"
        if tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"{api}: weight has shape {tuple(weight.shape)}, expected "
                f"({self.num_embeddings}, {self.embedding_dim})"
            )
        self.flush()
        weight = weight.to(self.weight.dtype)
        for start in range(0, self.num_embeddings, _CHUNK_ROWS):
            ids = torch.arange(start, min(start + _CHUNK_ROWS, self.num_embeddings))
            self.store.write_rows(ids, weight[ids].contiguous(), None)
        cached = torch.nonzero(self._slot_id >= 0).flatten()
        self.weight[cached] = weight[self._slot_id[cached]]
        if self.padding_idx is not None:
            self.weight[self._pad_slot] = weight[self.padding_idx]
        self.flush()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.export_weight()

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        try:
            self.import_weight(state_dict[key])
        except ValueError as error:
            error_msgs.append(str(error))

    def reset_parameters(self) -> None:
        """Not available: a disk table's rows start from its initializer at ``(seed, row)``;
        create a new table (a new path) to start again."""
        if hasattr(self, "store"):
            raise NotImplementedError(
                f"{type(self).__name__}.reset_parameters: create a new disk table (another path) "
                "to start from fresh rows"
            )

    def _disk_repr(self) -> str:
        return f"storage={self.storage!r}"


def _init_options(init: str, init_std: float, init_bound: float | None, api: str) -> None:
    if init not in ("normal", "uniform"):
        raise ValueError(f"{api}: init must be 'normal' or 'uniform' for a disk table, got {init!r}")


class DiskEmbedding(DiskTableMixin, Embedding):
    r"""``Embedding`` whose rows live in files, with a row cache in RAM.

    Args:
        num_embeddings, embedding_dim, padding_idx, max_norm, norm_type,
            scale_grad_by_freq, sparse: as :class:`embtable.Embedding`.
        storage: an :class:`embtable.storage.disk.Disk` (path, cache size, policy, seed).
        init: ``"normal"`` (``N(0, init_std**2)``, torch's default) or ``"uniform"``
            (``U(-init_bound, init_bound)``, default bound ``sqrt(1 / num_embeddings)``),
            drawn per row from ``(seed, row)`` when the row is first read.
        dtype: the rows' dtype (default float32).

    Attributes:
        weight: the cache: ``cache_rows + 1`` slots (the last one holds the padding row).
        store: the :class:`~embtable.storage.disk.DiskRowStore`.

    Raises:
        TypeError: ``storage`` is not a ``Disk``.
        ValueError: bad sizes, ``padding_idx``, ``init``; an existing table of another shape.
        FileNotFoundError, TableNotCleanError, CorruptTableError: see ``DiskRowStore.open``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        storage: Disk,
        init: str = "normal",
        init_std: float = 1.0,
        init_bound: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        api = type(self).__name__
        Module.__init__(self)
        check_table_shape(num_embeddings, embedding_dim, api)
        _init_options(init, init_std, init_bound, api)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = ops.normalize_padding_idx(padding_idx, num_embeddings, api)
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self._setup_disk(storage, dtype, init, init_std, init_bound, api)

    def forward(self, input: Tensor) -> Tensor:
        api = type(self).__name__
        slots = self._slots(input, api)
        out = functional.embedding(
            slots,
            self.weight,
            None if self.padding_idx is None else self._pad_slot,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return self._guard(out, slots, input, api)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._disk_repr()


class DiskEmbeddingBag(DiskTableMixin, EmbeddingBag):
    r"""``EmbeddingBag`` whose rows live in files, with a row cache in RAM.

    Args:
        num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode,
            sparse, include_last_offset, padding_idx: as :class:`embtable.EmbeddingBag`.
        storage, init, init_std, init_bound, dtype: as :class:`DiskEmbedding`.

    Example:
        >>> import tempfile, torch
        >>> from embtable.nn.disk import DiskEmbeddingBag
        >>> from embtable.storage.disk import Disk
        >>> bag = DiskEmbeddingBag(1000, 4, mode="sum",
        ...                        storage=Disk(tempfile.mkdtemp() + "/t", cache_rows=8))
        >>> bag(torch.tensor([1, 2, 3, 900]), torch.tensor([0, 2])).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        *,
        storage: Disk,
        init: str = "normal",
        init_std: float = 1.0,
        init_bound: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        api = type(self).__name__
        Module.__init__(self)
        check_table_shape(num_embeddings, embedding_dim, api)
        _init_options(init, init_std, init_bound, api)
        self.mode = functional.check_bag_mode(mode, scale_grad_by_freq, api)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.padding_idx = ops.normalize_padding_idx(padding_idx, num_embeddings, api)
        self.sparse = sparse
        self.include_last_offset = include_last_offset
        self._setup_disk(storage, dtype, init, init_std, init_bound, api)

    def forward(
        self,
        input: Tensor,
        offsets: Tensor | None = None,
        per_sample_weights: Tensor | None = None,
    ) -> Tensor:
        """Pool each bag of ``input`` (see :meth:`embtable.EmbeddingBag.forward`)."""
        api = type(self).__name__
        slots = self._slots(input, api)
        out = functional.embedding_bag(
            slots,
            self.weight,
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            None if self.padding_idx is None else self._pad_slot,
        )
        return self._guard(out, slots, input, api)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._disk_repr()


class _DiskCollection(Module):
    """Disk tables (one module each) beside an inner in-RAM collection of the other tables."""

    _pooled: bool
    _state_key: str

    def __init__(self, tables: list[TableConfig], is_weighted: bool = False) -> None:
        super().__init__()
        api = type(self).__name__
        tables = list(tables)
        plan_groups(tables, pooled=self._pooled, api=api)  # names, features, types: all tables
        ram = [config for config in tables if config.storage is None]
        disk = [config for config in tables if config.storage is not None]
        for config in disk:
            if self._pooled and config.pooling is PoolingMode.NONE:
                raise ValueError(f"{api}: table {config.name!r} has pooling='none'; use 'sum', 'mean' or 'max'")
            if not self._pooled and config.pooling in (PoolingMode.MEAN, PoolingMode.MAX):
                raise ValueError(f"{api}: table {config.name!r} pools ({config.pooling.value!r}); use 'none'")
            if config.scale_grad_by_freq:
                raise ValueError(
                    f"{api}: table {config.name!r} on disk has scale_grad_by_freq=True; only "
                    "in-RAM tables of a collection support it (use embtable.nn.disk."
                    f"{'DiskEmbeddingBag' if self._pooled else 'DiskEmbedding'})"
                )
        self.tables = tuple(tables)
        self.feature_names = [feature for config in tables for feature in config.feature_names]
        self.embedding_dims = [config.embedding_dim for config in tables for _ in config.feature_names]
        self._is_weighted = is_weighted
        if not ram:
            self.ram = None
        elif self._pooled:
            self.ram = EmbeddingBagCollection(ram, is_weighted=is_weighted)
        else:
            self.ram = EmbeddingCollection(ram)
        self.add_module(self._state_key, ModuleDict({config.name: self._disk_table(config) for config in disk}))
        self._register_state_dict_hook(_flatten_ram_keys)
        self._register_load_state_dict_pre_hook(_nest_ram_keys, with_module=True)

    def _disk_table(self, config: TableConfig) -> Module:
        options = {
            "padding_idx": config.padding_idx, "storage": config.storage, "init": config.init,
            "init_std": config.init_std, "init_bound": config.init_bound, "dtype": config.dtype,
        }
        if self._pooled:
            return DiskEmbeddingBag(
                config.num_embeddings, config.embedding_dim, mode=config.pooling.value,
                include_last_offset=True, **options,
            )
        return DiskEmbedding(config.num_embeddings, config.embedding_dim, **options)

    @property
    def _disk(self) -> ModuleDict:
        return getattr(self, self._state_key)

    def _lookups(self, features: KeyedJagged, with_ram: bool = True) -> tuple[Any, dict[str, Any]]:
        """The inner collection's result (``with_ram``) and ``{disk table: its features'
        Jagged parts}``."""
        api = type(self).__name__
        inner = self.ram(features) if self.ram is not None and with_ram else None
        parts = {}
        for config in self.tables:
            if config.storage is None:
                continue
            for feature in config.feature_names:
                if feature not in features:
                    raise KeyError(f"{api}: the batch has no feature {feature!r} (table {config.name!r})")
            parts[config.name] = [features[feature] for feature in config.feature_names]
        return inner, parts

    def prefetch(self, features: KeyedJagged) -> None:
        """Start reading the uncached rows of a coming batch for every disk table
        (:meth:`DiskTableMixin.prefetch`, all features of a table in one call); RAM tables
        need none.  Call it with the next batch before this batch's backward.

        Raises:
            KeyError: the batch lacks a disk table's feature.
        """
        _, parts = self._lookups(features, with_ram=False)
        for name, group in parts.items():
            self._disk[name].prefetch(torch.cat([part.values for part in group]))

    def flush(self) -> None:
        """Flush every disk table (:meth:`DiskTableMixin.flush`)."""
        for table in self._disk.values():
            table.flush()

    def checkpoint(self, path: str | os.PathLike[str]) -> dict[str, str]:
        """Checkpoint every disk table to ``path/<table>`` (``path`` is created); the RAM
        tables go through ``state_dict`` as usual.  Returns ``{table: its checkpoint}``."""
        os.makedirs(path, exist_ok=True)
        return {name: table.checkpoint(os.path.join(path, name)) for name, table in self._disk.items()}

    def close(self) -> None:
        """Close every disk table (:meth:`DiskTableMixin.close`: flush, then close)."""
        for table in self._disk.values():
            table.close()

    def extra_repr(self) -> str:
        return f"{len(self.tables)} tables, {len(self._disk)} on disk"


class DiskEmbeddingBagCollection(_DiskCollection):
    r"""An :class:`embtable.EmbeddingBagCollection` whose tables configured with
    ``storage=Disk(...)`` live on disk (one :class:`DiskEmbeddingBag` each) while the others
    stay in RAM (one inner ``EmbeddingBagCollection``, grouped as usual).

    The forward takes the same :class:`~embtable.KeyedJagged` batch and returns the same
    :class:`~embtable.nn.outputs.PooledEmbeddings` (features in table order), and
    ``state_dict`` has the same keys (``embedding_bags.<table>.weight``; a disk table's
    entry is its exported rows), so results equal those of an all-RAM collection holding the
    same rows.  ``embtable.optim.fuse`` finds both kinds of table.  Call :meth:`flush`,
    :meth:`checkpoint` or :meth:`close` for the disk tables.

    Args:
        tables: the table configs (``pooling`` ``"sum"``, ``"mean"`` or ``"max"``).
        is_weighted: as :class:`embtable.EmbeddingBagCollection`.

    Raises:
        ValueError: duplicate table names, a feature in two tables, ``pooling="none"``.
        TypeError: an entry is not a ``TableConfig``.

    Example:
        >>> import tempfile, torch
        >>> from embtable import KeyedJagged, TableConfig
        >>> from embtable.nn.disk import DiskEmbeddingBagCollection
        >>> from embtable.storage.disk import Disk
        >>> collection = DiskEmbeddingBagCollection([
        ...     TableConfig(name="country", num_embeddings=200, embedding_dim=4),
        ...     TableConfig(name="user", num_embeddings=10**5, embedding_dim=8, pooling="mean",
        ...                 storage=Disk(tempfile.mkdtemp() + "/user", cache_rows=1024)),
        ... ])
        >>> batch = KeyedJagged.from_dict({"country": [[3], [7]], "user": [[5, 6], [10**5 - 1]]})
        >>> collection(batch).values().shape
        torch.Size([2, 12])
        >>> list(collection.state_dict())[:1]
        ['embedding_bags.country.weight']
    """

    _pooled = True
    _state_key = "embedding_bags"

    def forward(self, features: KeyedJagged) -> PooledEmbeddings:
        """Pool every feature of ``features`` (see :class:`embtable.EmbeddingBagCollection`)."""
        api = type(self).__name__
        pooled, parts = self._lookups(features)
        tensors = []
        for config in self.tables:
            if config.storage is None:
                tensors.extend(pooled[feature] for feature in config.feature_names)
                continue
            # one lookup for all features of the table (one fused step, as the RAM collection)
            group = parts[config.name]
            values = torch.cat([part.values for part in group])
            lengths = torch.cat([part.lengths for part in group])
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
            weights = None
            if self._is_weighted and config.pooling is PoolingMode.SUM:
                if any(part.weights is None for part in group):
                    raise ValueError(f"{api}: is_weighted=True needs per-value weights in the batch")
                weights = torch.cat([part.weights for part in group]).to(config.dtype)
            out = self._disk[config.name](values, offsets, weights)
            tensors.extend(out.split([len(part.lengths) for part in group]))
        return PooledEmbeddings(self.feature_names, tensors)


class DiskEmbeddingCollection(_DiskCollection):
    r"""An :class:`embtable.EmbeddingCollection` (no pooling: one row per id) whose tables
    configured with ``storage=Disk(...)`` live on disk (one :class:`DiskEmbedding` each);
    the same batches, :class:`~embtable.nn.outputs.JaggedEmbeddings` results and
    ``state_dict`` keys (``embeddings.<table>.weight``) as an all-RAM collection.

    Example:
        >>> import tempfile, torch
        >>> from embtable import KeyedJagged, TableConfig
        >>> from embtable.nn.disk import DiskEmbeddingCollection
        >>> from embtable.storage.disk import Disk
        >>> collection = DiskEmbeddingCollection([
        ...     TableConfig(name="words", num_embeddings=10**5, embedding_dim=4, pooling="none",
        ...                 storage=Disk(tempfile.mkdtemp() + "/words", cache_rows=64)),
        ... ])
        >>> collection(KeyedJagged.from_dict({"words": [[1, 2, 3], [4]]}))["words"].values.shape
        torch.Size([4, 4])
    """

    _pooled = False
    _state_key = "embeddings"

    def forward(self, features: KeyedJagged) -> JaggedEmbeddings:
        """Look up every id of every feature (see :class:`embtable.EmbeddingCollection`)."""
        found, parts = self._lookups(features)
        rows = []
        for config in self.tables:
            if config.storage is None:
                rows.extend(found[feature] for feature in config.feature_names)
                continue
            group = parts[config.name]  # one lookup for all features of the table
            out = self._disk[config.name](torch.cat([part.values for part in group]))
            pieces = out.split([part.values.numel() for part in group])
            rows.extend(JaggedRows(piece, part.lengths) for piece, part in zip(pieces, group))
        return JaggedEmbeddings(self.feature_names, rows)


def _flatten_ram_keys(module: Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``ram.<key>.<t>.weight`` -> ``<key>.<t>.weight``, tables in config order."""
    tables, key = {}, module._state_key
    for config in module.tables:
        for place in (f"ram.{key}.", f"{key}."):
            name = f"{prefix}{place}{config.name}.weight"
            if name in state_dict:
                tables[f"{prefix}{key}.{config.name}.weight"] = state_dict.pop(name)
    state_dict.update(tables)


def _nest_ram_keys(module: Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    if module.ram is None:
        return
    for config in module.ram.tables:
        key = f"{prefix}{module._state_key}.{config.name}.weight"
        if key in state_dict:
            state_dict[f"{prefix}ram.{module._state_key}.{config.name}.weight"] = state_dict.pop(key)
