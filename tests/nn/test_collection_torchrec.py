"""EmbeddingBagCollection against TorchRec's as the oracle (issue 12): is_weighted, a TorchRec
model moved over, a batch size per feature, regroup, the pooled output as a pytree node."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
from embtable.nn.outputs import PooledEmbeddings

torchrec = pytest.importorskip("torchrec", reason="torchrec is not installed (the peer oracle)")
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)


def torchrec_tables(poolings=("SUM", "MEAN")):
    """Three TorchRec tables: two dims, both poolings, a table read by two features."""
    pooling = torchrec.PoolingType
    return [
        torchrec.EmbeddingBagConfig(name="t0", num_embeddings=20, embedding_dim=4,
                                    feature_names=["f0", "f1"], pooling=pooling[poolings[0]]),
        torchrec.EmbeddingBagConfig(name="t1", num_embeddings=15, embedding_dim=3,
                                    feature_names=["f2"], pooling=pooling[poolings[-1]]),
        torchrec.EmbeddingBagConfig(name="t2", num_embeddings=9, embedding_dim=4,
                                    feature_names=["f3"], pooling=pooling[poolings[0]]),
    ]


@st.composite
def kjts(draw, keys=("f0", "f1", "f2", "f3"), rows=(20, 20, 15, 9), weighted=True):
    """A random TorchRec KeyedJaggedTensor over ``keys`` (ids within each key's table)."""
    batch = draw(st.integers(1, 4))  # TorchRec 1.8's to_dict fails on a batch of 0 examples
    values, lengths = [], []
    for num_rows in rows:
        for _ in range(batch):
            bag = draw(st.lists(st.integers(0, num_rows - 1), max_size=3))
            values += bag
            lengths.append(len(bag))
    weights = None
    if weighted:
        weights = torch.tensor(draw(st.lists(st.floats(-2, 2, width=32), min_size=len(values),
                                             max_size=len(values))), dtype=torch.float32)
    return KeyedJaggedTensor(keys=list(keys), values=torch.tensor(values, dtype=torch.long),
                             lengths=torch.tensor(lengths, dtype=torch.long), weights=weights,
                             stride=batch)


@settings(max_examples=20, deadline=None)
@given(kjt=kjts())
def test_unweighted_collection_ignores_batch_weights_like_torchrec(kjt):
    torch.manual_seed(0)
    theirs = torchrec.EmbeddingBagCollection(tables=torchrec_tables(), is_weighted=False)
    ours = EmbeddingBagCollection.from_torchrec(theirs)
    assert ours.is_weighted() is False and theirs.is_weighted() is False
    want = theirs(kjt)
    got = ours(KeyedJagged.from_torchrec(kjt))  # weighted batch, mean tables: weights ignored
    assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
    torch.testing.assert_close(got.values(), want.values(), **TOL)
    torch.testing.assert_close(ours(kjt).values(), want.values(), **TOL)  # a KJT is accepted too


@settings(max_examples=20, deadline=None)
@given(kjt=kjts())
def test_weighted_collection_matches_torchrec_values_and_grads(kjt):
    torch.manual_seed(1)
    theirs = torchrec.EmbeddingBagCollection(tables=torchrec_tables(("SUM",)), is_weighted=True)
    ours = EmbeddingBagCollection.from_torchrec(theirs)
    assert ours.is_weighted() is True
    want, got = theirs(kjt), ours(kjt)
    torch.testing.assert_close(got.values(), want.values(), **TOL)
    probe = torch.randn(want.values().shape)
    (want.values() * probe).sum().backward()
    (got.values() * probe).sum().backward()
    for table in ("t0", "t1", "t2"):
        want_grad = theirs.embedding_bags[table].weight.grad
        got_grad = ours.table_grad(table)
        if want_grad is None:
            assert got_grad is None or not got_grad.any()
        else:
            torch.testing.assert_close(got_grad, want_grad, **TOL)


def test_weighted_collection_needs_weights_as_torchrec():
    theirs = torchrec.EmbeddingBagCollection(tables=torchrec_tables(("SUM",)), is_weighted=True)
    ours = EmbeddingBagCollection.from_torchrec(theirs)
    kjt = KeyedJaggedTensor(keys=["f0", "f1", "f2", "f3"], values=torch.tensor([1, 2]),
                            lengths=torch.tensor([1, 0, 0, 1]))
    with pytest.raises(AssertionError, match="doesn't have weights"):
        theirs(kjt)
    with pytest.raises(ValueError, match=r"is weighted \(is_weighted=True\) but the batch has no weights"):
        ours(kjt)
    with pytest.raises(TypeError, match="is_weighted must be a bool, got 'cpu'"):
        EmbeddingBagCollection([TableConfig(name="a", num_embeddings=2, embedding_dim=2)], "cpu")


def test_default_is_torchrecs_is_weighted_false():
    tables = [TableConfig(name="a", num_embeddings=5, embedding_dim=2)]
    collection = EmbeddingBagCollection(tables)
    weighted = KeyedJagged.from_dict({"a": [[1, 2], [3]]}, weights={"a": [[2.0, 3.0], [4.0]]})
    plain = KeyedJagged(["a"], weighted.values(), weighted.lengths())
    assert torch.equal(collection(weighted).values(), collection(plain).values())
    summed = EmbeddingBagCollection(tables, is_weighted=True)
    summed.load_state_dict(collection.state_dict())
    rows = collection.table_weight("a").detach()
    torch.testing.assert_close(summed(weighted)["a"][0], 2 * rows[1] + 3 * rows[2])
    empty = KeyedJagged(["a"], torch.tensor([]), offsets=torch.tensor([]))  # TorchRec's empty batch
    assert collection(empty).values().shape == (0, 2)


def test_torchrec_dlrm_moved_over_gives_the_same_values():
    from torchrec.models.dlrm import DLRM

    torch.manual_seed(2)
    tables = [torchrec.EmbeddingBagConfig(name=f"t{i}", num_embeddings=30, embedding_dim=8,
                                          feature_names=[f"f{i}"]) for i in range(3)]
    model = DLRM(embedding_bag_collection=torchrec.EmbeddingBagCollection(tables=tables),
                 dense_in_features=5, dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[8, 1])
    dense = torch.randn(4, 5)
    kjt = KeyedJagged.from_dict({f"f{i}": [[i, 3], [], [29], [7, 7, 1]] for i in range(3)}).to_torchrec()
    want = model(dense, kjt)
    sparse_arch = model.sparse_arch
    sparse_arch.embedding_bag_collection = EmbeddingBagCollection.from_torchrec(
        sparse_arch.embedding_bag_collection
    )
    got = model(dense, kjt)  # the model's own forward, on embtable's collection
    torch.testing.assert_close(got, want, **TOL)


def test_from_torchrec_refuses_what_embtable_cannot_hold():
    with pytest.raises(TypeError, match="expected a torchrec EmbeddingBagCollection, got Linear"):
        EmbeddingBagCollection.from_torchrec(torch.nn.Linear(2, 2))
    int_table = torchrec.EmbeddingBagConfig(name="q", num_embeddings=4, embedding_dim=4,
                                            feature_names=["q"], data_type=torchrec.DataType.INT8)
    fake = torchrec.EmbeddingBagCollection(tables=[torchrec_tables()[0]])
    fake._embedding_bag_configs = [int_table]
    with pytest.raises(ValueError, match="table 'q' has data_type INT8"):
        EmbeddingBagCollection.from_torchrec(fake)


def test_variable_batch_per_feature_matches_torchrec_with_inverse_indices():
    torch.manual_seed(3)
    theirs = torchrec.EmbeddingBagCollection(tables=torchrec_tables(), is_weighted=False)
    ours = EmbeddingBagCollection.from_torchrec(theirs)
    keys, strides = ["f0", "f1", "f2", "f3"], [2, 3, 1, 2]
    lengths = torch.tensor([1, 2, 0, 3, 1, 2, 0, 1])
    values = torch.tensor([1, 4, 5, 2, 3, 7, 14, 0, 8, 6])
    batch = KeyedJagged(keys, values, lengths, stride_per_key=strides)
    result = ours(batch)
    assert result.stride_per_key() == strides
    assert [tuple(result[f].shape) for f in keys] == [(2, 4), (3, 4), (1, 3), (2, 4)]
    with pytest.raises(ValueError, match="different batch sizes"):
        result.values()
    # TorchRec's unsharded collection pools such a batch only with inverse_indices, which map
    # each of the 3 examples to a row of each feature; the oracle is that expansion.
    inverse = torch.tensor([[0, 1, 1], [0, 1, 2], [0, 0, 0], [1, 0, 1]])
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths,
                            stride_per_key_per_rank=[[s] for s in strides],
                            inverse_indices=(keys, inverse))
    want = theirs(kjt)
    for f, feature in enumerate(keys):
        torch.testing.assert_close(result[feature][inverse[f]], want[feature], **TOL)
    # the same batch carrying inverse_indices: embtable expands as TorchRec does
    expanded = ours(KeyedJagged(keys, values, lengths, stride_per_key=strides,
                                inverse_indices=(keys, inverse)))
    assert expanded.stride_per_key() == [3, 3, 3, 3]
    torch.testing.assert_close(expanded.values(), want.values(), **TOL)
    torch.testing.assert_close(ours(kjt).values(), want.values(), **TOL)  # from the KJT itself
    reordered = KeyedJagged(keys, values, lengths, stride_per_key=strides,
                            inverse_indices=(keys[::-1], inverse.flip(0)))
    torch.testing.assert_close(ours(reordered).values(), want.values(), **TOL)
    with pytest.raises(KeyError, match="inverse_indices have no row for feature 'f3'"):
        ours(KeyedJagged(keys, values, lengths, stride_per_key=strides,
                         inverse_indices=(keys[:3], inverse[:3])))
    empty = ours(KeyedJagged(keys, values[:2], torch.tensor([1, 1, 0, 0]), stride_per_key=[1, 1, 0, 2]))
    assert empty["f2"].shape == (0, 3) and torch.equal(empty["f3"], torch.zeros(2, 4))


def test_regroup_matches_keyed_tensor_regroup():
    torch.manual_seed(4)
    first = PooledEmbeddings(["a", "b"], [torch.randn(3, 2), torch.randn(3, 4)])
    second = PooledEmbeddings(["c", "b"], [torch.randn(3, 1), torch.randn(3, 4)])
    theirs = [KeyedTensor.from_tensor_list(out.keys(), [out[k] for k in out.keys()])
              for out in (first, second)]
    for groups in ([["a", "c"], ["b"]], [["b", "a"], ["c", "a"]], [["c", "b", "a"]]):
        got = PooledEmbeddings.regroup([first, second], groups)
        want = KeyedTensor.regroup(theirs, groups)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    named = PooledEmbeddings.regroup_as_dict([first, second], [["a"], ["b", "c"]], ["x", "y"])
    want = KeyedTensor.regroup_as_dict(theirs, [["a"], ["b", "c"]], ["x", "y"])
    assert list(named) == list(want) and all(torch.equal(named[k], want[k]) for k in want)
    mixed = PooledEmbeddings.regroup([first, theirs[1]], [["a", "c"]])[0]  # KeyedTensor inputs too
    torch.testing.assert_close(mixed, torch.cat([first["a"], second["c"]], 1))
    # TorchRec's own regrouping code takes embtable's outputs as they are
    from torchrec.modules.regroup import KTRegroupAsDict

    module = KTRegroupAsDict([["a", "c"], ["b"]], ["x", "y"])
    by_torchrec = module([first, second])
    assert first.key_dim() == 1 and first.device() == torch.device("cpu")
    for key, tensor in PooledEmbeddings.regroup_as_dict([first, second], [["a", "c"], ["b"]],
                                                         ["x", "y"]).items():
        torch.testing.assert_close(by_torchrec[key], tensor)
    third = PooledEmbeddings(["c"], [second["c"]])  # each key once: TorchRec's fast path
    for g, w in zip(KeyedTensor.regroup([first, third], [["c", "a"], ["b"]]),
                    PooledEmbeddings.regroup([first, third], [["c", "a"], ["b"]])):
        torch.testing.assert_close(g, w)
    with pytest.raises(KeyError, match="no output has feature 'z' \\(group 0\\)"):
        PooledEmbeddings.regroup([first], [["z"]])
    with pytest.raises(ValueError, match="group 1 is empty"):
        PooledEmbeddings.regroup([first], [["a"], []])
    with pytest.raises(ValueError, match="2 keys for 1 groups"):
        PooledEmbeddings.regroup_as_dict([first], [["a"]], ["x", "y"])


def test_pooled_output_is_a_pytree_node():
    collection = EmbeddingBagCollection([
        TableConfig(name="t", num_embeddings=6, embedding_dim=3, feature_names=["p", "q"]),
    ])
    batch = KeyedJagged.from_dict({"p": [[1, 2], [3]], "q": [[], [5]]})
    result = collection(batch)
    leaves, spec = pytree.tree_flatten(result)
    assert len(leaves) == 2 and leaves[0] is result["p"]
    back = pytree.tree_unflatten(leaves, spec)
    assert isinstance(back, PooledEmbeddings) and back.keys() == ["p", "q"]
    assert torch.equal(back.values(), result.values())
    doubled = pytree.tree_map(lambda t: 2 * t, result)
    assert torch.equal(doubled.values(), 2 * result.values())
    paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(result)[0]]
    assert paths == ["['p']", "['q']"]

    def pooled(weight):
        return torch.func.functional_call(collection, {"grouped_weight_0": weight}, (batch,))

    jac = torch.func.jacrev(lambda w: pooled(w).values().sum())(collection.grouped_weight_0.detach())
    assert torch.equal(jac[1], torch.ones(3)) and torch.equal(jac[4], torch.zeros(3))


def test_export_returns_pooled_embeddings():
    collection = EmbeddingBagCollection([
        TableConfig(name="t", num_embeddings=6, embedding_dim=3, feature_names=["p", "q"]),
    ])

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sparse = collection

        def forward(self, values, lengths):
            return self.sparse(KeyedJagged(["p", "q"], values, lengths, validate=False))

    values, lengths = torch.tensor([1, 2, 3, 5]), torch.tensor([2, 1, 0, 1])
    exported = torch.export.export(Wrapper(), (values, lengths))
    got = exported.module()(values, lengths)
    assert isinstance(got, PooledEmbeddings)
    torch.testing.assert_close(got.values(), Wrapper()(values, lengths).values())


def test_embedding_collection_matches_torchrec_and_takes_a_batch_size_per_feature():
    from embtable import EmbeddingCollection

    torch.manual_seed(5)
    configs = [torchrec.EmbeddingConfig(name="w", num_embeddings=12, embedding_dim=3,
                                        feature_names=["q", "t"])]
    theirs = torchrec.EmbeddingCollection(tables=configs)
    ours = EmbeddingCollection.from_torchrec(theirs)
    assert ours.embedding_configs() == [TableConfig(name="w", num_embeddings=12, embedding_dim=3,
                                                    feature_names=["q", "t"], pooling="none",
                                                    init="uniform")]
    with pytest.raises(TypeError, match="expected a torchrec EmbeddingCollection, got"):
        EmbeddingCollection.from_torchrec(torchrec.EmbeddingBagCollection(tables=torchrec_tables()))
    kjt = KeyedJagged.from_dict({"q": [[1, 2], [11]], "t": [[], [4, 4, 0]]}).to_torchrec()
    want = theirs(kjt)
    got = ours(kjt)  # a KeyedJaggedTensor is accepted
    for feature in ("q", "t"):
        torch.testing.assert_close(got[feature].values, want[feature].values())
        assert got[feature].lengths.tolist() == want[feature].lengths().tolist()
    ragged = KeyedJagged(["q", "t"], torch.tensor([3, 5, 6, 7]), torch.tensor([2, 0, 1, 1]),
                         stride_per_key=[1, 3])
    rows = ours(ragged)
    table = ours.table_weight("w").detach()
    assert rows["q"].lengths.tolist() == [2] and rows["t"].lengths.tolist() == [0, 1, 1]
    torch.testing.assert_close(rows["t"].values, table[torch.tensor([6, 7])])
    torch.testing.assert_close(rows["q"].values, table[torch.tensor([3, 5])])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_batch_size_per_feature_matches_torch_per_feature(data):
    """Random tables (poolings, paddings, shared tables) and a batch size per feature: each
    feature's rows equal torch's embedding_bag over that feature's own bags."""
    tables = [
        TableConfig(name="a", num_embeddings=7, embedding_dim=3, feature_names=["a1", "a2"],
                    pooling=data.draw(st.sampled_from(["sum", "mean", "max"])),
                    padding_idx=data.draw(st.sampled_from([None, 0]))),
        TableConfig(name="b", num_embeddings=5, embedding_dim=3, padding_idx=4,
                    pooling=data.draw(st.sampled_from(["sum", "mean"]))),
        TableConfig(name="c", num_embeddings=4, embedding_dim=2),
    ]
    collection = EmbeddingBagCollection(tables)
    rows = {"a1": 7, "a2": 7, "b": 5, "c": 4}
    strides = data.draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
    ids = {f: [data.draw(st.lists(st.integers(0, n - 1), max_size=3)) for _ in range(s)]
           for (f, n), s in zip(rows.items(), strides)}
    values = torch.tensor([i for bags in ids.values() for bag in bags for i in bag], dtype=torch.long)
    lengths = torch.tensor([len(bag) for bags in ids.values() for bag in bags], dtype=torch.long)
    batch = KeyedJagged(list(ids), values, lengths, stride_per_key=strides)
    result = collection(batch)
    probe = 0.0
    for feature, config in zip(rows, [tables[0], tables[0], tables[1], tables[2]]):
        jagged = batch[feature]
        want = torch.nn.functional.embedding_bag(
            jagged.values, collection.table_weight(config.name), jagged.offsets[:-1],
            mode=config.pooling.value, padding_idx=config.padding_idx,
        )
        torch.testing.assert_close(result[feature], want, **TOL)
        probe = probe + result[feature].sum()
    if isinstance(probe, torch.Tensor):
        probe.backward()  # gradients flow through the per-feature split
        assert collection.grouped_weights[0].grad is not None


def test_to_torchrec_round_trips_and_refuses_what_torchrec_cannot_hold():
    from embtable import EmbeddingCollection

    tables = [TableConfig(name="t0", num_embeddings=9, embedding_dim=4, feature_names=["f0", "f1"]),
              TableConfig(name="t1", num_embeddings=6, embedding_dim=3, pooling="mean",
                          dtype=torch.float16)]
    ours = EmbeddingBagCollection(tables, is_weighted=False)
    theirs = ours.to_torchrec()
    assert isinstance(theirs, torchrec.EmbeddingBagCollection) and not theirs.is_weighted()
    batch = KeyedJagged.from_dict({"f0": [[1, 8], [2]], "f1": [[], [3]], "t1": [[5], [0, 1]]})
    want = theirs(batch.to_torchrec())
    got = ours(batch)
    torch.testing.assert_close(got.values().float(), want.values(), rtol=1e-3, atol=1e-3)
    back = EmbeddingBagCollection.from_torchrec(theirs)
    shape = [(t.name, t.num_embeddings, t.embedding_dim, t.feature_names, t.pooling, t.dtype)
             for t in ours.tables]
    assert [(t.name, t.num_embeddings, t.embedding_dim, t.feature_names, t.pooling, t.dtype)
            for t in back.tables] == shape
    assert all(torch.equal(back.table_weight(t), ours.table_weight(t)) for t in ("t0", "t1"))
    words = EmbeddingCollection([TableConfig(name="w", num_embeddings=5, embedding_dim=2,
                                             pooling="none")])
    assert torch.equal(words.to_torchrec().embeddings["w"].weight, words.table_weight("w"))
    for table, problem in ((TableConfig(name="m", num_embeddings=3, embedding_dim=2, pooling="max"),
                            "pooling='max'"),
                           (TableConfig(name="p", num_embeddings=3, embedding_dim=2, padding_idx=0),
                            "padding_idx=0"),
                           (TableConfig(name="d", num_embeddings=3, embedding_dim=2, dtype=torch.float64),
                            "dtype torch.float64")):
        with pytest.raises(ValueError, match=f"table '{table.name}' has {problem}"):
            EmbeddingBagCollection([table]).to_torchrec()
