"""``torch.func`` over the collections: a stack of examples that ``vmap`` can split.

``torch.func.vmap(grad(loss))`` gives per-example gradients (as differentially private
training clips them) when each vmapped example has the same shapes.  A collection's batch is
a :class:`~embtable.KeyedJagged` whose lengths say how its ids split into features; inside
``vmap`` those lengths are batched tensors that cannot become Python numbers, so the split
must be known beforehand.  A :class:`KeyedJaggedStack` holds ``E`` examples with the same
keys, batch size (stride) and ids per key, its tensors stacked along a leading example
dimension; ``vmap`` over it (``in_dims=0``) hands the function one example at a time as an
ordinary :class:`~embtable.KeyedJagged` whose ids per key are known.  Within an example, the
lengths of each ``(feature, example)`` cell may differ between examples when the stride is
above 1; only each feature's total is fixed.

Example:
    >>> import torch
    >>> from torch.func import functional_call, grad, vmap
    >>> from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
    >>> from embtable.func import KeyedJaggedStack
    >>> _ = torch.manual_seed(0)
    >>> collection = EmbeddingBagCollection([TableConfig(name="t", num_embeddings=10, embedding_dim=4)])
    >>> batch = KeyedJagged.from_dict({"t": [[1, 2], [3, 3], [9, 0]]})   # 2 ids per example
    >>> params = {k: v.detach() for k, v in collection.named_parameters()}
    >>> def loss(params, example):
    ...     return functional_call(collection, params, (example,)).values().pow(2).sum()
    >>> stack = KeyedJaggedStack.from_batch(batch)                       # 3 examples of stride 1
    >>> per_example = vmap(grad(loss), in_dims=(None, 0))(params, stack)["grouped_weight_0"]
    >>> per_example.shape
    torch.Size([3, 10, 4])
    >>> torch.equal(per_example[1], grad(loss)(params, stack.example(1))["grouped_weight_0"])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from embtable.jagged import KeyedJagged

__all__ = ["KeyedJaggedStack"]

_API = "KeyedJaggedStack"


class KeyedJaggedStack:
    """``E`` batches of equal keys, stride and ids per key, stacked for ``torch.func.vmap``.

    A pytree node: ``vmap(f, in_dims=0)`` (or ``in_dims=(None, 0)`` after the parameters)
    calls ``f`` with one example, a :class:`~embtable.KeyedJagged` of stride :meth:`stride`,
    whose :meth:`~embtable.KeyedJagged.length_per_key` is :meth:`length_per_key` without
    reading any tensor.  More generally, whenever the stack's values leaf comes back as a 1-D
    tensor (``vmap``, or ``torch.utils._pytree.tree_map(lambda t: t[i], stack)``) the node is
    rebuilt as that one example; with 2-D values it stays a stack.

    Args:
        examples: the batches; each a :class:`~embtable.KeyedJagged` with the same keys,
            stride and ids per key, without a batch size per feature or inverse indices, all
            weighted or none.

    Raises:
        TypeError: ``examples`` is not a sequence of :class:`~embtable.KeyedJagged`.
        ValueError: no examples; examples that differ in keys, stride, ids per key,
            weighting or device; a batch size per feature or inverse indices.

    Example:
        >>> from embtable import KeyedJagged
        >>> from embtable.func import KeyedJaggedStack
        >>> stack = KeyedJaggedStack([KeyedJagged.from_dict({"a": [[1, 2]], "b": [[3]]}),
        ...                           KeyedJagged.from_dict({"a": [[4, 5]], "b": [[6]]})])
        >>> len(stack), stack.values(), stack.length_per_key()
        (2, tensor([[1, 2, 3],
                [4, 5, 6]]), [2, 1])
        >>> stack.example(1).values()
        tensor([4, 5, 6])
    """

    def __init__(self, examples: Sequence[KeyedJagged]) -> None:
        if isinstance(examples, KeyedJagged) or not isinstance(examples, Sequence):
            raise TypeError(
                f"{_API}: examples must be a sequence of KeyedJagged, got {type(examples).__name__} "
                f"(to split one batch into its examples use KeyedJaggedStack.from_batch)"
            )
        if not examples:
            raise ValueError(f"{_API}: examples is empty; give at least one KeyedJagged")
        for i, example in enumerate(examples):
            if not isinstance(example, KeyedJagged):
                raise TypeError(f"{_API}: examples[{i}] is a {type(example).__name__}, not a KeyedJagged")
            _check_plain(example, f"examples[{i}]")
        first = examples[0]
        def layout(e: KeyedJagged) -> tuple[Any, ...]:
            return e.keys(), e.stride(), e.length_per_key(), e.weights() is not None, e.device

        shape = layout(first)
        for i, example in enumerate(examples[1:], 1):
            other = layout(example)
            for name, a, b in zip(("keys", "stride", "ids per key", "weighted", "device"), shape, other):
                if a != b:
                    raise ValueError(
                        f"{_API}: examples[{i}] has {name} {b!r} but examples[0] has {a!r}; every "
                        f"example needs the same keys, stride, ids per key, weighting and device"
                    )
        weights = None
        if shape[3]:
            weights = torch.stack([e.weights() for e in examples])
        self._set(
            shape[0], torch.stack([e.values() for e in examples]),
            torch.stack([e.lengths() for e in examples]), weights, shape[1], tuple(shape[2]),
        )

    def _set(
        self,
        keys: list[str],
        values: Tensor,
        lengths: Tensor,
        weights: Tensor | None,
        stride: int,
        length_per_key: tuple[int, ...],
    ) -> None:
        self._keys, self._values, self._lengths, self._weights = list(keys), values, lengths, weights
        self._stride, self._length_per_key = stride, length_per_key

    @classmethod
    def _trusted(cls, *parts: Any) -> KeyedJaggedStack:
        stack = cls.__new__(cls)
        stack._set(*parts)
        return stack

    @classmethod
    def from_batch(cls, batch: KeyedJagged) -> KeyedJaggedStack:
        """The ``B`` examples of ``batch`` (stride ``B``), each a batch of stride 1.

        Each feature must have the same number of ids in every example (e.g. fixed-length
        histories); the stack's values of example ``b`` are its ids feature by feature.

        Raises:
            TypeError: ``batch`` is not a :class:`~embtable.KeyedJagged`.
            ValueError: a feature whose examples have different numbers of ids (named, with
                its lengths); a batch size per feature or inverse indices; no examples.
        """
        if not isinstance(batch, KeyedJagged):
            raise TypeError(f"{_API}.from_batch: expected a KeyedJagged, got {type(batch).__name__}")
        _check_plain(batch, "batch", f"{_API}.from_batch")
        size, keys = batch.stride(), batch.keys()
        if size == 0:
            raise ValueError(f"{_API}.from_batch: the batch has no examples (stride 0)")
        lengths = batch.lengths().reshape(len(keys), size)
        per_example = lengths[:, 0].tolist() if keys else []
        for f, key in enumerate(keys):
            if not bool((lengths[f] == per_example[f]).all()):
                raise ValueError(
                    f"{_API}.from_batch: feature {key!r} has lengths {lengths[f].tolist()} over the "
                    f"examples; vmap needs the same number of ids per feature in every example "
                    f"(pad them, or stack equal-shaped batches with KeyedJaggedStack([...]))"
                )
        starts = batch.offset_per_key()

        def per_example_blocks(flat: Tensor) -> Tensor:
            blocks = [flat[starts[f] : starts[f + 1]].reshape(size, per_example[f]) for f in range(len(keys))]
            return torch.cat(blocks, dim=1) if blocks else flat.new_zeros((size, 0))

        weights = batch.weights()
        stacked_lengths = lengths.t().contiguous()  # [B, F]: example b's lengths, one per key
        return cls._trusted(
            keys, per_example_blocks(batch.values()), stacked_lengths,
            None if weights is None else per_example_blocks(weights), 1, tuple(per_example),
        )

    # ------------------------------------------------------------------ accessors

    def __len__(self) -> int:
        """The number of examples ``E``."""
        return self._values.shape[0]

    def keys(self) -> list[str]:
        """The feature names of every example."""
        return list(self._keys)

    def values(self) -> Tensor:
        """``[E, N]``: the ids of each example (key-major within an example)."""
        return self._values

    def lengths(self) -> Tensor:
        """``[E, F * stride]``: each example's lengths."""
        return self._lengths

    def weights(self) -> Tensor | None:
        """``[E, N]`` per-value weights, or ``None``."""
        return self._weights

    def stride(self) -> int:
        """The batch size of each example (1 for :meth:`from_batch`)."""
        return self._stride

    def length_per_key(self) -> list[int]:
        """The ids of each feature in every example."""
        return list(self._length_per_key)

    def example(self, index: int) -> KeyedJagged:
        """Example ``index`` as an ordinary :class:`~embtable.KeyedJagged` (views, no copy).

        Raises:
            IndexError: ``index`` outside ``-E .. E - 1``.
        """
        size = len(self)
        if not isinstance(index, int) or not -size <= index < size:
            raise IndexError(f"{_API}.example: index {index!r} is outside the {size} examples")
        weights = None if self._weights is None else self._weights[index]
        return KeyedJagged(
            self._keys, self._values[index], self._lengths[index], weights=weights, stride=self._stride
        )

    def __repr__(self) -> str:
        return (
            f"KeyedJaggedStack(examples={len(self)}, keys={self._keys}, stride={self._stride}, "
            f"length_per_key={list(self._length_per_key)}, weighted={self._weights is not None})"
        )


def _check_plain(batch: KeyedJagged, name: str, api: str = _API) -> None:
    if batch.variable_stride_per_key():
        raise ValueError(
            f"{api}: {name} has a batch size per feature (stride_per_key); vmap needs one stride"
        )
    if batch.inverse_indices_or_none() is not None:
        raise ValueError(f"{api}: {name} carries inverse indices; expand the batch first")


def _flatten(stack: KeyedJaggedStack) -> tuple[list[Tensor], tuple[Any, ...]]:
    children = [stack._values, stack._lengths]
    if stack._weights is not None:  # no None leaf: vmap's in_dims=0 must not reach one
        children.append(stack._weights)
    return children, (tuple(stack._keys), stack._stride, stack._length_per_key)


def _unflatten(children: Sequence[Any], context: tuple[Any, ...]) -> KeyedJaggedStack | KeyedJagged:
    keys, stride, length_per_key = context
    values, lengths = children[0], children[1]
    weights = children[2] if len(children) > 2 else None
    if isinstance(values, Tensor) and values.dim() == 1:  # one example (inside vmap)
        expected = (sum(length_per_key),), (len(keys) * stride,)
        if (tuple(values.shape), tuple(lengths.shape)) != expected:
            raise ValueError(
                f"{_API}: one example needs values of shape {expected[0]} and lengths of shape "
                f"{expected[1]}, got {tuple(values.shape)} and {tuple(lengths.shape)}; vmap over "
                f"the stack's leading (example) dimension: in_dims=0"
            )
        batch = KeyedJagged._trusted(list(keys), values, lengths, weights, stride)
        batch._static_length_per_key = tuple(length_per_key)
        return batch
    return KeyedJaggedStack._trusted(keys, values, lengths, weights, stride, tuple(length_per_key))


def _flatten_with_keys(stack: KeyedJaggedStack) -> tuple[list[tuple[Any, Tensor]], tuple[Any, ...]]:
    children, context = _flatten(stack)
    names = ("values", "lengths", "weights")
    return [(pytree.GetAttrKey(n), c) for n, c in zip(names, children)], context


pytree.register_pytree_node(
    KeyedJaggedStack,
    _flatten,
    _unflatten,
    serialized_type_name="embtable.func.KeyedJaggedStack",
    flatten_with_keys_fn=_flatten_with_keys,
)
