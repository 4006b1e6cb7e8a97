r"""``KeyedJagged``: a batch of several features, each a variable-length list of ids per example.

The input type of :class:`embtable.EmbeddingBagCollection` and
:class:`embtable.EmbeddingCollection`, laid out as TorchRec's ``KeyedJaggedTensor``
(and convertible to and from it).

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
from torch import Tensor

from embtable.ops import check_id_dtype

__all__ = ["Jagged", "KeyedJagged"]

_ID_DTYPES = (torch.int32, torch.int64)


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
    :meth:`from_dict`, :meth:`from_padded`, :meth:`from_torchrec`.

    Args:
        keys: the feature names, distinct strings, in the order their blocks appear in ``values``.
        values: ``[N]`` int64 or int32 ids.
        lengths: ``[F * B]`` non-negative int counts (give this or ``offsets``).
        offsets: ``[F * B + 1]`` non-decreasing starts into ``values``, first 0, last ``N``
            (keyword only; give this or ``lengths``).
        weights: ``[N]`` floating per-value weights, or ``None`` (keyword only).
        validate: run the O(F * B) checks on ``lengths`` / ``offsets`` (negative counts, sums);
            the O(1) checks (types, dtypes, shapes, keys) always run.  Pass ``False`` only for
            batches already known to be valid, e.g. in a data loader's hot loop.

    Raises:
        ValueError: duplicate keys, a count of lengths that is not a multiple of the number of
            keys, negative lengths, lengths that do not sum to ``len(values)``, bad offsets,
            ``weights`` of another shape than ``values``, tensors on different devices.
        TypeError: keys that are not strings, non-integer ids or lengths, non-floating weights.

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
        validate: bool = True,
    ) -> None:
        api = "KeyedJagged"
        self._keys = _checked_keys(keys, api)
        _check_ids_tensor(values, api)
        if (lengths is None) == (offsets is None):
            raise ValueError(f"{api}: give exactly one of lengths and offsets")
        if lengths is not None:
            _check_counts_tensor(lengths, "lengths", values, api)
            _check_multiple(lengths.numel(), len(self._keys), "lengths", api)
            if validate:
                _check_lengths_values(lengths, values.numel(), api)
        else:
            _check_counts_tensor(offsets, "offsets", values, api)
            _check_multiple(offsets.numel() - 1, len(self._keys), "offsets", api, extra=1)
            if validate:
                _check_offsets_values(offsets, values.numel(), api)
            self.__dict__["_offsets"] = offsets.to(torch.int64)
            lengths = torch.diff(offsets)
        _check_weights(weights, values, api)
        self._values = values
        self._lengths = lengths
        self._weights = weights

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

    @cached_property
    def _offsets(self) -> Tensor:
        return _complete_cumsum(self._lengths)

    def stride(self) -> int:
        """The batch size ``B``: examples per feature (0 for a batch without keys)."""
        return self._lengths.numel() // len(self._keys) if self._keys else 0

    def length_per_key(self) -> list[int]:
        """Number of ids of each feature over the whole batch (cached)."""
        return list(self._length_per_key)

    @cached_property
    def _length_per_key(self) -> tuple[int, ...]:
        if not self._keys:
            return ()
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
        batch = self.stride()
        start, end = self._offset_per_key[index], self._offset_per_key[index + 1]
        weights = None if self._weights is None else self._weights[start:end]
        return Jagged(
            self._values[start:end], self._lengths[index * batch : (index + 1) * batch], weights
        )

    def to_dict(self) -> dict[str, Jagged]:
        """``{key: Jagged}`` for every feature."""
        return {key: self[key] for key in self._keys}

    def select(self, keys: Sequence[str]) -> KeyedJagged:
        """A batch holding only ``keys``, in that order (copies the ids unless already so).

        Raises:
            KeyError: a key is not in this batch.
        """
        keys = list(keys)
        if keys == self._keys:
            return self
        parts = [self[key] for key in keys]
        weights = None if self._weights is None else _cat([p.weights for p in parts], self._weights)
        return KeyedJagged(
            keys,
            _cat([p.values for p in parts], self._values),
            _cat([p.lengths for p in parts], self._lengths),
            weights=weights,
            validate=False,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJagged:
        """A copy on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self._values.device == device:
            return self
        weights = None if self._weights is None else self._weights.to(device, non_blocking=non_blocking)
        return KeyedJagged(
            self._keys,
            self._values.to(device, non_blocking=non_blocking),
            self._lengths.to(device, non_blocking=non_blocking),
            weights=weights,
            validate=False,
        )

    @property
    def device(self) -> torch.device:
        """The device of the ids."""
        return self._values.device

    def __repr__(self) -> str:
        weighted = ", weighted" if self._weights is not None else ""
        return (
            f"KeyedJagged(keys={self._keys}, stride={self.stride()}, "
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
        api = "KeyedJagged.from_dict"
        if not isinstance(ids, Mapping):
            raise TypeError(f"{api}: ids must be a mapping {{key: list of lists}}, got {type(ids).__name__}")
        keys = list(ids)
        values, lengths = _flatten(ids, torch.int64, api, "ids")
        flat_weights = None
        if weights is not None:
            if not isinstance(weights, Mapping) or list(weights) != keys:
                got = list(weights) if isinstance(weights, Mapping) else type(weights).__name__
                raise ValueError(f"{api}: weights must have the keys {keys} in that order, got {got}")
            flat_weights, weight_lengths = _flatten(weights, torch.float32, api, "weights")
            if not torch.equal(weight_lengths, lengths):
                raise ValueError(
                    f"{api}: weights must give one float per id, but their per-example "
                    f"counts differ from those of the ids"
                )
            flat_weights = flat_weights.to(device)
        return cls(keys, values.to(device), lengths.to(device), weights=flat_weights)

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
        api = "KeyedJagged.from_padded"
        if not isinstance(padded, Mapping):
            raise TypeError(f"{api}: padded must be a mapping {{key: [B, L] tensor}}, got {type(padded).__name__}")
        for key, tensor in padded.items():
            _check_ids_tensor(tensor, api, name=f"padded[{key!r}]", dims=2)
        _common_batch({key: tensor.shape[0] for key, tensor in padded.items()}, api)
        values, lengths = [], []
        for tensor in padded.values():
            keep = tensor != pad_value
            values.append(tensor[keep].to(torch.int64))
            lengths.append(keep.sum(1))
        empty = torch.empty(0, dtype=torch.int64)
        return cls(
            list(padded),
            _cat(values, empty).to(device),
            _cat(lengths, empty).to(device),
            validate=False,
        )

    @classmethod
    def from_torchrec(cls, kjt: Any) -> KeyedJagged:
        """Build a batch from TorchRec's ``KeyedJaggedTensor`` (sharing its tensors).

        Raises:
            ValueError: the ``KeyedJaggedTensor`` has a variable batch size per key.
            TypeError: ``kjt`` is not a ``KeyedJaggedTensor``.
        """
        api = "KeyedJagged.from_torchrec"
        keyed_jagged_tensor = _torchrec_class(api)
        if not isinstance(kjt, keyed_jagged_tensor):
            raise TypeError(f"{api}: expected a torchrec KeyedJaggedTensor, got {type(kjt).__name__}")
        if kjt.variable_stride_per_key():
            raise ValueError(
                f"{api}: variable batch sizes per key are not supported; every key must have "
                f"stride() = {kjt.stride()} examples"
            )
        return cls(kjt.keys(), kjt.values(), kjt.lengths(), weights=kjt.weights_or_none())

    def to_torchrec(self) -> Any:
        """This batch as TorchRec's ``KeyedJaggedTensor`` (sharing the tensors).

        Raises:
            ImportError: torchrec is not installed.
        """
        keyed_jagged_tensor = _torchrec_class("KeyedJagged.to_torchrec")
        return keyed_jagged_tensor(
            keys=self.keys(),
            values=self._values,
            lengths=self._lengths,
            weights=self._weights,
            stride=self.stride(),
        )


# ---------------------------------------------------------------------- helpers


def _torchrec_class(api: str) -> type:
    try:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    except ImportError as error:
        raise ImportError(
            f"{api}: torchrec is not importable ({error}); install it with `pip install torchrec`"
        ) from None
    return KeyedJaggedTensor


def _checked_keys(keys: Sequence[str], api: str) -> list[str]:
    if isinstance(keys, str):
        raise TypeError(f"{api}: keys must be a sequence of strings, got the string {keys!r}; write [{keys!r}]")
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{api}: keys must be strings, got {key!r}")
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"{api}: keys must be distinct, got {duplicates} more than once")
    return keys


def _check_ids_tensor(values: Any, api: str, name: str = "values", dims: int = 1) -> None:
    check_id_dtype(values, api, name)
    if values.dim() != dims:
        raise ValueError(f"{api}: {name} must be {dims}-D, got shape {tuple(values.shape)}")


def _check_counts_tensor(counts: Any, name: str, values: Tensor, api: str) -> None:
    if not isinstance(counts, Tensor) or counts.dtype not in _ID_DTYPES:
        got = counts.dtype if isinstance(counts, Tensor) else type(counts).__name__
        raise TypeError(f"{api}: {name} must be an int64 or int32 tensor, got {got}")
    if counts.dim() != 1:
        raise ValueError(f"{api}: {name} must be 1-D, got shape {tuple(counts.shape)}")
    if counts.device != values.device:
        raise ValueError(
            f"{api}: {name} is on {counts.device} but values on {values.device}; move both "
            f"to one device"
        )


def _check_multiple(count: int, num_keys: int, name: str, api: str, extra: int = 0) -> None:
    if count < 0 or (num_keys == 0 and count != 0) or (num_keys and count % num_keys):
        plus = f" + {extra}" if extra else ""
        raise ValueError(
            f"{api}: {name} has {count + extra} entries, expected num_keys * batch_size{plus} "
            f"with {num_keys} keys"
        )


def _check_lengths_values(lengths: Tensor, num_values: int, api: str) -> None:
    if lengths.numel() == 0:
        total = 0
    else:
        low = int(lengths.min())
        if low < 0:
            position = int(torch.nonzero(lengths < 0)[0])
            raise ValueError(f"{api}: lengths must be >= 0, got lengths[{position}] = {low}")
        high = int(lengths.max())
        if high > num_values:  # (checked first: a sum of huge counts could wrap int64)
            position = int(torch.argmax(lengths))
            raise ValueError(
                f"{api}: lengths[{position}] = {high} exceeds the {num_values} ids of values; "
                f"lengths[f * B + b] must count the ids of feature f in example b"
            )
        # sums over chunks of at most 2**62 // high counts cannot wrap int64
        chunk = max(1, 2**62 // max(high, 1))
        total = sum(int(part.sum(dtype=torch.int64)) for part in lengths.split(chunk))
    if total != num_values:
        raise ValueError(
            f"{api}: lengths sum to {total} but values holds {num_values} ids; "
            f"lengths[f * B + b] must count the ids of feature f in example b"
        )


def _check_offsets_values(offsets: Tensor, num_values: int, api: str) -> None:
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(f"{api}: offsets must start at 0, got offsets[0] = {first}")
    falls = offsets[1:] < offsets[:-1]  # (compared, not subtracted: a difference can wrap)
    if falls.numel() and bool(falls.any()):
        position = int(torch.nonzero(falls)[0])
        raise ValueError(
            f"{api}: offsets must be non-decreasing, got offsets[{position}] = "
            f"{int(offsets[position])} > offsets[{position + 1}] = {int(offsets[position + 1])}"
        )
    if last != num_values:
        raise ValueError(
            f"{api}: offsets must end at len(values) = {num_values}, got offsets[-1] = {last}"
        )


def _check_weights(weights: Any, values: Tensor, api: str) -> None:
    if weights is None:
        return
    if not isinstance(weights, Tensor) or not weights.dtype.is_floating_point:
        got = weights.dtype if isinstance(weights, Tensor) else type(weights).__name__
        raise TypeError(f"{api}: weights must be a floating tensor, got {got}")
    if weights.shape != values.shape:
        raise ValueError(
            f"{api}: weights must have the shape of values {tuple(values.shape)}, one weight "
            f"per id, got {tuple(weights.shape)}"
        )
    if weights.device != values.device:
        raise ValueError(f"{api}: weights is on {weights.device} but values on {values.device}")


def _common_batch(batch_per_key: dict[str, int], api: str) -> int:
    sizes = set(batch_per_key.values())
    if len(sizes) > 1:
        raise ValueError(
            f"{api}: every feature must have the same number of examples, got {batch_per_key}"
        )
    return sizes.pop() if sizes else 0


def _flatten(
    nested: Mapping[str, Sequence[Sequence[Any] | Tensor]], dtype: torch.dtype, api: str, name: str
) -> tuple[Tensor, Tensor]:
    flat: list[Any] = []
    lengths: list[int] = []
    for key, examples in nested.items():
        if isinstance(examples, (str, Tensor)) or not isinstance(examples, Sequence):
            raise TypeError(
                f"{api}: {name}[{key!r}] must be a list with one list of values per example, "
                f"got {type(examples).__name__}"
            )
    _common_batch({key: len(examples) for key, examples in nested.items()}, api)
    for examples in nested.values():
        for example in examples:
            items = example.tolist() if isinstance(example, Tensor) else example
            if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
                raise TypeError(
                    f"{api}: {name} must hold one list of values per example, "
                    f"got an entry {example!r}"
                )
            flat.extend(items)
            lengths.append(len(items))
    values = torch.tensor(flat) if flat else torch.empty(0, dtype=dtype)
    if dtype == torch.int64 and (values.dtype.is_floating_point or values.dtype == torch.bool):
        raise TypeError(f"{api}: ids must be integers, got values of dtype {values.dtype}")
    return values.to(dtype), torch.tensor(lengths, dtype=torch.int64)


def _cat(tensors: list[Tensor], like: Tensor) -> Tensor:
    if not tensors:
        return like.new_empty(0)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
