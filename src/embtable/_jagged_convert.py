"""Conversions of a :class:`~embtable.KeyedJagged` from nested lists, padded tensors and
TorchRec's ``KeyedJaggedTensor`` (and back to it).

The bodies of the class's ``from_dict``, ``from_padded``, ``from_torchrec`` and
``to_torchrec`` (the class keeps their signatures and docstrings and calls in here); torchrec
is imported only when one of the TorchRec conversions runs.  Split from
:mod:`embtable.jagged`.

Example:
    >>> import torch
    >>> from embtable._jagged_convert import flatten
    >>> flatten({"a": [[1, 2], []], "b": [[3], [4]]}, torch.int64, "demo", "ids")
    (tensor([1, 2, 3, 4]), tensor([2, 0, 1, 1]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from embtable._jagged_checks import check_ids_tensor, common_batch
from embtable._jagged_reshape import cat

if TYPE_CHECKING:
    from embtable.jagged import KeyedJagged


def from_dict(
    cls: type[KeyedJagged],
    ids: Mapping[str, Sequence[Sequence[int] | Tensor]],
    weights: Mapping[str, Sequence[Sequence[float] | Tensor]] | None,
    device: torch.device | str | None,
) -> KeyedJagged:
    """The body of :meth:`KeyedJagged.from_dict <embtable.KeyedJagged.from_dict>`."""
    api = "KeyedJagged.from_dict"
    if not isinstance(ids, Mapping):
        raise TypeError(f"{api}: ids must be a mapping {{key: list of lists}}, got {type(ids).__name__}")
    keys = list(ids)
    values, lengths = flatten(ids, torch.int64, api, "ids")
    flat_weights = None
    if weights is not None:
        if not isinstance(weights, Mapping) or list(weights) != keys:
            got = list(weights) if isinstance(weights, Mapping) else type(weights).__name__
            raise ValueError(f"{api}: weights must have the keys {keys} in that order, got {got}")
        flat_weights, weight_lengths = flatten(weights, torch.float32, api, "weights")
        if not torch.equal(weight_lengths, lengths):
            raise ValueError(
                f"{api}: weights must give one float per id, but their per-example "
                f"counts differ from those of the ids"
            )
        flat_weights = flat_weights.to(device)
    return cls(keys, values.to(device), lengths.to(device), weights=flat_weights)


def from_padded(
    cls: type[KeyedJagged],
    padded: Mapping[str, Tensor],
    pad_value: int,
    device: torch.device | str | None,
) -> KeyedJagged:
    """The body of :meth:`KeyedJagged.from_padded <embtable.KeyedJagged.from_padded>`."""
    api = "KeyedJagged.from_padded"
    if not isinstance(padded, Mapping):
        raise TypeError(f"{api}: padded must be a mapping {{key: [B, L] tensor}}, got {type(padded).__name__}")
    for key, tensor in padded.items():
        check_ids_tensor(tensor, api, name=f"padded[{key!r}]", dims=2)
    common_batch({key: tensor.shape[0] for key, tensor in padded.items()}, api)
    values, lengths = [], []
    for tensor in padded.values():
        keep = tensor != pad_value
        values.append(tensor[keep].to(torch.int64))
        lengths.append(keep.sum(1))
    empty = torch.empty(0, dtype=torch.int64)
    return cls(
        list(padded),
        cat(values, empty).to(device),
        cat(lengths, empty).to(device),
        validate=False,
    )


def from_torchrec(cls: type[KeyedJagged], kjt: Any) -> KeyedJagged:
    """The body of :meth:`KeyedJagged.from_torchrec <embtable.KeyedJagged.from_torchrec>`."""
    api = "KeyedJagged.from_torchrec"
    keyed_jagged_tensor = torchrec_class(api)
    if not isinstance(kjt, keyed_jagged_tensor):
        raise TypeError(f"{api}: expected a torchrec KeyedJaggedTensor, got {type(kjt).__name__}")
    keys = kjt.keys()
    if len(set(keys)) != len(keys):  # TorchRec's permute / concat repeat keys
        return cls.concat([torchrec_key(cls, kjt, i) for i in range(len(keys))])
    inverse = kjt.inverse_indices_or_none()
    if kjt.variable_stride_per_key():
        return cls(keys, kjt.values(), kjt.lengths(), weights=kjt.weights_or_none(),
                   stride_per_key=kjt.stride_per_key(), inverse_indices=inverse)
    return cls(keys, kjt.values(), kjt.lengths(), weights=kjt.weights_or_none(),
               stride=kjt.stride(), inverse_indices=inverse)


def to_torchrec(batch: KeyedJagged) -> Any:
    """The body of :meth:`KeyedJagged.to_torchrec <embtable.KeyedJagged.to_torchrec>`."""
    keyed_jagged_tensor = torchrec_class("KeyedJagged.to_torchrec")
    per_rank = None
    if batch._stride_per_key is not None:
        per_rank = [[count] for count in batch._stride_per_key]
    return keyed_jagged_tensor(
        keys=batch.keys(),
        values=batch._values,
        lengths=batch._lengths,
        weights=batch._weights,
        stride=batch.stride(),
        stride_per_key_per_rank=per_rank,
        inverse_indices=batch.inverse_indices_or_none(),
    )


def torchrec_class(api: str) -> type:
    """TorchRec's ``KeyedJaggedTensor`` class; ``ImportError`` naming ``api`` without torchrec."""
    try:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    except ImportError as error:
        raise ImportError(
            f"{api}: torchrec is not importable ({error}); install it with `pip install torchrec`"
        ) from None
    return KeyedJaggedTensor


def torchrec_key(cls: type, kjt: Any, index: int) -> Any:
    """Key ``index`` of a ``KeyedJaggedTensor`` as a one-key batch (keys may repeat there)."""
    starts, cells = kjt.offset_per_key(), kjt.lengths_offset_per_key()
    weights = kjt.weights_or_none()
    lo, hi = starts[index], starts[index + 1]
    per_key = [kjt.stride_per_key()[index]] if kjt.variable_stride_per_key() else None
    return cls(
        [kjt.keys()[index]],
        kjt.values()[lo:hi],
        kjt.lengths()[cells[index] : cells[index + 1]],
        weights=None if weights is None else weights[lo:hi],
        stride=None if per_key else kjt.stride(),
        stride_per_key=per_key,
    )


def flatten(
    nested: Mapping[str, Sequence[Sequence[Any] | Tensor]], dtype: torch.dtype, api: str, name: str
) -> tuple[Tensor, Tensor]:
    """``{key: [values of example 0, ...]}`` as ``(values, lengths)``, key-major."""
    flat: list[Any] = []
    lengths: list[int] = []
    for key, examples in nested.items():
        if isinstance(examples, (str, Tensor)) or not isinstance(examples, Sequence):
            raise TypeError(
                f"{api}: {name}[{key!r}] must be a list with one list of values per example, "
                f"got {type(examples).__name__}"
            )
    common_batch({key: len(examples) for key, examples in nested.items()}, api)
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
