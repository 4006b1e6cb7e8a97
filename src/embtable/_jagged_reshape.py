"""TorchRec's reshaping of a :class:`~embtable.KeyedJagged`: ``permute``, ``split``, ``concat``.

The bodies of those methods (the class keeps their signatures and docstrings and calls in
here); each takes the class first, to build its results with ``cls._trusted`` (parts already
known to be consistent, keys may repeat).  Split from :mod:`embtable.jagged`.

Example:
    >>> from embtable import KeyedJagged
    >>> from embtable._jagged_reshape import split
    >>> batch = KeyedJagged.from_dict({"a": [[1], [2, 3]], "b": [[4], []]})
    >>> [part.keys() for part in split(KeyedJagged, batch, [1, 1])]
    [['a'], ['b']]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from embtable.jagged import KeyedJagged


def cat(tensors: list[Tensor], like: Tensor) -> Tensor:
    """``torch.cat(tensors)`` without a copy for one tensor, an empty one like ``like`` for none."""
    if not tensors:
        return like.new_empty(0)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def permute(batch: KeyedJagged, indices: Sequence[int] | Tensor) -> KeyedJagged:
    """The body of :meth:`KeyedJagged.permute <embtable.KeyedJagged.permute>`."""
    indices = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    num_keys = len(batch._keys)
    for position, index in enumerate(indices):
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"KeyedJagged.permute: indices must be ints, got {index!r}")
        index = indices[position] = operator.index(index)
        if not 0 <= index < num_keys:
            raise IndexError(
                f"KeyedJagged.permute: index {index} is outside the {num_keys} keys "
                f"{batch._keys} (expected 0 .. {num_keys - 1})"
            )
    return batch._gather(indices)


def split(cls: type[KeyedJagged], batch: KeyedJagged, segments: Sequence[int]) -> list[KeyedJagged]:
    """The body of :meth:`KeyedJagged.split <embtable.KeyedJagged.split>`."""
    segments = list(segments)
    for segment in segments:
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 0:
            raise ValueError(f"KeyedJagged.split: segments must be ints >= 0, got {segment!r}")
    if sum(segments) > len(batch._keys):
        raise ValueError(
            f"KeyedJagged.split: segments {segments} add up to {sum(segments)} keys, but the "
            f"batch has {len(batch._keys)}"
        )
    parts, start = [], 0
    starts, cells = batch._offset_per_key, batch.lengths_offset_per_key()
    for segment in segments:
        end = start + segment
        if segment == len(batch._keys):
            parts.append(batch)
        elif segment == 0:  # as TorchRec: empty tensors, int32 lengths, the stride kept
            empty = batch._values.new_zeros(0)
            per_key = () if batch._stride_per_key is not None else None
            weights = None if batch._weights is None else batch._weights.new_zeros(0)
            lengths = batch._lengths.new_zeros(0, dtype=torch.int32)
            parts.append(cls._trusted([], empty, lengths, weights, batch._stride, per_key))
        else:
            lo, hi = starts[start], starts[end]
            per_key = None
            if batch._stride_per_key is not None:
                per_key = batch._stride_per_key[start:end]
            parts.append(
                cls._trusted(
                    batch._keys[start:end],
                    batch._values[lo:hi],
                    batch._lengths[cells[start] : cells[end]],
                    None if batch._weights is None else batch._weights[lo:hi],
                    batch._stride,
                    per_key,
                )
            )
        start = end
    return parts


def concat(cls: type[KeyedJagged], batches: Sequence[KeyedJagged]) -> KeyedJagged:
    """The body of :meth:`KeyedJagged.concat <embtable.KeyedJagged.concat>`."""
    api = "KeyedJagged.concat"
    batches = list(batches)
    if not batches:
        raise ValueError(f"{api}: batches must hold at least one KeyedJagged, got none")
    for batch in batches:
        if not isinstance(batch, cls):
            raise TypeError(f"{api}: batches must be KeyedJagged, got {type(batch).__name__}")
    first = batches[0]
    weighted = [b.weights() is not None for b in batches]
    if any(weighted) and not all(weighted):
        raise ValueError(
            f"{api}: cannot concatenate weighted and unweighted batches (weighted: {weighted})"
        )
    variable = [b.variable_stride_per_key() for b in batches]
    strides = [b.stride() for b in batches]
    if any(variable) and not all(variable):
        raise ValueError(
            f"{api}: cannot mix batches with and without a batch size per key "
            f"(variable: {variable})"
        )
    if not any(variable) and len(set(strides)) > 1:
        raise ValueError(f"{api}: every batch must have one batch size, got strides {strides}")
    devices = {str(b.device) for b in batches}
    if len(devices) > 1:
        raise ValueError(f"{api}: every batch must be on one device, got {sorted(devices)}")
    inverse = [b.inverse_indices_or_none() for b in batches]
    if any(i is not None for i in inverse) and not all(i is not None for i in inverse):
        raise ValueError(f"{api}: cannot mix batches with and without inverse_indices")
    per_key = None
    if all(variable):
        per_key = tuple(s for b in batches for s in b.stride_per_key())
    joined = cls._trusted(
        [k for b in batches for k in b.keys()],
        cat([b.values() for b in batches], first.values()),
        cat([b.lengths() for b in batches], first.lengths()),
        cat([b.weights() for b in batches], first.weights()) if all(weighted) else None,
        max(strides),
        per_key,
    )
    if inverse[0] is not None:
        joined._inverse_indices = (
            [k for i in inverse for k in i[0]], torch.cat([i[1] for i in inverse])
        )
    return joined
