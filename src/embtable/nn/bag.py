"""``EmbeddingBag``: a drop-in replacement for ``torch.nn.EmbeddingBag``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from embtable import functional, ops
from embtable.nn.embedding import check_given_weight, check_pretrained, check_table_shape
from embtable.ops._memory import empty_table

__all__ = ["EmbeddingBag"]


def _pool(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None,
    max_norm: float | None,
    norm_type: float,
    scale_grad_by_freq: bool,
    mode: str,
    sparse: bool,
    per_sample_weights: Tensor | None,
    include_last_offset: bool,
    padding_idx: int | None,
) -> Tensor:
    """:meth:`EmbeddingBag.forward`'s call, one node for ``torch.fx.symbolic_trace``."""
    return functional.embedding_bag(
        input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
        per_sample_weights, include_last_offset, padding_idx,
    )


torch.fx.wrap("_pool")


class EmbeddingBag(Module):
    r"""Sums, means or maxes of bags of rows of a table, without forming the rows of each bag.

    The same constructor, attributes, ``forward``, ``from_pretrained``,
    ``reset_parameters``, ``extra_repr`` and ``state_dict`` as
    ``torch.nn.EmbeddingBag`` (torch 2.13), with embtable's own pooling and
    backward (:func:`embtable.functional.embedding_bag`).  The weights a seed
    produces are the ones torch produces with that seed.

    Args:
        num_embeddings: size of the dictionary (ids run from 0 to ``num_embeddings - 1``).
        embedding_dim: size of each row.
        max_norm: rows referenced by a lookup whose norm exceeds it are renormalized in place.
        norm_type: the p of the p-norm used with ``max_norm``.
        scale_grad_by_freq: divide each row's gradient by its id's frequency in the mini-batch
            (not with ``mode="max"``).
        mode: ``"sum"``, ``"mean"`` or ``"max"``: how a bag's rows are pooled.
        sparse: the weight's gradient is a sparse COO tensor (unlike torch, also with
            ``mode="max"`` and with ``scale_grad_by_freq=True``).
        _weight: an initial ``(num_embeddings, embedding_dim)`` weight (kept for torch parity;
            prefer :meth:`from_pretrained`).
        include_last_offset: ``offsets`` holds ``B + 1`` entries (CSR style); the last bag
            runs to the end of the input.
        padding_idx: an id skipped by the pooling (not counted in a mean) that receives no
            gradient; its row starts as zeros.  Negative values count from the end.
        device, dtype: factory arguments for the weight.

    Attributes:
        weight: the ``(num_embeddings, embedding_dim)`` parameter, initialized from N(0, 1).

    Shape:
        - ``input`` ``(N)`` with ``offsets`` ``(B)`` (``(B + 1)`` with
          ``include_last_offset``), or ``input`` ``(B, N)`` without offsets;
          ``per_sample_weights``: the shape of ``input``.  Output: ``(B, embedding_dim)``.

    Raises:
        ValueError: negative sizes, ``padding_idx`` outside the table, a ``_weight`` of the
            wrong shape (torch only ``assert``s these), a bad ``mode`` or ``mode="max"`` with
            ``scale_grad_by_freq=True`` (torch raises these only at the first ``forward``).

    Example:
        >>> import torch
        >>> import embtable
        >>> _ = torch.manual_seed(0)
        >>> bag = embtable.EmbeddingBag(10, 3, mode="sum", padding_idx=0)
        >>> ids = torch.tensor([1, 2, 4, 5, 4, 3, 2, 0])
        >>> bag(ids, torch.tensor([0, 4])).shape
        torch.Size([2, 3])
        >>> bag
        EmbeddingBag(10, 3, mode='sum', padding_idx=0)
    """

    __constants__ = [
        "num_embeddings",
        "embedding_dim",
        "max_norm",
        "norm_type",
        "scale_grad_by_freq",
        "mode",
        "sparse",
        "include_last_offset",
        "padding_idx",
    ]

    num_embeddings: int
    embedding_dim: int
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool
    weight: Tensor
    mode: str
    sparse: bool
    include_last_offset: bool
    padding_idx: int | None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        api = type(self).__name__
        super().__init__()
        check_table_shape(num_embeddings, embedding_dim, api)
        mode = functional.check_bag_mode(mode, scale_grad_by_freq, api)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.padding_idx = ops.normalize_padding_idx(padding_idx, num_embeddings, api)
        if _weight is None:
            # rows are read at random: big tables go on huge pages (fewer TLB misses)
            self.weight = Parameter(empty_table((num_embeddings, embedding_dim), dtype, device))
            self.reset_parameters()
        else:
            check_given_weight(_weight, num_embeddings, embedding_dim, api)
            self.weight = Parameter(_weight)
        self.mode = mode
        self.sparse = sparse
        self.include_last_offset = include_last_offset

    def reset_parameters(self) -> None:
        """Draw the weight from N(0, 1) and zero the padding row."""
        init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(
        self,
        input: Tensor,
        offsets: Tensor | None = None,
        per_sample_weights: Tensor | None = None,
    ) -> Tensor:
        """Pool each bag of ``input``; see :func:`embtable.functional.embedding_bag`.

        Args:
            input: 1-D ids cut into bags by ``offsets``, or 2-D ``(B, N)``: one bag per row.
            offsets: the start of each bag of a 1-D input; ``None`` for a 2-D input.
            per_sample_weights: a weight per id for a weighted sum (``mode="sum"`` only).

        Returns:
            ``(B, embedding_dim)``: one pooled row per bag, zeros for an empty bag.
        """
        return _pool(
            input,
            self.weight,
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
        )

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.max_norm is not None:
            text += f", max_norm={self.max_norm!r}"
        if self.norm_type != 2:
            text += f", norm_type={self.norm_type!r}"
        if self.scale_grad_by_freq is not False:
            text += f", scale_grad_by_freq={self.scale_grad_by_freq!r}"
        text += f", mode={self.mode!r}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx!r}"
        return text

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> EmbeddingBag:
        """A bag module whose weight *is* ``embeddings`` (no copy); the padding row is not zeroed.

        Args:
            embeddings: ``(num_embeddings, embedding_dim)`` tensor.
            freeze: ``True`` sets ``weight.requires_grad = False``.
            max_norm, norm_type, scale_grad_by_freq, mode, sparse, include_last_offset,
                padding_idx: as in the constructor.

        Raises:
            ValueError: ``embeddings`` is not 2-D (torch only ``assert``s).

        Example:
            >>> import torch
            >>> import embtable
            >>> weight = torch.tensor([[1.0, 2.3, 3.0], [4.0, 5.1, 6.3]])
            >>> bag = embtable.EmbeddingBag.from_pretrained(weight)
            >>> bag(torch.tensor([[1, 0]]))
            tensor([[2.5000, 3.7000, 4.6500]])
            >>> bag.weight.requires_grad
            False
        """
        rows, cols = check_pretrained(embeddings, f"{cls.__name__}.from_pretrained")
        bag = cls(
            num_embeddings=rows,
            embedding_dim=cols,
            _weight=embeddings,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            mode=mode,
            sparse=sparse,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
        )
        bag.weight.requires_grad = not freeze
        return bag
