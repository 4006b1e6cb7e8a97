"""What the collections return: per-feature embeddings, keyed by feature name.

* :class:`PooledEmbeddings` (from :class:`embtable.EmbeddingBagCollection`): one pooled
  ``[B, D]`` tensor per feature and their concatenation ``[B, sum(D)]``.
* :class:`JaggedEmbeddings` (from :class:`embtable.EmbeddingCollection`): per feature, the
  ``[N, D]`` rows of every id plus the ``[B]`` lengths that split them into examples.

Both read like a dict of features (``result["user"]``, ``keys()``, ``items()``,
``to_dict()``, ``in``, ``len``, iteration over keys).  Like TorchRec's ``KeyedTensor``,
``PooledEmbeddings.values()`` is the concatenated tensor, not a view of the dict's values;
:meth:`PooledEmbeddings.regroup` is ``KeyedTensor.regroup``.  ``PooledEmbeddings`` is a
registered pytree node (its leaves are the per-feature tensors), so it can be returned from
functions given to ``torch.export``, ``torch.func`` and ``torch.utils._pytree`` utilities.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor

__all__ = ["JaggedEmbeddings", "JaggedRows", "PooledEmbeddings"]


class _FeatureDict:
    """Dict-style access shared by both result types."""

    _keys: list[str]
    _by_key: dict[str, object]
    _api: str

    def keys(self) -> list[str]:
        """The feature names, in the collection's feature order."""
        return list(self._keys)

    def __getitem__(self, key: str) -> object:
        try:
            return self._by_key[key]
        except (KeyError, TypeError):
            raise KeyError(f"{self._api}: no feature {key!r}; the features are {self._keys}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> list[tuple[str, object]]:
        """``(feature, embeddings)`` pairs in feature order."""
        return [(key, self._by_key[key]) for key in self._keys]

    def to_dict(self) -> dict[str, object]:
        """``{feature: embeddings}`` in feature order."""
        return dict(self.items())


class PooledEmbeddings(_FeatureDict):
    r"""Pooled embeddings of several features: ``result["user"]`` is ``[B, D_user]``.

    Args:
        keys: feature names, in order.
        tensors: one ``[B, D_f]`` tensor per feature.
        values: their concatenation, when the producer already has it (the collections
            pool straight into it; ``tensors`` are then views of it); else built on demand.

    Shape:
        - ``result[feature]``: ``(B, embedding_dim of the feature's table)``.
        - :meth:`values`: ``(B, sum of the features' embedding_dims)``, features side by side
          in :meth:`keys` order; column block ``f`` is
          ``offset_per_key()[f] : offset_per_key()[f + 1]``.

    Example:
        >>> import torch
        >>> from embtable.nn.outputs import PooledEmbeddings
        >>> result = PooledEmbeddings(["a", "b"], [torch.zeros(2, 3), torch.ones(2, 1)])
        >>> result.values()
        tensor([[0., 0., 0., 1.],
                [0., 0., 0., 1.]])
        >>> result["b"].shape, result.length_per_key(), result.offset_per_key()
        (torch.Size([2, 1]), [3, 1], [0, 3, 4])
    """

    def __init__(self, keys: Sequence[str], tensors: Sequence[Tensor], values: Tensor | None = None) -> None:
        self._api = "PooledEmbeddings"
        self._keys = list(keys)
        self._by_key = dict(zip(self._keys, tensors))
        self._values: Tensor | None = values

    def __getitem__(self, key: str) -> Tensor:
        """The ``[B, D]`` pooled embeddings of one feature."""
        return super().__getitem__(key)  # type: ignore[return-value]

    def values(self) -> Tensor:
        """All features concatenated along dim 1: ``[B, sum(D)]`` (computed once, then cached).

        Raises:
            ValueError: the features have different batch sizes (a batch with a batch size
                per feature): use ``result[feature]``.
        """
        if self._values is None:
            tensors = [self._by_key[key] for key in self._keys]
            sizes = {key: t.shape[0] for key, t in zip(self._keys, tensors)}
            if len(set(sizes.values())) > 1:
                raise ValueError(
                    f"PooledEmbeddings.values: the features have different batch sizes {sizes} "
                    f"(a batch with stride_per_key); read each with result[feature]"
                )
            self._values = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)
        return self._values

    def stride_per_key(self) -> list[int]:
        """The batch size (rows) of each feature's pooled embeddings."""
        return [self._by_key[key].shape[0] for key in self._keys]

    def key_dim(self) -> int:
        """The dimension along which features sit side by side in :meth:`values`: 1 (TorchRec's
        ``KeyedTensor.key_dim``)."""
        return 1

    def device(self) -> torch.device:
        """Where the embeddings are (a method, as TorchRec's ``KeyedTensor.device()``)."""
        return self._by_key[self._keys[0]].device if self._keys else torch.device("cpu")

    @staticmethod
    def regroup(outputs: Sequence[Any], groups: Sequence[Sequence[str]]) -> list[Tensor]:
        """Features of several results side by side, one ``[B, sum(D)]`` tensor per group.

        TorchRec's ``KeyedTensor.regroup``: group ``i`` is the concatenation along dim 1 of
        the features ``groups[i]``, each read from the last of ``outputs`` that has it;
        a feature may appear in several groups.  ``outputs`` may mix
        :class:`PooledEmbeddings` and TorchRec ``KeyedTensor`` objects.

        Raises:
            ValueError: no groups, an empty group, or a group whose features have different
                batch sizes.
            KeyError: a feature that no output has.

        Example:
            >>> import torch
            >>> from embtable.nn.outputs import PooledEmbeddings
            >>> users = PooledEmbeddings(["age", "city"], [torch.zeros(2, 1), torch.ones(2, 2)])
            >>> items = PooledEmbeddings(["brand"], [torch.full((2, 1), 2.0)])
            >>> towers = PooledEmbeddings.regroup([users, items], [["city", "brand"], ["age"]])
            >>> towers[0]
            tensor([[1., 1., 2.],
                    [1., 1., 2.]])
            >>> towers[1].shape
            torch.Size([2, 1])
        """
        api = "PooledEmbeddings.regroup"
        groups = [list(group) for group in groups]
        if not groups:
            raise ValueError(f"{api}: groups must list at least one group of features, got none")
        owner: dict[str, Any] = {}
        for output in outputs:
            for key in output.keys():
                owner[key] = output
        result = []
        for i, group in enumerate(groups):
            if not group:
                raise ValueError(f"{api}: group {i} is empty; every group needs a feature")
            tensors = []
            for key in group:
                if key not in owner:
                    raise KeyError(
                        f"{api}: no output has feature {key!r} (group {i}); the features are "
                        f"{list(owner)}"
                    )
                tensors.append(owner[key][key])
            sizes = {key: t.shape[0] for key, t in zip(group, tensors)}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"{api}: group {i} mixes batch sizes {sizes}")
            result.append(tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1))
        return result

    @staticmethod
    def regroup_as_dict(
        outputs: Sequence[Any], groups: Sequence[Sequence[str]], keys: Sequence[str]
    ) -> dict[str, Tensor]:
        """:meth:`regroup`, named: ``{keys[i]: group i}`` (TorchRec's ``regroup_as_dict``).

        Raises:
            ValueError: ``keys`` and ``groups`` differ in length; see :meth:`regroup`.

        Example:
            >>> import torch
            >>> from embtable.nn.outputs import PooledEmbeddings
            >>> out = PooledEmbeddings(["a", "b"], [torch.zeros(3, 2), torch.ones(3, 4)])
            >>> {k: v.shape for k, v in PooledEmbeddings.regroup_as_dict([out], [["b", "a"]], ["ab"]).items()}
            {'ab': torch.Size([3, 6])}
        """
        keys = list(keys)
        if len(keys) != len(groups):
            raise ValueError(
                f"PooledEmbeddings.regroup_as_dict: {len(keys)} keys for {len(groups)} groups; "
                f"give one key per group"
            )
        return dict(zip(keys, PooledEmbeddings.regroup(outputs, groups)))

    def length_per_key(self) -> list[int]:
        """The embedding dimension of each feature (the widths of the column blocks of :meth:`values`)."""
        return [self._by_key[key].shape[1] for key in self._keys]

    def offset_per_key(self) -> list[int]:
        """First column of each feature in :meth:`values`, then the total width."""
        starts = [0]
        for width in self.length_per_key():
            starts.append(starts[-1] + width)
        return starts

    def __repr__(self) -> str:
        shapes = ", ".join(f"{key!r}: {tuple(self._by_key[key].shape)}" for key in self._keys)
        return f"PooledEmbeddings({{{shapes}}})"


def _pooled_flatten(result: PooledEmbeddings) -> tuple[list[Tensor], tuple[str, ...]]:
    return [result._by_key[key] for key in result._keys], tuple(result._keys)


def _pooled_flatten_with_keys(
    result: PooledEmbeddings,
) -> tuple[list[tuple[Any, Tensor]], tuple[str, ...]]:
    leaves, context = _pooled_flatten(result)
    return [(pytree.MappingKey(key), leaf) for key, leaf in zip(context, leaves)], context


def _pooled_unflatten(leaves: Any, context: tuple[str, ...]) -> PooledEmbeddings:
    return PooledEmbeddings(list(context), list(leaves))


pytree.register_pytree_node(
    PooledEmbeddings,
    _pooled_flatten,
    _pooled_unflatten,
    serialized_type_name="embtable.nn.outputs.PooledEmbeddings",
    flatten_with_keys_fn=_pooled_flatten_with_keys,
)


class JaggedRows(NamedTuple):
    """One feature's unpooled embeddings: the rows of every id, example after example.

    Attributes:
        values: ``[N, D]`` one row per id of the feature, in batch order.
        lengths: ``[B]`` number of ids (rows) of each example.
    """

    values: Tensor
    lengths: Tensor

    @property
    def offsets(self) -> Tensor:
        """``[B + 1]`` first row of each example in ``values``, then ``N``."""
        offsets = self.lengths.new_zeros(self.lengths.numel() + 1, dtype=torch.int64)
        torch.cumsum(self.lengths, 0, dtype=torch.int64, out=offsets[1:])
        return offsets

    def to_padded(self, max_length: int | None = None, padding_value: float = 0.0) -> Tensor:
        """The rows as a dense ``[B, L, D]`` tensor, short examples filled with ``padding_value``.

        Args:
            max_length: ``L``; defaults to the longest example; longer examples are cut.
            padding_value: the value of the filler entries.

        Example:
            >>> import torch
            >>> from embtable.nn.outputs import JaggedRows
            >>> rows = JaggedRows(torch.arange(6.0).reshape(3, 2), torch.tensor([2, 0, 1]))
            >>> rows.to_padded()
            tensor([[[0., 1.],
                     [2., 3.]],
            <BLANKLINE>
                    [[0., 0.],
                     [0., 0.]],
            <BLANKLINE>
                    [[4., 5.],
                     [0., 0.]]])
        """
        lengths = self.lengths.to(torch.int64)
        batch, dim = lengths.numel(), self.values.shape[1]
        longest = int(lengths.max()) if batch else 0
        length = longest if max_length is None else max_length
        if length < 0:
            raise ValueError(f"JaggedRows.to_padded: max_length must be >= 0, got {max_length}")
        _check_row_lengths(lengths, self.values.shape[0])
        example = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths)
        position = torch.arange(self.values.shape[0], device=lengths.device)
        position = position - self.offsets[:-1].repeat_interleave(lengths)
        keep = position < length
        out = self.values.new_full((batch, length, dim), padding_value)
        out = out.index_put((example[keep], position[keep]), self.values[keep])
        return out


def _check_row_lengths(lengths: Tensor, num_rows: int) -> None:
    """``ValueError`` unless ``lengths`` are >= 0 and sum (without wrapping) to ``num_rows``."""
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > num_rows):
        raise ValueError(
            f"JaggedRows.to_padded: lengths must lie in [0, {num_rows}] (the rows of values), "
            f"got a length of {int(lengths.min() if int(lengths.min()) < 0 else lengths.max())}"
        )
    total = int(lengths.sum()) if lengths.numel() else 0  # no wrap: each length <= num_rows
    if total != num_rows:
        raise ValueError(f"JaggedRows.to_padded: lengths sum to {total} but values has {num_rows} rows")


class JaggedEmbeddings(_FeatureDict):
    r"""Unpooled embeddings of several features: ``result["query"]`` is a :class:`JaggedRows`.

    Args:
        keys: feature names, in order.
        rows: one :class:`JaggedRows` per feature.

    Shape:
        - ``result[feature].values``: ``(N_feature, embedding_dim)``, one row per id.
        - ``result[feature].lengths``: ``(B,)``.

    Example:
        >>> import torch
        >>> from embtable.nn.outputs import JaggedEmbeddings, JaggedRows
        >>> result = JaggedEmbeddings(["q"], [JaggedRows(torch.ones(3, 2), torch.tensor([1, 2]))])
        >>> result["q"].lengths, result["q"].values.shape
        (tensor([1, 2]), torch.Size([3, 2]))
    """

    def __init__(self, keys: Sequence[str], rows: Sequence[JaggedRows]) -> None:
        self._api = "JaggedEmbeddings"
        self._keys = list(keys)
        self._by_key = dict(zip(self._keys, rows))

    def __getitem__(self, key: str) -> JaggedRows:
        """The :class:`JaggedRows` ``(values [N, D], lengths [B])`` of one feature."""
        return super().__getitem__(key)  # type: ignore[return-value]

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{key!r}: {tuple(self._by_key[key].values.shape)}" for key in self._keys
        )
        return f"JaggedEmbeddings({{{shapes}}})"
