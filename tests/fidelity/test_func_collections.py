"""Per-example gradients of the collections: vmap(grad) over a KeyedJaggedStack, against a
Python loop of single-example gradients and against torch's modules on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, vmap

from embtable import (
    DynamicConfig,
    EmbeddingBagCollection,
    EmbeddingCollection,
    KeyedJagged,
    TableConfig,
)
from embtable.func import KeyedJaggedStack

BAG_TABLES = [
    TableConfig(name="a", num_embeddings=10, embedding_dim=4, padding_idx=1),
    TableConfig(name="b", num_embeddings=8, embedding_dim=4, pooling="mean", padding_idx=0),
    TableConfig(name="m", num_embeddings=9, embedding_dim=4, pooling="mean", padding_idx=2),
    TableConfig(name="c", num_embeddings=6, embedding_dim=2, pooling="max"),
    TableConfig(name="s", num_embeddings=7, embedding_dim=2, feature_names=["s1", "s2"]),
]
# 4 examples, fixed ids per feature; padding ids 1 (a), 0 (b), 2 (m) appear; "b" and "m" share
# a group and a pooling mode, so their two padding rows take the several-padding-rows path
IDS = {
    "a": [[1, 2, 3], [4, 1, 1], [5, 6, 7], [9, 9, 0]],
    "b": [[0, 4], [5, 6], [0, 0], [7, 1]],
    "m": [[2, 3], [4, 2], [8, 8], [1, 0]],
    "c": [[2, 5], [1, 1], [3, 0], [4, 2]],
    "s1": [[1], [2], [3], [6]],
    "s2": [[0, 6, 6, 1], [2, 3, 4, 5], [1, 1, 1, 1], [0, 2, 4, 6]],
}
WEIGHTS = {k: [[0.5 + i + 0.25 * j for j in range(len(ex))] for i, ex in enumerate(v)] for k, v in IDS.items()}


def _params(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def _table_rows(collection, per_example_grads, table):
    """A table's rows of each example's grouped-weight gradient, ``[E, rows, D]``."""
    place = collection.plan.tables[table]
    return per_example_grads[f"grouped_weight_{place.group}"][:, place.row_offset : place.row_offset + place.num_rows]


def _per_example(collection, stack, out, exact=True):
    params = _params(collection)

    def loss(p, example):
        return out(functional_call(collection, p, (example,))).pow(2).sum()

    batched = vmap(grad(loss), in_dims=(None, 0))(params, stack)
    loop = [grad(loss)(params, stack.example(e)) for e in range(len(stack))]
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-6, "atol": 1e-6}
    for key, value in batched.items():  # the definition: a loop of single-example gradients
        torch.testing.assert_close(value, torch.stack([g[key] for g in loop]), **tol)
    return batched


def _torch_bags(collection):
    modules = {}
    for config in collection.tables:
        module = torch.nn.EmbeddingBag(
            config.num_embeddings, config.embedding_dim, mode=config.pooling.value, padding_idx=config.padding_idx
        )
        module.weight.data.copy_(collection.table_weight(config.name))
        modules[config.name] = module
    return modules


@pytest.mark.parametrize("weighted", [False, True])
def test_bag_collection_per_example_grads_equal_a_loop_and_torch(weighted: bool) -> None:
    torch.manual_seed(0)
    tables = BAG_TABLES if not weighted else [t for t in BAG_TABLES if t.pooling.value == "sum"]
    collection = EmbeddingBagCollection(tables, is_weighted=weighted)
    ids = {f: IDS[f] for t in tables for f in t.feature_names}
    batch = KeyedJagged.from_dict(ids, weights={f: WEIGHTS[f] for f in ids} if weighted else None)
    stack = KeyedJaggedStack.from_batch(batch)
    assert len(stack) == 4 and stack.stride() == 1
    # weighted: a single example takes the compiled grouped kernel, whose backward sums a
    # repeated id's weighted rows in another order than the vmap-able one (within 1 ulp)
    batched = _per_example(collection, stack, lambda r: r.values(), exact=not weighted)
    theirs = _torch_bags(collection)
    table_of = {f: t.name for t in tables for f in t.feature_names}
    for e in range(len(stack)):  # torch: one ordinary backward per example
        for module in theirs.values():
            module.weight.grad = None
        loss = 0
        for feature, rows in ids.items():
            psw = torch.tensor([WEIGHTS[feature][e]]) if weighted else None
            loss = loss + theirs[table_of[feature]](torch.tensor([rows[e]]), per_sample_weights=psw).pow(2).sum()
        loss.backward()
        for config in tables:
            ours = _table_rows(collection, batched, config.name)[e]
            # torch's mean divides after summing, and weighted rows may sum in another order: 1 ulp
            exact = config.pooling.value != "mean" and not weighted
            tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-6, "atol": 1e-6}
            torch.testing.assert_close(ours, theirs[config.name].weight.grad, **tol)


def test_embedding_collection_per_example_grads_equal_a_loop_and_torch() -> None:
    torch.manual_seed(0)
    tables = [
        TableConfig(name="a", num_embeddings=10, embedding_dim=4, pooling="none", padding_idx=1),
        TableConfig(name="b", num_embeddings=8, embedding_dim=4, pooling="none", padding_idx=0),
        TableConfig(name="c", num_embeddings=6, embedding_dim=2, pooling="none"),
    ]
    collection = EmbeddingCollection(tables)
    ids = {"a": IDS["a"], "b": IDS["b"], "c": IDS["c"]}
    stack = KeyedJaggedStack.from_batch(KeyedJagged.from_dict(ids))

    def flat(result):
        return torch.cat([result[k].values.flatten() * (i + 1) for i, k in enumerate(result.keys())])

    batched = _per_example(collection, stack, flat)
    for e in range(len(stack)):
        for i, config in enumerate(tables):
            theirs = torch.nn.Embedding(config.num_embeddings, config.embedding_dim, padding_idx=config.padding_idx)
            theirs.weight.data.copy_(collection.table_weight(config.name))
            (theirs(torch.tensor(ids[config.name][e])).flatten() * (i + 1)).pow(2).sum().backward()
            torch.testing.assert_close(_table_rows(collection, batched, config.name)[e], theirs.weight.grad, rtol=0, atol=0)


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_stacks_of_minibatches_equal_a_loop(data) -> None:
    """Examples of stride 2 whose cell lengths differ (only each feature's total is fixed)."""
    totals = {"a": data.draw(st.integers(0, 4)), "b": data.draw(st.integers(1, 4)), "c": data.draw(st.integers(1, 3))}
    rows = {"a": 10, "b": 8, "c": 6}
    examples = []
    for _ in range(data.draw(st.integers(1, 3))):
        cells = {}
        for key, total in totals.items():
            first = data.draw(st.integers(0, total))
            draw = [data.draw(st.integers(0, rows[key] - 1)) for _ in range(total)]
            cells[key] = [draw[:first], draw[first:]]
        examples.append(KeyedJagged.from_dict(cells))
    stack = KeyedJaggedStack(examples)
    assert stack.values().shape == (len(examples), sum(totals.values()))
    collection = EmbeddingBagCollection(BAG_TABLES[:2] + [BAG_TABLES[3]])
    # table "b" pools by mean: a bag of 3 scales by float32(1/3), which the compiled kernel of a
    # single example multiplies and adds in one fused step (1 ulp from vmap's separate ones)
    _per_example(collection, stack, lambda r: r.values(), exact=False)


def test_pytree_node_and_examples() -> None:
    stack = KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[1, 2], [3, 4]], "b": [[5], [6]]}))
    leaves, spec = pytree.tree_flatten(stack)
    assert len(leaves) == 2  # values, lengths (no None leaf for vmap's in_dims to reach)
    again = pytree.tree_unflatten(leaves, spec)
    assert isinstance(again, KeyedJaggedStack) and torch.equal(again.values(), torch.tensor([[1, 2, 5], [3, 4, 6]]))
    one = pytree.tree_map(lambda t: t[1], stack)  # 1-D leaves: one example
    assert isinstance(one, KeyedJagged) and one.length_per_key() == [2, 1]
    assert torch.equal(one.values(), stack.example(1).values())
    assert stack.example(1).to_dict()["a"].values.tolist() == [3, 4]
    # inside vmap each example is a KeyedJagged whose accessors work
    two = KeyedJaggedStack([KeyedJagged.from_dict({"a": [[1, 2], [3]]}), KeyedJagged.from_dict({"a": [[4], [5, 6]]})])
    assert vmap(lambda b: b.offsets())(two).tolist() == [[0, 2, 3], [0, 1, 3]]
    assert vmap(lambda b: b["a"].lengths)(two).tolist() == [[2, 1], [1, 2]]
    empty = KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[], []], "b": [[5], [6]]}))
    assert empty.values().tolist() == [[5], [6]] and empty.length_per_key() == [0, 1]


def test_errors_name_the_reason() -> None:
    with pytest.raises(ValueError, match="feature 'a' has lengths \\[2, 1\\]"):
        KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[1, 2], [3]]}))
    with pytest.raises(ValueError, match="examples\\[1\\] has ids per key \\[1\\] but examples\\[0\\] has \\[2\\]"):
        KeyedJaggedStack([KeyedJagged.from_dict({"a": [[1, 2]]}), KeyedJagged.from_dict({"a": [[1]]})])
    with pytest.raises(TypeError, match="from_batch"):
        KeyedJaggedStack(KeyedJagged.from_dict({"a": [[1]]}))
    with pytest.raises(ValueError, match="empty"):
        KeyedJaggedStack([])
    with pytest.raises(IndexError, match="index 2 is outside the 2 examples"):
        KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[1], [2]]})).example(2)
    collection = EmbeddingBagCollection([TableConfig(name="a", num_embeddings=4, embedding_dim=2)])
    # a batch built inside vmap from batched lengths: the ids per key are unknown
    with pytest.raises(ValueError, match="KeyedJaggedStack"):
        vmap(lambda v, n: collection(KeyedJagged(["a"], v, n)).values())(torch.ones(2, 2, dtype=torch.long), torch.full((2, 1), 2))
    # vmap over another dimension of the stack than its examples
    stack = KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[1], [2], [3]], "b": [[0], [1], [2]]}))
    with pytest.raises(ValueError, match="in_dims=0"):
        vmap(lambda b: b.values(), in_dims=1)(stack)
    # an id outside its table in one example is named, as outside vmap
    stack = KeyedJaggedStack.from_batch(KeyedJagged.from_dict({"a": [[1], [7]]}))
    with pytest.raises(IndexError, match="feature 'a' holds id 7, outside table 'a' of 4 rows"):
        vmap(lambda b: collection(b).values())(stack)


def test_hashed_tables_vmap_and_dynamic_tables_are_refused() -> None:
    batch = KeyedJagged.from_dict({"a": [[1, 2], [3, 4], [5, 123456789]]})
    hashed = EmbeddingBagCollection([TableConfig(name="a", num_embeddings=10, embedding_dim=4, hashed=True)])
    _per_example(hashed, KeyedJaggedStack.from_batch(batch), lambda r: r.values())
    dynamic = EmbeddingBagCollection([TableConfig(name="a", num_embeddings=10, embedding_dim=4, dynamic=DynamicConfig())])
    with pytest.raises(ValueError, match="dynamic tables \\(\\['a'\\]\\) is not supported"):
        vmap(lambda b: dynamic(b).values())(KeyedJaggedStack.from_batch(batch))
