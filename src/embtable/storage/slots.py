"""``SlotMap``: raw int64 ids -> slots of a dense slot tensor, with admission and eviction.

One component serves the dynamic-vocabulary tables (``embtable.nn.dynamic``), the row cache
of disk-backed tables and the local tables of sharded ones (DESIGN.md, "Storage"): a
compiled open-addressing hash map whose whole state lives in tensors (so it checkpoints with
``state_dict``), with a policy that picks the slot a new id takes when the map is full.

- **Admission**: an id gets a slot once it has been seen ``min_count`` times, counted by a
  count-min sketch of ``sketch_depth x sketch_width`` int32 cells (bounded memory; it may
  over-count, never under-count) or exactly (``exact_counts=True``: one table entry per id
  ever missed).  Until then its slot is -1: the caller reads a default row.
- **Eviction** when all ``capacity`` slots are taken: ``"lru"`` (least recently used),
  ``"lfu"`` (least frequently used, ties to the least recent, then the lowest slot),
  ``"ttl"`` (the least recent slot, but only once it has not been used for more than ``ttl``
  :meth:`SlotMap.step` calls; while nothing has expired, new ids are not admitted) or
  ``"clock"`` (second chance).  The ids of one call never evict each other.
- **LFU aging** (``decay_every=N``, LFU only): every ``N`` lookup calls each live id's count
  is halved, so an id that was frequent long ago but is no longer used loses its row to
  ids that are frequent now.

The big state tensors (index, slot records, recency queue) sit on transparent huge pages
where the kernel grants them (``embtable.ops._memory``; ``EMBTABLE_HUGEPAGES=0`` turns that
off): the remap reads them at random, and 2 MiB pages save a TLB miss on most reads.

Every decision is specified by the pure-Python oracle :mod:`embtable.storage._slots_reference`
(its module docstring states the rules), which the compiled kernel
(``csrc/cpu/slots_cpu.cpp``) matches id by id and slot by slot; the oracle also runs when the
compiled extension is missing (with a one-time warning).

Example:
    >>> import torch
    >>> from embtable.storage.slots import SlotMap
    >>> smap = SlotMap(2, "lru")
    >>> smap.lookup(torch.tensor([10**12, 7, 10**12])).slots
    tensor([0, 1, 0])
    >>> _ = smap.lookup(torch.tensor([7]))
    >>> out = smap.lookup(torch.tensor([-5]))    # full: 10**12 is the least recently used
    >>> out.slots, out.evicted_ids, out.evicted_slots
    (tensor([0]), tensor([1000000000000]), tensor([0]))
    >>> smap.stats()
    {'size': 2, 'admitted': 3, 'evicted': 1, 'default_hits': 0, 'lookups': 5}
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from embtable.ops._memory import empty_table, hugepages_requested, place_pages
from embtable.storage import _slots_reference as _ref

__all__ = ["SlotLookup", "SlotMap", "POLICIES"]

POLICIES = _ref.POLICIES
_POLICY_CODES = {name: code for code, name in enumerate(POLICIES)}

# Layout shared with csrc/cpu/slots_cpu.cpp (enums Meta and StateIndex).
_META = ("calls", "clock", "hand", "admitted", "evicted", "default_hits", "lookups", "size",
         "head", "tail", "exact_size", "cursor", "seq")
_M = {name: i for i, name in enumerate(_META)}
_STATE = ("meta", "slots", "heap_slot", "heap_freq", "heap_call", "index", "sketch", "seeds", "exact",
          "queue")
_S = {name: i for i, name in enumerate(_STATE)}
# Columns of the [capacity, 8] `slots` tensor (one 64-byte cache line per slot).
_F = {name: i for i, name in enumerate(("id", "freq", "last_call", "last_step", "spare0", "spare1", "seq", "flags"))}
_LIVE, _REF = 1, 2
#: Canonical ``meta`` of a state dict (both implementations).
_CANONICAL_META = ("calls", "clock", "hand", "admitted", "evicted", "default_hits", "lookups")
_FAKES = {"registered": False}


class SlotLookup(NamedTuple):
    """The result of :meth:`SlotMap.lookup` (all int64 tensors).

    Attributes:
        slots: same shape as the ids; the slot of each id, -1 where it is not admitted (it
            reads the default row and its gradient goes nowhere).
        new_ids: 1-D, the ids that received a slot in this call (their rows must be
            initialised, or faulted in from disk, and their optimizer state reset).
        new_slots: 1-D, the slots of ``new_ids`` (same length).
        evicted_ids: 1-D, the ids that lost their slot in this call (write back / export).
        evicted_slots: 1-D, their former slots; a subset of ``new_slots``.
    """

    slots: Tensor
    new_ids: Tensor
    new_slots: Tensor
    evicted_ids: Tensor
    evicted_slots: Tensor


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _register_fakes() -> None:
    if _FAKES["registered"]:
        return
    _FAKES["registered"] = True

    @torch.library.register_fake("embtable::slot_lookup")
    def _slot_lookup_fake(ids, state, config):
        ctx = torch.library.get_ctx()
        outs = [ids.new_empty((ctx.new_dynamic_size(),)) for _ in range(4)]
        return (ids.new_empty((ids.numel(),)), *outs)

    @torch.library.register_fake("embtable::slot_find")
    def _slot_find_fake(ids, index):
        return ids.new_empty((ids.numel(),))

    @torch.library.register_fake("embtable::slot_init_rows")
    def _slot_init_rows_fake(ids, dim, seed, std):
        return ids.new_empty((ids.numel(), dim), dtype=torch.float32)

    @torch.library.register_fake("embtable::slot_init_rows_into")
    def _slot_init_rows_into_fake(weight, slots, ids, seed, std):
        return None

    @torch.library.register_fake("embtable::slot_fresh_rows")
    def _slot_fresh_rows_fake(weight, offset, slots, ids, seed, std, states, fresh, values=None):
        return None

    @torch.library.register_fake("embtable::slot_table_build")
    def _slot_table_build_fake(keys, values, size):
        return keys.new_empty((size, 2), dtype=torch.int64)


def _compiled_available() -> bool:
    from embtable.ops._compiled import extension_available

    if not extension_available():
        return False
    if not hasattr(torch.ops.embtable, "slot_lookup"):
        return False
    _register_fakes()
    return True


_HUGE_MIN_BYTES = 16 << 20


def _zeros_huge(shape: tuple[int, ...]) -> Tensor:
    """An int64 zero tensor, on huge pages where granted (asked before the first touch)."""
    return empty_table(shape, torch.int64, None).zero_()


def _check_int(api: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{api}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{api}: {name} must be >= {minimum}, got {value}")
    return value


def _as_ids(api: str, ids: object) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{api}: ids must be an int64 tensor, got {type(ids).__name__}")
    if ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
        raise TypeError(
            f"{api}: ids must be an integer tensor (int64), got dtype {ids.dtype}; hash strings "
            "with embtable.hash_ids"
        )
    return ids.detach().to("cpu", torch.int64)


class SlotMap:
    """A fixed-capacity map from int64 ids (any value) to slots ``0 .. capacity - 1``.

    Args:
        capacity: number of slots (>= 1).
        policy: eviction policy, ``"lru"``, ``"lfu"``, ``"ttl"`` or ``"clock"``.
        ttl: for ``policy="ttl"`` (required there, not allowed elsewhere): a slot expires
            when it has not been used for more than ``ttl`` :meth:`step` calls.
        min_count: occurrences an id needs before it gets a slot (>= 1; 1 admits at once).
        exact_counts: count occurrences exactly instead of with the count-min sketch.
        seed: seed of the sketch's hash functions.
        sketch_width: cells per sketch row, a power of two; default the power of two at least
            ``capacity`` (and 1024).  Only allocated when ``min_count > 1``.
        sketch_depth: sketch rows (hash functions), default 4.
        decay_every: LFU aging (``policy="lfu"`` only): every ``decay_every`` lookup calls,
            each live id's count is halved (rounded down) before the call's decisions.
            ``None`` (default): counts never decay.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``capacity < 1``, ``min_count < 1``, an unknown policy, ``ttl`` missing
            for ``"ttl"`` (or given for another policy), a bad sketch size, ``decay_every``
            below 1 or with a policy other than ``"lfu"``.

    Example:
        >>> import torch
        >>> smap = SlotMap(4, "lfu", min_count=2, exact_counts=True)
        >>> smap.lookup(torch.tensor([3, 9])).slots      # seen once: not admitted yet
        tensor([-1, -1])
        >>> smap.lookup(torch.tensor([9])).slots
        tensor([0])
        >>> smap.find(torch.tensor([3, 9]))
        tensor([-1,  0])
    """

    def __init__(
        self,
        capacity: int,
        policy: str = "lru",
        *,
        ttl: int | None = None,
        min_count: int = 1,
        exact_counts: bool = False,
        seed: int = 0,
        sketch_width: int | None = None,
        sketch_depth: int = 4,
        decay_every: int | None = None,
    ) -> None:
        api = "SlotMap"
        _check_int(api, "capacity", capacity, 1)
        if policy not in _POLICY_CODES:
            raise ValueError(f"{api}: policy must be one of {POLICIES}, got {policy!r}")
        if policy == "ttl":
            if ttl is None:
                raise ValueError(f"{api}: policy='ttl' needs ttl=<steps>, got ttl=None")
            _check_int(api, "ttl", ttl, 0)
        elif ttl is not None:
            raise ValueError(f"{api}: ttl is only used with policy='ttl', got policy={policy!r}")
        _check_int(api, "min_count", min_count, 1)
        if not isinstance(exact_counts, bool):
            raise TypeError(f"{api}: exact_counts must be a bool, got {exact_counts!r}")
        _check_int(api, "seed", seed, -(1 << 63))
        if sketch_width is None:
            sketch_width = _pow2_at_least(max(capacity, 1024))
        _check_int(api, "sketch_width", sketch_width, 1)
        if sketch_width & (sketch_width - 1):
            raise ValueError(f"{api}: sketch_width must be a power of two, got {sketch_width}")
        _check_int(api, "sketch_depth", sketch_depth, 1)
        if decay_every is not None:
            _check_int(api, "decay_every", decay_every, 1)
            if policy != "lfu":
                raise ValueError(
                    f"{api}: decay_every (LFU aging) needs policy='lfu', got policy={policy!r}"
                )
        self.capacity = capacity
        self.decay_every = decay_every
        self.policy = policy
        self.ttl = ttl
        self.min_count = min_count
        self.exact_counts = exact_counts
        self.seed = seed
        self.sketch_width = sketch_width
        self.sketch_depth = sketch_depth
        self._compiled = _compiled_available()
        if self._compiled:
            self._state = self._empty_state()
            self._reference: _ref.ReferenceSlotMap | None = None
        else:
            self._state = []
            self._reference = _ref.ReferenceSlotMap(
                capacity, policy, ttl=ttl, min_count=min_count, exact_counts=exact_counts,
                seed=seed, sketch_width=sketch_width, sketch_depth=sketch_depth,
                decay_every=decay_every,
            )

    # ------------------------------------------------------------------ construction
    def _config_tensor(self) -> Tensor:
        # decay_every is appended only when set, so that the state of a map without aging
        # keeps the 8-entry config of earlier versions.
        extra = [] if self.decay_every is None else [self.decay_every]
        return torch.tensor(
            [self.capacity, _POLICY_CODES[self.policy], -1 if self.ttl is None else self.ttl,
             self.min_count, int(self.exact_counts), self.seed, self.sketch_width,
             self.sketch_depth, *extra],
            dtype=torch.int64,
        )

    def _empty_state(self) -> list[Tensor]:
        c = self.capacity
        i64 = dict(dtype=torch.int64)
        lfu = self.policy == "lfu"
        counting = self.min_count > 1
        meta = torch.zeros(len(_META), **i64)  # head / tail: absolute positions in `queue`
        index = _zeros_huge((_pow2_at_least(max(2 * c, 16)), 2))
        index[:, 1] = -1
        sketch_shape = (self.sketch_depth, self.sketch_width) if counting and not self.exact_counts else (0, 0)
        exact = torch.zeros(16 if counting and self.exact_counts else 0, 2, **i64)
        exact[:, 1] = -1
        slots = _zeros_huge((c, len(_F)))
        listed = self.policy in ("lru", "ttl")
        return [
            meta,
            slots,
            _zeros_huge((c if lfu else 0,)),
            _zeros_huge((c if lfu else 0,)),
            _zeros_huge((c if lfu else 0,)),
            index,
            torch.zeros(sketch_shape, dtype=torch.int32),
            torch.tensor(_ref.sketch_seeds(self.seed, self.sketch_depth), **i64),
            exact,
            _zeros_huge((_pow2_at_least(max(2 * c, 16)) if listed else 0,)),
        ]

    def _config_ints(self, missing: int = -1) -> list[int]:
        # The kernel's config: capacity, policy, ttl, min_count, exact_counts, missing, decay.
        return [self.capacity, _POLICY_CODES[self.policy], -1 if self.ttl is None else self.ttl,
                self.min_count, int(self.exact_counts), missing, self.decay_every or 0]

    def _reserve_exact(self, n: int) -> None:
        """Grow the exact counter table so that ``n`` more ids fit at load <= 1/2."""
        table = self._state[_S["exact"]]
        size = int(self._state[_S["meta"]][_M["exact_size"]])
        if 2 * (size + n) <= table.shape[0]:
            return
        keep = table[:, 1] != -1
        new_size = _pow2_at_least(max(4 * (size + n), 16))
        self._state[_S["exact"]] = torch.ops.embtable.slot_table_build(
            table[keep, 0], table[keep, 1], new_size
        )

    # ------------------------------------------------------------------ API
    def lookup(self, ids: Tensor, *, missing: int = -1) -> SlotLookup:
        """Slots of ``ids``, admitting and evicting as needed.

        Args:
            ids: an integer tensor of any shape and any int64 values (other integer dtypes
                are converted; CPU results are moved back to ``ids.device``).
            missing: the value ``slots`` holds for ids without a slot (default -1; a
                dynamic table passes its default row's index).

        Returns:
            :class:`SlotLookup`: ``slots`` (shape of ``ids``; ``missing`` = not admitted),
            the ids that got a slot in this call with their slots, and the ids evicted with
            theirs.

        Raises:
            TypeError: ``ids`` is not an integer tensor, or ``missing`` not an int.
            ValueError: more distinct admitted ids in the call than ``capacity`` (nothing is
                changed then).
        """
        api = "SlotMap.lookup"
        flat = _as_ids(api, ids).reshape(-1)
        if isinstance(missing, bool) or not isinstance(missing, int):
            raise TypeError(f"{api}: missing must be an int, got {missing!r}")
        if self._reference is not None:
            out = self._reference.lookup(flat)
            if missing != -1:
                out = (torch.where(out[0] < 0, missing, out[0]), *out[1:])
        else:
            if self.exact_counts and self.min_count > 1:
                self._reserve_exact(flat.numel())
            out = torch.ops.embtable.slot_lookup(flat, self._state, self._config_ints(missing))
        device = ids.device
        slots, *rest = (t.to(device) for t in out)
        return SlotLookup(slots.reshape(ids.shape), *rest)

    def find(self, ids: Tensor) -> Tensor:
        """Slots of ``ids`` (same shape), -1 where absent; no counting, no recency change.

        Raises:
            TypeError: ``ids`` is not an integer tensor.
        """
        flat = _as_ids("SlotMap.find", ids).reshape(-1)
        if self._reference is not None:
            out = self._reference.find(flat)
        else:
            out = torch.ops.embtable.slot_find(flat, self._state[_S["index"]])
        return out.reshape(ids.shape).to(ids.device)

    def step(self) -> None:
        """Advance the logical clock by one (the unit of ``ttl``)."""
        if self._reference is not None:
            self._reference.step()
        else:
            self._state[_S["meta"]][_M["clock"]] += 1

    def __len__(self) -> int:
        if self._reference is not None:
            return len(self._reference)
        return int(self._state[_S["meta"]][_M["size"]])

    def items(self) -> tuple[Tensor, Tensor]:
        """``(ids, slots)``: the live pairs, ordered by slot."""
        if self._reference is not None:
            return self._reference.items()
        table = self._state[_S["slots"]]
        slots = torch.nonzero(table[:, _F["flags"]] & _LIVE).reshape(-1)
        return table[slots, _F["id"]], slots

    def stats(self) -> dict[str, int]:
        """Counters: ``size`` (live ids), ``admitted`` / ``evicted`` (ids, ever),
        ``default_hits`` (looked-up positions that got -1) and ``lookups`` (positions)."""
        if self._reference is not None:
            return self._reference.stats()
        meta = self._state[_S["meta"]].tolist()
        return {name: meta[_M[name]] for name in ("size", "admitted", "evicted", "default_hits", "lookups")}

    def __repr__(self) -> str:
        extra = f", ttl={self.ttl}" if self.ttl is not None else ""
        extra += f", min_count={self.min_count}" if self.min_count != 1 else ""
        extra += f", decay_every={self.decay_every}" if self.decay_every is not None else ""
        return f"SlotMap(capacity={self.capacity}, policy={self.policy!r}{extra}, size={len(self)})"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        """The map's state as tensors, the same for the compiled map and the oracle.

        Keys: ``config`` (capacity, policy, ttl, min_count, exact_counts, seed, sketch size,
        then ``decay_every`` where set),
        per-slot ``slot_ids``, ``live``, ``freq``, ``last_call``, ``last_step``, ``ref``;
        ``recency`` (lru / ttl: the live slots, least recent first); ``sketch``;
        ``exact_ids`` / ``exact_counts`` (sorted by id); ``meta`` (calls, clock, hand and
        the counters).  Loading it gives the same decisions afterwards.
        """
        if self._reference is not None:
            sd = self._reference.state_dict()
            if not self._reference.listed:
                sd["recency"] = torch.zeros(0, dtype=torch.int64)
        else:
            st = self._state
            meta = st[_S["meta"]]
            table = st[_S["slots"]]
            flags = table[:, _F["flags"]]
            sd = {"slot_ids": table[:, _F["id"]].clone(), "live": (flags & _LIVE).bool()}
            for name in ("freq", "last_call", "last_step"):
                sd[name] = table[:, _F[name]].clone()
            sd["ref"] = ((flags & _REF) >> 1).to(torch.uint8)
            if self.policy in ("lru", "ttl"):
                live = torch.nonzero(sd["live"]).reshape(-1)
                sd["recency"] = live[torch.argsort(table[live, _F["seq"]], stable=True)]
            else:
                sd["recency"] = torch.zeros(0, dtype=torch.int64)
            sd["sketch"] = st[_S["sketch"]].clone()
            exact = st[_S["exact"]]
            keep = exact[:, 1] != -1
            keys, counts = exact[keep, 0], exact[keep, 1]
            order = torch.argsort(keys, stable=True)
            sd["exact_ids"], sd["exact_counts"] = keys[order], counts[order]
            sd["meta"] = torch.stack([meta[_M[name]] for name in _CANONICAL_META]).clone()
        sd["config"] = self._config_tensor()
        return sd

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` output (of either implementation).

        Raises:
            KeyError: a key is missing.
            ValueError: the state belongs to a map of another configuration, or a tensor has
                the wrong shape (nothing is changed then).
        """
        api = "SlotMap.load_state_dict"
        names = ("config", "slot_ids", "live", "freq", "last_call", "last_step", "ref", "recency",
                 "sketch", "exact_ids", "exact_counts", "meta")
        missing = [k for k in names if k not in state_dict]
        if missing:
            raise KeyError(f"{api}: missing keys {missing}")
        sd = {k: state_dict[k].detach().cpu() for k in names}
        if not torch.equal(sd["config"], self._config_tensor()):
            raise ValueError(
                f"{api}: the state is of a map with config {sd['config'].tolist()}, this map has "
                f"{self._config_tensor().tolist()} (capacity, policy, ttl, min_count, "
                "exact_counts, seed, sketch_width, sketch_depth[, decay_every])"
            )
        c = self.capacity
        for k in ("slot_ids", "live", "freq", "last_call", "last_step", "ref"):
            if tuple(sd[k].shape) != (c,):
                raise ValueError(f"{api}: {k} must have shape ({c},), got {tuple(sd[k].shape)}")
        expected_sketch = tuple(self._empty_sketch_shape())
        if tuple(sd["sketch"].shape) != expected_sketch:
            raise ValueError(f"{api}: sketch must have shape {expected_sketch}, got {tuple(sd['sketch'].shape)}")
        if sd["meta"].numel() != len(_CANONICAL_META):
            raise ValueError(f"{api}: meta must have {len(_CANONICAL_META)} entries, got {sd['meta'].numel()}")
        live = sd["live"].to(torch.bool)
        listed = self.policy in ("lru", "ttl")
        live_slots = torch.nonzero(live).reshape(-1)
        if listed and not torch.equal(torch.sort(sd["recency"].to(torch.int64)).values, live_slots):
            raise ValueError(f"{api}: recency must list each of the {live_slots.numel()} live slots once")
        live_ids = sd["slot_ids"][live_slots]
        if torch.unique(live_ids).numel() != live_ids.numel():
            raise ValueError(f"{api}: an id is live in two slots; the state is corrupt")
        if self._reference is not None:
            self._reference.load_state_dict(sd)
            return
        st = self._empty_state()
        table = st[_S["slots"]]
        table[:, _F["id"]] = sd["slot_ids"]
        for k in ("freq", "last_call", "last_step"):
            table[:, _F[k]] = sd[k]
        table[:, _F["flags"]] = live.long() * _LIVE + (sd["ref"].long() != 0).long() * _REF
        meta = st[_S["meta"]]
        for name, value in zip(_CANONICAL_META, sd["meta"].tolist(), strict=True):
            meta[_M[name]] = value
        slots = torch.nonzero(live).reshape(-1)
        meta[_M["size"]] = slots.numel()
        if listed and slots.numel():
            order = sd["recency"].to(torch.int64)
            st[_S["queue"]][: order.numel()] = order
            table[order, _F["seq"]] = torch.arange(order.numel())
            meta[_M["head"]], meta[_M["tail"]] = 0, order.numel()
        if self.policy == "lfu" and slots.numel():
            # A sorted array is a heap: order by (freq, last_call, slot).
            keyed = slots
            keyed = keyed[torch.argsort(table[keyed, _F["last_call"]], stable=True)]
            keyed = keyed[torch.argsort(table[keyed, _F["freq"]], stable=True)]
            n = keyed.numel()
            st[_S["heap_slot"]][:n] = keyed
            st[_S["heap_freq"]][:n] = table[keyed, _F["freq"]]
            st[_S["heap_call"]][:n] = table[keyed, _F["last_call"]]
        st[_S["index"]] = torch.ops.embtable.slot_table_build(
            table[slots, _F["id"]], slots, st[_S["index"]].shape[0]
        )
        if hugepages_requested() and st[_S["index"]].nbytes >= _HUGE_MIN_BYTES:
            place_pages(st[_S["index"]], "huge")
        if sd["sketch"].numel():
            st[_S["sketch"]].copy_(sd["sketch"])
        if self.min_count > 1 and self.exact_counts:
            n = sd["exact_ids"].numel()
            st[_S["exact"]] = torch.ops.embtable.slot_table_build(
                sd["exact_ids"], sd["exact_counts"], _pow2_at_least(max(4 * n, 16))
            )
            meta[_M["exact_size"]] = n
        self._state = st

    def _empty_sketch_shape(self) -> tuple[int, int]:
        if self.min_count > 1 and not self.exact_counts:
            return (self.sketch_depth, self.sketch_width)
        return (0, 0)
