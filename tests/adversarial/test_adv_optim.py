"""Adversarial fused optimizers: bad param groups and state dicts, threads, edge shapes.

Oracles: the optimizer's state before the call (every refused call must leave weights, moments
and step counts bit-identical), Python integers for step counts, and a sequential run for the
threaded one (SGD with whole-number gradients and ``lr=1`` is exact in any order).
"""

from __future__ import annotations

import threading

import pytest
import torch
from _harness import CaseList, case, clone_state, raises, unchanged, verdict

import embtable
from embtable import KeyedJagged, TableConfig

RULES = {
    "adam": {"lr": 0.1},
    "adamw": {"lr": 0.1},
    "adagrad": {"lr": 0.1},
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "rowwise_adagrad": {"lr": 0.1},
}


def _trained(rule: str, steps: int = 2, **options):
    torch.manual_seed(0)
    table = embtable.Embedding(6, 3)
    opt = embtable.optim.fuse(table, rule, **{**RULES[rule], **options})
    for _ in range(steps):
        (table(torch.tensor([1, 2, 2, 4])) ** 2).sum().backward()
    return table, opt


def _snapshot(table, opt):
    return lambda: (clone_state(dict(opt.state[table.weight])), table.weight.detach().clone(),
                    clone_state([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]))


# ---------------------------------------------------------------- load_state_dict refusals

def _bad_group(rule: str, key: str, value) -> None:
    table, opt = _trained(rule)
    saved = opt.state_dict()
    saved["param_groups"][0][key] = value
    with unchanged(_snapshot(table, opt)):
        raise raises(ValueError, opt.load_state_dict, saved)


def _bad_state(rule: str, key: str, make) -> None:
    table, opt = _trained(rule)
    saved = opt.state_dict()
    state = saved["state"][0]
    if make is None:
        del state[key]
    else:
        state[key] = make(state.get(key))
    with unchanged(_snapshot(table, opt)):
        raise raises(ValueError, opt.load_state_dict, saved)


def _second_group_bad() -> None:
    """Two tables; the second's state is bad: the first must not be loaded either."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": embtable.Embedding(5, 2), "b": embtable.Embedding(5, 2)})
    opt = embtable.optim.fuse(model, "adam", lr=0.1)
    for _ in range(2):
        (model["a"](torch.tensor([1])).sum() + model["b"](torch.tensor([2])).sum()).backward()
    saved = opt.state_dict()
    for _ in range(2):
        (model["a"](torch.tensor([1, 3])).sum() + model["b"](torch.tensor([2])).sum()).backward()
    saved["state"][1]["exp_avg"] = torch.zeros(4, 2)
    weights = [model["a"].weight, model["b"].weight]
    snap = lambda: (clone_state({i: dict(opt.state[w]) for i, w in enumerate(weights)}),  # noqa: E731
                    [w.detach().clone() for w in weights])
    with unchanged(snap):
        raise raises(ValueError, opt.load_state_dict, saved)


def _structure(kind: str) -> None:
    table, opt = _trained("adam")
    saved = opt.state_dict()
    if kind == "extra_group":
        saved["param_groups"].append(dict(saved["param_groups"][0], params=[1]))
    elif kind == "two_params":
        saved["param_groups"][0]["params"] = [0, 1]
    elif kind == "unknown_id":
        saved["state"][7] = saved["state"].pop(0)
    elif kind == "not_a_dict":
        saved = [saved]
    with unchanged(_snapshot(table, opt)):
        raise raises((ValueError, TypeError), opt.load_state_dict, saved)


GROUP_BAD = [
    ("adam", "betas", (3, 3)), ("adam", "betas", 0.9), ("adam", "betas", "ab"), ("adam", "betas", (0.9,)),
    ("adam", "betas", (0.9, float("nan"))), ("adam", "betas", (0.9, 1.0)), ("adam", "lr", "abc"),
    ("adam", "lr", float("inf")), ("adam", "lr", -1.0), ("adam", "lr", True), ("adam", "eps", float("inf")),
    ("adam", "eps", float("nan")), ("adam", "weight_decay", -0.5), ("adam", "bias_correction", "both"),
    ("adam", "bias_correction", ["row"]), ("adam", "state_dtype", "int4"), ("adam", "state_dtype", ["x"]),
    ("adam", "foo", 1), ("adamw", "betas", (-0.1, 0.9)), ("adagrad", "lr_decay", -1.0),
    ("adagrad", "initial_accumulator_value", float("inf")), ("adagrad", "eps", "1e-10"),
    ("sgd", "momentum", -0.9), ("sgd", "momentum", float("inf")), ("sgd", "lr", None),
    ("rowwise_adagrad", "eps", -1.0), ("rowwise_adagrad", "weight_decay", float("nan")),
]

STATE_BAD = [
    ("adam", "exp_avg", lambda t: t.t().contiguous()),
    ("adam", "exp_avg", lambda t: t[:3]),
    ("adam", "exp_avg", lambda t: t.flatten()),
    ("adam", "exp_avg", lambda t: t.long()),
    ("adam", "exp_avg", lambda t: torch.full_like(t, float("nan"))),
    ("adam", "exp_avg_sq", lambda t: -t - 1),
    ("adam", "exp_avg_sq", lambda t: torch.full_like(t, float("inf"))),
    ("adam", "exp_avg_sq", lambda t: "zeros"),
    ("adam", "exp_avg_sq", None),
    ("adam", "row_step", None),
    ("adam", "row_step", lambda t: t.float() + 0.5),
    ("adam", "row_step", lambda t: t - 5),
    ("adam", "row_step", lambda t: t[:2]),
    ("adam", "row_step", lambda t: t.bool()),
    ("adam", "table_step", lambda t: -1),
    ("adam", "table_step", lambda t: "2"),
    ("adam", "table_step", lambda t: 1.5),
    ("adam", "table_step", None),
    ("adam", "bogus", lambda t: torch.zeros(1)),
    ("adam", "exp_avg_scale", lambda t: torch.ones(6)),
    ("adagrad", "sum", lambda t: t[:, :2]),
    ("adagrad", "sum", lambda t: -torch.ones_like(t)),
    ("sgd", "momentum_buffer", lambda t: t.half()[:1]),
    ("sgd", "momentum_buffer", lambda t: torch.full_like(t, float("-inf"))),
    ("rowwise_adagrad", "sum", lambda t: torch.zeros(6, 3)),
    ("rowwise_adagrad", "sum", lambda t: -torch.ones(6)),
]


def _quantized_bad(kind: str) -> None:
    table, opt = _trained("adam", state_dtype="int8_rowwise")
    saved = opt.state_dict()
    state = saved["state"][0]
    if kind == "codes_as_float":
        state["exp_avg"] = state["exp_avg"].float()
    elif kind == "unsigned_codes_signed_moment":
        state["exp_avg"] = state["exp_avg"].to(torch.uint8)
    elif kind == "scale_shape":
        state["exp_avg_sq_scale"] = state["exp_avg_sq_scale"][:2]
    elif kind == "scale_negative":
        state["exp_avg_sq_scale"] = -state["exp_avg_sq_scale"] - 1
    elif kind == "code_minus_128":
        state["exp_avg"] = torch.full_like(state["exp_avg"], -128)
    with unchanged(_snapshot(table, opt)):
        raise raises(ValueError, opt.load_state_dict, saved)


# ---------------------------------------------------------------- silent corruption

def _row_step_exact(value: int) -> None:
    table, opt = _trained("adam")
    saved = opt.state_dict()
    saved["state"][0]["row_step"][2] = value
    opt.load_state_dict(saved)
    assert int(opt.state[table.weight]["row_step"][2]) == value
    (table(torch.tensor([2])) ** 2).sum().backward()
    assert int(opt.state[table.weight]["row_step"][2]) == value + 1


def _state_dtype_kept(saved_dtype: str, configured: str) -> None:
    _, source = _trained("adam", state_dtype=saved_dtype)
    table = embtable.Embedding(6, 3)
    opt = embtable.optim.fuse(table, "adam", lr=0.1, state_dtype=configured)
    opt.load_state_dict(source.state_dict())
    assert opt.param_groups[0]["state_dtype"] == configured
    expected = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8_rowwise": torch.int8}[configured]
    assert opt.state[table.weight]["exp_avg"].dtype == expected
    assert ("exp_avg_scale" in opt.state[table.weight]) == (configured == "int8_rowwise")
    (table(torch.tensor([2])) ** 2).sum().backward()


def _load_does_not_alias() -> None:
    table, opt = _trained("adam")
    saved = opt.state_dict()
    copy = clone_state(saved["state"])
    opt.load_state_dict(saved)
    (table(torch.tensor([1, 2])) ** 2).sum().backward()
    assert torch.equal(saved["state"][0]["exp_avg"], copy[0]["exp_avg"])


def _threads_keep_counts(rule: str) -> None:
    torch.manual_seed(0)
    table = embtable.Embedding(8, 4)
    with torch.no_grad():
        table.weight.copy_(torch.randint(-50, 50, (8, 4)).float())
    start = table.weight.detach().clone()
    opt = embtable.optim.fuse(table, rule, lr=1.0)
    ids = torch.tensor([1, 2, 2, 5])
    threads, steps, errors = 4, 60, []

    def work():
        try:
            for _ in range(steps):
                table(ids).sum().backward()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    state = opt.state[table.weight]
    assert state["table_step"] == threads * steps
    if "row_step" in state:
        assert state["row_step"].tolist() == [0, 240, 240, 0, 0, 240, 0, 0]
    if rule == "sgd":  # whole-number gradients, lr 1: exact in any order
        expected = start.clone()
        expected[1] -= threads * steps
        expected[2] -= 2 * threads * steps
        expected[5] -= threads * steps
        assert torch.equal(table.weight.detach(), expected)


def _copied_optimizer(how: str) -> None:
    """A deep-copied or pickled optimizer trains its own copy of the table and leaves the
    original alone."""
    import copy
    import pickle

    table, opt = _trained("adam", steps=1)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    original = clone_state(dict(opt.state[table.weight]))
    weight = twin.param_groups[0]["params"][0]
    out = embtable.optim.fused_lookup(weight, torch.tensor([1, 4]), torch.empty(0, dtype=torch.long), twin)
    (out**2).sum().backward()
    assert twin.state[weight]["table_step"] == 2
    assert twin.state[weight]["row_step"].tolist() == [0, 2, 1, 0, 2, 0]
    assert torch.equal(opt.state[table.weight]["row_step"], original["row_step"])
    assert opt.state[table.weight]["table_step"] == 1


# ---------------------------------------------------------------- partial updates

def _backward_bad_group(rule: str, key: str, value, first_step: bool) -> None:
    table, opt = _trained(rule, steps=0 if first_step else 2)
    opt.param_groups[0][key] = value
    snap = lambda: (clone_state(dict(opt.state.get(table.weight, {}))), table.weight.detach().clone())  # noqa: E731
    with unchanged(snap):
        raise raises(ValueError, lambda: (table(torch.tensor([1, 2])) ** 2).sum().backward())


# ---------------------------------------------------------------- valid edge inputs

def _dimension_zero(rule: str, bag: bool) -> None:
    table = embtable.EmbeddingBag(5, 0, mode="sum") if bag else embtable.Embedding(5, 0)
    opt = embtable.optim.fuse(table, rule, **RULES[rule])
    for _ in range(2):
        out = table(torch.tensor([[1, 3]])) if bag else table(torch.tensor([1, 3, 3]))
        out.sum().backward()
    assert opt.state[table.weight]["table_step"] == 2
    if "row_step" in opt.state[table.weight]:
        assert opt.state[table.weight]["row_step"].tolist() == [0, 2, 0, 2, 0]


def _empty_batch_shared_table(rule: str, batch: int, pooled: bool) -> None:
    config = TableConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["a", "b"],
                         pooling="sum" if pooled else "none")
    module = (embtable.EmbeddingBagCollection if pooled else embtable.EmbeddingCollection)([config])
    before = clone_state(dict(module.named_parameters()))
    opt = embtable.optim.fuse(module, rule, **RULES[rule])
    features = KeyedJagged(["a", "b"], torch.empty(0, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long))
    out = module(features)
    loss = out.values().sum() if pooled else out["a"].values.sum() + out["b"].values.sum()
    loss.backward()
    for name, weight in module.named_parameters():
        assert torch.equal(weight.detach(), before[name])
    assert all(s["table_step"] == 1 for s in opt.state.values())


CASES: CaseList = []
for _rule, _key, _value in GROUP_BAD:
    CASES.append(case("error", f"load_group_{_rule}_{_key}_{_value!r}", _bad_group, _rule, _key, _value,
                      expect=ValueError, match=f"FusedOptimizer.load_state_dict: .*{_key}"))
for _i, (_rule, _key, _make) in enumerate(STATE_BAD):
    CASES.append(case("corruption", f"load_state_{_rule}_{_key}_{_i}", _bad_state, _rule, _key, _make,
                      expect=ValueError, match=f"FusedOptimizer.load_state_dict: table 'weight': .*{_key.split('_scale')[0]}"))
for _kind in ("codes_as_float", "unsigned_codes_signed_moment", "scale_shape", "scale_negative", "code_minus_128"):
    CASES.append(case("corruption", f"load_quantized_{_kind}", _quantized_bad, _kind,
                      expect=ValueError, match="load_state_dict: table 'weight'"))
for _kind in ("extra_group", "two_params", "unknown_id", "not_a_dict"):
    CASES.append(case("error", f"load_structure_{_kind}", _structure, _kind, expect=Exception,
                      match="FusedOptimizer.load_state_dict: "))
CASES.append(case("loss", "load_second_table_bad", _second_group_bad, expect=ValueError, match="table 'b'"))
for _value in (2**24 + 1, 2**31 + 7, 2**53 + 1):
    CASES.append(case("corruption", f"row_step_exact_{_value}", _row_step_exact, _value))
for _saved in ("float32", "bfloat16", "int8_rowwise"):
    for _configured in ("float32", "bfloat16", "int8_rowwise"):
        CASES.append(case("corruption", f"state_dtype_kept_{_saved}_to_{_configured}",
                          _state_dtype_kept, _saved, _configured))
CASES.append(case("corruption", "load_does_not_alias", _load_does_not_alias))
for _how in ("deepcopy", "pickle"):
    CASES.append(case("corruption", f"copied_optimizer_{_how}", _copied_optimizer, _how))
for _rule in ("sgd", "adam", "adagrad", "rowwise_adagrad"):
    CASES.append(case("corruption", f"threads_{_rule}", _threads_keep_counts, _rule, timeout=60))
for _rule, _key, _value in [("adam", "lr", "abc"), ("adam", "betas", (0.9,)), ("adam", "betas", 0.9),
                            ("adam", "eps", float("inf")), ("adamw", "lr", float("nan")),
                            ("sgd", "momentum", -1.0), ("sgd", "lr", "0.1"), ("adagrad", "lr_decay", None),
                            ("rowwise_adagrad", "eps", "x"), ("adam", "state_dtype", "int2")]:
    for _first in (False, True):
        CASES.append(case("loss", f"backward_bad_{_rule}_{_key}_{_value!r}_{'first' if _first else 'later'}",
                          _backward_bad_group, _rule, _key, _value, _first, expect=ValueError,
                          match=f"FusedOptimizer: table 'weight': .*{_key}"))
for _rule in RULES:
    for _bag in (False, True):
        CASES.append(case("error", f"dim0_{_rule}_{'bag' if _bag else 'embedding'}", _dimension_zero, _rule, _bag))
    for _batch in (0, 3):
        for _pooled in (True, False):
            CASES.append(case("error", f"empty_batch_{_rule}_B{_batch}_{'pooled' if _pooled else 'jagged'}",
                              _empty_batch_shared_table, _rule, _batch, _pooled))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
