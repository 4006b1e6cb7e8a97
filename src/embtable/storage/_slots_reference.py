"""Pure-Python oracle of :class:`embtable.storage.slots.SlotMap` (dicts and ordered dicts).

This is the specification of every decision the compiled map
(``src/embtable/csrc/cpu/slots_cpu.cpp``) takes; the two must agree id by id, slot by slot.
It is slow (a Python loop per id) and exists for the tests and as a fallback when the
compiled extension is missing.

The rules of one ``lookup(ids)`` call (``ids`` flattened, row-major):

1. The call's clock ``calls`` advances by one.  With LFU aging (``decay_every``), when
   ``calls`` is a multiple of ``decay_every``, every live slot's ``freq`` is first halved
   (rounded down), so that ids that were frequent long ago can be evicted.  Distinct ids are
   handled in the order of their first occurrence in ``ids``.  An id already in the map is
   a *hit*.
2. Admission counting (only when ``min_count > 1``): every distinct missing id adds its number
   of occurrences ``k`` to its counter - the count-min sketch (``depth`` rows of ``width``
   int32 cells, cell ``splitmix64(id ^ seeds[r]) & (width - 1)`` of row ``r``) or an exact
   ``{id: count}`` table.  All increments of the call are made first, then each missing id's
   estimate (the minimum over its cells, or its exact count) is read: it is admissible when
   the estimate is ``>= min_count``.  With ``min_count == 1`` every id is admissible and
   nothing is counted.
3. If ``hits + admissible`` exceeds the capacity, the call raises ``ValueError`` and the
   counters are rolled back: nothing changed.
4. Hits, in first-occurrence order: ``freq += k``, ``last_call = calls``, ``last_step =
   clock``, ``ref = 1``, and the slot moves to the most-recent end of the recency list.
5. Admissible ids, in first-occurrence order, take a slot: the lowest free slot if any,
   otherwise a victim chosen by the policy among the slots not used in this call (the
   *pinned* slots: ``last_call == calls``):

   - ``lru``: the least recently used slot (front of the recency list);
   - ``lfu``: the smallest ``(freq, last_call, slot)``;
   - ``ttl``: the least recently used slot, only if it has expired
     (``clock - last_step > ttl``); otherwise the id is *rejected* (reads the default row,
     keeps its count) and so are the remaining admissible ids of the call;
   - ``clock``: the second-chance hand: from ``hand``, skip pinned slots, clear set ``ref``
     bits, take the first slot whose bit is clear; the hand stops just past it.

   The victim's id is evicted; the new id gets ``freq = k`` (or its counter's estimate when
   counting), ``last_call = calls``, ``last_step = clock``, ``ref = 1``, and goes to the
   most-recent end of the recency list.
6. Statistics: ``lookups += len(ids)``, ``default_hits +=`` occurrences whose slot is -1,
   ``admitted +=`` new ids, ``evicted +=`` evicted ids.

``step()`` advances ``clock`` (the unit of ``ttl``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

MASK64 = (1 << 64) - 1
POLICIES = ("lru", "lfu", "ttl", "clock")


def splitmix64(x: int) -> int:
    """The splitmix64 finalizer on unsigned 64-bit integers (the sketch's hash).

    Example:
        >>> splitmix64(0)
        16294208416658607535
    """
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def sketch_seeds(seed: int, depth: int) -> list[int]:
    """The per-row seeds of the count-min sketch, as signed int64 values."""
    seeds = []
    for r in range(depth):
        value = splitmix64((seed + 0x632BE59BD9B4E019 * (r + 1)) & MASK64)
        seeds.append(value - (1 << 64) if value >= 1 << 63 else value)
    return seeds


class ReferenceSlotMap:
    """The oracle: the same constructor, methods and state dict as ``SlotMap``.

    Args:
        capacity, policy, ttl, min_count, exact_counts, seed, sketch_width, sketch_depth:
            as :class:`embtable.storage.slots.SlotMap` (already validated by the caller).
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
        sketch_width: int = 1024,
        sketch_depth: int = 4,
        decay_every: int | None = None,
    ) -> None:
        self.capacity = capacity
        self.decay_every = decay_every
        self.policy = policy
        self.ttl = ttl
        self.min_count = min_count
        self.exact_counts = exact_counts
        self.seed = seed
        self.sketch_width = sketch_width
        self.sketch_depth = sketch_depth
        self.seeds = sketch_seeds(seed, sketch_depth)
        counting = min_count > 1 and not exact_counts
        self.sketch = [[0] * sketch_width for _ in range(sketch_depth)] if counting else []
        self.exact: dict[int, int] = {}
        self.slot_of: dict[int, int] = {}
        self.slot_ids = [0] * capacity
        self.live = [False] * capacity
        self.freq = [0] * capacity
        self.last_call = [0] * capacity
        self.last_step = [0] * capacity
        self.ref = [0] * capacity
        self.listed = policy in ("lru", "ttl")
        self.order: OrderedDict[int, None] = OrderedDict()  # slots, least recent first (lru, ttl)
        self.calls = 0
        self.clock = 0
        self.hand = 0
        self.counters = dict(admitted=0, evicted=0, default_hits=0, lookups=0)

    # ------------------------------------------------------------------ counting
    def _cells(self, key: int) -> list[int]:
        u = key & MASK64
        return [splitmix64(u ^ (s & MASK64)) & (self.sketch_width - 1) for s in self.seeds]

    def _add_counts(self, counts: dict[int, int], sign: int) -> None:
        for key, k in counts.items():
            if self.exact_counts:
                value = self.exact.get(key, 0) + sign * k
                if value:
                    self.exact[key] = value
                else:
                    self.exact.pop(key, None)
            else:
                for r, c in enumerate(self._cells(key)):
                    self.sketch[r][c] += sign * k

    def _estimate(self, key: int) -> int:
        if self.exact_counts:
            return self.exact.get(key, 0)
        return min(self.sketch[r][c] for r, c in enumerate(self._cells(key)))

    # ------------------------------------------------------------------ victims
    def _victim(self) -> int:
        """A victim slot for the current call, or -1 (ttl: nothing expired)."""
        pinned = self.calls
        if self.policy in ("lru", "ttl"):
            slot = next(iter(self.order))
            if self.last_call[slot] == pinned:  # unreachable: the capacity check prevents it
                raise RuntimeError("SlotMap oracle: victim would be pinned")
            if self.policy == "ttl" and not self.clock - self.last_step[slot] > self.ttl:
                return -1
            return slot
        if self.policy == "lfu":
            candidates = [s for s in range(self.capacity) if self.live[s] and self.last_call[s] != pinned]
            return min(candidates, key=lambda s: (self.freq[s], self.last_call[s], s))
        while True:  # clock
            slot = self.hand
            self.hand = (self.hand + 1) % self.capacity
            if self.last_call[slot] == pinned:
                continue
            if self.ref[slot]:
                self.ref[slot] = 0
                continue
            return slot

    # ------------------------------------------------------------------ API
    def lookup(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Slots of ``ids`` (see the module docstring); returns the five SlotLookup tensors."""
        flat = ids.reshape(-1).tolist()
        order: dict[int, int] = {}  # distinct id -> occurrences, first-occurrence order
        for key in flat:
            order[key] = order.get(key, 0) + 1
        hits = [key for key in order if key in self.slot_of]
        missing = {key: k for key, k in order.items() if key not in self.slot_of}
        counting = self.min_count > 1
        if counting:
            self._add_counts(missing, +1)
            estimate = {key: self._estimate(key) for key in missing}
            admissible = [key for key in missing if estimate[key] >= self.min_count]
        else:
            estimate = dict(missing)
            admissible = list(missing)
        if len(hits) + len(admissible) > self.capacity:
            if counting:
                self._add_counts(missing, -1)
            raise ValueError(
                f"SlotMap.lookup: a call may use at most capacity={self.capacity} distinct "
                f"admitted ids, got {len(hits) + len(admissible)}; split the batch or raise "
                "the capacity"
            )
        self.calls += 1
        if self.decay_every and self.calls % self.decay_every == 0:
            for slot in range(self.capacity):
                if self.live[slot]:
                    self.freq[slot] //= 2
        for key in hits:
            slot = self.slot_of[key]
            self.freq[slot] += order[key]
            self.last_call[slot] = self.calls
            self.last_step[slot] = self.clock
            self.ref[slot] = 1
            if self.listed:
                self.order.move_to_end(slot)
        new_ids, new_slots, evicted_ids, evicted_slots = [], [], [], []
        free = [s for s in range(self.capacity) if not self.live[s]]
        free.reverse()
        for key in admissible:
            if free:
                slot = free.pop()
            else:
                slot = self._victim()
                if slot < 0:
                    break
                old = self.slot_ids[slot]
                del self.slot_of[old]
                if self.listed:
                    del self.order[slot]
                evicted_ids.append(old)
                evicted_slots.append(slot)
            self.slot_of[key] = slot
            self.slot_ids[slot] = key
            self.live[slot] = True
            self.freq[slot] = estimate[key] if counting else order[key]
            self.last_call[slot] = self.calls
            self.last_step[slot] = self.clock
            self.ref[slot] = 1
            if self.listed:
                self.order[slot] = None
            new_ids.append(key)
            new_slots.append(slot)
        slots = [self.slot_of.get(key, -1) for key in flat]
        self.counters["lookups"] += len(flat)
        self.counters["default_hits"] += sum(1 for s in slots if s < 0)
        self.counters["admitted"] += len(new_ids)
        self.counters["evicted"] += len(evicted_ids)

        def t(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.int64)

        return (
            t(slots).reshape(ids.shape), t(new_ids), t(new_slots), t(evicted_ids), t(evicted_slots)
        )

    def find(self, ids: Tensor) -> Tensor:
        """Slots of ``ids``, -1 where absent; no side effects."""
        out = [self.slot_of.get(key, -1) for key in ids.reshape(-1).tolist()]
        return torch.tensor(out, dtype=torch.int64).reshape(ids.shape)

    def step(self) -> None:
        """Advance the logical clock (the unit of ``ttl``)."""
        self.clock += 1

    def __len__(self) -> int:
        return len(self.slot_of)

    def items(self) -> tuple[Tensor, Tensor]:
        """``(ids, slots)`` of the live pairs, by slot."""
        slots = [s for s in range(self.capacity) if self.live[s]]
        ids = [self.slot_ids[s] for s in slots]
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(slots, dtype=torch.int64)

    def stats(self) -> dict[str, int]:
        """``size``, ``admitted``, ``evicted``, ``default_hits``, ``lookups``."""
        return dict(size=len(self.slot_of), **self.counters)

    def state_dict(self) -> dict[str, Tensor]:
        """The canonical state (see ``SlotMap.state_dict``)."""

        def t(values, dtype=torch.int64) -> Tensor:
            return torch.tensor(values, dtype=dtype)

        exact_ids = sorted(self.exact)
        return {
            "slot_ids": t(self.slot_ids),
            "live": t(self.live, torch.bool),
            "freq": t(self.freq),
            "last_call": t(self.last_call),
            "last_step": t(self.last_step),
            "ref": t(self.ref, torch.uint8),
            "recency": t([s for s in self.order]),
            "sketch": t(self.sketch, torch.int32).reshape(len(self.sketch), -1)
            if self.sketch
            else torch.zeros(0, 0, dtype=torch.int32),
            "exact_ids": t(exact_ids),
            "exact_counts": t([self.exact[k] for k in exact_ids]),
            "meta": t(
                [
                    self.calls, self.clock, self.hand, self.counters["admitted"],
                    self.counters["evicted"], self.counters["default_hits"],
                    self.counters["lookups"],
                ]
            ),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore a state produced by ``state_dict`` (of either implementation)."""
        self.slot_ids = state["slot_ids"].tolist()
        self.live = [bool(v) for v in state["live"].tolist()]
        self.freq = state["freq"].tolist()
        self.last_call = state["last_call"].tolist()
        self.last_step = state["last_step"].tolist()
        self.ref = state["ref"].tolist()
        self.order = OrderedDict((s, None) for s in state["recency"].tolist())
        self.sketch = state["sketch"].tolist() if state["sketch"].numel() else []
        self.exact = dict(zip(state["exact_ids"].tolist(), state["exact_counts"].tolist(), strict=True))
        self.slot_of = {self.slot_ids[s]: s for s in range(self.capacity) if self.live[s]}
        meta = state["meta"].tolist()
        self.calls, self.clock, self.hand = meta[0], meta[1], meta[2]
        self.counters = dict(admitted=meta[3], evicted=meta[4], default_hits=meta[5], lookups=meta[6])
