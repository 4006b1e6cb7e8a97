"""Fused training end to end: modules, collections, a dense MLP beside, state_dict, schedulers."""

from __future__ import annotations

import copy

import pytest
import torch

import embtable
from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig


class Model(torch.nn.Module):
    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        self.words = embtable.Embedding(50, 6, padding_idx=0, sparse=sparse)
        self.tags = embtable.EmbeddingBag(30, 6, mode="sum", sparse=sparse)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, words, tags, offsets, weights=None):
        pooled_words = self.words(words).mean(1)
        return self.mlp(torch.cat([pooled_words, self.tags(tags, offsets, weights)], 1)).squeeze(1)


def _data(step: int):
    g = torch.Generator().manual_seed(100 + step)
    words = (50 * torch.rand(4, 5, generator=g) ** 2).long()
    tags = (30 * torch.rand(12, generator=g) ** 2).long()
    offsets = torch.tensor([0, 3, 3, 8])
    target = torch.randn(4, generator=g)
    return words, tags, offsets, target


def _loss(model, step):
    words, tags, offsets, target = _data(step)
    return ((model(words, tags, offsets) - target) ** 2).mean()


def test_fused_model_trains_like_sparse_adam_reference(kernel_path):
    torch.manual_seed(0)
    ref = Model(sparse=True)
    fused_model = copy.deepcopy(ref)
    tables = [ref.words.weight, ref.tags.weight]
    ref_sparse = torch.optim.SparseAdam(tables, lr=0.05)
    ref_dense = torch.optim.Adam(ref.mlp.parameters(), lr=0.01)
    sparse_opt = embtable.optim.fuse(fused_model, "adam", lr=0.05, bias_correction="table")
    dense_opt = torch.optim.Adam(embtable.optim.dense_parameters(fused_model), lr=0.01)
    assert len(embtable.optim.dense_parameters(fused_model)) == 4
    for step in range(6):
        for model, opts in ((ref, (ref_sparse, ref_dense)), (fused_model, (sparse_opt, dense_opt))):
            for opt in opts:
                opt.zero_grad()
            loss = _loss(model, step)
            loss.backward()
            for opt in opts:
                opt.step()
            if model is ref:
                ref_loss = loss.item()
        torch.testing.assert_close(loss.item(), ref_loss, rtol=1e-5, atol=1e-6)
    for name, param in ref.named_parameters():
        torch.testing.assert_close(dict(fused_model.named_parameters())[name], param, rtol=1e-5, atol=1e-6)
    assert fused_model.words.weight.grad is None and fused_model.tags.weight.grad is None


def _train(model, opt, steps):
    for step in steps:
        _loss(model, step).backward()
        opt.step()


@pytest.mark.parametrize(
    ("state_dtype", "exp_avg_dtype"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("int8_rowwise", torch.int8)],
)
def test_state_dict_round_trip_mid_training(kernel_path, state_dtype, exp_avg_dtype):
    torch.manual_seed(1)
    model = Model()
    for p in model.mlp.parameters():
        p.requires_grad_(False)
    opt = embtable.optim.fuse(model, "adamw", lr=0.05, state_dtype=state_dtype)
    _train(model, opt, range(3))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, range(3, 6))

    restored = Model()
    for p in restored.mlp.parameters():
        p.requires_grad_(False)
    restored.load_state_dict(saved_model)
    opt2 = embtable.optim.fuse(restored, "adamw", lr=0.05, state_dtype=state_dtype)
    opt2.load_state_dict(saved_opt)
    state = opt2.state[restored.words.weight]
    assert state["exp_avg"].dtype == exp_avg_dtype
    if state_dtype == "int8_rowwise":
        assert state["exp_avg_sq"].dtype == torch.uint8
        assert state["exp_avg_scale"].dtype == state["exp_avg_sq_scale"].dtype == torch.float32
    assert state["row_step"].dtype == torch.int64 and state["table_step"] == 3
    _train(restored, opt2, range(3, 6))
    for name, param in model.named_parameters():
        torch.testing.assert_close(dict(restored.named_parameters())[name], param, rtol=0, atol=0)


def test_lr_scheduler_and_per_table_options_drive_the_update(kernel_path):
    torch.manual_seed(2)
    model = Model()
    opt = embtable.optim.fuse(model, "sgd", lr=0.1, table_options={"tags": {"lr": 0.0}})
    assert [g["name"] for g in opt.param_groups] == ["words", "tags"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0 if epoch >= 1 else 1.0)
    tags_before = model.tags.weight.detach().clone()
    words_before = model.words.weight.detach().clone()
    _train(model, opt, [0])
    assert torch.equal(model.tags.weight, tags_before)  # lr 0 for this table
    assert not torch.equal(model.words.weight, words_before)
    scheduler.step()  # lr -> 0 for every table
    words_mid = model.words.weight.detach().clone()
    _train(model, opt, [1])
    assert torch.equal(model.words.weight, words_mid)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_modes_equal_unfused_sgd(kernel_path, mode):
    torch.manual_seed(3)
    ref = embtable.EmbeddingBag(40, 5, mode=mode, padding_idx=1)
    table = copy.deepcopy(ref)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    fused = embtable.optim.fuse(table, "sgd", lr=0.2)
    g = torch.Generator().manual_seed(4)
    for _ in range(4):
        ids = (40 * torch.rand(20, generator=g) ** 2).long()
        offsets = torch.tensor([0, 4, 4, 11])
        target = torch.randn(4, 5, generator=g)
        ref_opt.zero_grad()
        (ref(ids, offsets) * target).sum().backward()
        ref_opt.step()
        (table(ids, offsets) * target).sum().backward()
        fused.step()
    torch.testing.assert_close(table.weight, ref.weight, rtol=1e-6, atol=1e-6)


def test_per_sample_weights_get_their_gradient(kernel_path):
    torch.manual_seed(5)
    ref = embtable.EmbeddingBag(20, 4, mode="sum")
    table = copy.deepcopy(ref)
    embtable.optim.fuse(table, "sgd", lr=0.1)
    ids, offsets = torch.tensor([1, 2, 2, 7, 9]), torch.tensor([0, 2])
    psw_ref = torch.rand(5, requires_grad=True)
    psw = psw_ref.detach().clone().requires_grad_(True)
    (ref(ids, offsets, psw_ref) ** 2).sum().backward()
    (table(ids, offsets, psw) ** 2).sum().backward()
    torch.testing.assert_close(psw.grad, psw_ref.grad)


def test_collection_tables_train_fused(kernel_path):
    torch.manual_seed(6)
    configs = [
        TableConfig(name="user", num_embeddings=30, embedding_dim=4, feature_names=["user"]),
        TableConfig(name="item", num_embeddings=40, embedding_dim=4, feature_names=["item"],
                    pooling="mean"),
    ]
    ref = EmbeddingBagCollection(configs)
    collection = copy.deepcopy(ref)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=0.3)
    fused = embtable.optim.fuse(collection, "adagrad", lr=0.3)
    assert len(fused.param_groups) == len(ref.grouped_weights)
    for step in range(3):
        batch = KeyedJagged.from_dict({"user": [[1, 2], [3]], "item": [[5, 5, 9], [step]]})
        ref_out, out = ref(batch), collection(batch)
        ref_opt.zero_grad()
        (ref_out["user"].sum() + (ref_out["item"] ** 2).sum()).backward()
        ref_opt.step()
        (out["user"].sum() + (out["item"] ** 2).sum()).backward()
        fused.step()
    for got, want in zip(collection.grouped_weights, ref.grouped_weights):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_embedding_collection_trains_fused(kernel_path):
    torch.manual_seed(9)
    configs = [
        TableConfig(name="words", num_embeddings=30, embedding_dim=4, feature_names=["query", "title"],
                    padding_idx=0, pooling="none"),
    ]
    ref = EmbeddingCollection(configs)
    collection = copy.deepcopy(ref)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    fused = embtable.optim.fuse(collection, "sgd", lr=0.3)
    for step in range(3):
        batch = KeyedJagged.from_dict({"query": [[4, 9, 0], [7]], "title": [[1, 4], [step]]})
        ref_opt.zero_grad()
        ref_out, out = ref(batch), collection(batch)
        (ref_out["query"].values.sum() + (ref_out["title"].values ** 2).sum()).backward()
        ref_opt.step()
        (out["query"].values.sum() + (out["title"].values ** 2).sum()).backward()
        fused.step()
    for got, want in zip(collection.grouped_weights, ref.grouped_weights):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_max_norm_keeps_its_meaning(kernel_path):
    torch.manual_seed(7)
    ref = embtable.Embedding(10, 3, max_norm=1.0)
    table = copy.deepcopy(ref)
    embtable.optim.fuse(table, "sgd", lr=0.0)
    ids = torch.tensor([1, 4, 4])
    torch.testing.assert_close(table(ids), ref(ids))
    torch.testing.assert_close(table.weight, ref.weight)


def test_unfuse_restores_ordinary_gradients():
    model = Model()
    embtable.optim.fuse(model, "sgd", lr=0.1)
    embtable.optim.unfuse(model)
    _loss(model, 0).backward()
    assert model.words.weight.grad is not None


def test_eval_and_no_grad_lookups_do_not_update():
    model = Model()
    embtable.optim.fuse(model, "sgd", lr=1.0)
    before = model.words.weight.detach().clone()
    with torch.no_grad():
        model(*_data(0)[:3])
    assert torch.equal(model.words.weight, before)


def test_errors():
    with pytest.raises(ValueError, match="found no trainable embtable table"):
        embtable.optim.fuse(torch.nn.Linear(2, 2), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        embtable.optim.fuse(Model(), "lamb", lr=0.1)
    with pytest.raises(TypeError, match="unknown option"):
        embtable.optim.fuse(Model(), "sgd", lr=0.1, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        embtable.optim.fuse(Model(), "adam", lr=-1.0)
    with pytest.raises(ValueError, match="bias_correction must be"):
        embtable.optim.fuse(Model(), "adam", bias_correction="global")
    with pytest.raises(ValueError, match="float16' underflows"):
        embtable.optim.fuse(Model(), "adam", state_dtype="float16")
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        embtable.optim.fuse(Model(), "sgd", state_dtype="int4")
    with pytest.raises(ValueError, match="already one float per row"):
        embtable.optim.fuse(Model(), "rowwise_adagrad", state_dtype="int8_rowwise")
    with pytest.raises(ValueError, match="table_options names"):
        embtable.optim.fuse(Model(), "sgd", table_options={"nope": {"lr": 1.0}})
    model = Model()
    embtable.optim.fuse(model, "sgd")
    with pytest.raises(ValueError, match="already fused"):
        embtable.optim.fuse(model, "sgd")


def test_bfloat16_state_tracks_float32_state(kernel_path):
    results = []
    for state_dtype in ("float32", "bfloat16"):
        torch.manual_seed(8)
        model = Model()
        opt = embtable.optim.fuse(model, "adam", lr=0.02, state_dtype=state_dtype)
        dense = torch.optim.Adam(embtable.optim.dense_parameters(model), lr=0.01)
        for step in range(20):
            dense.zero_grad()
            _loss(model, step % 4).backward()
            dense.step()
            opt.step()
        results.append(_loss(model, 0).item())
    assert results[1] == pytest.approx(results[0], rel=0.05)


def test_step_hooks_and_closure_still_run():
    model = Model()
    opt = embtable.optim.fuse(model, "sgd", lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global"))
    try:
        assert opt.step(lambda: 3.0) == 3.0
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global"]
    calls.clear()
    opt._optimizer_step_pre_hooks.clear()
    opt._optimizer_step_post_hooks.clear()
    assert opt.step() is None and calls == []
