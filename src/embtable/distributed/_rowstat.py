r"""Row-wise Adagrad of a column shard, with the row's statistic from outside (compiled).

A column shard's row-wise Adagrad update needs the mean squared gradient of the whole row,
summed over the table's shards (:mod:`embtable.distributed._synced`).  Two ops split the
update around that ``all_reduce``:

- :func:`row_square`: each distinct row's sum of squared (L2-adjusted) gradient over this
  shard's columns, the local part of the statistic;
- :func:`rowwise_adagrad_rows`: the update given the summed statistic.

Both run compiled (``embtable::rowstat_square`` / ``embtable::rowstat_rowwise_adagrad_``,
``csrc/cpu/fused_rowstat_cpu.cpp``) for float32 CPU tables and accumulators, else through
their pure-PyTorch twins :func:`reference_row_square` and
:func:`reference_rowwise_adagrad_rows` (the oracles; a missing build warns once).  The
update is bit for bit its oracle's; the square is summed in 8 lanes per row (as the
one-process compiled row-wise Adagrad sums its row), within a few ulp of the oracle's
``sum(1)``.

Before them, :func:`bag_rows` finds the step's distinct rows and their summed gradient
(``embtable::rowstat_reduce_strided``, ``csrc/cpu/rowstat_strided_cpu.cpp``; oracle
:func:`reference_bag_rows`, bit for bit): it reads a column collection's example-major
``[bags, F * d]`` gradient in place through a ``[F, bags, d]`` view, so no feature-major
copy of it is made.

Example:
    >>> import torch
    >>> weight = torch.ones(3, 2)
    >>> accumulator = torch.zeros(3)
    >>> rows, grad = torch.tensor([0, 2]), torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    >>> square = row_square(weight, rows, grad, 0.0, 0)
    >>> square
    tensor([25.,  0.])
    >>> rowwise_adagrad_rows(weight, accumulator, rows, grad, square, 5, 1.0, 0.0, 0, 0.0)
    >>> accumulator  # 25 / full_dim 5 for row 0
    tensor([5., 0., 0.])
    >>> weight[0]  # 1 - g / sqrt(5)
    tensor([-0.3416, -0.7889])
"""

from __future__ import annotations

import torch
from torch import Tensor

from embtable.ops import _reference
from embtable.ops._compiled import extension_available
from embtable.ops._fused_reference import _with_l2, rowwise_adagrad_new_rows

__all__ = [
    "bag_rows",
    "reference_bag_rows",
    "distinct_rows",
    "reference_distinct_rows",
    "reference_row_square",
    "reference_rowwise_adagrad_rows",
    "row_square",
    "rowwise_adagrad_rows",
]

_FAKES = {"registered": False}
_NO_IDS = torch.empty(0, dtype=torch.int64)
_MARK_ROWS_PER_ID = 32  # up to this many table rows per id, a mark per row beats a sort


def _marks_pay(ids: Tensor, num_rows: int) -> bool:
    return num_rows <= _MARK_ROWS_PER_ID * max(ids.numel(), 1)


def _register_fakes() -> None:
    if _FAKES["registered"]:
        return
    _FAKES["registered"] = True

    @torch.library.register_fake("embtable::rowstat_square")
    def _square_fake(weight, rows, grad, weight_decay, decay_mode):
        return grad.new_empty((rows.shape[0],))

    @torch.library.register_fake("embtable::rowstat_distinct")
    def _distinct_fake(ids, num_rows):
        count = torch.library.get_ctx().new_dynamic_size()
        return ids.new_empty((count,)), ids.new_empty(ids.shape)

    @torch.library.register_fake("embtable::rowstat_reduce")
    def _reduce_fake(ids, offsets, grad, per_sample_weights, num_rows, pooling, padding_idx):
        count = torch.library.get_ctx().new_dynamic_size()
        return ids.new_empty((count,)), grad.new_empty((count, grad.shape[1]))

    @torch.library.register_fake("embtable::rowstat_reduce_strided")
    def _strided_fake(ids, offsets, grad, per_sample_weights, num_rows, pooling, padding_idx):
        count = torch.library.get_ctx().new_dynamic_size()
        return ids.new_empty((count,)), grad.new_empty((count, grad.shape[2]))

    @torch.library.register_fake("embtable::rowstat_rowwise_adagrad_")
    def _update_fake(weight, accumulator, rows, grad, square, full_dim, lr, weight_decay, decay_mode, eps):
        return None


def _compiled(*tensors: Tensor) -> bool:
    """Float32 contiguous CPU tensors and a loaded extension that has the ops."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if not extension_available() or not hasattr(torch.ops.embtable, "rowstat_reduce_strided"):
        return False
    _register_fakes()
    return True


def reference_distinct_rows(ids: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """The oracle of :func:`distinct_rows`: ``torch.unique``, or for tables of at most 32
    rows per id a mark per table row (half the time of the sort there)."""
    if not _marks_pay(ids, num_rows):
        return torch.unique(ids, sorted=True, return_inverse=True)
    present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device)
    present[ids] = True
    rows = torch.nonzero(present).squeeze(1)
    index = torch.empty(num_rows, dtype=torch.int64, device=ids.device)
    index[rows] = torch.arange(rows.numel(), device=ids.device)
    return rows, index[ids]


def distinct_rows(ids: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(ids, sorted=True, return_inverse=True)`` of ids in ``[0, num_rows)``.

    Tables of at most 32 rows per id run ``embtable::rowstat_distinct`` (one mark per table
    row, no sort); others ``torch.unique``.

    Args:
        ids: 1-D int64 ids.
        num_rows: the table's rows.

    Returns:
        ``(rows, inverse)``: the sorted distinct ids, and each id's position among them.

    Raises:
        IndexError: an id outside the table.

    Example:
        >>> distinct_rows(torch.tensor([4, 1, 4, 0]), 6)
        (tensor([0, 1, 4]), tensor([2, 1, 2, 0]))
    """
    if (
        _marks_pay(ids, num_rows)
        and num_rows < 2**31
        and ids.dtype == torch.int64
        and ids.dim() == 1
        and _compiled()
        and ids.device.type == "cpu"
    ):
        return torch.ops.embtable.rowstat_distinct(ids, int(num_rows))
    return reference_distinct_rows(ids, num_rows)


def reference_bag_rows(
    ids: Tensor, offsets: Tensor, grad: Tensor, per_sample_weights: Tensor | None,
    num_rows: int, pooling: int, padding_idx: int,
) -> tuple[Tensor, Tensor]:
    """The oracle of :func:`bag_rows`: :func:`reference_distinct_rows`, then the pure-PyTorch
    :func:`embtable.ops._reference.pool_bags_backward` over the distinct rows, the padding
    row dropped (the compiled ``pool_bags_backward`` may contract ``y += g * w`` into an FMA:
    1 ulp off with per-sample weights).  A 3-D ``grad`` ``[F, nb, D]`` is read as its
    feature-major copy ``[F * nb, D]``."""
    if grad.dim() == 3:
        grad = grad.reshape(-1, grad.shape[2])
    rows, compact = reference_distinct_rows(ids, num_rows)
    where = int(torch.searchsorted(rows, padding_idx)) if padding_idx >= 0 else -1
    if where >= 0 and (where >= rows.numel() or int(rows[where]) != padding_idx):
        where = -1  # the padding row is not in this batch
    summed = _reference.pool_bags_backward(
        grad.float(), compact, offsets,
        None if per_sample_weights is None else per_sample_weights.float(),
        _NO_IDS, rows.numel(), pooling, where, False, False,
    )
    if where >= 0:
        keep = torch.arange(rows.numel(), device=rows.device) != where
        rows, summed = rows[keep], summed[keep]
    return rows, summed


def bag_rows(
    ids: Tensor, offsets: Tensor, grad: Tensor, per_sample_weights: Tensor | None,
    num_rows: int, pooling: int, padding_idx: int,
) -> tuple[Tensor, Tensor]:
    """The distinct rows of sum / mean bags and their summed gradient, in one pass
    (``embtable::rowstat_reduce_strided``, else its oracle :func:`reference_bag_rows`;
    contributions in input order per row).

    Args:
        ids: 1-D int64 ids of the bags.
        offsets: int64 bag offsets (``len(bags) + 1``).
        grad: ``[bags, D]`` gradient of the pooled bags, or ``[F, nb, D]`` with any strides
            (bag ``f * nb + b`` reads ``grad[f, b]``): e.g. the transposed view
            ``g.view(nb, F, D).transpose(0, 1)`` of an example-major ``[nb, F * D]``
            gradient, read in place (no feature-major copy).
        per_sample_weights: a weight per id, or ``None``.
        num_rows: the table's rows.
        pooling: 1 (sum) or 2 (mean).
        padding_idx: a row that receives nothing (-1: none).

    Returns:
        ``(rows, summed)``: sorted distinct non-padding rows and float32 ``[U, D]`` sums.

    Raises:
        IndexError: an id outside the table.

    Example:
        >>> rows, summed = bag_rows(
        ...     torch.tensor([2, 0, 2]), torch.tensor([0, 2, 3]), torch.ones(2, 1), None, 4, 1, -1
        ... )
        >>> rows, summed
        (tensor([0, 2]), tensor([[1.],
                [2.]]))
        >>> example_major = torch.tensor([[1.0, 10.0], [2.0, 20.0]])  # 2 bags x 2 features
        >>> bag_rows(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 2, 3, 4]),
        ...          example_major.view(2, 2, 1).transpose(0, 1), None, 2, 1, -1)[1]
        tensor([[ 1.],
                [32.]])
    """
    if (
        ids.dtype == torch.int64
        and offsets.dtype == torch.int64
        and num_rows < 2**31
        and (per_sample_weights is None or per_sample_weights.dtype == torch.float32)
        and ids.device.type == "cpu"
        and _compiled(grad)
    ):
        grouped = grad if grad.dim() == 3 else grad.unsqueeze(0)
        return torch.ops.embtable.rowstat_reduce_strided(
            ids, offsets, grouped, per_sample_weights, int(num_rows), int(pooling),
            int(padding_idx),
        )
    return reference_bag_rows(ids, offsets, grad, per_sample_weights, num_rows, pooling, padding_idx)


def reference_row_square(
    weight: Tensor, rows: Tensor, grad: Tensor, weight_decay: float, mode: int
) -> Tensor:
    """The oracle of :func:`row_square`: ``(g_eff * g_eff).sum(1)``, ``g_eff`` being ``grad``
    plus ``weight_decay * weight[rows]`` when ``mode == 1`` (L2)."""
    w = weight.index_select(0, rows).float()
    g_eff = _with_l2(grad.float(), w, float(weight_decay), int(mode))
    return (g_eff * g_eff).sum(1)


def row_square(weight: Tensor, rows: Tensor, grad: Tensor, weight_decay: float, mode: int) -> Tensor:
    """Per distinct row, the sum over this shard's columns of the squared gradient.

    Args:
        weight: the shard's ``[num_rows, D]`` table (read only for L2, ``mode == 1``).
        rows: int64 distinct rows, ``[U]``.
        grad: float32 ``[U, D]`` reduced gradient of ``rows``.
        weight_decay: the decay (used when ``mode == 1``).
        mode: weight-decay mode (0 none, 1 L2, 2 decoupled).

    Returns:
        float32 ``[U]``.

    Raises:
        IndexError: a row outside the table (compiled: ``IndexError`` from the op).
    """
    if rows.dtype == torch.int64 and weight.is_contiguous() and _compiled(weight, grad):
        return torch.ops.embtable.rowstat_square(weight, rows, grad, float(weight_decay), int(mode))
    return reference_row_square(weight, rows, grad, weight_decay, mode)


def reference_rowwise_adagrad_rows(
    weight: Tensor, accumulator: Tensor, rows: Tensor, grad: Tensor, square: Tensor,
    full_dim: int, lr: float, weight_decay: float, mode: int, eps: float,
) -> None:
    """The oracle of :func:`rowwise_adagrad_rows` (the formula of
    :func:`embtable.ops._fused_reference.fused_update_rows` with the statistic given)."""
    g = grad.float()
    w = weight.index_select(0, rows).float()
    total = accumulator.index_select(0, rows).float() + square / full_dim
    new = rowwise_adagrad_new_rows(w, g, total, lr, weight_decay, mode, eps)
    accumulator.index_copy_(0, rows, total.to(accumulator.dtype))  # (state written last)
    weight.index_copy_(0, rows, new.to(weight.dtype))


def rowwise_adagrad_rows(
    weight: Tensor, accumulator: Tensor, rows: Tensor, grad: Tensor, square: Tensor,
    full_dim: int, lr: float, weight_decay: float, mode: int, eps: float,
) -> None:
    """Row-wise Adagrad on distinct ``rows`` of a column shard, in place.

    ``accumulator[r] += square[i] / full_dim``; ``weight[r] = c * weight[r] - m * grad[i]``
    with ``m = lr / (sqrt(accumulator[r]) + eps)`` and ``c = 1 - m * weight_decay`` (L2,
    ``mode == 1``), ``1 - lr * weight_decay`` (decoupled, ``mode == 2``), else 1.

    Args:
        weight: the shard's ``[num_rows, D]`` table.
        accumulator: ``[num_rows]`` row-wise state.
        rows: int64 distinct rows ``[U]`` (repeated rows: undefined order).
        grad: float32 ``[U, D]`` reduced gradient (without L2).
        square: float32 ``[U]``: the whole row's summed squared gradient, all shards.
        full_dim: the whole table's ``embedding_dim``.
        lr, weight_decay, mode, eps: the rule's hyper-parameters.

    Raises:
        IndexError: a row outside the table (compiled: ``IndexError`` from the op).
    """
    if (
        rows.dtype == torch.int64
        and weight.is_contiguous()
        and accumulator.is_contiguous()
        and _compiled(weight, accumulator, grad, square)
    ):
        torch.ops.embtable.rowstat_rowwise_adagrad_(
            weight, accumulator, rows, grad, square, int(full_dim), float(lr),
            float(weight_decay), int(mode), float(eps),
        )
        return
    reference_rowwise_adagrad_rows(
        weight, accumulator, rows, grad, square, full_dim, lr, weight_decay, mode, eps
    )
