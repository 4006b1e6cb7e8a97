r"""Lazy Adam and AdamW: moments, bias correction and step counts per touched row.

For each row ``r`` touched by a batch, with ``g`` its reduced gradient:

.. math::

    t_r &\leftarrow t_r + 1 \quad\text{(per-row step; or } t = \text{the table's step)} \\
    g &\leftarrow g + \lambda w_r \quad\text{(Adam with L2 weight decay)} \\
    m_r &\leftarrow m_r + (1 - \beta_1)(g - m_r) \\
    v_r &\leftarrow v_r + (1 - \beta_2)(g^2 - v_r) \\
    w_r &\leftarrow (1 - \eta\lambda)\, w_r
        - \eta \frac{\sqrt{1 - \beta_2^{t_r}}}{1 - \beta_1^{t_r}} \cdot \frac{m_r}{\sqrt{v_r} + \epsilon}
        \quad\text{(the factor only for AdamW)}

How it differs from dense ``torch.optim.Adam``: dense Adam decays the moments of *every*
row at every step (an untouched row has ``g = 0`` but still moves, following its
momentum), and corrects the bias with the global step.  Lazy Adam touches only the rows of
the batch: an untouched row keeps its weight and moments, and its step count; when it
comes back its moments resume where they were, as if the missing steps had not happened.
This is what makes the step cost proportional to the batch, not the table.

``bias_correction="row"`` (default) uses each row's own step count ``t_r``: a row's first
update is always a full-size Adam step, however late it first appears (rare ids are not
under-trained).  ``bias_correction="table"`` uses the table's step count (how many fused
updates the table has had), which is exactly ``torch.optim.SparseAdam``: its ``step`` is per
parameter.  Both forms use SparseAdam's arrangement of ``eps`` (added to ``sqrt(v)`` before
the bias correction of the step size), so with ``bias_correction="table"`` and no weight
decay the fused optimizer reproduces ``SparseAdam`` step for step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embtable.ops._fused_reference import OPT_ADAM
from embtable.optim._rule import (
    FusedRule,
    check_non_negative,
    is_real,
    new_state,
    weight_decay_mode,
)

__all__ = ["AdamRule", "AdamWRule"]

_BIAS_CORRECTION = {"row": 0, "table": 1}


class AdamRule(FusedRule):
    """Rule ``"adam"``: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, L2 weight decay."""

    name = "adam"
    code = OPT_ADAM
    defaults = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "bias_correction": "row",
        "state_dtype": "float32",
    }
    moment_keys = ("exp_avg", "exp_avg_sq")
    signed_moments = ("exp_avg",)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        api = f"embtable.optim.{self.name}"
        check_non_negative(api, group, "eps")
        betas = group["betas"]
        if not (
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(is_real(b) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"{api}: betas must be two numbers in [0, 1), got {betas!r}")
        if group.get("state_dtype") == "float16":
            raise ValueError(
                f"{api}: state_dtype='float16' underflows the second moment and diverges "
                "(measured in docs/training.md); use state_dtype='bfloat16'"
            )
        if not isinstance(group["bias_correction"], str) or group["bias_correction"] not in _BIAS_CORRECTION:
            raise ValueError(
                f"{api}: bias_correction must be 'row' or 'table', got {group['bias_correction']!r}"
            )

    def init_state(self, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {
            **self.new_moment("exp_avg", weight.shape, 0.0, group, weight.device),
            **self.new_moment("exp_avg_sq", weight.shape, 0.0, group, weight.device),
            "row_step": new_state((weight.shape[0],), 0, torch.int64, weight.device),
        }

    def state_tensors(self, state: dict[str, Any], group: dict[str, Any]) -> list[Tensor]:
        if "exp_avg_scale" in state:
            return [
                state["exp_avg"],
                state["exp_avg_scale"],
                state["exp_avg_sq"],
                state["exp_avg_sq_scale"],
                state["row_step"],
            ]
        return [state["exp_avg"], state["exp_avg_sq"], state["row_step"]]

    def hparams(self, group: dict[str, Any], table_step: int) -> list[float]:
        beta1, beta2 = group["betas"]
        return [
            group["lr"],
            group["weight_decay"],
            weight_decay_mode(group),
            beta1,
            beta2,
            group["eps"],
            _BIAS_CORRECTION[group["bias_correction"]],
            table_step,
        ]


class AdamWRule(AdamRule):
    """Rule ``"adamw"``: lazy Adam with decoupled weight decay (default ``weight_decay=1e-2``)."""

    name = "adamw"
    defaults = {**AdamRule.defaults, "weight_decay": 1e-2, "decoupled_weight_decay": True}
