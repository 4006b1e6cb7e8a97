"""Sharded collections on 2 and 4 gloo processes (127.0.0.1) against the unsharded oracle.

Three spawned groups share their start-up cost over many checks (see ``_dist_workers.py``):
2 ranks (every sharding type and pooling, rules and state dtypes, EmbeddingCollection, bad
ids, an interrupted save, a checkpoint), 4 ranks (mixed plans, the 2-rank checkpoint
resharded and resumed) and 2 ranks again (the 4-rank checkpoint; a rank dying mid-step).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the children import _dist_workers by name

import _dist_harness as _harness  # noqa: E402
import _dist_workers as _workers  # noqa: E402

from embtable import EmbeddingBagCollection  # noqa: E402
from embtable.distributed.checkpoint import load_checkpoint, load_tables, load_unsharded  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("sharded"))


def test_two_ranks(folder: str) -> None:
    _harness.spawn(_workers.group_of_two, 2, folder)
    assert os.path.isdir(os.path.join(folder, "two"))
    # the interrupted save left nothing behind, and the old checkpoint is still the one that loads
    with open(os.path.join(folder, "interrupted.txt")) as handle:
        assert handle.read() == ""
    saved = torch.load(os.path.join(folder, "two.pt"))["saved"]
    tables = load_tables(os.path.join(folder, "two"))
    assert sorted(tables) == [f"embedding_bags.{t}.weight" for t in "abcd"]
    for name, table in saved.items():
        assert torch.equal(tables[f"embedding_bags.{name}.weight"], table)


def test_two_to_one_unsharded_and_torch_modules(folder: str) -> None:
    path = os.path.join(folder, "two")
    if not os.path.isdir(path):
        pytest.skip("needs test_two_ranks' checkpoint")
    saved = torch.load(os.path.join(folder, "two.pt"))["saved"]
    plain = EmbeddingBagCollection(_workers.bag_tables())
    load_unsharded(path, plain)
    for name, table in saved.items():
        assert torch.equal(plain.table_weight(name).detach(), table)
    modules = torch.nn.Module()
    modules.embedding_bags = torch.nn.ModuleDict(
        {
            c.name: torch.nn.EmbeddingBag(c.num_embeddings, c.embedding_dim, mode="sum")
            for c in _workers.bag_tables()
        }
    )
    modules.load_state_dict(load_tables(path))
    for name, table in saved.items():
        assert torch.equal(modules.embedding_bags[name].weight.detach(), table)


def test_incomplete_checkpoint_is_refused(folder: str) -> None:
    broken = os.path.join(folder, "broken.partial-x")
    os.makedirs(broken, exist_ok=True)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_tables(broken)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(os.path.join(folder, "missing"), None)  # type: ignore[arg-type]


def test_four_ranks_and_back_to_two(folder: str) -> None:
    if not os.path.isdir(os.path.join(folder, "two")):
        pytest.skip("needs test_two_ranks' checkpoint")
    _harness.spawn(_workers.group_of_four, 4, folder)
    # the sharded group's timeout is 4 s; rank 1 hangs 10 s mid-step, then dies
    codes = _harness.spawn_raw(_workers.group_with_a_death, 2, folder, timeout_s=60.0, wait_s=120.0)
    errors = [f for f in os.listdir(folder) if f.startswith("error-")]
    assert not errors, open(os.path.join(folder, errors[0])).read()
    assert codes == [0, 17], codes
    with open(os.path.join(folder, "death.txt")) as handle:
        seconds, message = handle.read().split(" ", 1)
    # raised by the timeout (4 s), well before the hung rank died (10 s)
    assert float(seconds) < _workers.HANG_S - 2, message
