"""Issue 17's remaining checks on 2 and 4 gloo processes (127.0.0.1), against oracles.

- the exactness matrix (every sharding type x sum / mean with padding / max x SGD, row-wise
  Adagrad, Adam with float32 and int8_rowwise state) on 4 ranks, and bfloat16 / float16
  state on 2: outputs and tables equal the unsharded collection trained on the global
  batches (1e-5 relative); ``EmbeddingCollection`` on 4 ranks; two collections sharded
  over subgroups of 4 ranks (``process_group=``);
- a checkpoint of 2 ranks resumed on 4 (column shards on some ranks: their per-row state,
  int8 scales and Adam's row steps, given to every column shard), of 4 resumed on 2, and of
  2 resumed in one process as the plain collection (``load_unsharded`` with its fused
  optimizer state; also a ``ShardedEmbeddingCollection``'s): each continues as the run that
  never stopped;
- the checkpoint loaded into TorchRec's ``EmbeddingBagCollection`` by its ``state_dict`` keys
  (same weights, same pooled sum outputs as the plain collection);
- other bad batches on one rank (a missing feature, another batch size, a negative id):
  every rank raises naming it, nothing changes, the ranks stay in step;
- a rank killed mid-step: the other raises at once, long before the group's timeout.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the children import the workers by name

import _dist_harness as _harness  # noqa: E402
import _dist_reshard_workers as _r  # noqa: E402
import _dist_workers as _w  # noqa: E402

import embtable  # noqa: E402
from embtable import EmbeddingBagCollection  # noqa: E402
from embtable.distributed.checkpoint import load_tables, load_unsharded  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("reshard"))


def _needs(folder: str, name: str) -> None:
    if not os.path.isdir(os.path.join(folder, name)):
        pytest.skip(f"needs the checkpoint {name!r} of an earlier test in this file")


def test_two_ranks_half_state_and_source(folder: str) -> None:
    _harness.spawn(_r.group_of_two_source, 2, folder)
    assert os.path.isdir(os.path.join(folder, "two"))


def test_two_to_one_resumes_in_the_plain_collection(folder: str) -> None:
    _needs(folder, "two")
    expected = torch.load(os.path.join(folder, "two.pt"))
    torch.manual_seed(99)  # other weights: all of them come from the checkpoint
    plain = EmbeddingBagCollection(_w.bag_tables())
    embtable.optim.fuse(plain, _r.CKPT_RULE[0], **_r.CKPT_RULE[1])
    load_unsharded(os.path.join(folder, "two"), plain)
    for name, table in expected["saved"].items():
        assert torch.equal(plain.table_weight(name).detach(), table), name
    for step in range(3, 5):  # the global batches of the steps the 2 ranks ran after the save
        _, global_batch = _w.batches(_w.bag_features(), step, 2, 0)
        _w._loss(plain(global_batch).values()).backward()
    for name, table in expected["final"].items():
        torch.testing.assert_close(
            plain.table_weight(name).detach(), table, rtol=_w.RTOL, atol=_w.ATOL
        )


def test_embedding_collection_two_to_one_resumes(folder: str) -> None:
    _needs(folder, "seq")
    path = os.path.join(folder, "seq")
    assert sorted(load_tables(path)) == ["embeddings.v.weight", "embeddings.w.weight"]
    expected = torch.load(os.path.join(folder, "seq.pt"))
    torch.manual_seed(98)
    plain = embtable.EmbeddingCollection(_w.seq_tables())
    embtable.optim.fuse(plain, "adam", lr=0.05)
    load_unsharded(path, plain)
    for name, table in expected["saved"].items():
        assert torch.equal(plain.table_weight(name).detach(), table), name
    for step in range(2, 4):
        _r.seq_step(plain, _w.batches(_r.SEQ_FEATURES, step, 2, 0)[1])
    for name, table in expected["final"].items():
        torch.testing.assert_close(
            plain.table_weight(name).detach(), table, rtol=_w.RTOL, atol=_w.ATOL
        )


def test_unsharded_refuses_another_rule_before_loading(folder: str) -> None:
    _needs(folder, "two")
    torch.manual_seed(99)
    plain = EmbeddingBagCollection(_w.bag_tables())
    before = {n: t.detach().clone() for n, t in plain.table_weights().items()}
    embtable.optim.fuse(plain, "rowwise_adagrad", lr=0.1)  # saved: Adam, int8_rowwise
    with pytest.raises(ValueError, match="optimizer.a.sum"):
        load_unsharded(os.path.join(folder, "two"), plain)
    for name, table in plain.table_weights().items():
        assert torch.equal(table.detach(), before[name]), name  # nothing loaded
    load_unsharded(os.path.join(folder, "two"), plain, optimizer=False)  # weights only
    saved = torch.load(os.path.join(folder, "two.pt"))["saved"]
    assert torch.equal(plain.table_weight("a").detach(), saved["a"])


def test_unsharded_refuses_other_tables_before_loading(folder: str) -> None:
    """A collection without the saved table d (fused, so its state would load too), and one
    with a table the checkpoint lacks: ``RuntimeError`` naming the key, nothing loaded."""
    _needs(folder, "two")
    path = os.path.join(folder, "two")
    torch.manual_seed(97)
    fewer = EmbeddingBagCollection(_w.bag_tables()[:3])
    opt = embtable.optim.fuse(fewer, _r.CKPT_RULE[0], **_r.CKPT_RULE[1])
    extra = _w.bag_tables() + [embtable.TableConfig(name="e", num_embeddings=5, embedding_dim=4)]
    more = EmbeddingBagCollection(extra)
    for plain, key in ((fewer, "embedding_bags.d.weight"), (more, "embedding_bags.e.weight")):
        before = {n: t.detach().clone() for n, t in plain.table_weights().items()}
        with pytest.raises(RuntimeError, match=key):
            load_unsharded(path, plain, optimizer=plain is fewer)
        for name, table in plain.table_weights().items():
            assert torch.equal(table.detach(), before[name]), name  # nothing loaded
    assert not any(opt.state.values())  # nor the optimizer state
    with pytest.raises(TypeError, match="optimizer must be a bool, got 'adam'"):
        load_unsharded(path, fewer, optimizer="adam")


def test_torchrec_embedding_bag_collection_loads_the_checkpoint(folder: str) -> None:
    _needs(folder, "two")
    torchrec = pytest.importorskip("torchrec")
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    path = os.path.join(folder, "two")
    # (TorchRec has no max pooling: table c pools by sum there, its output is not compared)
    pooling = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN, "max": PoolingType.SUM}
    configs = [
        EmbeddingBagConfig(
            name=c.name,
            embedding_dim=c.embedding_dim,
            num_embeddings=c.num_embeddings,
            feature_names=list(c.feature_names),
            pooling=pooling[str(getattr(c.pooling, "value", c.pooling))],
        )
        for c in _w.bag_tables()
    ]
    ebc = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    ebc.load_state_dict(load_tables(path))  # strict: the keys are exactly TorchRec's
    saved = torch.load(os.path.join(folder, "two.pt"))["saved"]
    for name, table in saved.items():
        assert torch.equal(ebc.embedding_bags[name].weight.detach(), table), name
    plain = EmbeddingBagCollection(_w.bag_tables())
    load_unsharded(path, plain)
    _, batch = _w.batches(_w.bag_features(), 0, 2, 0)
    theirs = ebc(
        KeyedJaggedTensor(keys=batch.keys(), values=batch.values(), lengths=batch.lengths())
    )
    ours = plain(batch)
    for feature in ("a1", "a2", "d"):  # (b: a mean with padding_idx, which TorchRec lacks)
        torch.testing.assert_close(theirs[feature], ours[feature], rtol=1e-6, atol=1e-6)


def test_four_ranks_matrix_and_resume_then_back_to_two(folder: str) -> None:
    _needs(folder, "two")
    _harness.spawn(_r.group_of_four, 4, folder)
    _harness.spawn(_r.group_of_two_resume, 2, folder)


def test_a_killed_rank_fails_the_other_at_once(folder: str) -> None:
    codes = _harness.spawn_raw(
        _r.group_with_a_kill, 2, folder, timeout_s=_r.DEATH_TIMEOUT_S, wait_s=120.0
    )
    errors = [f for f in os.listdir(folder) if f.startswith("error-")]
    assert not errors, open(os.path.join(folder, errors[0])).read()
    assert codes == [0, 17], codes
    with open(os.path.join(folder, "kill.txt")) as handle:
        seconds, message = handle.read().split(" ", 1)
    assert float(seconds) < _r.DEATH_TIMEOUT_S / 3, message
