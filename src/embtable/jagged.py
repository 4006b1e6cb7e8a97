r"""``KeyedJagged``: a batch of several features, each a variable-length list of ids per example.

The input type of :class:`embtable.EmbeddingBagCollection` and
:class:`embtable.EmbeddingCollection`, laid out as TorchRec's ``KeyedJaggedTensor``
(and convertible to and from it).

This module is the type's public home (its pickles and its pytree node name,
``"embtable.KeyedJagged"``, point here); the bodies of its larger methods live beside it, one
job each: ``_jagged_checks`` (validation of the parts), ``_jagged_reshape`` (``permute``,
``split``, ``concat``) and ``_jagged_convert`` (``from_dict``, ``from_padded``, TorchRec).

Example:
    >>> from embtable import KeyedJagged
    >>> batch = KeyedJagged.from_dict({"user": [[7], [3], [9]], "item": [[1, 4], [], [2, 5, 6]]})
    >>> batch.keys(), batch.stride()
    (['user', 'item'], 3)
    >>> batch.values()
    tensor([7, 3, 9, 1, 4, 2, 5, 6])
    >>> batch.lengths()
    tensor([1, 1, 1, 2, 0, 3])
    >>> batch["item"].lengths
    tensor([2, 0, 3])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from embtable import _jagged_convert, _jagged_reshape
from embtable._jagged_checks import check_not_vmapped, checked_parts
from embtable._jagged_reshape import cat
from embtable.ops import batched

__all__ = ["Jagged", "KeyedJagged"]


class Jagged(NamedTuple):
    """One feature of a :class:`KeyedJagged`: the ids of every example, concatenated.

    Attributes:
        values: ``[N]`` ids of all examples, example after example.
        lengths: ``[B]`` number of ids of each example (``values`` splits into bags of these sizes).
        weights: ``[N]`` per-value weights, or ``None``.
    """

    values: Tensor
    lengths: Tensor
    weights: Tensor | None = None

    @property
    def offsets(self) -> Tensor:
        """``[B + 1]`` start of each example's ids in ``values``, then ``len(values)``."""
        return _complete_cumsum(self.lengths)


def _complete_cumsum(lengths: Tensor) -> Tensor:
    """``[0, cumsum(lengths)...]`` as int64 (inside ``torch.func.vmap`` without ``out=``,
    which has no batching rule)."""
    if batched(lengths):
        starts = lengths.cumsum(0, dtype=torch.int64)
        return torch.cat([starts.new_zeros(1), starts])
    offsets = lengths.new_zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, dtype=torch.int64, out=offsets[1:])
    return offsets


class KeyedJagged:
    r"""A batch of ``B`` examples x ``F`` features; each (feature, example) cell is a list of ids.

    Layout (the same as TorchRec's ``KeyedJaggedTensor``)::

                      example 0   example 1   example 2     <- batch dimension, stride() = B = 3
        "user"        [7]         [3]         [9]
        "item"        [1, 4]      []          [2, 5, 6]
          ^ keys, F = 2

        keys    = ["user", "item"]
        values  = [7, 3, 9, 1, 4, 2, 5, 6]   # key-major: every id of "user", then of "item"
        lengths = [1, 1, 1, 2, 0, 3]         # F * B counts; cell (f, b) is lengths[f * B + b]
        offsets = [0, 1, 2, 3, 5, 5, 8]      # F * B + 1 starts into values (derived, cached)
        weights = [w0, ..., w7] or None      # optional: one float per value (e.g. for sum pooling)

    Construct it directly from ``values`` and ``lengths`` (or ``offsets``), or with
    :meth:`from_dict`, :meth:`from_padded`, :meth:`from_torchrec`.  TorchRec's methods work
    with TorchRec's results: :meth:`permute` (keys may repeat), :meth:`split`, :meth:`concat`,
    :meth:`to_dict`, :meth:`pin_memory`, a batch size per feature (``stride_per_key``) and
    ``inverse_indices`` (docs/bags.md, "Coming from TorchRec", lists every call).

    Args:
        keys: the feature names, distinct strings, in the order their blocks appear in ``values``.
        values: ``[N]`` int64 or int32 ids.
        lengths: ``[F * B]`` non-negative int counts (give this or ``offsets``).
        offsets: ``[F * B + 1]`` non-decreasing starts into ``values``, first 0, last ``N``
            (keyword only; give this or ``lengths``).
        weights: ``[N]`` floating per-value weights, or ``None`` (keyword only).
        stride: the batch size ``B`` (keyword only); derived from ``lengths`` when omitted.
            Give it to keep the batch size of a batch without keys (as TorchRec's ``stride``);
            with keys it must equal ``len(lengths) // F`` (or ``max(stride_per_key)``).
        stride_per_key: a variable batch size per feature (keyword only; TorchRec's
            ``stride_per_key``): key ``f`` has ``stride_per_key[f]`` examples, its lengths
            follow those of key ``f - 1``, and ``lengths`` has ``sum(stride_per_key)`` entries.
            :meth:`stride` is then the largest of them.
        inverse_indices: ``(keys, [K, B] int tensor)`` (keyword only; TorchRec's
            ``inverse_indices``): row ``k`` maps each of the ``B`` examples of the full batch
            to an example of feature ``keys[k]`` (whose batch may be deduplicated, see
            ``stride_per_key``).  An :class:`~embtable.EmbeddingBagCollection` expands its
            pooled rows with it to ``[B, D]`` per feature, as TorchRec's does; :meth:`stride`
            is then ``B``.  ``permute``, ``split`` and ``select`` drop it (as TorchRec).
        validate: run the O(F * B) checks on ``lengths`` / ``offsets`` (negative counts, sums);
            the O(1) checks (types, dtypes, shapes, keys) always run.  Pass ``False`` only for
            batches already known to be valid, e.g. in a data loader's hot loop.

    Raises:
        ValueError: duplicate keys, a count of lengths that is not a multiple of the number of
            keys, negative lengths, lengths that do not sum to ``len(values)``, bad offsets,
            ``weights`` of another shape than ``values``, tensors on different devices, a
            ``stride`` or ``stride_per_key`` that disagrees with ``lengths``.
        TypeError: keys that are not strings, non-integer ids or lengths, non-floating weights.
            (An empty ``values``, ``lengths`` or ``offsets`` of any dtype, such as
            ``torch.tensor([])``, is accepted as in TorchRec: a batch without ids.)

    Example:
        >>> import torch
        >>> from embtable import KeyedJagged
        >>> batch = KeyedJagged(["user", "item"], values=torch.tensor([7, 3, 9, 1, 4, 2, 5, 6]),
        ...                     lengths=torch.tensor([1, 1, 1, 2, 0, 3]))
        >>> batch.offsets()
        tensor([0, 1, 2, 3, 5, 5, 8])
        >>> batch.length_per_key(), batch.offset_per_key()
        ([3, 5], [0, 3, 8])
        >>> KeyedJagged(["user"], values=torch.tensor([7, 3]), lengths=torch.tensor([1, 2, 1]))
        Traceback (most recent call last):
        ...
        ValueError: KeyedJagged: lengths sum to 4 but values holds 2 ids; lengths[f * B + b] must count the ids of feature f in example b
    """

    def __init__(
        self,
        keys: Sequence[str],
        values: Tensor,
        lengths: Tensor | None = None,
        *,
        offsets: Tensor | None = None,
        weights: Tensor | None = None,
        stride: int | None = None,
        stride_per_key: Sequence[int] | None = None,
        inverse_indices: tuple[Sequence[str], Tensor] | None = None,
        validate: bool = True,
    ) -> None:
        parts = checked_parts(
            keys, values, lengths, offsets, weights, stride, stride_per_key, inverse_indices, validate
        )
        if parts.offsets is not None:
            self.__dict__["_offsets"] = parts.offsets.to(torch.int64)
        self._set(parts.keys, parts.values, parts.lengths, weights, parts.stride, parts.stride_per_key)
        self._inverse_indices = parts.inverse

    _inverse_indices: tuple[list[str], Tensor] | None = None
    # Ids per key known without reading ``lengths``: set on one example of a
    # :class:`embtable.func.KeyedJaggedStack` inside ``torch.func.vmap`` (where the batched
    # lengths cannot become Python numbers); carried by the pytree context.
    _static_length_per_key: tuple[int, ...] | None = None

    def _set(
        self,
        keys: list[str],
        values: Tensor,
        lengths: Tensor,
        weights: Tensor | None,
        stride: int,
        stride_per_key: tuple[int, ...] | None,
    ) -> None:
        self._keys = keys
        self._values = values
        self._lengths = lengths
        self._weights = weights
        self._stride = stride
        self._stride_per_key = stride_per_key

    @classmethod
    def _trusted(
        cls,
        keys: list[str],
        values: Tensor,
        lengths: Tensor,
        weights: Tensor | None,
        stride: int,
        stride_per_key: tuple[int, ...] | None = None,
    ) -> KeyedJagged:
        """A batch from parts already known to be consistent; keys may repeat (permute, concat).

        Also the way to rebuild a batch from its parts (e.g. a pytree unflatten): the context
        must carry ``stride`` and ``stride_per_key`` (and ``_inverse_indices``, set after).
        """
        batch = cls.__new__(cls)
        batch._set(list(keys), values, lengths, weights, stride, stride_per_key)
        return batch

    # ------------------------------------------------------------------ accessors

    def keys(self) -> list[str]:
        """The feature names, in the order of their blocks in :meth:`values`."""
        return list(self._keys)

    def values(self) -> Tensor:
        """``[N]`` all ids, key-major (every id of the first key, then of the second, ...)."""
        return self._values

    def lengths(self) -> Tensor:
        """``[F * B]`` number of ids of each (feature, example) cell, key-major."""
        return self._lengths

    def weights(self) -> Tensor | None:
        """``[N]`` per-value weights, or ``None`` for an unweighted batch."""
        return self._weights

    def offsets(self) -> Tensor:
        """``[F * B + 1]`` int64 start of each cell in :meth:`values`, then ``N`` (cached)."""
        return self._offsets

    def weights_or_none(self) -> Tensor | None:
        """TorchRec's name for :meth:`weights` (which here returns ``None`` too, not raising)."""
        return self._weights

    def index_per_key(self) -> dict[str, int]:
        """``{key: position}`` (TorchRec's ``index_per_key``; a repeated key maps to its last)."""
        return dict(self._index_of)

    @classmethod
    def from_lengths_sync(
        cls, keys: Sequence[str], values: Tensor, lengths: Tensor, weights: Tensor | None = None,
        stride: int | None = None,
    ) -> KeyedJagged:
        """TorchRec's constructor of the same name: ``KeyedJagged(keys, values, lengths, ...)``."""
        return cls(keys, values, lengths, weights=weights, stride=stride)

    @classmethod
    def from_offsets_sync(
        cls, keys: Sequence[str], values: Tensor, offsets: Tensor, weights: Tensor | None = None,
        stride: int | None = None,
    ) -> KeyedJagged:
        """TorchRec's constructor of the same name: ``KeyedJagged(keys, values, offsets=...)``."""
        return cls(keys, values, offsets=offsets, weights=weights, stride=stride)

    @cached_property
    def _offsets(self) -> Tensor:
        return _complete_cumsum(self._lengths)

    def stride(self) -> int:
        """The batch size ``B``: examples per feature (the largest, with :meth:`stride_per_key`).

        A batch without keys keeps the batch size it was made with (``select([])``,
        ``split([0, ...])``), else 0.
        """
        return self._stride

    def inverse_indices_or_none(self) -> tuple[list[str], Tensor] | None:
        """TorchRec's ``inverse_indices``: ``(keys, [K, B] tensor)``, or ``None``."""
        if self._inverse_indices is None:
            return None
        return list(self._inverse_indices[0]), self._inverse_indices[1]

    def stride_per_key(self) -> list[int]:
        """The number of examples of each feature (all :meth:`stride` unless variable)."""
        if self._stride_per_key is None:
            return [self._stride] * len(self._keys)
        return list(self._stride_per_key)

    def variable_stride_per_key(self) -> bool:
        """Whether the batch was made with a batch size per feature (``stride_per_key``)."""
        return self._stride_per_key is not None

    def lengths_offset_per_key(self) -> list[int]:
        """Start of each feature's counts in :meth:`lengths`, then ``len(lengths)`` (``F + 1``)."""
        starts = [0]
        for count in self.stride_per_key():
            starts.append(starts[-1] + count)
        return starts

    def length_per_key(self) -> list[int]:
        """Number of ids of each feature over the whole batch (cached)."""
        return list(self._length_per_key)

    @cached_property
    def _length_per_key(self) -> tuple[int, ...]:
        if self._static_length_per_key is not None:
            return self._static_length_per_key
        if not self._keys:
            return ()
        check_not_vmapped(self._lengths)
        if self._stride_per_key is not None:
            cells = torch.repeat_interleave(
                torch.arange(len(self._keys), device=self._lengths.device),
                torch.tensor(self._stride_per_key, device=self._lengths.device),
            )
            per_key = torch.zeros(len(self._keys), dtype=torch.int64, device=self._lengths.device)
            per_key.index_add_(0, cells, self._lengths.to(torch.int64))
            return tuple(per_key.tolist())
        per_key = self._lengths.reshape(len(self._keys), -1).sum(1, dtype=torch.int64)
        return tuple(per_key.tolist())

    def offset_per_key(self) -> list[int]:
        """Start of each feature's block in :meth:`values`, then ``N`` (``F + 1`` entries)."""
        return list(self._offset_per_key)

    @cached_property
    def _offset_per_key(self) -> tuple[int, ...]:
        starts = [0]
        for count in self._length_per_key:
            starts.append(starts[-1] + count)
        return tuple(starts)

    @cached_property
    def _index_of(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self._keys)}

    def __contains__(self, key: object) -> bool:
        return key in self._index_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __getitem__(self, key: str) -> Jagged:
        """The :class:`Jagged` ``(values, lengths, weights)`` of one feature (views, no copy)."""
        try:
            index = self._index_of[key]
        except (KeyError, TypeError):
            raise KeyError(f"KeyedJagged: no feature {key!r}; the keys are {self.keys()}") from None
        return self._part(index)

    def _part(self, index: int) -> Jagged:
        start, end = self._offset_per_key[index], self._offset_per_key[index + 1]
        cells = self.lengths_offset_per_key()
        weights = None if self._weights is None else self._weights[start:end]
        return Jagged(self._values[start:end], self._lengths[cells[index] : cells[index + 1]], weights)

    def to_dict(self, compute_offsets: bool = True) -> dict[str, Jagged]:
        """``{key: Jagged}`` for every feature (TorchRec's ``to_dict``; a repeated key maps to its
        last block, as ``self[key]``).  ``compute_offsets`` is accepted for TorchRec's signature
        (a :class:`Jagged` derives its offsets when asked)."""
        return {key: self[key] for key in self._keys}

    def select(self, keys: Sequence[str]) -> KeyedJagged:
        """A batch holding only ``keys``, in that order (copies the ids unless already so).

        The batch size is kept, also by ``select([])``.

        Raises:
            KeyError: a key is not in this batch.
        """
        keys = list(keys)
        if keys == self._keys:
            return self
        for key in keys:
            if key not in self._index_of:
                self[key]  # raises the KeyError naming the keys
        return self._gather([self._index_of[key] for key in keys])

    def _gather(self, indices: list[int]) -> KeyedJagged:
        """The blocks of keys ``indices`` (repeats allowed), in that order."""
        parts = [self._part(i) for i in indices]
        weights = None if self._weights is None else cat([p.weights for p in parts], self._weights)
        per_key = None
        if self._stride_per_key is not None:
            per_key = tuple(self._stride_per_key[i] for i in indices)
        return KeyedJagged._trusted(
            [self._keys[i] for i in indices],
            cat([p.values for p in parts], self._values),
            cat([p.lengths for p in parts], self._lengths),
            weights,
            self._stride,
            per_key,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJagged:
        """A copy on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self._values.device == device:
            return self
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, move: Any) -> KeyedJagged:
        weights = None if self._weights is None else move(self._weights)
        moved = KeyedJagged._trusted(
            self._keys, move(self._values), move(self._lengths), weights, self._stride,
            self._stride_per_key,
        )
        if self._inverse_indices is not None:
            moved._inverse_indices = (self._inverse_indices[0], move(self._inverse_indices[1]))
        return moved

    def pin_memory(self) -> KeyedJagged:
        """A copy in page-locked host memory, for fast asynchronous copies to an accelerator.

        TorchRec's ``KeyedJaggedTensor.pin_memory``; it needs an accelerator build of torch
        (without one, torch's own ``Tensor.pin_memory`` error is raised).
        """
        return self._map(lambda t: t.pin_memory())

    def is_pinned(self) -> bool:
        """Whether the ids are in page-locked memory (see :meth:`pin_memory`)."""
        return self._values.is_pinned()

    # ------------------------------------------------------------------ TorchRec's reshaping

    def permute(self, indices: Sequence[int], indices_tensor: Tensor | None = None) -> KeyedJagged:
        """The keys in the order ``indices`` (TorchRec's ``KeyedJaggedTensor.permute``).

        A key may appear several times (its block is then repeated) or not at all.

        Args:
            indices: positions into :meth:`keys`, each in ``0 .. F - 1``.
            indices_tensor: accepted for TorchRec's signature (its kernel's copy of
                ``indices``); not used.

        Raises:
            IndexError: an index outside ``0 .. F - 1``.
            TypeError: an index that is not an int.

        Example:
            >>> from embtable import KeyedJagged
            >>> batch = KeyedJagged.from_dict({"a": [[1], [2, 3]], "b": [[4], []]})
            >>> moved = batch.permute([1, 0, 1])
            >>> moved.keys(), moved.values(), moved.lengths()
            (['b', 'a', 'b'], tensor([4, 1, 2, 3, 4]), tensor([1, 0, 1, 2, 1, 0]))
        """
        return _jagged_reshape.permute(self, indices)

    def split(self, segments: Sequence[int]) -> list[KeyedJagged]:
        """Consecutive groups of keys: ``segments[i]`` keys each (TorchRec's ``split``).

        Every part keeps the batch size (an empty segment gives a batch without keys whose
        :meth:`stride` is this batch's, as in TorchRec); a segment of every key returns
        ``self``.  Parts are views of this batch's tensors.

        Raises:
            ValueError: a negative segment, or segments adding up to more than ``F`` keys.

        Example:
            >>> from embtable import KeyedJagged
            >>> batch = KeyedJagged.from_dict({"a": [[1], [2, 3]], "b": [[4], []], "c": [[], [5]]})
            >>> first, second = batch.split([1, 2])
            >>> first.keys(), second.keys(), second.values()
            (['a'], ['b', 'c'], tensor([4, 5]))
            >>> batch.split([0, 3])[0].stride()
            2
        """
        return _jagged_reshape.split(KeyedJagged, self, segments)

    @staticmethod
    def concat(batches: Sequence[KeyedJagged]) -> KeyedJagged:
        """The keys of all ``batches`` side by side (TorchRec's ``KeyedJaggedTensor.concat``).

        Keys may repeat across batches, as in TorchRec.

        Raises:
            ValueError: no batches; weighted and unweighted batches mixed; different batch
                sizes (or variable and fixed ones mixed); different devices.
            TypeError: an entry is not a :class:`KeyedJagged`.

        Example:
            >>> from embtable import KeyedJagged
            >>> both = KeyedJagged.concat([KeyedJagged.from_dict({"a": [[1], [2]]}),
            ...                            KeyedJagged.from_dict({"b": [[3, 4], []]})])
            >>> both.keys(), both.values(), both.lengths()
            (['a', 'b'], tensor([1, 2, 3, 4]), tensor([1, 1, 2, 0]))
        """
        return _jagged_reshape.concat(KeyedJagged, batches)

    @property
    def device(self) -> torch.device:
        """The device of the ids."""
        return self._values.device

    def __repr__(self) -> str:
        weighted = ", weighted" if self._weights is not None else ""
        per_key = f", stride_per_key={list(self._stride_per_key)}" if self._stride_per_key else ""
        return (
            f"KeyedJagged(keys={self._keys}, stride={self.stride()}{per_key}, "
            f"num_values={self._values.numel()}{weighted})"
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_dict(
        cls,
        ids: Mapping[str, Sequence[Sequence[int] | Tensor]],
        weights: Mapping[str, Sequence[Sequence[float] | Tensor]] | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> KeyedJagged:
        """Build a batch from ``{key: [ids of example 0, ids of example 1, ...]}``.

        Args:
            ids: for each feature, one list (or 1-D tensor) of integer ids per example; every
                feature must list the same number of examples.
            weights: optional, the same structure with one float per id.
            device: where to put the tensors.

        Raises:
            ValueError: features with different numbers of examples; weights that do not
                match the ids.
            TypeError: non-integer ids.

        Example:
            >>> from embtable import KeyedJagged
            >>> batch = KeyedJagged.from_dict({"tags": [[3, 1], [2]]}, weights={"tags": [[0.5, 1.0], [2.0]]})
            >>> batch.weights()
            tensor([0.5000, 1.0000, 2.0000])
        """
        return _jagged_convert.from_dict(cls, ids, weights, device)

    @classmethod
    def from_padded(
        cls,
        padded: Mapping[str, Tensor],
        pad_value: int,
        *,
        device: torch.device | str | None = None,
    ) -> KeyedJagged:
        """Build a batch from ``{key: [B, L] id tensor}``, dropping every entry equal to ``pad_value``.

        The kept ids of each row stay in their order; pad entries may appear anywhere in a row.
        Each feature may have its own ``L``; all share ``B``.

        Raises:
            ValueError: a tensor is not 2-D, or the features disagree on ``B``.
            TypeError: a tensor does not hold integer ids.

        Example:
            >>> import torch
            >>> from embtable import KeyedJagged
            >>> batch = KeyedJagged.from_padded({"words": torch.tensor([[4, 9, 0], [5, 0, 0]])}, pad_value=0)
            >>> batch["words"]
            Jagged(values=tensor([4, 9, 5]), lengths=tensor([2, 1]), weights=None)
        """
        return _jagged_convert.from_padded(cls, padded, pad_value, device)

    @classmethod
    def from_torchrec(cls, kjt: Any) -> KeyedJagged:
        """Build a batch from TorchRec's ``KeyedJaggedTensor`` (sharing its tensors).

        A variable batch size per key (``stride_per_key_per_rank``) becomes ``stride_per_key``
        (the per-rank split is summed); ``inverse_indices`` are not carried over.

        Raises:
            TypeError: ``kjt`` is not a ``KeyedJaggedTensor``.
            ValueError: its parts are inconsistent (see the constructor).
        """
        return _jagged_convert.from_torchrec(cls, kjt)

    def to_torchrec(self) -> Any:
        """This batch as TorchRec's ``KeyedJaggedTensor`` (sharing the tensors).

        Raises:
            ImportError: torchrec is not installed.
        """
        return _jagged_convert.to_torchrec(self)


# A pytree node, so that torch.export / torch.compile / torch.func take a KeyedJagged as a
# model input: its tensors are the leaves, keys and strides the (static) context.
def _kj_flatten(batch: KeyedJagged) -> tuple[list[Tensor | None], tuple[Any, ...]]:
    children = [batch._values, batch._lengths, batch._weights]
    inverse = batch._inverse_indices
    if inverse is not None:  # a fourth leaf only for batches that carry inverse indices
        children.append(inverse[1])
    inverse_keys = None if inverse is None else tuple(inverse[0])
    static = batch._static_length_per_key
    return children, (tuple(batch._keys), batch._stride, batch._stride_per_key, inverse_keys, static)


def _kj_flatten_with_keys(batch: KeyedJagged) -> tuple[list[tuple[Any, Tensor | None]], tuple[Any, ...]]:
    children, context = _kj_flatten(batch)
    names = ("values", "lengths", "weights", "inverse_indices")
    return [(pytree.GetAttrKey(name), child) for name, child in zip(names, children)], context


def _kj_unflatten(children: Sequence[Any], context: tuple[Any, ...]) -> KeyedJagged:
    keys, stride, stride_per_key, inverse_keys = context[:4]
    values, lengths, weights = children[:3]
    batch = KeyedJagged._trusted(list(keys), values, lengths, weights, stride, stride_per_key)
    if len(context) > 4 and context[4] is not None:
        batch._static_length_per_key = context[4]
    if inverse_keys is not None:
        batch._inverse_indices = (list(inverse_keys), children[3])
    return batch


pytree.register_pytree_node(
    KeyedJagged,
    _kj_flatten,
    _kj_unflatten,
    serialized_type_name="embtable.KeyedJagged",
    flatten_with_keys_fn=_kj_flatten_with_keys,
)
