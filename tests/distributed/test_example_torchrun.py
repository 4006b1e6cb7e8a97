"""`torchrun --nproc-per-node 2 examples/sharded_dlrm.py`: the launch the docs describe works.

The example's exactness is the sharded collection's (tests/distributed/test_sharded.py); here:
torchrun starts it on 2 gloo processes (127.0.0.1), it trains the DLRM with sharded tables and
DDP, and its checkpoint loads into the example's plain (unsharded) tables in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _dist_harness as _harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def test_torchrun_trains_the_example_and_its_checkpoint_loads(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_harness.free_port()),
        str(ROOT / "examples" / "sharded_dlrm.py"),
        "--steps", "3", "--batch", "32", "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout
    assert "ShardingPlan(world_size=2)" in out and "rows split over all ranks" in out, out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and all(0.0 < x < 5.0 for x in losses), out  # steps 0 and 2
    assert f"saved the sharded tables to {checkpoint}/" in out

    import importlib.util

    from embtable.distributed import load_unsharded
    from embtable.models import DLRM

    spec = importlib.util.spec_from_file_location(
        "sharded_dlrm", ROOT / "examples" / "sharded_dlrm.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)  # the example's initial weights
    model = DLRM(example.TABLES, num_dense=example.NUM_DENSE, bottom=(32,), top=(32,))
    initial = {n: t.detach().clone() for n, t in model.sparse.table_weights().items()}
    load_unsharded(checkpoint, model.sparse)  # strict: every table, its full shape
    # training moved the rows of the ids it saw, and only those (row-wise Adagrad, no decay)
    user_ids = torch.cat(
        [example.make_batch(0, 32, rank, 2)[1]["user"].values for rank in (0, 1)]
    )  # step 0's users, both ranks' shares
    moved = (model.sparse.table_weight("user").detach() != initial["user"]).any(dim=1)
    assert moved[user_ids].all()
    assert int(moved.sum()) <= 3 * 2 * 32  # at most one user per example and step
