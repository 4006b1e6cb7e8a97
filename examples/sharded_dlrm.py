"""Train a DLRM-like click model with sharded tables + DDP, under torchrun.

    torchrun --standalone --nproc-per-node 2 examples/sharded_dlrm.py --steps 50
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 examples/sharded_dlrm.py

The embedding tables of :class:`embtable.models.DLRM` are sharded over the ranks
(``plan_sharding``: large tables row-wise, the others table-wise; printed by rank 0) and
trained with fused row-wise Adagrad inside backward; the dense MLPs are ordinary
``DistributedDataParallel`` modules with a torch optimizer.  Every rank reads its own part of
each global batch.  Synthetic data: 8 dense features and 6 categorical features with
Zipf-like ids; the label comes from a fixed random logistic model, so the loss falls.
Backend gloo on CPU (NCCL when run with ``--device cuda``: that path is written, not tested
here).  At the end the tables and their optimizer state are saved with
``embtable.distributed.save_checkpoint`` (loadable on any number of ranks).
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import embtable
from embtable import KeyedJagged, TableConfig
from embtable.distributed import plan_sharding, save_checkpoint, shard
from embtable.models import DLRM
from embtable.testing import zipf_ids

TABLES = [
    TableConfig(name="user", num_embeddings=200_000, embedding_dim=16),
    TableConfig(
        name="item", num_embeddings=50_000, embedding_dim=16, feature_names=["item", "history"]
    ),
    TableConfig(name="city", num_embeddings=5_000, embedding_dim=16),
    TableConfig(name="device", num_embeddings=50, embedding_dim=16),
    TableConfig(name="hour", num_embeddings=24, embedding_dim=16),
]
NUM_DENSE = 8


def make_batch(
    step: int, batch: int, rank: int, world: int
) -> tuple[torch.Tensor, KeyedJagged, torch.Tensor]:
    """Rank ``rank``'s share of global batch ``step`` (the same global batch for any world size)."""
    gen = torch.Generator().manual_seed(step)
    total = batch * world
    dense = torch.randn(total, NUM_DENSE, generator=gen)
    lengths = {
        "user": torch.ones(total, dtype=torch.int64),
        "item": torch.ones(total, dtype=torch.int64),
        "history": torch.randint(0, 8, (total,), generator=gen),
        "city": torch.ones(total, dtype=torch.int64),
        "device": torch.ones(total, dtype=torch.int64),
        "hour": torch.ones(total, dtype=torch.int64),
    }
    rows = {
        "user": 200_000,
        "item": 50_000,
        "history": 50_000,
        "city": 5_000,
        "device": 50,
        "hour": 24,
    }
    ids = {k: zipf_ids(rows[k], (int(lengths[k].sum()),), generator=gen) for k in rows}
    # the label: a fixed logistic model of the dense features and of a few ids' parity
    truth = torch.Generator().manual_seed(1234)
    w = torch.randn(NUM_DENSE, generator=truth)
    logit = (
        dense @ w + 0.5 * (ids["user"] % 2 * 2 - 1).float() + 0.5 * (ids["item"] % 3 == 0).float()
    )
    label = (torch.rand(total, generator=gen) < torch.sigmoid(logit)).float()
    lo, hi = rank * batch, (rank + 1) * batch
    values, lens = [], []
    for k in rows:
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths[k].cumsum(0)])
        values.append(ids[k][starts[lo] : starts[hi]])
        lens.append(lengths[k][lo:hi])
    return dense[lo:hi], KeyedJagged(list(rows), torch.cat(values), torch.cat(lens)), label[lo:hi]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512, help="examples per rank and step")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, untested here)")
    parser.add_argument("--checkpoint", default="sharded_dlrm_checkpoint")
    args = parser.parse_args()

    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    torch.manual_seed(0)  # the same initial weights on every rank
    model = DLRM(TABLES, num_dense=NUM_DENSE, bottom=(32,), top=(32,)).to(device)
    plan = plan_sharding(TABLES, world, optimizer="rowwise_adagrad")
    if rank == 0:
        print(plan.describe(TABLES), flush=True)
    model.sparse = shard(model.sparse, plan)  # keeps only this rank's shards
    sparse_opt = embtable.optim.fuse(model.sparse, "rowwise_adagrad", lr=0.05)
    model.bottom = DistributedDataParallel(model.bottom)
    model.top = DistributedDataParallel(model.top)
    dense_opt = torch.optim.Adam(embtable.optim.dense_parameters(model), lr=3e-3)

    for step in range(args.steps):
        dense, sparse, label = make_batch(step, args.batch, rank, world)
        logits = model(dense.to(device), sparse.to(device))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label.to(device))
        dense_opt.zero_grad()
        loss.backward()  # the tables' rows are updated here (fused), DDP averages dense grads
        dense_opt.step()
        sparse_opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:>4}  loss {float(mean_loss) / world:.4f}", flush=True)
    save_checkpoint(args.checkpoint, model.sparse)
    if rank == 0:
        print(f"saved the sharded tables to {args.checkpoint}/", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
