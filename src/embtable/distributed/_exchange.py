"""Routing a local batch to the shards that hold its rows (forward ``all_to_all`` of bag
lengths and ids)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embtable.config import PoolingMode
from embtable.distributed._comm import all_to_all, kept_buffer
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
        feature (``None``: no routed feature here) and ``[source][feature]`` id counts.

        One ``all_to_all`` carries, per destination, the bag lengths of its features and then
        their ids, in ``split["wire"]``'s dtype (int32 unless some rank needs int64; the
        sizes come from the agreement's ``incoming`` counts); per-value weights take a second.
        This rank's own bags are not sent to itself: they go into the result from ``split``.
        The received bags keep the wire's dtype (int32 ids, half the bytes of int64, in the
        module's workspace buffer ``"ids"``); the lookups widen them where they need int64.
        """
        pieces, wire = split["pieces"], split["wire"]
        world, device, rank = self.world_size, self._device(), self.rank
        mine = self.routes[rank]
        nf = len(mine)
        own = [pieces[(route.feature, route.index)] for route in mine]
        parts: list[Tensor] = []
        send_weights: list[Tensor] = []
        in_sizes: list[int] = []
        value_in: list[int] = []
        for d, routes in enumerate(self.routes):
            sent = [] if d == rank else [pieces[(r.feature, r.index)] for r in routes]
            parts += [lens for _, lens, _ in sent] + [ids for ids, _, _ in sent]
            value_in.append(sum(int(ids.numel()) for ids, _, _ in sent))
            in_sizes.append(batch * len(sent) + value_in[-1])
            if weighted:
                send_weights += [w for _, _, w in sent]
        incoming = [0 if s == rank else n for s, n in enumerate(split["incoming"])]
        out_sizes = [0 if s == rank else batch * nf + n for s, n in enumerate(incoming)]
        blocks = all_to_all(
            _cat(parts, wire, device), out_sizes, in_sizes, self.group, rank, self.stats, "ids"
        ).split(out_sizes)
        lengths = [
            part
            for s, block in enumerate(blocks)
            for part in ([lens for _, lens, _ in own] if s == rank else [block[: batch * nf]])
        ]
        grid = _cat(lengths, torch.int64, device).view(world, nf, batch)
        counts = grid.sum(2).tolist()  # [source][feature]
        w_parts = None
        if weighted:
            dtype = send_weights[0].dtype if send_weights else torch.float32
            got = all_to_all(
                _cat(send_weights, dtype, device), incoming, value_in, self.group, rank,
                self.stats, "weights",
            ).split(incoming)
            w_parts = [
                part
                for s, block in enumerate(got)
                for part in ([w for _, _, w in own] if s == rank else block.split(counts[s]))
            ]
        if not nf:
            return None, counts
        v_parts = [
            part
            for s, block in enumerate(blocks)
            for part in (
                [ids for ids, _, _ in own] if s == rank else block[batch * nf :].split(counts[s])
            )
        ]
        order = [s * nf + f for f in range(nf) for s in range(world)]  # feature-major, then source
        kjt = KeyedJagged(  # (ids in the wire's dtype: int32 where every id fits)
            [route.feature for route in mine],
            _cat([v_parts[i] for i in order], wire, device, self._kept),
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


def _cat(
    parts: list[Tensor],
    dtype: torch.dtype,
    device: torch.device,
    kept: dict[str, Any] | None = None,
) -> Tensor:
    """``parts`` concatenated into a ``dtype`` tensor on ``device`` (cast while copied): a
    new one, or with ``kept`` (the module's workspace) the received ids' buffer reused from
    step to step while nothing else holds it (:func:`~._comm.kept_buffer`)."""
    size = sum(int(p.numel()) for p in parts)
    like = torch.empty(0, dtype=dtype, device=device)
    out = kept_buffer(kept, "ids", like, (size,)) if kept is not None else like.new_empty(size)
    if parts:
        torch.cat([p.to(device=device) for p in parts], out=out)
    return out
