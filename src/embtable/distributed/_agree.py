"""The agreement before every exchange: each rank checks its local batch, one collective
shares the verdicts, and every rank raises the first bad batch's error (naming its rank,
feature and id) before anything is exchanged or updated.

The same collective carries, per destination, how many ids this rank will send it, and
whether the ids and bag lengths need int64 on the wire: the ids exchange that follows then
sends lengths and ids in one ``all_to_all`` (:mod:`._exchange`)."""

from __future__ import annotations

from typing import Any

import torch

from embtable.config import PoolingMode
from embtable.distributed._comm import all_to_all
from embtable.distributed.errors import ShardedIndexError, ShardedValueError
from embtable.jagged import KeyedJagged

__all__ = ["Agreement"]

_OK, _MISSING, _BAD_ID, _BAD_WEIGHTS, _NOT_KJT, _NO_WEIGHTS, _WEIGHTS_GRAD = 0, 1, 2, 3, 4, 5, 6
_INT32_LIMIT = 2**31 - 1  # ids and bag lengths up to this travel as int32 (tests lower it)


class Agreement:
    """Mixin of the sharded collections: :meth:`_agree` (uses the collection's layout)."""

    _pooled: bool
    _is_weighted: bool
    feature_names: list[str]

    def _agree(self, features: Any) -> tuple[int, bool, dict[str, Any]]:
        """Check the local batch, share the verdict with every rank, raise the first bad one.

        A good local batch is split per shard first (:meth:`_split`), so that the verdict
        sent to each rank also carries how many ids this rank will send it.

        Returns:
            ``(batch, weighted, split)``: the local batch size, whether weights travel, and
            the split with ``incoming`` (ids each rank sends here) and ``wire`` (the dtype of
            the ids exchange: int32 unless an id or a bag length of some rank needs int64).
        """
        api = type(self).__name__
        report = self._local_verdict(features)
        world = self.world_size
        split: dict[str, Any] = {}
        sends = [0] * world
        if report[0] == _OK:
            split = self._split(features, report[3])
            sends = [sum(row) for row in self._sent_counts(split)]
            rows_max = max((c.num_embeddings for c in self.tables), default=0)
            report[5] = int(rows_max > _INT32_LIMIT or features.values().numel() > _INT32_LIMIT)
        device = self._device()
        mine = torch.tensor([report + [n] for n in sends], dtype=torch.int64, device=device)
        size = [len(report) + 1] * world
        everyone = all_to_all(
            mine.view(-1), size, size, self.group, self.rank, self.stats, "agree"
        )
        rows = everyone.view(self.world_size, -1).cpu().tolist()
        for rank, (code, feature, value, *_) in enumerate(rows):
            if code == _OK:
                continue
            where = f"{api}: rank {rank}'s batch"
            suffix = "; no rank looked up or updated anything"
            if code == _NOT_KJT:
                raise ShardedValueError(
                    f"{where} is not a KeyedJagged with one batch size for every feature "
                    f"(a batch size per feature is not sharded yet){suffix}"
                )
            if code == _WEIGHTS_GRAD:
                raise ShardedValueError(
                    f"{where} carries per-value weights that require a gradient; the sharded "
                    f"collections do not return a gradient to the weights (they travel to the "
                    f"rows' owners outside autograd): pass weights.detach(), or run the forward "
                    f"under torch.no_grad(){suffix}"
                )
            name = self.feature_names[feature]
            table = self._table_of[name]
            if code == _MISSING:
                raise ShardedValueError(
                    f"{where} has no feature {name!r} (read from table {table!r}){suffix}"
                )
            if code == _NO_WEIGHTS:
                raise ShardedValueError(
                    f"{where} has no weights, but the collection is weighted (is_weighted=True); "
                    f"give KeyedJagged(..., weights=...) or use is_weighted=False{suffix}"
                )
            if code == _BAD_WEIGHTS:
                raise ShardedValueError(
                    f"{where} carries per-value weights, but feature {name!r} (table {table!r}) uses "
                    f"pooling={self._configs[table].pooling.value!r}; weights apply only to 'sum'{suffix}"
                )
            rows_n = self._configs[table].num_embeddings
            raise ShardedIndexError(
                f"{where}: feature {name!r} holds id {value}, outside table {table!r} of {rows_n} rows "
                f"(valid ids are 0..{rows_n - 1}){suffix}"
            )
        sizes = {row[3] for row in rows}
        weighted = {row[4] for row in rows}
        if len(sizes) != 1:
            raise ShardedValueError(
                f"{api}: every rank must pass the same local batch size; got {[row[3] for row in rows]}"
            )
        if len(weighted) != 1:
            raise ShardedValueError(
                f"{api}: some ranks' batches carry per-value weights and some do not "
                f"({[bool(row[4]) for row in rows]}); give weights on every rank or on none"
            )
        split["incoming"] = [row[6] for row in rows]
        split["wire"] = torch.int64 if any(row[5] for row in rows) else torch.int32
        return rows[0][3], bool(rows[0][4]), split

    def _local_verdict(self, features: Any) -> list[int]:
        if not isinstance(features, KeyedJagged):
            return [_NOT_KJT, 0, 0, 0, 0, 0]
        batch = features.stride()
        if features.variable_stride_per_key():
            return [_NOT_KJT, 0, 0, batch, 0, 0]
        weighted = self._is_weighted and features.weights() is not None
        if self._is_weighted and not weighted:
            return [_NO_WEIGHTS, 0, 0, batch, 0, 0]
        if weighted and features.weights().requires_grad and torch.is_grad_enabled():
            return [_WEIGHTS_GRAD, 0, 0, batch, 1, 0]
        index_of = {k: i for i, k in enumerate(features.keys())}
        starts = features.offset_per_key()
        bounds, order = [], []
        for j, name in enumerate(self.feature_names):
            if name not in index_of:
                return [_MISSING, j, 0, batch, int(weighted), 0]
            config = self._configs[self._table_of[name]]
            if weighted and self._pooled and config.pooling is not PoolingMode.SUM:
                return [_BAD_WEIGHTS, j, 0, batch, int(weighted), 0]
            p = index_of[name]
            if starts[p + 1] > starts[p]:
                low, high = torch.aminmax(features.values()[starts[p] : starts[p + 1]])
                bounds += [low, high]
                order.append(j)
        if bounds:
            found = torch.stack(bounds).tolist()
            for k, j in enumerate(order):
                low, high = found[2 * k], found[2 * k + 1]
                rows = self._configs[self._table_of[self.feature_names[j]]].num_embeddings
                if low < 0 or high >= rows:
                    return [_BAD_ID, j, low if low < 0 else high, batch, int(weighted), 0]
        return [_OK, 0, 0, batch, int(weighted), 0]
