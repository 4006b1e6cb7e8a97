"""Validation of a :class:`~embtable.optim.FusedOptimizer` state dict before anything is loaded.

:func:`checked_load` checks every param group and every state tensor of a saved state dict
against the optimizer it is loaded into and returns the new groups and state, copied and
converted; the optimizer is changed only after it returns (all or nothing).  What it checks:

* the same number of param groups and of tables in each, no unknown option, every option
  valid for the rule (``lr`` finite and >= 0, ``betas`` two numbers in [0, 1), ...);
* each table's state holds the rule's keys and no others, moments of the table's shape
  (row-wise Adagrad: one value per row), floating and finite (non-negative where the moment
  cannot be negative), or 8-bit codes of the right signedness with a finite non-negative
  float scale per row; ``row_step`` one non-negative integer per row; ``table_step`` an
  integer >= 0.

The configured ``state_dtype`` of each table is kept (docs/training.md): saved moments of
another ``state_dtype`` are converted to it.  Step counts keep their integer dtype (torch's own
``load_state_dict`` casts every state tensor to the weight's dtype, which rounds a step count
above ``2**24`` through float32).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from embtable.optim._rule import SCALE_SUFFIX, FusedRule

__all__ = ["checked_load"]

_GROUP_EXTRAS = {"params", "name", "param_names"}


def checked_load(
    rule: FusedRule, param_groups: list[dict[str, Any]], state_dict: Any, api: str
) -> tuple[list[dict[str, Any]], defaultdict[Tensor, dict[str, Any]]]:
    """The param groups and state that loading ``state_dict`` gives (nothing is modified).

    Raises:
        TypeError: ``state_dict`` is not a mapping with ``"state"`` and ``"param_groups"``.
        ValueError: anything in it that does not fit the optimizer (the message names the
            table, the key and the value).
    """
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise TypeError(f"{api}: expected a dict with 'state' and 'param_groups', got {got}")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, Sequence) or isinstance(saved_groups, (str, bytes)):
        raise ValueError(f"{api}: param_groups must be a list, got {type(saved_groups).__name__}")
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"{api}: the state dict has {len(saved_groups)} param groups, the optimizer "
            f"{len(param_groups)} (one per table)"
        )
    if not isinstance(saved_state, Mapping):
        raise ValueError(f"{api}: state must be a dict, got {type(saved_state).__name__}")
    groups, weight_of, group_of = [], {}, {}
    for current, saved in zip(param_groups, saved_groups):
        group = _checked_group(rule, current, saved, api)
        for index, weight in zip(saved["params"], current["params"]):
            if not isinstance(index, int) or isinstance(index, bool) or index in weight_of:
                raise ValueError(f"{api}: table {current['name']!r}: bad or repeated param id {index!r}")
            weight_of[index], group_of[index] = weight, group
        groups.append(group)
    state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
    for index, value in saved_state.items():
        if index not in weight_of:
            raise ValueError(f"{api}: state for param id {index!r}, which no param group lists")
        weight, group = weight_of[index], group_of[index]
        state[weight] = _checked_state(rule, value, weight, group, f"{api}: table {group['name']!r}")
    return groups, state


def _checked_group(rule: FusedRule, current: dict[str, Any], saved: Any, api: str) -> dict[str, Any]:
    name = current["name"]
    if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), Sequence):
        raise ValueError(f"{api}: table {name!r}: a saved param group must be a dict with 'params'")
    if len(saved["params"]) != len(current["params"]):
        raise ValueError(
            f"{api}: table {name!r}: the saved group has {len(saved['params'])} params, "
            f"the optimizer's {len(current['params'])}"
        )
    unknown = set(saved) - set(rule.defaults) - _GROUP_EXTRAS
    if unknown:
        raise ValueError(f"{api}: table {name!r}: unknown option(s) {sorted(unknown, key=str)} for {rule.name!r}")
    options = {k: copy.deepcopy(v) for k, v in saved.items() if k not in ("params", "name")}
    group = {**current, **options, "params": current["params"], "name": name}
    try:
        rule.validate(group)  # (the saved state_dtype too: a bad one marks a bad checkpoint)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{api}: table {name!r}: {error}") from None
    group["state_dtype"] = current.get("state_dtype", "float32")  # the configured one is kept
    return group


def _checked_state(rule: FusedRule, value: Any, weight: Tensor, group: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: the state must be a dict, got {type(value).__name__}")
    if not value:
        return {}
    moments = set(rule.moment_keys)
    allowed = moments | {k + SCALE_SUFFIX for k in moments} | {"row_step", "table_step"}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown state key(s) {sorted(unknown, key=str)}; expected some of {sorted(allowed)}")
    template = rule.init_state(torch.empty(weight.shape, device="meta"), {**group, "state_dtype": "float32"})
    missing = (set(template) | {"table_step"}) - set(value)
    if missing:
        raise ValueError(f"{where}: the state lacks {sorted(missing)}")
    rows = weight.shape[0]
    out: dict[str, Any] = {"table_step": _checked_table_step(value["table_step"], where)}
    for key in value:
        if key in moments:
            out.update(_checked_moment(rule, key, value, tuple(weight.shape), weight.device, where))
        elif key == "row_step":
            out[key] = _checked_row_step(value[key], rows, weight.device, where)
        elif key.endswith(SCALE_SUFFIX) and key[: -len(SCALE_SUFFIX)] not in value:
            raise ValueError(f"{where}: {key!r} without its moment {key[: -len(SCALE_SUFFIX)]!r}")
    rule.convert_moments(out, group)
    return out


def _checked_table_step(step: Any, where: str) -> int:
    if isinstance(step, Tensor) and step.numel() == 1 and not step.is_complex():
        step = step.item()
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{where}: table_step must be an integer >= 0, got {step!r}")
    return step


def _tensor(value: Any, key: str, where: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{where}: state {key!r} must be a tensor, got {type(value).__name__}")
    return value


def _checked_moment(
    rule: FusedRule, key: str, value: Mapping[str, Any], weight_shape: tuple[int, ...], device: torch.device, where: str
) -> dict[str, Tensor]:
    shape = rule.moment_shape(key, weight_shape)
    signed = key in rule.signed_moments
    tensor = _tensor(value[key], key, where)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{where}: state {key!r} has shape {tuple(tensor.shape)}, expected {shape}")
    scale_key = key + SCALE_SUFFIX
    if scale_key in value:
        scale = _tensor(value[scale_key], scale_key, where)
        codes = torch.int8 if signed else torch.uint8
        if tensor.dtype != codes:
            raise ValueError(f"{where}: quantized state {key!r} must hold {codes} codes, got {tensor.dtype}")
        if tuple(scale.shape) != shape[:1] or not scale.is_floating_point():
            raise ValueError(
                f"{where}: {scale_key!r} must be floating of shape {shape[:1]}, got {scale.dtype} "
                f"{tuple(scale.shape)}"
            )
        _check_values(scale, scale_key, True, where)
        if signed and tensor.numel() and int(tensor.min()) < -127:
            raise ValueError(f"{where}: state {key!r} holds the code -128; int8 codes lie in [-127, 127]")
        return {key: tensor.to(device).clone(), scale_key: scale.to(device, torch.float32).clone()}
    if not tensor.is_floating_point():
        raise ValueError(f"{where}: state {key!r} must be floating (or 8-bit codes with {scale_key!r}), got {tensor.dtype}")
    _check_values(tensor, key, not signed, where)
    return {key: tensor.to(device).clone()}


def _check_values(tensor: Tensor, key: str, non_negative: bool, where: str) -> None:
    if tensor.numel() == 0:
        return
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{where}: state {key!r} holds non-finite values (inf or nan)")
    if non_negative and float(tensor.min()) < 0:
        raise ValueError(f"{where}: state {key!r} must be >= 0, got {float(tensor.min())}")


def _checked_row_step(value: Any, rows: int, device: torch.device, where: str) -> Tensor:
    tensor = _tensor(value, "row_step", where)
    if tuple(tensor.shape) != (rows,):
        raise ValueError(f"{where}: state 'row_step' has shape {tuple(tensor.shape)}, expected ({rows},)")
    if tensor.is_floating_point():  # a checkpoint written through torch's float cast
        if tensor.numel() and not bool((tensor == tensor.round()).all() & (tensor.abs() < math.ldexp(1, 62)).all()):
            raise ValueError(f"{where}: state 'row_step' must hold whole numbers")
    elif tensor.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"{where}: state 'row_step' must be an integer tensor, got {tensor.dtype}")
    steps = tensor.to(device, torch.int64).clone()
    if steps.numel() and int(steps.min()) < 0:
        raise ValueError(f"{where}: state 'row_step' must be >= 0, got {int(steps.min())}")
    return steps.contiguous()
