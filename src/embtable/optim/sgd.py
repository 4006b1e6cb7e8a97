r"""Row-sparse SGD, optionally with momentum.

For each row ``r`` touched by a batch, with ``g`` its reduced gradient:

.. math::

    g &\leftarrow g + \lambda w_r \quad\text{(L2 weight decay)} \\
    b_r &\leftarrow \mu b_r + g, \qquad g \leftarrow b_r \ (\text{or } g + \mu b_r
        \text{ with Nesterov}) \quad\text{(momentum)} \\
    w_r &\leftarrow (1 - \eta\lambda)\, w_r - \eta g \quad\text{(the factor only with
        decoupled weight decay)}

Without momentum and weight decay this is exactly ``torch.optim.SGD`` on a sparse
gradient.  Momentum is *lazy*: a row's buffer only decays when the row is touched (torch's
dense SGD decays every buffer every step); the buffer starts at zero, which equals torch's
first-step ``b = g`` because dampening is not offered.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from embtable.ops._fused_reference import OPT_SGD
from embtable.optim._rule import FusedRule, check_non_negative, weight_decay_mode

__all__ = ["SGDRule"]


class SGDRule(FusedRule):
    """Rule ``"sgd"``: ``lr``, ``momentum=0``, ``nesterov=False``, ``weight_decay=0``."""

    name = "sgd"
    code = OPT_SGD
    defaults = {
        "lr": 1e-2,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "state_dtype": "float32",
    }
    moment_keys = ("momentum_buffer",)
    signed_moments = ("momentum_buffer",)

    def validate(self, group: dict[str, Any]) -> None:
        super().validate(group)
        check_non_negative("embtable.optim.sgd", group, "momentum")
        if group["nesterov"] and group["momentum"] == 0:
            raise ValueError("embtable.optim.sgd: nesterov=True needs momentum > 0, got momentum=0")

    def init_state(self, weight: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        if group["momentum"] == 0:
            return {}
        return self.new_moment("momentum_buffer", weight.shape, 0.0, group, weight.device)

    def state_tensors(self, state: dict[str, Any], group: dict[str, Any]) -> list[Tensor]:
        if group["momentum"] == 0:
            return []
        if "momentum_buffer" not in state:  # momentum switched on mid-training
            raise ValueError(
                "embtable.optim.sgd: momentum was 0 when this table's state was created; "
                "create the optimizer with momentum > 0 to use momentum"
            )
        if "momentum_buffer_scale" in state:
            return [state["momentum_buffer"], state["momentum_buffer_scale"]]
        return [state["momentum_buffer"]]

    def hparams(self, group: dict[str, Any], table_step: int) -> list[float]:
        return [
            group["lr"],
            group["weight_decay"],
            weight_decay_mode(group),
            group["momentum"],
            float(bool(group["nesterov"])),
        ]
