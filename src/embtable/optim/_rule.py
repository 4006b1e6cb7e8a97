"""What every fused optimizer rule provides: defaults, validation, state, hyperparameters.

A rule is a small stateless object describing one update formula; the kernel that applies
it is ``embtable.ops.fused_update_rows`` (compiled, or its pure-PyTorch twin).

With ``state_dtype="int8_rowwise"`` each moment ``k`` is stored as ``state[k]``, 8-bit codes
(int8 for the signed moments named in ``signed_moments``, uint8 for the non-negative ones),
and ``state[k + "_scale"]``, a float32 scale per row; the format is
:func:`embtable.ops._fused_reference.encode_rows`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from embtable.ops._fused_reference import decode_rows, encode_rows
from embtable.ops._memory import advise_hugepages

__all__ = [
    "INT8_ROWWISE",
    "SCALE_SUFFIX",
    "STATE_DTYPES",
    "FusedRule",
    "check_non_negative",
    "is_real",
    "new_state",
    "weight_decay_mode",
]

def new_state(shape: tuple[int, ...], value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A state tensor filled with ``value`` (large CPU ones on huge pages where possible)."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    advise_hugepages(tensor)
    return tensor.fill_(value)

#: ``state_dtype`` of 8-bit row-wise quantized moments (codes plus a float32 scale per row).
INT8_ROWWISE = "int8_rowwise"
#: Suffix of the state key holding a quantized moment's row scales.
SCALE_SUFFIX = "_scale"

#: Names accepted for ``state_dtype`` (optimizer-state compression) and the dtype a moment
#: is stored in (``int8_rowwise``: int8 codes of a signed moment, uint8 of a non-negative one).
STATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    INT8_ROWWISE: torch.int8,
}


def is_real(value: Any) -> bool:
    """True for an int or float (not a bool, a string or a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_non_negative(api: str, group: dict[str, Any], *names: str) -> None:
    """``ValueError`` unless each named hyperparameter of ``group`` is a finite number >= 0."""
    for name in names:
        value = group[name]
        if not is_real(value) or not 0 <= value < math.inf:
            raise ValueError(f"{api}: {name} must be a finite number >= 0, got {value!r}")


def weight_decay_mode(group: dict[str, Any]) -> int:
    """0 (none), 1 (L2 added to the gradient) or 2 (decoupled) for a param group."""
    if group["weight_decay"] == 0:
        return 0
    return 2 if group["decoupled_weight_decay"] else 1


class FusedRule:
    """Base class of the fused optimizer rules (:mod:`embtable.optim.sgd` and siblings).

    Subclasses set ``name``, ``code`` (the kernel's optimizer code), ``defaults`` and
    ``moment_keys`` (state tensors stored in ``state_dtype``; those that can be negative
    also in ``signed_moments``) and implement :meth:`init_state`, :meth:`state_tensors` and
    :meth:`hparams`.
    """

    name: ClassVar[str]
    code: ClassVar[int]
    defaults: ClassVar[dict[str, Any]]
    moment_keys: ClassVar[tuple[str, ...]] = ()
    signed_moments: ClassVar[tuple[str, ...]] = ()

    def validate(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an invalid param group (before any state exists)."""
        api = f"embtable.optim.{self.name}"
        check_non_negative(api, group, "lr", "weight_decay")
        state_dtype = group.get("state_dtype", "float32")
        if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
            raise ValueError(
                f"{api}: state_dtype must be one of {sorted(STATE_DTYPES)}, got {group['state_dtype']!r}"
            )

    def init_state(self, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """Fresh state tensors for ``weight`` (all zeros unless the rule says otherwise)."""
        raise NotImplementedError

    def moment_shape(self, key: str, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of moment ``key`` for a ``weight_shape`` table (default: the table's)."""
        return tuple(weight_shape)

    def state_tensors(self, state: dict[str, Any], group: dict[str, Any]) -> list[Tensor]:
        """The state tensors in the order the kernel takes them."""
        raise NotImplementedError

    def hparams(self, group: dict[str, Any], table_step: int) -> list[float]:
        """The kernel's ``hparams`` list for this group at this table step (1-based)."""
        raise NotImplementedError

    def moment_dtype(self, group: dict[str, Any], key: str) -> torch.dtype:
        """The dtype moment ``key`` is stored in (for ``int8_rowwise``: its codes' dtype)."""
        dtype = STATE_DTYPES[group.get("state_dtype", "float32")]
        return torch.uint8 if dtype == torch.int8 and key not in self.signed_moments else dtype

    def new_moment(
        self, key: str, shape: tuple[int, ...], value: float, group: dict[str, Any], device: torch.device
    ) -> dict[str, Tensor]:
        """Moment ``key`` filled with ``value``: ``{key: tensor}``, or codes and row scales."""
        dtype = self.moment_dtype(group, key)
        if dtype not in (torch.int8, torch.uint8):
            return {key: new_state(shape, value, dtype, device)}
        codes, scale = encode_rows(torch.tensor([[float(value)]]), dtype == torch.int8)
        return {
            key: new_state(shape, int(codes), dtype, device),
            key + SCALE_SUFFIX: new_state(shape[:1], float(scale), torch.float32, device),
        }

    def convert_moments(self, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Store ``state``'s moments (e.g. loaded from a state_dict) in ``group``'s state_dtype.

        Quantized moments come back from torch's ``load_state_dict`` with their codes cast to
        the weight's dtype; they are cast back to int8/uint8 (kept for ``int8_rowwise``,
        decoded for a float ``state_dtype``), and float moments are encoded for
        ``int8_rowwise``.
        """
        for key in self.moment_keys:
            if key not in state:
                continue
            dtype, signed = self.moment_dtype(group, key), key in self.signed_moments
            value, scale = state[key], state.pop(key + SCALE_SUFFIX, None)
            if scale is not None:
                codes = value.to(torch.int8 if signed else torch.uint8).contiguous()
                if dtype == codes.dtype:
                    state[key], state[key + SCALE_SUFFIX] = codes, scale.float().contiguous()
                    continue
                value = decode_rows(codes, scale, signed)
            if dtype in (torch.int8, torch.uint8):
                state[key], state[key + SCALE_SUFFIX] = encode_rows(value, signed)
            else:
                state[key] = value.to(dtype).contiguous()
