"""Recommendation models: outputs against hand-computed formulas, gradients, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embtable import KeyedJagged, TableConfig
from embtable.models import DLRM, CategoryModel, MatrixFactorization, RecommendationModel
from embtable.models.checkpoint import load_checkpoint, save_checkpoint
from embtable.models.fit import FitConfig, fit_ratings, make_optimizer
from embtable.models.metrics import ranking_metrics, rmse


def _mf() -> MatrixFactorization:
    torch.manual_seed(0)
    model = MatrixFactorization(6, 5, 4, user_features={"age": 3}, item_features={"year": 2},
                                item_bags={"genres": 4}, global_mean=3.0, init_std=0.5)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.feature_vectors["genres"].weight[4].zero_()
    return model


def test_matrix_factorization_equals_the_formula() -> None:
    model = _mf()
    user, item = torch.tensor([0, 5, 2]), torch.tensor([4, 0, 0])
    feats = {"age": torch.tensor([2, 0, 1]), "year": torch.tensor([1, 1, 0]),
             "genres": torch.tensor([[0, 3, 4], [4, 4, 4], [2, 2, 1]])}  # fmt: skip
    got = model(user, item, feats)
    W = {n: m.weight.detach() for n, m in model.named_modules() if hasattr(m, "weight")}
    assert W["user_vectors"].shape == (6, 5)  # 4 vector columns + the bias column
    vec = {k: w[:, :4] for k, w in W.items()}
    bias = {k: w[:, 4] for k, w in W.items()}
    for b in range(3):
        g = [int(x) for x in feats["genres"][b] if x != 4]
        gvec = vec["feature_vectors.genres"][g].mean(0) if g else torch.zeros(4)
        gbias = bias["feature_vectors.genres"][g].mean() if g else 0.0
        u = vec["user_vectors"][user[b]] + vec["feature_vectors.age"][feats["age"][b]]
        i = vec["item_vectors"][item[b]] + vec["feature_vectors.year"][feats["year"][b]] + gvec
        total = (bias["user_vectors"][user[b]] + bias["item_vectors"][item[b]]
                 + bias["feature_vectors.age"][feats["age"][b]]
                 + bias["feature_vectors.year"][feats["year"][b]] + gbias)  # fmt: skip
        assert torch.allclose(got[b], 3.0 + total + u @ i, atol=1e-5)


def test_biases_start_at_zero_and_can_be_switched_off() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(5, 6, 3, user_features={"age": 2}, item_bags={"genres": 3})
    for table in (model.user_vectors, model.item_vectors, *model.feature_vectors.values()):
        assert table.weight.shape[1] == 4 and torch.all(table.weight[:, 3] == 0)
    plain = MatrixFactorization(5, 6, 3, biases=False, global_mean=2.0)
    assert plain.item_vectors.weight.shape == (6, 3)
    u, i = torch.tensor([1]), torch.tensor([2])
    want = 2.0 + plain.user_vectors.weight[1] @ plain.item_vectors.weight[2]
    assert torch.allclose(plain(u, i), want.reshape(1))


def test_matrix_factorization_gradients_touch_only_the_batch_rows() -> None:
    model = _mf()
    feats = {"age": torch.tensor([1]), "year": torch.tensor([0]), "genres": torch.tensor([[2, 4]])}
    model(torch.tensor([3]), torch.tensor([1]), feats).sum().backward()
    rows = lambda t: torch.nonzero(t.weight.grad.abs().sum(1)).flatten().tolist()  # noqa: E731
    assert rows(model.user_vectors) == [3] and rows(model.item_vectors) == [1]
    assert rows(model.feature_vectors["genres"]) == [2]  # not the padding row 4
    with pytest.raises(KeyError, match="feature 'year' is missing"):
        model(torch.tensor([0]), torch.tensor([0]), {"age": torch.tensor([0])})
    with pytest.raises(ValueError, match="distinct"):
        MatrixFactorization(2, 2, user_features={"a": 2}, item_bags={"a": 3})


def test_seed_models_shapes_and_formulas() -> None:
    torch.manual_seed(0)
    rec = RecommendationModel(10, 20, 3)
    u, i = torch.tensor([1, 9]), torch.tensor([0, 19])
    want = (rec.user_embedding.weight[u] * rec.item_embedding.weight[i]).sum(1)
    assert torch.allclose(rec(u, i), want)
    cat = CategoryModel()
    x = (torch.tensor([5, 12]), torch.tensor([45, 123]), torch.tensor([2, 8]))
    out = cat(*x)
    concat = torch.cat([t.weight[v] for t, v in zip(cat.tables, x)], dim=1)
    assert out.shape == (2, 1) and torch.allclose(out, cat.mlp(concat))
    deep = CategoryModel((7, 9), (3, 2), hidden=(5,), out_features=4)
    assert deep(torch.tensor([1]), torch.tensor([2])).shape == (1, 4)
    with pytest.raises(ValueError, match="expected 2 feature tensors"):
        deep(torch.tensor([1]))


def test_dlrm_interactions_and_gradients() -> None:
    torch.manual_seed(0)
    tables = [TableConfig(name="user", num_embeddings=20, embedding_dim=4),
              TableConfig(name="item", num_embeddings=30, embedding_dim=4,
                          feature_names=["item", "history"], pooling="mean")]  # fmt: skip
    model = DLRM(tables, num_dense=2, bottom=(8,), top=(8,))
    dense = torch.randn(3, 2)
    batch = KeyedJagged.from_dict({"user": [[1], [2], [3]], "item": [[4], [5], [6]],
                                   "history": [[7, 8], [], [9]]})  # fmt: skip
    out = model(dense, batch)
    assert out.shape == (3,)
    x = model.bottom(dense)
    pooled = model.sparse(batch)
    vs = [x, pooled["user"], pooled["item"], pooled["history"]]
    dots = [(vs[a] * vs[b]).sum(1) for a in range(4) for b in range(a + 1, 4)]
    want = model.top(torch.cat([x, torch.stack(dots, 1)], 1)).squeeze(-1)
    assert torch.allclose(out, want, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="same embedding_dim"):
        DLRM([TableConfig(name="a", num_embeddings=3, embedding_dim=2),
              TableConfig(name="b", num_embeddings=3, embedding_dim=3)], num_dense=1)  # fmt: skip


def _synthetic(n: int = 3000):
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, 50, (n,), generator=gen), torch.randint(0, 40, (n,), generator=gen)
    pu, qi = torch.randn(50, 2, generator=gen), torch.randn(40, 2, generator=gen)
    ratings = (3 + (pu[users] * qi[items]).sum(1)).clamp(1, 5)
    return users, items, ratings


@pytest.mark.parametrize("optimizer", ["fused", "dense", "sparse"])
def test_fit_learns_a_low_rank_signal(optimizer: str) -> None:
    users, items, ratings = _synthetic()
    torch.manual_seed(0)
    model = MatrixFactorization(50, 40, 4, global_mean=float(ratings.mean()), init_std=0.1)
    config = FitConfig(epochs=8, batch_size=100, lr=0.03, l2=0.001, optimizer=optimizer)
    history = fit_ratings(model, users[:2500], items[:2500], ratings[:2500], config=config,
                          valid=(users[2500:], items[2500:], ratings[2500:]))  # fmt: skip
    baseline = rmse(torch.full((500,), float(ratings[:2500].mean())), ratings[2500:])
    assert history[-1].loss < history[0].loss
    assert history[-1].valid_rmse < 0.8 * baseline


def test_make_optimizer_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        FitConfig(optimizer="adagrad")
    with pytest.raises(ValueError, match="name must be one of"):
        make_optimizer(MatrixFactorization(2, 2, 2), "rmsprop", 0.1)


def test_checkpoint_round_trip_and_corruption(tmp_path: Path) -> None:
    model = _mf()
    save_checkpoint(tmp_path / "ck", model, {"metrics": {"test_rmse": 0.9}})
    again, meta = load_checkpoint(tmp_path / "ck")
    assert meta["metrics"]["test_rmse"] == 0.9
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_checkpoint(tmp_path)


def test_ranking_metrics_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.1, 0.2, 0.3, 0.4]])
    got = ranking_metrics(scores, test_users=torch.tensor([0, 0, 1]),
                          test_items=torch.tensor([2, 1, 0]), k=2)  # fmt: skip
    # user 0: top2 = items 0, 2 -> one hit at rank 2 of 2 relevant; user 1: top2 = 3, 2 -> none
    ndcg0 = (1 / torch.log2(torch.tensor(3.0))) / (1 + 1 / torch.log2(torch.tensor(3.0)))
    assert got["recall"] == pytest.approx((0.5 + 0) / 2)
    assert got["ndcg"] == pytest.approx(float(ndcg0) / 2, abs=1e-6)
    assert got["users"] == 2
