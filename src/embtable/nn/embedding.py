"""``Embedding``: a drop-in replacement for ``torch.nn.Embedding``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from embtable import functional, ops
from embtable.errors import EmbeddingValueError
from embtable.ops._memory import empty_table

__all__ = ["Embedding", "check_table_shape"]


def _lookup(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None,
    max_norm: float | None,
    norm_type: float,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> Tensor:
    """:meth:`Embedding.forward`'s call, one node for ``torch.fx.symbolic_trace`` (a leaf, as
    torch's module is: symbolic tracing cannot run the id checks on proxies)."""
    return functional.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)


torch.fx.wrap("_lookup")


def check_table_shape(num_embeddings: int, embedding_dim: int, api: str) -> None:
    """Raise ``ValueError`` unless both sizes are non-negative ints.

    A negative size raises :class:`~embtable.errors.EmbeddingValueError` (also a
    ``RuntimeError``, as torch's constructor raises).
    """
    for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{api}: {name} must be a non-negative int, got {value!r}")
        if value < 0:
            raise EmbeddingValueError(f"{api}: {name} must be a non-negative int, got {value!r}")


def check_pretrained(embeddings: Tensor, api: str) -> tuple[int, int]:
    """The ``(rows, cols)`` of a 2-D pretrained tensor; ``ValueError`` otherwise."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"{api}: embeddings must be a 2-D tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(
            f"{api}: embeddings must be 2-D (num_embeddings, embedding_dim), "
            f"got shape {tuple(embeddings.shape)}"
        )
    rows, cols = embeddings.shape
    return rows, cols


def check_given_weight(weight: Tensor, num_embeddings: int, embedding_dim: int, api: str) -> None:
    """``ValueError`` unless ``weight`` has shape ``(num_embeddings, embedding_dim)``."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{api}: _weight must be a tensor, got {type(weight).__name__}")
    if tuple(weight.shape) != (num_embeddings, embedding_dim):
        raise ValueError(
            f"{api}: _weight has shape {tuple(weight.shape)}, expected "
            f"({num_embeddings}, {embedding_dim}) = (num_embeddings, embedding_dim)"
        )


class Embedding(Module):
    r"""A lookup table of ``num_embeddings`` trainable rows of size ``embedding_dim``.

    The same constructor, attributes, ``forward``, ``from_pretrained``,
    ``reset_parameters``, ``extra_repr`` and ``state_dict`` as
    ``torch.nn.Embedding`` (torch 2.13), with embtable's own forward and
    backward (:func:`embtable.functional.embedding`).  The weights a seed
    produces are the ones torch produces with that seed.

    Args:
        num_embeddings: size of the dictionary (ids run from 0 to ``num_embeddings - 1``).
        embedding_dim: size of each row.
        padding_idx: a row that receives no gradient and starts as zeros (negative values
            count from the end).
        max_norm: rows referenced by a lookup whose norm exceeds it are renormalized in place.
        norm_type: the p of the p-norm used with ``max_norm``.
        scale_grad_by_freq: divide each row's gradient by its id's frequency in the mini-batch.
        sparse: the weight's gradient is a sparse COO tensor.
        _weight: an initial ``(num_embeddings, embedding_dim)`` weight (kept for torch parity;
            prefer :meth:`from_pretrained`).
        _freeze: with ``_weight``, whether the weight is frozen.
        device, dtype: factory arguments for the weight.

    Attributes:
        weight: the ``(num_embeddings, embedding_dim)`` parameter, initialized from N(0, 1).

    Shape:
        - Input: ``(*)``, int64 or int32 ids.  Output: ``(*, embedding_dim)``.

    Raises:
        ValueError: negative sizes, ``padding_idx`` outside the table, a ``_weight`` of the
            wrong shape (torch only ``assert``s these).

    Example:
        >>> import torch
        >>> import embtable
        >>> _ = torch.manual_seed(0)
        >>> table = embtable.Embedding(10, 3, padding_idx=0)
        >>> table(torch.tensor([[1, 2, 0], [4, 3, 9]])).shape
        torch.Size([2, 3, 3])
        >>> table.weight[0]
        tensor([0., 0., 0.], grad_fn=<SelectBackward0>)
        >>> table
        Embedding(10, 3, padding_idx=0)
    """

    __constants__ = [
        "num_embeddings",
        "embedding_dim",
        "padding_idx",
        "max_norm",
        "norm_type",
        "scale_grad_by_freq",
        "sparse",
    ]

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool
    weight: Tensor
    freeze: bool
    sparse: bool

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        api = type(self).__name__
        super().__init__()
        check_table_shape(num_embeddings, embedding_dim, api)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = ops.normalize_padding_idx(padding_idx, num_embeddings, api)
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        if _weight is None:
            self.weight = Parameter(
                empty_table((num_embeddings, embedding_dim), dtype, device),
                requires_grad=not _freeze,
            )
            self.reset_parameters()
        else:
            check_given_weight(_weight, num_embeddings, embedding_dim, api)
            self.weight = Parameter(_weight, requires_grad=not _freeze)
        self.sparse = sparse

    def reset_parameters(self) -> None:
        """Draw the weight from N(0, 1) and zero the padding row."""
        init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        return _lookup(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            text += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            text += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq is not False:
            text += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        if self.sparse is not False:
            text += ", sparse=True"
        return text

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> Embedding:
        """A table whose weight *is* ``embeddings`` (no copy); the padding row is not zeroed.

        Args:
            embeddings: ``(num_embeddings, embedding_dim)`` tensor.
            freeze: ``True`` sets ``weight.requires_grad = False``.
            padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as in the constructor.

        Raises:
            ValueError: ``embeddings`` is not 2-D (torch only ``assert``s).

        Example:
            >>> import torch
            >>> import embtable
            >>> table = embtable.Embedding.from_pretrained(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            >>> table(torch.tensor([1]))
            tensor([[3., 4.]])
            >>> table.weight.requires_grad
            False
        """
        rows, cols = check_pretrained(embeddings, f"{cls.__name__}.from_pretrained")
        return cls(
            num_embeddings=rows,
            embedding_dim=cols,
            _weight=embeddings,
            _freeze=freeze,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
        )
