"""The column shards' update (``_synced.ColumnUpdate``) in one process against its oracle.

With one shard (no process group) and the whole row as its columns, the update must be
:func:`embtable.ops._fused_reference.fused_update_rows` exactly: the same formula, state
layout and int8_rowwise encoding (the distributed tests check the agreed statistics);
row-wise Adagrad, compiled, to a few ulp (tests/ops/test_fused_rowstat.py: bit for bit with
the float32 operations).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.distributed._synced import ColumnUpdate
from embtable.ops._fused_reference import POOL_NONE, fused_update_rows
from embtable.optim.fused import RULES

CASES = [
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "state_dtype": "int8_rowwise"}),
    ("adagrad", {"lr": 0.1, "state_dtype": "int8_rowwise"}),
    ("rowwise_adagrad", {"lr": 0.1}),
    ("adam", {"lr": 0.05, "state_dtype": "int8_rowwise"}),
    ("adamw", {"lr": 0.05, "state_dtype": "bfloat16"}),
]


@settings(max_examples=12, deadline=None)
@given(
    case=st.sampled_from(CASES),
    decay=st.sampled_from([(0.0, False), (0.01, False), (0.01, True)]),
    seed=st.integers(0, 2**16),
)
def test_one_shard_equals_the_reference(case: tuple, decay: tuple, seed: int) -> None:
    name, options = case
    rule = RULES[name]()
    group = {**rule.defaults, **options, "weight_decay": decay[0]}
    group["decoupled_weight_decay"] = decay[1]
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(20, 6, generator=gen)
    rows = torch.unique(torch.randint(0, 20, (9,), generator=gen))
    grad = torch.randn(rows.numel(), 6, generator=gen)
    states = []
    for _ in range(2):
        state = rule.init_state(weight, group)
        states.append({k: v.clone() for k, v in state.items()})
    weights = [weight.clone(), weight.clone()]
    empty = torch.empty(0, dtype=torch.int64)
    for step in (1, 2):  # the second step reads the first one's (quantized) moments back
        hparams = [float(h) for h in rule.hparams(group, step)]
        ColumnUpdate(None, 6, None)(
            weights[0], rule.state_tensors(states[0], group), rows, empty, grad, None,
            POOL_NONE, -1, False, rule.code, hparams,
        )
        fused_update_rows(
            weights[1], rule.state_tensors(states[1], group), rows, empty, grad, None,
            POOL_NONE, -1, False, rule.code, hparams,
        )
    # row-wise Adagrad runs compiled (_rowstat): its square is summed in another order
    # (a few ulp) and its sqrt is correctly rounded where torch's AVX-512 one may be 1 ulp off
    tol = {"rtol": 2.0**-20, "atol": 2.0**-24} if name == "rowwise_adagrad" else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(weights[0], weights[1], **tol)
    for key in states[1]:
        torch.testing.assert_close(states[0][key], states[1][key], **tol)
    assert not torch.equal(weights[0], weight)
