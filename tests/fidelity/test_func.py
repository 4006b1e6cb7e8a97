"""Forward-mode AD and torch.func on embtable's modules, against torch's modules on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, grad, jacrev, jvp, vmap

import embtable
from embtable import (
    EmbeddingBagCollection,
    EmbeddingCollection,
    KeyedJagged,
    TableConfig,
    functional,
)

F = torch.nn.functional


def _pair(kind: str, **kwargs):
    torch.manual_seed(0)
    ours = getattr(embtable, kind)(12, 3, **kwargs)
    theirs = getattr(torch.nn, kind)(12, 3, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _params(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def _loss(module):
    return lambda params, x: functional_call(module, params, (x,)).pow(2).sum()


MODULES = [
    ("Embedding", {}),
    ("Embedding", {"padding_idx": 1, "scale_grad_by_freq": True}),
    ("EmbeddingBag", {"mode": "sum", "padding_idx": 2}),
    ("EmbeddingBag", {"mode": "mean"}),
    ("EmbeddingBag", {"mode": "max"}),
    ("EmbeddingBag", {"mode": "sum", "scale_grad_by_freq": True}),
]


def _ids(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    shape = (4, 5) if kind == "Embedding" else (4, 3, 5)  # per example: ids, or 3 bags of 5
    return torch.randint(0, 12, shape, generator=gen)


@pytest.mark.parametrize(("kind", "kwargs"), MODULES, ids=str)
def test_func_grad_vmap_jacrev_jvp_equal_torch(kind: str, kwargs: dict) -> None:
    ours, theirs = _pair(kind, **kwargs)
    ids = _ids(kind)
    params = _params(ours)
    exact = not (kind == "EmbeddingBag" and kwargs.get("mode") == "mean")  # torch's mean: 1 ulp
    check = (lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0)) if exact else torch.testing.assert_close
    if kwargs.get("scale_grad_by_freq") and kind == "EmbeddingBag":
        return _check_bag_frequency_departure(ours, ids, params)
    transforms = (
        lambda m: grad(_loss(m))(params, ids[0])["weight"],
        lambda m: vmap(grad(_loss(m)), in_dims=(None, 0))(params, ids)["weight"],
        lambda m: jacrev(lambda p: functional_call(m, p, (ids[0],)))(params)["weight"],
    )
    for transform in transforms:
        check(transform(ours), transform(theirs))
    tangent = torch.randn_like(params["weight"])
    if kind == "Embedding":  # torch has no forward AD for embedding_bag (see test_bag_forward_ad)
        outs = [jvp(lambda w, m=m: functional_call(m, {"weight": w}, (ids,)), (params["weight"],), (tangent,)) for m in (ours, theirs)]
        check(outs[0][0], outs[1][0])
        check(outs[0][1], outs[1][1])


def _check_bag_frequency_departure(ours, ids, params) -> None:
    """torch 2.13's bag scale_grad_by_freq divides by a wrong count (departure 3): compare
    per-example gradients with the loop of single-example gradients instead."""
    per_example = vmap(grad(_loss(ours)), in_dims=(None, 0))(params, ids)["weight"]
    loop = torch.stack([grad(_loss(ours))(params, x)["weight"] for x in ids])
    torch.testing.assert_close(per_example, loop, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "kwargs"), MODULES[:3], ids=str)
def test_per_sample_gradients_equal_a_loop(kind: str, kwargs: dict) -> None:
    ours, _ = _pair(kind, **kwargs)
    ids = _ids(kind)
    params = _params(ours)
    per_example = vmap(grad(_loss(ours)), in_dims=(None, 0))(params, ids)["weight"]
    loop = torch.stack([grad(_loss(ours))(params, x)["weight"] for x in ids])
    torch.testing.assert_close(per_example, loop, rtol=0, atol=0)
    # and each equals an ordinary backward of that example
    ours.zero_grad()
    _loss(ours)(dict(ours.named_parameters()), ids[1]).backward()
    torch.testing.assert_close(per_example[1], ours.weight.grad, rtol=0, atol=0)


def test_forward_ad_embedding_and_max_norm() -> None:
    """The tangent is the lookup of the weight's tangent; max_norm renormalizes the weight in
    place outside autograd, so it does not rescale the tangent (as torch)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (3, 4), generator=gen)
    tangent = torch.randn(10, 3, generator=gen)
    for kwargs in ({}, {"padding_idx": 2}, {"max_norm": 1.0}, {"max_norm": 1.0, "norm_type": 1.0}):
        results = []
        for f in (F.embedding, functional.embedding):
            weight = torch.randn(10, 3, generator=torch.Generator().manual_seed(1)) * 4
            with fwad.dual_level():
                out = f(ids, fwad.make_dual(weight, tangent), **kwargs)
                primal, tan = fwad.unpack_dual(out)
                results.append((primal, tan, weight))
        (p0, t0, w0), (p1, t1, w1) = results
        assert torch.equal(p0, p1) and torch.equal(w0, w1)
        assert t1 is not None and torch.equal(t0, t1)
        assert torch.equal(t1, tangent[ids])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_forward_ad(mode: str) -> None:
    """torch 2.13 raises NotImplementedError for forward AD through embedding_bag; embtable
    gives the tangent (a documented departure): the weight's tangent pooled the same way
    (for max, the winners' tangents), plus per_sample_weights' tangent times the rows."""
    gen = torch.Generator().manual_seed(0)
    weight, tangent = torch.randn(10, 3, generator=gen), torch.randn(10, 3, generator=gen)
    ids, offsets = torch.randint(0, 10, (9,), generator=gen), torch.tensor([0, 4, 4])
    with fwad.dual_level(), pytest.raises(NotImplementedError):
        F.embedding_bag(ids, fwad.make_dual(weight, tangent), offsets, mode=mode)
    with fwad.dual_level():
        out = functional.embedding_bag(ids, fwad.make_dual(weight, tangent), offsets, mode=mode, padding_idx=3)
        tan = fwad.unpack_dual(out).tangent
    if mode == "max":
        _, _, _, winners = torch.embedding_bag(weight, ids, offsets, False, 2, False, None, False, 3)
        won = (winners >= 0) & (offsets.diff(append=torch.tensor([9])) > 0).unsqueeze(1)
        expected = torch.where(won, tangent.gather(0, winners.clamp(min=0)), 0)  # empty bag: 0
    else:
        expected = F.embedding_bag(ids, tangent, offsets, mode=mode, padding_idx=3)
    torch.testing.assert_close(tan, expected, rtol=0, atol=0)
    if mode == "sum":  # per_sample_weights' tangent: d/dw sum_i w_i row_i = sum_i dw_i row_i
        weights, dweights = torch.rand(9, generator=gen), torch.rand(9, generator=gen)
        with fwad.dual_level():
            out = functional.embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=fwad.make_dual(weights, dweights))
            tan = fwad.unpack_dual(out).tangent
        torch.testing.assert_close(tan, F.embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=dweights))


TABLES = [
    TableConfig(name="a", num_embeddings=10, embedding_dim=4),
    TableConfig(name="b", num_embeddings=8, embedding_dim=6, pooling="mean", padding_idx=0),
    TableConfig(name="c", num_embeddings=6, embedding_dim=2, pooling="max"),
]
BATCH = {"a": [[1, 2], [3], []], "b": [[0, 4], [5, 6, 7], [1]], "c": [[2], [3, 4], [5]]}


def _collection_and_torch(pooled: bool):
    torch.manual_seed(0)
    if pooled:
        ours = EmbeddingBagCollection(TABLES)
        theirs = {t.name: torch.nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode=t.pooling.value, padding_idx=t.padding_idx) for t in TABLES}
    else:
        tables = [TableConfig(name=t.name, num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim, pooling="none", padding_idx=t.padding_idx) for t in TABLES]
        ours = EmbeddingCollection(tables)
        theirs = {t.name: torch.nn.Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx) for t in TABLES}
    for name, module in theirs.items():
        module.weight.data.copy_(ours.table_weight(name))
    group_of = {g.tables[0]: f"grouped_weight_{g.index}" for g in ours.plan.groups}  # one table per group
    return ours, theirs, group_of


@pytest.mark.parametrize("pooled", [True, False])
def test_collections_grad_jacrev_jvp_functional_call(pooled: bool) -> None:
    ours, theirs, group_of = _collection_and_torch(pooled)
    batch = KeyedJagged.from_dict(BATCH)
    params = _params(ours)

    def ours_out(p):
        result = functional_call(ours, p, (batch,))
        if pooled:
            return result.values()
        return torch.cat([result[k].values.flatten() for k in result.keys()])

    def theirs_out(p):
        outs = []
        for name in BATCH:
            values, lengths = batch[name].values, batch[name].lengths
            if pooled:
                offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
                outs.append(functional_call(theirs[name], {"weight": p[group_of[name]]}, (values, offsets)))
            else:
                outs.append(functional_call(theirs[name], {"weight": p[group_of[name]]}, (values,)))
        return torch.cat(outs, dim=1) if pooled else torch.cat([o.flatten() for o in outs])

    torch.testing.assert_close(ours_out(params), theirs_out(params), rtol=0, atol=0)
    g_ours = grad(lambda p: ours_out(p).pow(2).sum())(params)
    g_theirs = grad(lambda p: theirs_out(p).pow(2).sum())(params)
    j_ours, j_theirs = jacrev(ours_out)(params), jacrev(theirs_out)(params)
    for key in params:
        torch.testing.assert_close(g_ours[key], g_theirs[key], rtol=0, atol=0)
        torch.testing.assert_close(j_ours[key], j_theirs[key], rtol=0, atol=0)
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    _, t_ours = jvp(ours_out, (params,), (tangents,))
    if pooled:  # torch has no forward AD for bags: the jacobian (one row per output) times the tangents
        expected = sum((j_theirs[k] * tangents[k]).flatten(-2).sum(-1) for k in params)
    else:  # torch's own jvp (a padding row's tangent is looked up like any row, as in torch)
        _, expected = jvp(theirs_out, (params,), (tangents,))
    torch.testing.assert_close(t_ours, expected, rtol=0, atol=0 if not pooled else 1e-6)


def test_vmap_over_max_norm_equals_a_loop_of_torch_calls() -> None:
    """torch raises under vmap here (no batching rule for its in-place renorm); embtable
    renormalizes every referenced row once, which gives a loop's output and weight."""
    ids = torch.randint(0, 10, (4, 3), generator=torch.Generator().manual_seed(0))
    weight = torch.randn(10, 3, generator=torch.Generator().manual_seed(1)) * 5
    theirs = weight.clone()
    with pytest.raises(RuntimeError):
        vmap(lambda i: F.embedding(i, theirs.clone(), max_norm=1.0))(ids)
    out = vmap(lambda i: functional.embedding(i, weight, max_norm=1.0))(ids)
    loop = torch.stack([F.embedding(i, theirs, max_norm=1.0) for i in ids])
    assert torch.equal(out, loop) and torch.equal(weight, theirs)
