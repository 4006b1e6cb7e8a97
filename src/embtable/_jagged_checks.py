"""Validation of :class:`~embtable.KeyedJagged`'s parts: keys, ids, counts, strides, weights.

The checks every constructor runs before it stores anything (the O(1) ones always, the
O(F * B) ones on ``lengths`` / ``offsets`` behind ``validate``); each raises a
``TypeError`` / ``ValueError`` naming the API, the argument, the value and what was expected.
Split from :mod:`embtable.jagged`, which is the public home of the type.

Example:
    >>> import torch
    >>> from embtable._jagged_checks import check_lengths_values
    >>> check_lengths_values(torch.tensor([2, 0, 1]), 3, "demo")
    >>> check_lengths_values(torch.tensor([2, -1, 1]), 2, "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: lengths must be >= 0, got lengths[1] = -1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from embtable.ops import batched, check_id_dtype

#: The dtypes of ids, lengths, offsets and inverse indices.
ID_DTYPES = (torch.int32, torch.int64)


class Parts(NamedTuple):
    """The checked parts of a :class:`~embtable.KeyedJagged` (see :func:`checked_parts`)."""

    keys: list[str]
    values: Tensor
    lengths: Tensor
    offsets: Tensor | None
    stride: int
    stride_per_key: tuple[int, ...] | None
    inverse: tuple[list[str], Tensor] | None


def checked_parts(
    keys: Sequence[str],
    values: Tensor,
    lengths: Tensor | None,
    offsets: Tensor | None,
    weights: Tensor | None,
    stride: int | None,
    stride_per_key: Sequence[int] | None,
    inverse_indices: tuple[Sequence[str], Tensor] | None,
    validate: bool,
) -> Parts:
    """Every check of the :class:`~embtable.KeyedJagged` constructor (its arguments, in its
    order), before anything is stored: the parts as the batch keeps them (``lengths`` derived
    from ``offsets`` when given those; ``stride`` derived when omitted)."""
    api = "KeyedJagged"
    keys = checked_keys(keys, api)
    values = empty_as_ids(values)
    check_ids_tensor(values, api)
    if (lengths is None) == (offsets is None):
        raise ValueError(f"{api}: give exactly one of lengths and offsets")
    if offsets is not None and isinstance(offsets, Tensor) and offsets.numel() == 0:
        offsets, lengths = None, values.new_zeros(0, dtype=torch.int64)  # TorchRec's empty batch
    per_key = checked_stride_per_key(stride_per_key, len(keys), api)
    if lengths is not None:
        lengths = empty_as_ids(lengths)
        check_counts_tensor(lengths, "lengths", values, api)
        if per_key is None:
            check_multiple(lengths.numel(), len(keys), "lengths", api)
        if validate:
            check_lengths_values(lengths, values.numel(), api)
    else:
        check_counts_tensor(offsets, "offsets", values, api)
        if per_key is None:
            check_multiple(offsets.numel() - 1, len(keys), "offsets", api, extra=1)
        if validate:
            check_offsets_values(offsets, values.numel(), api)
        lengths = torch.diff(offsets)
    inverse = checked_inverse(inverse_indices, values, api)
    if inverse is not None and stride is None:
        stride = inverse[1].shape[1]
    stride = checked_stride(stride, per_key, lengths.numel(), len(keys), api)
    if inverse is not None:
        check_inverse_rows(inverse, keys, per_key or (stride,) * len(keys), stride, validate, api)
    check_weights(weights, values, api)
    return Parts(keys, values, lengths, offsets, stride, per_key, inverse)


def checked_keys(keys: Sequence[str], api: str) -> list[str]:
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


def empty_as_ids(tensor: Any) -> Any:
    """An empty 1-D tensor of a non-integer dtype (``torch.tensor([])``) as int64, as TorchRec allows."""
    if (
        isinstance(tensor, Tensor)
        and tensor.numel() == 0
        and tensor.dim() == 1
        and tensor.dtype not in ID_DTYPES
    ):
        return tensor.new_zeros(0, dtype=torch.int64)
    return tensor


def checked_stride_per_key(stride_per_key: Any, num_keys: int, api: str) -> tuple[int, ...] | None:
    if stride_per_key is None:
        return None
    if isinstance(stride_per_key, Tensor):
        stride_per_key = stride_per_key.tolist()
    if isinstance(stride_per_key, (str, bytes)) or not isinstance(stride_per_key, Sequence):
        raise TypeError(
            f"{api}: stride_per_key must be a list of ints, got {type(stride_per_key).__name__}"
        )
    per_key = tuple(stride_per_key)
    for count in per_key:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{api}: stride_per_key must hold ints >= 0, got {count!r}")
    if len(per_key) != num_keys:
        raise ValueError(
            f"{api}: stride_per_key has {len(per_key)} entries, expected one per key ({num_keys})"
        )
    return per_key


def checked_inverse(inverse: Any, values: Tensor, api: str) -> tuple[list[str], Tensor] | None:
    if inverse is None:
        return None
    if not isinstance(inverse, (tuple, list)) or len(inverse) != 2:
        raise TypeError(
            f"{api}: inverse_indices must be a pair (keys, [K, B] int tensor), got "
            f"{type(inverse).__name__}"
        )
    keys = checked_keys(inverse[0], f"{api} inverse_indices")
    rows = inverse[1]
    if not isinstance(rows, Tensor) or rows.dtype not in ID_DTYPES:
        got = rows.dtype if isinstance(rows, Tensor) else type(rows).__name__
        raise TypeError(f"{api}: inverse_indices[1] must be an int64 or int32 tensor, got {got}")
    if rows.dim() != 2 or rows.shape[0] != len(keys):
        raise ValueError(
            f"{api}: inverse_indices[1] must have shape [{len(keys)}, B] (one row per key of "
            f"inverse_indices[0]), got {tuple(rows.shape)}"
        )
    if rows.device != values.device:
        raise ValueError(f"{api}: inverse_indices is on {rows.device} but values on {values.device}")
    return keys, rows


def check_inverse_rows(
    inverse: tuple[list[str], Tensor],
    keys: list[str],
    per_key: Sequence[int],
    stride: int,
    validate: bool,
    api: str,
) -> None:
    names, rows = inverse
    if rows.shape[1] != stride:
        raise ValueError(
            f"{api}: inverse_indices[1] has {rows.shape[1]} columns, expected the batch size "
            f"stride={stride}"
        )
    if not validate or rows.numel() == 0:
        return
    examples = dict(zip(keys, per_key))
    for name, row in zip(names, rows):
        if name not in examples:
            continue
        low, high = int(row.min()), int(row.max())
        if low < 0 or high >= examples[name]:
            raise ValueError(
                f"{api}: inverse_indices for {name!r} holds {low if low < 0 else high}, but the "
                f"feature has {examples[name]} examples (valid: 0..{examples[name] - 1})"
            )


def checked_stride(
    stride: Any, per_key: tuple[int, ...] | None, num_lengths: int, num_keys: int, api: str
) -> int:
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 0):
        raise ValueError(f"{api}: stride must be an int >= 0, got {stride!r}")
    if per_key is not None:
        if sum(per_key) != num_lengths:
            raise ValueError(
                f"{api}: lengths has {num_lengths} entries, expected sum(stride_per_key) = "
                f"{sum(per_key)} (one per example of each key)"
            )
        derived = max(per_key, default=0)
        if stride is not None and stride < derived:
            raise ValueError(
                f"{api}: stride={stride} is smaller than the largest of stride_per_key {list(per_key)}"
            )
        return derived if stride is None else stride
    derived = num_lengths // num_keys if num_keys else 0
    if stride is None or not num_keys:
        return derived if stride is None else stride
    if stride != derived:
        raise ValueError(
            f"{api}: stride={stride} but lengths has {num_lengths} entries for {num_keys} keys, "
            f"i.e. a batch of {derived}"
        )
    return stride


def check_ids_tensor(values: Any, api: str, name: str = "values", dims: int = 1) -> None:
    check_id_dtype(values, api, name)
    if values.dim() != dims:
        raise ValueError(f"{api}: {name} must be {dims}-D, got shape {tuple(values.shape)}")


def check_counts_tensor(counts: Any, name: str, values: Tensor, api: str) -> None:
    if not isinstance(counts, Tensor) or counts.dtype not in ID_DTYPES:
        got = counts.dtype if isinstance(counts, Tensor) else type(counts).__name__
        raise TypeError(f"{api}: {name} must be an int64 or int32 tensor, got {got}")
    if counts.dim() != 1:
        raise ValueError(f"{api}: {name} must be 1-D, got shape {tuple(counts.shape)}")
    if counts.device != values.device:
        raise ValueError(
            f"{api}: {name} is on {counts.device} but values on {values.device}; move both "
            f"to one device"
        )


def check_multiple(count: int, num_keys: int, name: str, api: str, extra: int = 0) -> None:
    if count < 0 or (num_keys == 0 and count != 0) or (num_keys and count % num_keys):
        plus = f" + {extra}" if extra else ""
        raise ValueError(
            f"{api}: {name} has {count + extra} entries, expected num_keys * batch_size{plus} "
            f"with {num_keys} keys"
        )


def check_lengths_values(lengths: Tensor, num_values: int, api: str) -> None:
    check_not_vmapped(lengths)
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


def check_offsets_values(offsets: Tensor, num_values: int, api: str) -> None:
    check_not_vmapped(offsets)
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


def check_weights(weights: Any, values: Tensor, api: str) -> None:
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


def common_batch(batch_per_key: dict[str, int], api: str) -> int:
    sizes = set(batch_per_key.values())
    if len(sizes) > 1:
        raise ValueError(
            f"{api}: every feature must have the same number of examples, got {batch_per_key}"
        )
    return sizes.pop() if sizes else 0


def check_not_vmapped(lengths: Tensor) -> None:
    """Refuse batched ``lengths`` (inside ``torch.func.vmap``) whose ids per key are unknown."""
    if batched(lengths):
        raise ValueError(
            "KeyedJagged: its lengths are batched by torch.func.vmap, so its ids per key are "
            "not Python numbers; vmap over an embtable.func.KeyedJaggedStack (every example "
            "with the same ids per key) instead of building the batch inside vmap"
        )
