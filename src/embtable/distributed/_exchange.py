"""Routing a local batch to the shards that hold its rows (forward ``all_to_all`` of ids)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embtable.config import PoolingMode
from embtable.distributed._comm import all_to_all
from embtable.distributed.plan import ShardingType
from embtable.jagged import KeyedJagged

__all__ = ["Exchange"]

_MASK_SHARDS = 8  # row shards up to which ids are split by masks (else by a stable sort)


class Exchange:
    """Mixin of the sharded collections: split a batch per shard, send ids, count them."""

    def _split(self, features: KeyedJagged, batch: int) -> dict[str, Any]:
        """Per routed feature: its ids, lengths and weights for each shard, and combine data."""
        index_of = {k: i for i, k in enumerate(features.keys())}
        starts = features.offset_per_key()
        values, lengths, weights = features.values(), features.lengths(), features.weights()
        pieces: dict[tuple[str, int], tuple[Tensor, Tensor, Tensor | None]] = {}
        extra: dict[str, Any] = {}
        for name in self.feature_names:
            table = self._table_of[name]
            kind = self._kind[table]
            if kind is ShardingType.DATA_PARALLEL:
                continue
            p = index_of[name]
            ids = values[starts[p] : starts[p + 1]].to(torch.int64)
            lens = lengths[p * batch : (p + 1) * batch].to(torch.int64)
            w = None if weights is None else weights[starts[p] : starts[p + 1]]
            shards = self._shards[table]
            pad = self._configs[table].padding_idx
            if kind is not ShardingType.ROW_WISE:
                for k in range(len(shards)):
                    pieces[(name, k)] = (ids, lens, w)
                if pad is not None and self._configs[table].pooling is PoolingMode.MEAN:
                    extra[name] = None
                continue
            cuts = self._row_cuts[table].to(ids.device)
            owner = torch.bucketize(ids, cuts, right=True)
            bag = torch.repeat_interleave(torch.arange(batch, device=ids.device), lens)
            key = owner * batch + bag
            per_shard = torch.bincount(key, minlength=len(shards) * batch).view(len(shards), batch)
            if len(shards) <= _MASK_SHARDS:  # a few masks beat a stable sort of the owners
                picks = [torch.nonzero(owner == k).squeeze(1) for k in range(len(shards))]
            else:
                order = torch.argsort(owner, stable=True)
                picks = list(order.split(per_shard.sum(1).tolist()))
            for k, pick in enumerate(picks):
                part = ids[pick] - shards[k].row_offset if shards[k].row_offset else ids[pick]
                pieces[(name, k)] = (part, per_shard[k], None if w is None else w[pick])
            counts = per_shard
            if pad is not None:
                counts = torch.bincount(key[ids != pad], minlength=len(shards) * batch)
                counts = counts.view(len(shards), batch)
            extra[name] = (counts, picks)
        return {"pieces": pieces, "extra": extra}

    def _exchange_ids(
        self, split: dict[str, Any], batch: int, weighted: bool
    ) -> tuple[KeyedJagged | None, list[list[int]]]:
        """Send every rank its features' bags: the local batch of ``world x B`` bags per
        feature (``None``: no routed feature here) and ``[source][feature]`` id counts."""
        pieces = split["pieces"]
        world, device = self.world_size, self._device()
        send_lengths, send_values, send_weights = [], [], []
        for routes in self.routes:
            for route in routes:
                ids, lens, w = pieces[(route.feature, route.index)]
                send_lengths.append(lens)
                send_values.append(ids)
                if weighted:
                    send_weights.append(w)
        mine = self.routes[self.rank]
        nf = len(mine)
        length_in = [batch * len(routes) for routes in self.routes]
        length_out = [batch * nf] * world
        lengths = all_to_all(
            _cat(send_lengths, torch.int64, device),
            length_out,
            length_in,
            self.group,
            self.rank,
            self.stats,
            "lengths",
        )
        value_in = [sum(row) for row in self._sent_counts(split)]
        grid = lengths.view(world, nf, batch)
        counts = grid.sum(2).tolist()  # [source][feature]
        value_out = [sum(row) for row in counts]

        def send(parts: list[Tensor], dtype: torch.dtype, kind: str) -> Tensor:
            """One ``all_to_all`` of per-id values (ids, weights)."""
            return all_to_all(
                _cat(parts, dtype, device), value_out, value_in, self.group, self.rank,
                self.stats, kind,
            )

        values = send(send_values, torch.int64, "ids")
        weights = None
        if weighted:
            dtype = send_weights[0].dtype if send_weights else torch.float32
            weights = send(send_weights, dtype, "weights")
        if not nf:
            return None, counts
        flat = [c for row in counts for c in row]
        v_parts = values.split(flat)
        w_parts = weights.split(flat) if weights is not None else None
        order = [s * nf + f for f in range(nf) for s in range(world)]  # feature-major, then source
        kjt = KeyedJagged(
            [route.feature for route in mine],
            torch.cat([v_parts[i] for i in order]),
            grid.permute(1, 0, 2).reshape(-1),
            weights=None if w_parts is None else torch.cat([w_parts[i] for i in order]),
            validate=False,
        )
        return kjt, counts

    def _sent_counts(self, split: dict[str, Any]) -> list[list[int]]:
        """``[dest][feature of dest's routes]``: how many ids this rank sent."""
        return [
            [int(split["pieces"][(r.feature, r.index)][0].numel()) for r in routes]
            for routes in self.routes
        ]


def _cat(parts: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat([p.to(device=device, dtype=dtype) for p in parts])
