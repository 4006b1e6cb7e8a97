r"""Row-wise Adagrad: one accumulator per row (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``).

The formula is the one of FBGEMM's CPU and CUDA table-batched-embedding kernels
(``fbgemm_gpu/codegen/genscript/optimizers.py``, ``rowwise_adagrad``).  For each row ``r``
touched by a batch, with ``g`` its reduced gradient (``D`` values) and ``\lambda`` the
weight decay:

.. math::

    \bar g^2 &= \frac{1}{D} \sum_d (g_d + [\text{L2}]\,\lambda w_{r,d})^2 \\
    G_r &\leftarrow G_r + \bar g^2 \\
    m &= \eta / (\sqrt{G_r} + \epsilon) \\
    c &= 1 - m\lambda \ \text{(L2)}, \quad 1 - \eta\lambda \ \text{(decoupled)}, \quad 1
        \ \text{(none)} \\
    w_r &\leftarrow c\, w_r - m\, g

The state is ``D`` times smaller than Adagrad's: a float per row.  With L2 decay this
equals ``w - m (g + \lambda w)``, i.e. the decay term enters the gradient both in the
accumulator and in the step, as in FBGEMM (``weight_decay_mode=1``); decoupled decay is
FBGEMM's ``weight_decay_mode=2``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from embtable.ops._fused_reference import OPT_ROWWISE_ADAGRAD
from embtable.optim._rule import (
    INT8_ROWWISE,
    FusedRule,
    check_non_negative,
    new_state,
    weight_decay_mode,
)

__all__ = ["RowWiseAdagradRule"]


class RowWiseAdagradRule(FusedRule):
    """Rule ``"rowwise_adagrad"``: ``lr=1e-2``, ``eps=1e-8`` (FBGEMM's default eps)."""

    name = "rowwise_adagrad"
    code = OPT_ROWWISE_ADAGRAD
    defaults = {
        "lr": 1e-2,
        "eps": 1e-8,
        "initial_accumulator_value": 0.0,
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "state_dtype": "float32",
    }
    moment_keys = ("sum",)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_non_negative("embtable.optim.rowwise_adagrad", group, "eps", "initial_accumulator_value")
        if group.get("state_dtype") == INT8_ROWWISE:
            raise ValueError(
                "embtable.optim.rowwise_adagrad: state_dtype='int8_rowwise' quantizes [V, D] moments "
                "row by row, but row-wise Adagrad's state is already one float per row; use "
                "state_dtype='float32' or 'bfloat16'"
            )

    def init_state(self, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        value = group["initial_accumulator_value"]
        return {"sum": new_state((weight.shape[0],), value, self.moment_dtype(group, "sum"), weight.device)}

    def moment_shape(self, key: str, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (weight_shape[0],)

    def state_tensors(self, state: dict[str, Any], group: dict[str, Any]) -> list[Tensor]:
        return [state["sum"]]

    def hparams(self, group: dict[str, Any], table_step: int) -> list[float]:
        return [group["lr"], group["weight_decay"], weight_decay_mode(group), group["eps"]]
