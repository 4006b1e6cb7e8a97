"""EmbeddingBagCollection / EmbeddingCollection against loops of torch modules over the same weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig
from embtable.nn.grouping import plan_groups

# ---------------------------------------------------------------------- oracles


class TorchBagLoop(nn.Module):
    """The oracle: one torch.nn.EmbeddingBag per table, called once per feature."""

    def __init__(self, tables: list[TableConfig]) -> None:
        super().__init__()
        self.tables = tables
        self.embedding_bags = nn.ModuleDict(
            {
                t.name: nn.EmbeddingBag(
                    t.num_embeddings, t.embedding_dim, mode=t.pooling.value,
                    padding_idx=t.padding_idx, dtype=t.dtype,
                )
                for t in tables
            }
        )

    def forward(self, batch: KeyedJagged) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tables:
            for feature in t.feature_names:
                jagged = batch[feature]
                weights = None if jagged.weights is None else jagged.weights.to(t.dtype)
                out[feature] = self.embedding_bags[t.name](
                    jagged.values, jagged.offsets[:-1], per_sample_weights=weights
                )
        return out


class TorchEmbeddingLoop(nn.Module):
    """The oracle of the non-pooled collection: one torch.nn.Embedding per table."""

    def __init__(self, tables: list[TableConfig]) -> None:
        super().__init__()
        self.tables = tables
        self.embeddings = nn.ModuleDict(
            {t.name: nn.Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx, dtype=t.dtype)
             for t in tables}
        )

    def forward(self, batch: KeyedJagged) -> dict[str, torch.Tensor]:
        return {
            feature: self.embeddings[t.name](batch[feature].values)
            for t in self.tables
            for feature in t.feature_names
        }


# ---------------------------------------------------------------------- random configurations


@st.composite
def configs_and_batches(draw, poolings=("sum", "mean", "max"), weighted=False):
    num_tables = draw(st.integers(1, 4))
    tables, counter = [], 0
    for index in range(num_tables):
        rows = draw(st.integers(1, 12))
        features = []
        for _ in range(draw(st.integers(1, 2))):
            features.append(f"f{counter}")
            counter += 1
        tables.append(
            TableConfig(
                name=f"t{index}",
                num_embeddings=rows,
                embedding_dim=draw(st.sampled_from([1, 3, 4, 5])),
                feature_names=features,
                pooling=draw(st.sampled_from(poolings)),
                padding_idx=draw(st.none() | st.integers(-rows, rows - 1)),
                dtype=draw(st.sampled_from([torch.float32, torch.float32, torch.float64])),
            )
        )
    batch = draw(st.integers(0, 4))
    ids = {}
    for t in tables:
        for feature in t.feature_names:
            ids[feature] = [
                draw(st.lists(st.integers(0, t.num_embeddings - 1), max_size=4)) for _ in range(batch)
            ]
    order = draw(st.permutations(list(ids)))
    ids = {key: ids[key] for key in order}
    weights = None
    if weighted:
        weights = {
            key: [[draw(st.floats(-2, 2, width=32)) for _ in bag] for bag in bags]
            for key, bags in ids.items()
        }
    return tables, KeyedJagged.from_dict(ids, weights=weights)


def copy_weights(collection, oracle) -> None:
    result = oracle.load_state_dict(collection.state_dict())
    assert not result.missing_keys and not result.unexpected_keys


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def compare_table_grads(collection, modules, tables) -> None:
    """Each table's rows of the grouped gradient equal the gradient of that table's torch module."""
    for t in tables:
        expected_grad = modules[t.name].weight.grad
        got_grad = collection.table_grad(t.name)
        if expected_grad is None:  # no feature of the table had an id
            assert got_grad is None or not got_grad.any()
        else:
            torch.testing.assert_close(got_grad, expected_grad, **tolerance(t.dtype))


def check_bag_collection(tables, batch, weights_grad=False):
    collection = EmbeddingBagCollection(tables, is_weighted=batch.weights() is not None)
    oracle = TorchBagLoop(tables)
    copy_weights(collection, oracle)
    if weights_grad:
        batch = KeyedJagged(batch.keys(), batch.values(), batch.lengths(),
                            weights=batch.weights().clone().requires_grad_())
        oracle_batch = KeyedJagged(batch.keys(), batch.values(), batch.lengths(),
                                   weights=batch.weights().detach().clone().requires_grad_())
    else:
        oracle_batch = batch
    got = collection(batch)
    expected = oracle(oracle_batch)
    assert got.keys() == collection.feature_names
    generator = torch.Generator().manual_seed(0)
    loss_got, loss_expected = 0, 0
    for t in tables:
        for feature in t.feature_names:
            assert got[feature].dtype == t.dtype
            torch.testing.assert_close(got[feature], expected[feature], **tolerance(t.dtype))
            upstream = torch.randn(expected[feature].shape, generator=generator, dtype=t.dtype)
            loss_got = loss_got + (got[feature] * upstream).sum()
            loss_expected = loss_expected + (expected[feature] * upstream).sum()
    if len({t.dtype for t in tables}) == 1:
        concatenated = torch.cat([expected[f] for f in collection.feature_names], 1)
        torch.testing.assert_close(got.values(), concatenated, **tolerance(tables[0].dtype))
    loss_got.backward()
    loss_expected.backward()
    compare_table_grads(collection, oracle.embedding_bags, tables)
    if weights_grad:
        torch.testing.assert_close(batch.weights().grad, oracle_batch.weights().grad)


# ---------------------------------------------------------------------- EmbeddingBagCollection


@settings(max_examples=60, deadline=None)
@given(case=configs_and_batches())
def test_bag_collection_matches_torch_loop(case):
    check_bag_collection(*case)


@settings(max_examples=30, deadline=None)
@given(case=configs_and_batches(poolings=("sum",), weighted=True))
def test_bag_collection_per_value_weights_match_torch(case):
    check_bag_collection(*case, weights_grad=True)


def test_shared_table_with_several_padding_rows_in_one_group():
    tables = [
        TableConfig(name="a", num_embeddings=5, embedding_dim=2, padding_idx=0,
                    feature_names=["a1", "a2"], pooling="mean"),
        TableConfig(name="b", num_embeddings=4, embedding_dim=2, padding_idx=3, pooling="mean"),
    ]
    batch = KeyedJagged.from_dict(
        {"a1": [[0, 0], [1, 0, 2]], "a2": [[4], []], "b": [[3, 3, 1], [3]]}
    )
    assert plan_groups(tables).buckets[0].padding_rows == (0, 8)
    check_bag_collection(tables, batch)
    result = EmbeddingBagCollection(tables)(batch)
    assert torch.equal(result["a1"][0], torch.zeros(2))  # only padding: zeros
    assert torch.equal(result["b"][1], torch.zeros(2))


def test_one_batched_call_per_group_and_mode(monkeypatch):
    import embtable.nn.collection as module

    calls = []
    real = module.functional.embedding_bag

    def spy(ids, weight, offsets, **kwargs):
        calls.append((tuple(weight.shape), kwargs["mode"], ids.numel()))
        return real(ids, weight, offsets, **kwargs)

    monkeypatch.setattr(module.functional, "embedding_bag", spy)
    tables = [TableConfig(name=f"t{i}", num_embeddings=10 * (i + 1), embedding_dim=4) for i in range(5)]
    tables.append(TableConfig(name="m", num_embeddings=7, embedding_dim=4, pooling="max"))
    tables.append(TableConfig(name="wide", num_embeddings=3, embedding_dim=6))
    collection = EmbeddingBagCollection(tables)
    batch = KeyedJagged.from_dict({t.name: [[0, 1], [2]] for t in tables})
    collection(batch)
    # the max table shares the dim-4 group's storage but is pooled by its own call
    assert calls == [((157, 4), "sum", 15), ((157, 4), "max", 3), ((3, 6), "sum", 3)]


def test_storage_layout_and_views():
    tables = [
        TableConfig(name="user", num_embeddings=6, embedding_dim=3),
        TableConfig(name="city", num_embeddings=4, embedding_dim=2),
        TableConfig(name="item", num_embeddings=5, embedding_dim=3, padding_idx=1),
    ]
    collection = EmbeddingBagCollection(tables)
    assert [name for name, _ in collection.named_parameters()] == ["grouped_weight_0", "grouped_weight_1"]
    assert collection.grouped_weight_0.shape == (11, 3) and collection.grouped_weight_1.shape == (4, 2)
    assert collection.plan.tables["item"].row_offset == 6
    view = collection.table_weight("item")
    assert view.shape == (5, 3)
    assert view.data_ptr() == collection.grouped_weight_0[6].data_ptr()
    assert torch.equal(view[1], torch.zeros(3))  # padding row zeroed at init
    with torch.no_grad():
        view.fill_(2.0)
    assert torch.equal(collection.grouped_weight_0[6:], torch.full((5, 3), 2.0))
    assert list(collection.table_weights()) == ["user", "city", "item"]
    with pytest.raises(KeyError, match=r"no table 'nope'; the tables are \['user', 'city', 'item'\]"):
        collection.table_weight("nope")
    assert collection.table_grad("user") is None


def test_init_matches_torch_modules_created_in_table_order():
    tables = [
        TableConfig(name="a", num_embeddings=30, embedding_dim=5, padding_idx=2),
        TableConfig(name="b", num_embeddings=7, embedding_dim=3),
        TableConfig(name="c", num_embeddings=20, embedding_dim=5),
    ]
    torch.manual_seed(3)
    collection = EmbeddingBagCollection(tables)
    torch.manual_seed(3)
    oracle = TorchBagLoop(tables)
    for t in tables:
        assert torch.equal(collection.table_weight(t.name), oracle.embedding_bags[t.name].weight)


def test_state_dict_round_trip_with_torch_loop():
    tables = [
        TableConfig(name="a", num_embeddings=4, embedding_dim=2, feature_names=["x", "y"]),
        TableConfig(name="b", num_embeddings=3, embedding_dim=5),
    ]
    collection = EmbeddingBagCollection(tables)
    oracle = TorchBagLoop(tables)
    state = collection.state_dict()
    assert list(state) == ["embedding_bags.a.weight", "embedding_bags.b.weight"]
    assert state["embedding_bags.b.weight"].shape == (3, 5)
    assert not state["embedding_bags.a.weight"].requires_grad
    # torch loop -> collection
    collection.load_state_dict(oracle.state_dict())
    for t in tables:
        assert torch.equal(collection.table_weight(t.name), oracle.embedding_bags[t.name].weight)
    # inside a parent module, with a prefix
    parent = nn.Module()
    parent.sparse = collection
    assert list(parent.state_dict()) == ["sparse.embedding_bags.a.weight", "sparse.embedding_bags.b.weight"]
    parent.load_state_dict(parent.state_dict())


def test_load_state_dict_errors_leave_weights_untouched():
    tables = [TableConfig(name="a", num_embeddings=4, embedding_dim=2)]
    collection = EmbeddingBagCollection(tables)
    before = collection.grouped_weight_0.detach().clone()
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"embedding_bags.a.weight\""):
        collection.load_state_dict({})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        collection.load_state_dict({"embedding_bags.a.weight": torch.zeros(4, 2), "extra": torch.zeros(1)})
    assert torch.equal(collection.grouped_weight_0, torch.zeros(4, 2))  # loaded despite the extra key
    with torch.no_grad():
        collection.grouped_weight_0.copy_(before)
    with pytest.raises(RuntimeError, match=r"size mismatch for embedding_bags.a.weight"):
        collection.load_state_dict({"embedding_bags.a.weight": torch.zeros(5, 2)})
    assert torch.equal(collection.grouped_weight_0, before)
    result = collection.load_state_dict({}, strict=False)
    assert result.missing_keys == ["embedding_bags.a.weight"]


def test_forward_errors():
    tables = [TableConfig(name="a", num_embeddings=4, embedding_dim=2, feature_names=["x"]),
              TableConfig(name="b", num_embeddings=3, embedding_dim=2, pooling="mean")]
    collection = EmbeddingBagCollection(tables)
    with pytest.raises(KeyError, match=r"no feature 'b' \(read from table 'b'\); its keys are \['x'\]"):
        collection(KeyedJagged.from_dict({"x": [[1]]}))
    with pytest.raises(IndexError, match=r"feature 'b' holds id 3, outside table 'b' of 3 rows \(valid ids are 0..2\)"):
        collection(KeyedJagged.from_dict({"x": [[1]], "b": [[3]]}))
    with pytest.raises(IndexError, match="feature 'x' holds id -1"):
        collection(KeyedJagged.from_dict({"x": [[-1]], "b": [[0]]}))
    with pytest.raises(ValueError, match="feature 'b' \\(table 'b'\\) uses pooling='mean'; weights apply only"):
        EmbeddingBagCollection(tables, is_weighted=True)(
            KeyedJagged.from_dict({"x": [[1]], "b": [[0]]}, weights={"x": [[1.0]], "b": [[1.0]]})
        )
    with pytest.raises(TypeError, match="expected a KeyedJagged batch, got dict"):
        collection({"x": torch.tensor([1])})
    with pytest.raises(ValueError, match="the batch is on meta but the tables on cpu"):
        collection(KeyedJagged.from_dict({"x": [[1]], "b": [[0]]}).to("meta"))


def test_constructor_errors():
    with pytest.raises(ValueError, match="EmbeddingBagCollection: table 'a' has pooling='none'"):
        EmbeddingBagCollection([TableConfig(name="a", num_embeddings=4, embedding_dim=2, pooling="none")])
    with pytest.raises(ValueError, match="EmbeddingBagCollection: two tables are named 'a'"):
        EmbeddingBagCollection([TableConfig(name="a", num_embeddings=4, embedding_dim=2)] * 2)
    with pytest.raises(ValueError, match="feature 'f' is listed by tables 'a' and 'b'"):
        EmbeddingBagCollection([
            TableConfig(name="a", num_embeddings=4, embedding_dim=2, feature_names=["f"]),
            TableConfig(name="b", num_embeddings=4, embedding_dim=2, feature_names=["f"]),
        ])
    with pytest.raises(ValueError, match="tables must list at least one TableConfig"):
        EmbeddingBagCollection([])
    with pytest.raises(TypeError, match="tables must be TableConfig objects, got dict"):
        EmbeddingBagCollection([{"name": "a"}])
    with pytest.raises(ValueError, match="EmbeddingCollection: table 'a' has pooling='max'"):
        EmbeddingCollection([TableConfig(name="a", num_embeddings=4, embedding_dim=2, pooling="max")])


def test_extra_keys_ignored_and_repr():
    tables = [TableConfig(name="a", num_embeddings=4, embedding_dim=2, padding_idx=0,
                          feature_names=["x", "y"], pooling="max")]
    collection = EmbeddingBagCollection(tables)
    result = collection(KeyedJagged.from_dict({"other": [[9], [9]], "y": [[1], []], "x": [[2], [3]]}))
    assert result.keys() == ["x", "y"] and len(result) == 2 and "other" not in result
    assert repr(collection) == (
        "EmbeddingBagCollection((a): 4 x 2, pooling=max, padding_idx=0, features=['x', 'y'])"
    )
    assert repr(result) == "PooledEmbeddings({'x': (2, 2), 'y': (2, 2)})"
    with pytest.raises(KeyError, match=r"PooledEmbeddings: no feature 'z'; the features are \['x', 'y'\]"):
        result["z"]


def test_pooled_result_views():
    tables = [TableConfig(name="a", num_embeddings=4, embedding_dim=2),
              TableConfig(name="b", num_embeddings=4, embedding_dim=3)]
    result = EmbeddingBagCollection(tables)(KeyedJagged.from_dict({"a": [[1], [2]], "b": [[0], []]}))
    assert result.values().shape == (2, 5) and result.values() is result.values()
    assert result.offset_per_key() == [0, 2, 5] and result.length_per_key() == [2, 3]
    assert torch.equal(result.values()[:, 2:], result["b"])
    assert list(result.to_dict()) == ["a", "b"] and [k for k, _ in result.items()] == ["a", "b"]


# ---------------------------------------------------------------------- EmbeddingCollection


@settings(max_examples=50, deadline=None)
@given(case=configs_and_batches(poolings=("none", "sum")))
def test_embedding_collection_matches_torch_loop(case):
    tables, batch = case
    collection = EmbeddingCollection(tables)
    oracle = TorchEmbeddingLoop(tables)
    copy_weights(collection, oracle)
    got, expected = collection(batch), oracle(batch)
    generator = torch.Generator().manual_seed(0)
    loss_got, loss_expected = 0, 0
    for t in tables:
        for feature in t.feature_names:
            rows = got[feature]
            assert torch.equal(rows.lengths, batch[feature].lengths)
            torch.testing.assert_close(rows.values, expected[feature], rtol=0, atol=0)
            upstream = torch.randn(rows.values.shape, generator=generator, dtype=t.dtype)
            loss_got = loss_got + (rows.values * upstream).sum()
            loss_expected = loss_expected + (expected[feature] * upstream).sum()
    if isinstance(loss_got, int):
        return
    loss_got.backward()
    loss_expected.backward()
    compare_table_grads(collection, oracle.embeddings, tables)


def test_embedding_collection_to_padded_and_state_dict():
    tables = [TableConfig(name="words", num_embeddings=10, embedding_dim=2, padding_idx=0,
                          feature_names=["q", "t"], pooling="none")]
    collection = EmbeddingCollection(tables)
    oracle = TorchEmbeddingLoop(tables)
    oracle.load_state_dict(collection.state_dict())
    padded = torch.tensor([[4, 9, 0], [5, 0, 0]])
    batch = KeyedJagged.from_padded({"q": padded, "t": padded}, pad_value=0)
    dense = collection(batch)["q"].to_padded(max_length=3)
    assert collection(batch)["q"].to_padded().shape == (2, 2, 2)
    torch.testing.assert_close(dense, oracle.embeddings["words"](padded))
    assert collection(batch)["q"].to_padded(max_length=1).shape == (2, 1, 2)
    assert repr(collection(batch)) == "JaggedEmbeddings({'q': (3, 2), 't': (3, 2)})"


# ---------------------------------------------------------------------- the seeds' models


class SeedCategoryModel(nn.Module):
    """The seed's CategoryModel, verbatim (torch.nn.Embedding per feature)."""

    def __init__(self):
        super().__init__()
        self.category_embedding = nn.Embedding(100, 32)
        self.brand_embedding = nn.Embedding(500, 16)
        self.location_embedding = nn.Embedding(50, 8)
        self.fc = nn.Linear(32 + 16 + 8, 1)

    def forward(self, categories, brands, locations):
        combined = torch.cat(
            [self.category_embedding(categories), self.brand_embedding(brands),
             self.location_embedding(locations)], dim=1,
        )
        return self.fc(combined)


class CollectionCategoryModel(nn.Module):
    """The same model on one EmbeddingBagCollection: one batched lookup for all three features."""

    def __init__(self):
        super().__init__()
        self.sparse = EmbeddingBagCollection([
            TableConfig(name="category", num_embeddings=100, embedding_dim=32),
            TableConfig(name="brand", num_embeddings=500, embedding_dim=16),
            TableConfig(name="location", num_embeddings=50, embedding_dim=8),
        ])
        self.fc = nn.Linear(32 + 16 + 8, 1)

    def forward(self, categories, brands, locations):
        ids = torch.cat([categories, brands, locations])
        batch = KeyedJagged(["category", "brand", "location"], ids, torch.ones_like(ids))
        return self.fc(self.sparse(batch).values())


def test_seed_category_model_on_a_collection():
    torch.manual_seed(0)
    seed_model = SeedCategoryModel()
    model = CollectionCategoryModel()
    with torch.no_grad():
        for name in ("category", "brand", "location"):
            model.sparse.table_weight(name).copy_(getattr(seed_model, f"{name}_embedding").weight)
        model.fc.load_state_dict(seed_model.fc.state_dict())
    categories, brands, locations = torch.tensor([5, 12, 33]), torch.tensor([45, 123, 67]), torch.tensor([2, 8, 15])
    expected = seed_model(categories, brands, locations)
    got = model(categories, brands, locations)
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    for name in ("category", "brand", "location"):
        torch.testing.assert_close(model.sparse.table_grad(name), getattr(seed_model, f"{name}_embedding").weight.grad)
    torch.testing.assert_close(model.fc.weight.grad, seed_model.fc.weight.grad)


class SeedRecommendationModel(nn.Module):
    """The seed's RecommendationModel, verbatim."""

    def __init__(self, num_users, num_items, embed_dim):
        super().__init__()
        self.user_embedding = nn.Embedding(num_users, embed_dim)
        self.item_embedding = nn.Embedding(num_items, embed_dim)

    def forward(self, user_ids, item_ids):
        return torch.sum(self.user_embedding(user_ids) * self.item_embedding(item_ids), dim=1)


class CollectionRecommendationModel(nn.Module):
    """The same scores from one EmbeddingBagCollection holding both tables (one grouped weight)."""

    def __init__(self, num_users, num_items, embed_dim):
        super().__init__()
        self.sparse = EmbeddingBagCollection([
            TableConfig(name="user", num_embeddings=num_users, embedding_dim=embed_dim),
            TableConfig(name="item", num_embeddings=num_items, embedding_dim=embed_dim),
        ])

    def forward(self, user_ids, item_ids):
        ids = torch.cat([user_ids, item_ids])
        pooled = self.sparse(KeyedJagged(["user", "item"], ids, torch.ones_like(ids)))
        return torch.sum(pooled["user"] * pooled["item"], dim=1)


def test_seed_recommendation_model_on_a_collection():
    torch.manual_seed(0)
    seed_model = SeedRecommendationModel(num_users=10000, num_items=50000, embed_dim=64)
    model = CollectionRecommendationModel(num_users=10000, num_items=50000, embed_dim=64)
    assert len(list(model.parameters())) == 1  # both tables in one grouped weight
    model.sparse.load_state_dict({
        "embedding_bags.user.weight": seed_model.user_embedding.weight,
        "embedding_bags.item.weight": seed_model.item_embedding.weight,
    })
    user_ids, item_ids = torch.tensor([123, 456, 789, 123]), torch.tensor([1001, 2002, 3003, 3003])
    expected = seed_model(user_ids, item_ids)
    got = model(user_ids, item_ids)
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(model.sparse.table_grad("user"), seed_model.user_embedding.weight.grad)
    torch.testing.assert_close(model.sparse.table_grad("item"), seed_model.item_embedding.weight.grad)


# ---------------------------------------------------------------------- TorchRec


def test_torchrec_embedding_bag_collection_state_dict_and_outputs():
    pytest.importorskip("torchrec")
    import torchrec

    torchrec_tables = [
        torchrec.EmbeddingBagConfig(name="t0", embedding_dim=8, num_embeddings=20, feature_names=["f0", "f1"]),
        torchrec.EmbeddingBagConfig(name="t1", embedding_dim=8, num_embeddings=30, feature_names=["f2"]),
    ]
    reference = torchrec.EmbeddingBagCollection(tables=torchrec_tables, device=torch.device("cpu"))
    collection = EmbeddingBagCollection([
        TableConfig(name="t0", num_embeddings=20, embedding_dim=8, feature_names=["f0", "f1"]),
        TableConfig(name="t1", num_embeddings=30, embedding_dim=8, feature_names=["f2"]),
    ])
    collection.load_state_dict(reference.state_dict())
    batch = KeyedJagged.from_dict({"f0": [[1, 2], [3]], "f1": [[], [19]], "f2": [[29, 0, 5], [7]]})
    expected = reference(batch.to_torchrec())
    got = collection(batch)
    torch.testing.assert_close(got.values(), expected.values())
    assert expected.keys() == got.keys()
    reference.load_state_dict(collection.state_dict())


def test_load_state_dict_is_all_or_nothing_and_copies_with_assign():
    tables = [TableConfig(name="a", num_embeddings=4, embedding_dim=2),
              TableConfig(name="b", num_embeddings=3, embedding_dim=2)]
    collection = EmbeddingBagCollection(tables)
    before = collection.grouped_weight_0.detach().clone()
    with pytest.raises(RuntimeError, match="size mismatch for embedding_bags.b.weight"):
        collection.load_state_dict({"embedding_bags.a.weight": torch.ones(4, 2),
                                    "embedding_bags.b.weight": torch.ones(2, 2)})
    assert torch.equal(collection.grouped_weight_0, before)  # table a not copied either
    storage = collection.grouped_weight_0
    collection.load_state_dict({"embedding_bags.a.weight": torch.ones(4, 2),
                                "embedding_bags.b.weight": torch.zeros(3, 2)}, assign=True)
    assert collection.grouped_weight_0 is storage
    assert torch.equal(storage, torch.cat([torch.ones(4, 2), torch.zeros(3, 2)]))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_dense_gradient_of_a_big_skewed_collection_at_one_and_two_threads(pooling):
    """The compiled dense backward (issue 11, s4 D): a grouped table of >= 32 MiB gets a lazily
    zeroed gradient, and each thread owns a run of rows holding ~half the ids (here the 8 small
    tables, first in the grouped table, hold most of the ids); the big table has a padding row.  Same sums in the same order at 1
    and 2 threads; equal to the torch loop's gradients and zero where no id landed."""
    tables = [TableConfig(name=f"s{t}", num_embeddings=50, embedding_dim=64, pooling=pooling,
                          feature_names=[f"s{t}"]) for t in range(8)]
    tables.append(TableConfig(name="big", num_embeddings=140_000, embedding_dim=64, pooling=pooling,
                              padding_idx=7, feature_names=["big"]))
    collection = EmbeddingBagCollection(tables)
    oracle = TorchBagLoop(tables)
    oracle.load_state_dict(collection.state_dict())
    g = torch.Generator().manual_seed(0)
    data = {f"s{t}": [torch.randint(0, 50, (3,), generator=g).tolist() for _ in range(64)] for t in range(8)}
    data["big"] = [torch.randint(0, 140_000, (3,), generator=g).tolist() + [7] * (e % 2) for e in range(64)]
    batch = KeyedJagged.from_dict(data)
    upstream = torch.randn(64, 9 * 64, generator=g)
    grads = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            collection.zero_grad(set_to_none=True)
            collection(batch).values().backward(upstream)
            grads.append(collection.grouped_weight_0.grad)
    finally:
        torch.set_num_threads(threads)
    assert grads[0].nbytes >= 32 << 20
    assert torch.equal(grads[0], grads[1])
    expected = oracle(batch)
    torch.cat([expected[f] for f in collection.feature_names], 1).backward(upstream)
    compare_table_grads(collection, oracle.embedding_bags, tables)
    untouched = torch.ones(140_000, dtype=torch.bool)
    untouched[torch.tensor([i for bag in data["big"] for i in bag])] = False
    assert not collection.table_grad("big")[untouched].any()
    assert not collection.table_grad("big")[7].any()  # the padding row gets nothing
