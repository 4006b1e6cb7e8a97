r"""Tables whose update needs the other ranks: column shards and data-parallel replicas.

**Column-wise tables.** Every column shard of a table receives the same ids (the global
batch's ids of its features), so the shards agree on the distinct rows of a step.  Each
shard reduces its own columns' gradient per row; before its fused update:

- *max pooling*: a row that wins the maximum in one shard's columns only is still touched
  (one process touches the whole row: Adam's moments decay, its step count advances); the
  shards add their 0/1 "won here" marks over the distinct rows (one ``all_reduce``) and
  update every row marked anywhere;
- *row-wise Adagrad*: the row's mean squared gradient spans all columns; each shard sums its
  columns' squares, the shards add them (one ``all_reduce``) and divide by the table's
  ``embedding_dim``;
- *int8_rowwise state*: a moment row's scale is the maximum ``|x|`` of the whole row; the
  shards take the maximum of their columns' maxima (one ``all_reduce`` for every quantized
  moment of the step) and encode their columns with it, so every shard stores the whole
  row's scale and the codes one process would store.

The touched rows and the squares of every column table of a step are agreed with one
``all_reduce`` per process group each (the tables' vectors concatenated); the scales, which
need the new moments, with one per table.  Row-wise Adagrad runs compiled
(:mod:`embtable.distributed._rowstat`: the distinct rows, the partial squares, the update
given the agreed squares).  Otherwise the update is
:func:`embtable.ops._fused_reference.fused_update_rows`'s formula (the oracle of the compiled
kernel) with these statistics; both run through
:meth:`~embtable.optim.FusedOptimizer.apply_update` (``kernel=``), which keeps the state and
step bookkeeping.  The collectives of a table run over the ranks holding its shards.  A
column shard that needs no statistic (SGD, Adagrad, Adam with float32 state; sum / mean
pooling) takes the ordinary compiled fused update of its own columns.  A
``scale_grad_by_freq`` bucket forms its distinct rows' gradient first, each feature's ids
counted over the received bags (every shard receives the global batch's ids of its rows:
global counts), then takes the update of the distinct rows above.

**Data-parallel tables.** Each replica pools only its own rank's bags.  In backward, each
rank reduces its gradient per row into a dense ``[rows, D + 1]`` buffer (the last column
marks the rows its bags touched), one ``all_reduce`` sums the buffers of every rank, and each
replica applies the same fused update to the rows marked anywhere: the update one process
makes on the global batch (a zero-gradient row that only lost every max is still touched).

All of this runs in one autograd node per forward (:class:`SyncedLookup`) on every rank:
its backward follows the backward ``all_to_all`` of the pooled rows (its first output is an
empty slice of the rows every rank sends), so every rank runs the collectives in the same
order: column tables in plan order, then the replicas.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from embtable import ops
from embtable._functions import feature_major
from embtable.config import PoolingMode
from embtable.distributed._comm import CommStats, all_reduce, kept_buffer, start_all_reduce
from embtable.distributed._maxpool import winner_rows
from embtable.distributed._rowstat import (
    bag_rows,
    distinct_rows,
    row_square,
    rowwise_adagrad_rows,
)
from embtable.functional import FUSED_ATTR
from embtable.nn._freq import pair_counts, scaled_rows
from embtable.nn.collection import BucketInput
from embtable.ops._fused_reference import (
    _C127,
    _C255,
    OPT_ADAGRAD,
    OPT_ADAM,
    OPT_ROWWISE_ADAGRAD,
    OPT_SGD,
    POOL_MAX,
    POOL_NONE,
    _slots,
    elementwise_new_rows,
    reduce_rows,
)
from embtable.optim._rule import INT8_ROWWISE, weight_decay_mode

__all__ = ["Job", "SyncedLookup", "pooling_code"]

_NO_OFFSETS = torch.empty(0, dtype=torch.int64)
_PIPELINE_ROWS = 4096  # row-wise Adagrad squares of a table of this many rows a step: two parts
_CODES = {PoolingMode.SUM: ops.POOL_SUM, PoolingMode.MEAN: ops.POOL_MEAN, PoolingMode.MAX: POOL_MAX}


def pooling_code(pooling: PoolingMode | None) -> int:
    """The kernels' pooling code of a bucket (``None``: no pooling, an EmbeddingCollection)."""
    return POOL_NONE if pooling is None else _CODES[pooling]


@dataclass
class Job:
    """One bucket of a column shard's or a replica collection's lookup.

    Attributes:
        table: the column-wise table (``None`` for a replica bucket).
        group: the process group of the table's shards (``None``: one shard, no collective).
        full_dim: the whole table's ``embedding_dim`` (column shards).
        weight: the grouped weight the bucket reads.
        pooling: the kernels' pooling code (:data:`POOL_NONE` for an EmbeddingCollection).
        lookup: the bucket's ids, offsets, weights and padding row.
        padding_rows: every padding row of the bucket (several: ids dropped in backward).
        max_ids: set by forward for max pooling (the winning id per bag and column).
        agree: column shards: agree on per-row statistics with the other shards
            (``exact_columns=True``); else each shard updates its columns on its own.
        num_features: ``F > 0``: a sum / mean bucket of ``F`` features pooled into the
            example-major ``[B, F * d]`` layout (:func:`~embtable.ops.pool_bags_grouped`);
            ``0``: feature-major ``[F * B, d]``.
    """

    table: str | None
    group: Any
    full_dim: int
    weight: Tensor
    pooling: int
    lookup: BucketInput
    padding_rows: tuple[int, ...]
    max_ids: Tensor | None = None
    agree: bool = True
    num_features: int = 0
    kept: dict[str, Any] | None = None  # the module's workspace (feature-major gradient)
    scale_grad_by_freq: bool = False  # ids counted per feature (column shards: scaled_rows)


class SyncedLookup(torch.autograd.Function):
    """Forward: the lookups of ``jobs`` (outputs ``(anchor, *outs)``).  Backward: the
    collectives and fused updates of the module docstring; unfused weights get their
    gradient (column shards: the local one; replicas: the sum over ranks)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        jobs: list[Job],
        replica_group: Any,
        stats: CommStats,
        anchor: Tensor,
        *weights: Tensor,
    ) -> tuple[Tensor, ...]:
        outs = []
        for job in jobs:
            weight, lookup = job.weight.detach(), job.lookup
            if job.pooling == POOL_NONE:
                outs.append(ops.gather_rows(weight, lookup.ids))
                continue
            pad = -1 if lookup.padding_idx is None else lookup.padding_idx
            if job.num_features:
                outs.append(
                    ops.pool_bags_grouped(
                        weight, lookup.ids, lookup.offsets, lookup.per_sample_weights,
                        job.pooling, pad, job.num_features,
                    )
                )
                job.max_ids = None
                continue
            out, max_ids = ops.pool_bags(
                weight, lookup.ids, lookup.offsets, lookup.per_sample_weights, job.pooling, pad
            )
            job.max_ids = max_ids if job.pooling == POOL_MAX else None
            outs.append(out)
        ctx.jobs, ctx.replica_group, ctx.stats, ctx.weights = jobs, replica_group, stats, weights
        return (anchor.new_zeros(0), *outs)

    @staticmethod
    def backward(ctx: Any, _anchor: Tensor, *grads: Tensor) -> tuple[Tensor | None, ...]:
        jobs, stats = ctx.jobs, ctx.stats
        # (example-major outputs keep their gradient example-major: the row statistics read it
        # in place, the fused update takes a feature-major copy: _columns_backward)
        dense: dict[int, Tensor] = {}
        columns = [(j, g, k) for k, (j, g) in enumerate(zip(jobs, grads)) if j.table is not None]
        replicas = [(j, g) for j, g in zip(jobs, grads) if j.table is None]
        _columns_backward(columns, stats, dense)
        if ctx.replica_group is not None:
            _replica_backward(replicas, ctx.replica_group, stats, dense)
        out = [dense.get(id(w)) for w in ctx.weights]
        out = [None if d is None else d.to(w.dtype) for d, w in zip(out, ctx.weights)]
        return (None, None, None, None, *out)


def _feature_major(grad: Tensor, job: Job, k: int) -> Tensor:
    """:func:`~embtable._functions.feature_major` of job ``k``'s gradient, into a buffer of
    the module's workspace when it has one (reused from step to step: :func:`kept_buffer`)."""
    if job.kept is None:
        return feature_major(grad, job.num_features)
    bags, width = grad.shape
    num, dim = job.num_features, width // job.num_features
    out = kept_buffer(job.kept, f"grad{k}", grad, (num, bags, dim))
    out.copy_(grad.reshape(bags, num, dim).transpose(0, 1))
    return out.view(num * bags, dim)


def _local_rows(job: Job, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows this rank's bags of ``job`` touched and their summed gradient
    (``grad`` example-major ``[bags, F * d]`` when ``job.num_features``, else feature-major)."""
    lookup = job.lookup
    if job.num_features:  # sum / mean: read in place through the feature-major view
        bags, width = grad.shape
        view = grad.view(bags, job.num_features, width // job.num_features).transpose(0, 1)
        return bag_rows(
            lookup.ids, lookup.offsets, view.float(), lookup.per_sample_weights,
            job.weight.shape[0], job.pooling, -1 if lookup.padding_idx is None else lookup.padding_idx,
        )
    grad = grad.reshape(-1, job.weight.shape[1])
    if job.pooling == POOL_MAX:
        return winner_rows(job.max_ids, grad, job.max_ids >= 0, torch.float32)
    ids, pad = lookup.ids, -1 if lookup.padding_idx is None else lookup.padding_idx
    if job.pooling == POOL_NONE and len(job.padding_rows) > 1:
        keep = ~torch.isin(ids, torch.tensor(job.padding_rows, device=ids.device))
        ids, grad = ids[keep], grad[keep]
    weights = lookup.per_sample_weights
    if job.pooling == POOL_NONE:
        return reduce_rows(ids, lookup.offsets, grad, weights, job.pooling, pad, False)
    # sum / mean: the distinct rows and their summed gradient in one compiled pass (the
    # contributions added in input order per row, as reduce_rows does)
    return bag_rows(
        ids, lookup.offsets, grad.float(), weights, job.weight.shape[0], job.pooling, pad
    )


def _freq_layout(job: Job) -> tuple[str, list[int]]:
    """The mode and bags per feature of a ``scale_grad_by_freq`` bucket (no max pooling)."""
    lookup = job.lookup
    features = len(lookup.counts)
    if job.pooling == POOL_NONE:
        return "none", list(lookup.counts)
    mode = "sum" if job.pooling == ops.POOL_SUM else "mean"
    return mode, [(lookup.offsets.numel() - 1) // max(features, 1)] * features


def _scaled_rows(
    job: Job, grad: Tensor, k: int, counts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`_local_rows` of a ``scale_grad_by_freq`` bucket: ids counted per feature over
    the received bags, or as ``counts`` says (a replica: the pairs' counts summed over the
    ranks) (:func:`embtable.nn._freq.scaled_rows`; no max pooling)."""
    lookup = job.lookup
    if job.num_features:
        grad = _feature_major(grad, job, k)
    grad = grad.reshape(-1, job.weight.shape[1]).float()
    mode, sizes = _freq_layout(job)
    return scaled_rows(
        job.weight.shape[0], lookup.ids, lookup.offsets, lookup.per_sample_weights, mode,
        lookup.padding_idx, sizes, job.padding_rows, grad, counts,
    )


def _global_pair_counts(
    jobs: list[tuple[Job, Tensor]], group: Any, stats: CommStats
) -> dict[int, Tensor]:
    """Per ``scale_grad_by_freq`` replica bucket (by ``id(job)``): each ``(feature, row)``
    pair's count over every rank's bags, one ``all_reduce`` for all of them (every rank has
    the same replica buckets, so the same order)."""
    scaled = [job for job, _ in jobs if job.scale_grad_by_freq]
    if not scaled:
        return {}
    local = []
    for job in scaled:
        mode, sizes = _freq_layout(job)
        lookup = job.lookup
        local.append(
            pair_counts(
                job.weight.shape[0], lookup.ids, lookup.offsets, mode, lookup.padding_idx,
                sizes, job.padding_rows,
            )
        )
    flat = torch.cat(local)
    all_reduce(flat, dist.ReduceOp.SUM, group, stats, "dp_counts")
    return {id(job): part for job, part in zip(scaled, flat.split([c.numel() for c in local]))}


def _add_dense(dense: dict[int, Tensor], weight: Tensor, rows: Tensor, grad: Tensor) -> None:
    total = dense.get(id(weight))
    if total is None:
        total = dense[id(weight)] = torch.zeros(weight.shape, device=grad.device)
    total.index_add_(0, rows, grad)


def _needs_agreement(job: Job, optimizer: Any) -> bool:
    """Whether a column shard's update needs the other shards: max pooling (touched rows),
    several padding rows of a non-pooled table, row-wise Adagrad, int8_rowwise state.
    Otherwise the compiled fused update of its own columns is already the exact one."""
    if job.pooling == POOL_MAX or len(job.padding_rows) > 1:
        return True
    group = optimizer._group_of.get(id(job.weight), {})
    return (
        optimizer.rule.code == OPT_ROWWISE_ADAGRAD
        or group.get("state_dtype", "float32") == INT8_ROWWISE
    )


@dataclass
class _Pending:
    """A column shard's update waiting for its table's agreed statistics."""

    job: Job
    optimizer: Any
    rows: Tensor
    grad: Tensor
    candidates: Tensor | None = None  # max pooling: the distinct rows of the step
    touched: Tensor | None = None  # max pooling: 0/1 per candidate, summed over the shards
    square: Tensor | None = None  # row-wise Adagrad: the rows' squared gradient, all columns
    parts: list[Any] | None = None  # ... or agreed in parts: (begin, end, square, wait) each


def _columns_backward(
    columns: list[tuple[Job, Tensor, int]], stats: CommStats, dense: dict[int, Tensor]
) -> None:
    """Update the column shards of ``columns`` (plan order; each ``(job, gradient of its
    output, its output's index)``).  Statistics are agreed in two
    rounds, each one ``all_reduce`` per process group over the concatenation of its tables'
    vectors (the touched rows of max tables, then row-wise Adagrad's squares); int8_rowwise
    scales take one ``all_reduce`` per table inside its update."""
    pending: list[_Pending] = []
    for job, grad, k in columns:
        optimizer = getattr(job.weight, FUSED_ATTR, None)
        if job.scale_grad_by_freq:  # (every shard receives all ids of its rows: global counts)
            rows, row_grad = _scaled_rows(job, grad, k)
            pending.append(_Pending(job, optimizer, rows, row_grad))
            continue
        if optimizer is not None and not job.agree and job.pooling == POOL_MAX:
            rows, row_grad = _local_rows(job, grad)  # (per-shard winners: TorchRec's meaning)
            optimizer.apply_update(
                job.weight, rows, _NO_OFFSETS, row_grad, None, POOL_NONE, -1, False
            )
            continue
        if optimizer is not None and not (job.agree and _needs_agreement(job, optimizer)):
            lookup = job.lookup
            pad = -1 if lookup.padding_idx is None else lookup.padding_idx
            if job.num_features:  # (the fused update reads the gradient feature-major)
                grad = _feature_major(grad, job, k)
            grad = grad.reshape(-1, job.weight.shape[1]).contiguous()
            optimizer.apply_update(
                job.weight, lookup.ids, lookup.offsets, grad, lookup.per_sample_weights,
                job.pooling, pad, False,
            )
            continue
        rows, row_grad = _local_rows(job, grad)
        item = _Pending(job, optimizer, rows, row_grad)
        if job.pooling == POOL_MAX:  # rows won in any shard's columns are touched
            ids, pad = job.lookup.ids, job.lookup.padding_idx
            item.candidates = distinct_rows(
                ids if pad is None else ids[ids != pad], job.weight.shape[0]
            )[0]
            item.touched = torch.zeros(item.candidates.numel(), device=rows.device)
            item.touched[torch.searchsorted(item.candidates, rows)] = 1.0
        pending.append(item)
    _agree(pending, "touched", stats, "col_touched")
    for item in pending:
        if item.candidates is not None:
            full = item.grad.new_zeros((item.candidates.numel(), item.grad.shape[1]))
            full[torch.searchsorted(item.candidates, item.rows)] = item.grad
            keep = item.touched > 0
            item.rows, item.grad = item.candidates[keep], full[keep]
    rowwise = [
        item
        for item in pending
        if item.optimizer is not None and item.optimizer.rule.code == OPT_ROWWISE_ADAGRAD
    ]
    shared = Counter(id(item.job.group) for item in rowwise)
    for item in rowwise:
        group = item.optimizer._group_of[id(item.job.weight)]
        decay, mode = float(group["weight_decay"]), weight_decay_mode(group)
        weight = item.job.weight.detach()
        rows = item.rows.numel()  # (the same distinct rows on every shard of the table)
        if item.job.group is None or shared[id(item.job.group)] > 1 or rows < _PIPELINE_ROWS:
            item.square = row_square(weight, item.rows, item.grad, decay, mode)
            continue
        # alone in its group: agreed in two halves, each all_reduce running while the next
        # half's squares (then the first half's update) are computed
        item.parts = []
        for begin, end in ((0, rows // 2), (rows // 2, rows)):
            square = row_square(weight, item.rows[begin:end], item.grad[begin:end], decay, mode)
            wait = start_all_reduce(square, dist.ReduceOp.SUM, item.job.group, stats, "col_stats")
            item.parts.append((begin, end, square, wait))
    _agree(pending, "square", stats, "col_stats")
    for item in pending:
        job = item.job
        if item.optimizer is None:
            _add_dense(dense, job.weight, item.rows, item.grad)
            continue
        kernel = ColumnUpdate(job.group, job.full_dim, stats, square=item.square, parts=item.parts)
        item.optimizer.apply_update(
            job.weight, item.rows, _NO_OFFSETS, item.grad, None, POOL_NONE, -1, False,
            kernel=kernel,
        )


def _agree(pending: list[_Pending], field: str, stats: CommStats, kind: str) -> None:
    """Sum ``field`` of every pending update over its table's shards: one ``all_reduce`` per
    process group (groups in order of first use, tables in plan order: the same sequence on
    every member)."""
    by_group: dict[int, list[_Pending]] = {}
    groups: dict[int, Any] = {}
    for item in pending:
        if getattr(item, field) is not None and item.job.group is not None:
            by_group.setdefault(id(item.job.group), []).append(item)
            groups[id(item.job.group)] = item.job.group
    for key, items in by_group.items():
        flat = torch.cat([getattr(item, field) for item in items])
        all_reduce(flat, dist.ReduceOp.SUM, groups[key], stats, kind)
        for item, part in zip(items, flat.split([getattr(i, field).numel() for i in items])):
            setattr(item, field, part)


def _replica_backward(
    jobs: list[tuple[Job, Tensor]], group: Any, stats: CommStats, dense: dict[int, Tensor]
) -> None:
    buffers = []
    counts = _global_pair_counts(jobs, group, stats)  # (scale_grad_by_freq: global counts)
    for job, grad in jobs:
        if job.scale_grad_by_freq:
            rows, row_grad = _scaled_rows(job, grad, 0, counts[id(job)])
        else:
            rows, row_grad = _local_rows(job, grad)
        buffer = torch.zeros(job.weight.shape[0], job.weight.shape[1] + 1, device=grad.device)
        buffer[rows, :-1] = row_grad
        buffer[rows, -1] = 1.0
        buffers.append(buffer)
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    all_reduce(flat, dist.ReduceOp.SUM, group, stats, "dp_grads")
    for (job, _), summed in zip(jobs, flat.split([b.numel() for b in buffers])):
        summed = summed.view(job.weight.shape[0], -1)
        optimizer = getattr(job.weight, FUSED_ATTR, None)
        if optimizer is None:
            rows = torch.arange(job.weight.shape[0], device=summed.device)
            _add_dense(dense, job.weight, rows, summed[:, :-1])
            continue
        rows = torch.nonzero(summed[:, -1] > 0).squeeze(1)
        optimizer.apply_update(
            job.weight, rows, _NO_OFFSETS, summed[rows, :-1], None, POOL_NONE, -1, False
        )


class ColumnUpdate:
    """:func:`~embtable.ops.fused_update_rows` of a column shard (same arguments; ``ids``:
    distinct rows, ``pooling``: :data:`POOL_NONE`) whose per-row statistics span the shards
    of ``group``: row-wise Adagrad's mean squared gradient over ``full_dim`` columns, and
    int8_rowwise scales (the whole row's maximum)."""

    def __init__(
        self,
        group: Any,
        full_dim: int,
        stats: CommStats | None,
        square: Tensor | None = None,
        parts: list[Any] | None = None,
    ) -> None:
        self.group, self.full_dim, self.stats, self.square = group, full_dim, stats, square
        self.parts = parts  # row-wise Adagrad: (begin, end, square, wait) per part of the rows

    def __call__(
        self,
        weight: Tensor,
        state: list[Tensor],
        ids: Tensor,
        offsets: Tensor,
        grad: Tensor,
        per_sample_weights: Tensor | None,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        optimizer: int,
        hparams: list[float],
    ) -> None:
        rows, g = ids.long(), grad.float()
        if rows.numel() == 0:  # (the same rows on every shard: all skip the collectives)
            return
        lr, wd, mode = float(hparams[0]), float(hparams[1]), int(hparams[2])
        if optimizer == OPT_ROWWISE_ADAGRAD:
            self._rowwise_adagrad(weight, g, state[0], rows, lr, wd, mode, float(hparams[3]))
            return
        w = weight.index_select(0, rows).float()
        slots = _slots(state)
        if optimizer not in (OPT_SGD, OPT_ADAGRAD, OPT_ADAM):
            raise ValueError(f"ColumnUpdate: unknown optimizer code {optimizer!r}; expected 0..3")
        new, writes = elementwise_new_rows(optimizer, w, g, slots, rows, hparams)
        self._write(rows, writes)
        weight.index_copy_(0, rows, new.to(weight.dtype))

    def _rowwise_adagrad(
        self, weight: Tensor, g: Tensor, accumulator: Tensor, rows: Tensor, lr: float,
        wd: float, mode: int, eps: float,
    ) -> None:
        """The compiled update given the whole rows' squares (:mod:`._rowstat`)."""
        for begin, end, part, wait in self.parts or ():  # (each part once its squares arrive)
            wait()
            rowwise_adagrad_rows(
                weight, accumulator, rows[begin:end], g[begin:end], part, self.full_dim, lr, wd,
                mode, eps,
            )
        if self.parts:
            return
        square = self.square  # (agreed by the caller for every table at once)
        if square is None:
            square = row_square(weight, rows, g, wd, mode)
            if self.group is not None:
                all_reduce(square, dist.ReduceOp.SUM, self.group, self.stats, "col_stats")
        rowwise_adagrad_rows(weight, accumulator, rows, g, square, self.full_dim, lr, wd, mode, eps)

    def _write(self, rows: Tensor, writes: list[tuple[tuple[Tensor, Tensor | None], Tensor]]) -> None:
        """Store new moment rows; quantized ones with the whole row's scale (one collective)."""
        quantized = [(slot, value) for slot, value in writes if slot[1] is not None]
        if quantized:
            peaks = torch.stack(
                [_magnitude(v, s[0].dtype == torch.int8).amax(1) for s, v in quantized], 1
            )
            if self.group is not None:
                all_reduce(peaks, dist.ReduceOp.MAX, self.group, self.stats, "col_scales")
        for slot, value in writes:
            tensor, scale = slot
            if scale is None:
                tensor.index_copy_(0, rows, value.to(tensor.dtype))
        for k, ((tensor, scale), value) in enumerate(quantized):
            peak = peaks[:, k].contiguous()
            tensor.index_copy_(0, rows, _encode(value, peak, tensor.dtype == torch.int8))
            scale.index_copy_(0, rows, peak)


def _magnitude(x: Tensor, signed: bool) -> Tensor:
    return x.abs() if signed else x.clamp_min(0.0)


def _encode(x: Tensor, scale: Tensor, signed: bool) -> Tensor:
    """:func:`~embtable.ops._fused_reference.encode_rows`' codes of ``x`` for a given row
    ``scale`` (the whole row's, possibly wider than ``x``'s columns): the same operations."""
    divisor = torch.where(scale > 0.0, scale, torch.ones_like(scale)).unsqueeze(1)
    r = _magnitude(x, signed) / divisor
    if signed:
        q = torch.round(r.sqrt() * _C127) * x.sign()
        return q.clamp(-127.0, 127.0).to(torch.int8)
    q = torch.round(r.sqrt().sqrt() * _C255)
    return q.clamp(0.0, 255.0).to(torch.uint8)
