r"""Row-sparse Adagrad, exact per element (one accumulator per weight).

For each row ``r`` touched at table step ``t`` (the number of fused updates of the table),
with ``g`` its reduced gradient:

.. math::

    \tilde\eta &= \eta / (1 + (t - 1)\,\text{lr\_decay}) \\
    g &\leftarrow g + \lambda w_r \quad\text{(L2 weight decay)} \\
    s_r &\leftarrow s_r + g \odot g \\
    w_r &\leftarrow (1 - \tilde\eta\lambda)\, w_r - \tilde\eta\, g / (\sqrt{s_r} + \epsilon)
        \quad\text{(the factor only with decoupled weight decay)}

With ``weight_decay=0`` this is exactly ``torch.optim.Adagrad`` on a sparse gradient
(torch refuses weight decay with sparse gradients).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from embtable.ops._fused_reference import OPT_ADAGRAD
from embtable.optim._rule import FusedRule, check_non_negative, weight_decay_mode

__all__ = ["AdagradRule"]


class AdagradRule(FusedRule):
    """Rule ``"adagrad"``: torch's defaults (``lr=1e-2``, ``eps=1e-10``)."""

    name = "adagrad"
    code = OPT_ADAGRAD
    defaults = {
        "lr": 1e-2,
        "lr_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "eps": 1e-10,
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "state_dtype": "float32",
    }
    moment_keys = ("sum",)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_non_negative("embtable.optim.adagrad", group, "lr_decay", "initial_accumulator_value", "eps")

    def init_state(self, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        value = group["initial_accumulator_value"]
        return self.new_moment("sum", weight.shape, value, group, weight.device)

    def state_tensors(self, state: dict[str, Any], group: dict[str, Any]) -> list[Tensor]:
        if "sum_scale" in state:
            return [state["sum"], state["sum_scale"]]
        return [state["sum"]]

    def hparams(self, group: dict[str, Any], table_step: int) -> list[float]:
        lr = group["lr"] / (1 + (table_step - 1) * group["lr_decay"])
        return [lr, group["weight_decay"], weight_decay_mode(group), group["eps"]]
