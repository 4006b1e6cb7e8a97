"""What each spawned rank runs in tests/distributed/test_reshard.py.

Importable by the children by name.  Built on ``_dist_workers`` (its tables, batches, plans,
loss and the global-batch oracle ``train_and_compare``): the parts of issue 17 that
``test_sharded.py`` leaves out: the exactness matrix on 4 ranks, half-precision state,
``EmbeddingCollection`` on 4 ranks, checkpoints resumed after 2 -> 4 and 4 -> 2 into plans
with column shards (their per-row state spread to every column shard), and a rank that
dies outright.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

# (pytest's --doctest-modules imports this file before any test put its folder on sys.path)
sys.path.insert(0, os.path.dirname(__file__))
import _dist_workers as _w  # noqa: E402

import embtable  # noqa: E402
from embtable import EmbeddingBagCollection  # noqa: E402
from embtable.distributed import ShardingPlan, TableSharding  # noqa: E402
from embtable.distributed.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from embtable.distributed.sharded import shard  # noqa: E402

#: The rule of the resharded checkpoints: int8_rowwise moments (codes + a per-row scale)
#: and Adam's per-row step, the per-row state column shards must agree on.
CKPT_RULE = ("adam", {"lr": 0.05, "state_dtype": "int8_rowwise"})


def _fresh(plan: ShardingPlan, seed: int) -> Any:
    torch.manual_seed(seed)
    sharded = shard(EmbeddingBagCollection(_w.bag_tables()), plan)
    embtable.optim.fuse(sharded, CKPT_RULE[0], **CKPT_RULE[1])
    return sharded


def _steps(sharded: Any, steps: range, world: int, rank: int) -> None:
    for step in steps:
        _w._step(sharded, step, world, rank)


def _same(sharded: Any, expected: dict[str, torch.Tensor], what: str) -> None:
    for name, table in sharded.full_tables().items():
        torch.testing.assert_close(
            table,
            expected[name],
            rtol=_w.RTOL,
            atol=_w.ATOL,
            msg=lambda m, n=name: f"{what}: table {n}: {m}",
        )


def columns_on_four() -> ShardingPlan:
    """4 ranks: column shards on some ranks, row-, table-wise and replicated tables."""
    return ShardingPlan(
        world_size=4,
        tables={
            "a": TableSharding.column_wise(ranks=[1, 3]),
            "b": TableSharding.table_wise(rank=2),
            "c": TableSharding.row_wise(),
            "d": TableSharding.column_wise(),
        },
    )


def group_of_two_source(rank: int, world: int, folder: str) -> None:
    """Half-precision state on every sharding type; bad batches; an EmbeddingCollection's
    checkpoint; then the checkpoint to reshard: 3 steps,
    save, 2 more steps (rank 0 keeps the tables at the save and at the end)."""
    check_only_local_shards_allocated(rank, world)
    for turn in range(len(_w.KINDS)):
        for rule, options in (("adam", {"lr": 0.05, "state_dtype": "bfloat16"}),
                              ("adagrad", {"lr": 0.1, "state_dtype": "float16"})):  # fmt: skip
            _w.train_and_compare(rank, world, _w.rotated_plan(world, turn), rule, options, steps=3)
    check_bad_batches(rank, world)
    seq_checkpoint(rank, world, folder)
    sharded = _fresh(_w.mixed_plan(world, 0), seed=11)  # column-wise d, row-wise a and b
    _steps(sharded, range(3), world, rank)
    save_checkpoint(os.path.join(folder, "two"), sharded)
    saved = sharded.full_tables()
    _steps(sharded, range(3, 5), world, rank)
    final = sharded.full_tables()  # (a collective)
    if rank == 0:
        torch.save({"saved": saved, "final": final}, os.path.join(folder, "two.pt"))


def check_only_local_shards_allocated(rank: int, world: int) -> None:
    """Built directly, a collection allocates its shard of a row-wise table, never the whole
    table: its parameters hold the shard, and the rank's resident high-water mark grows by
    about the shard (32 MB), not by the whole table (64 MB on 2 ranks). The high-water mark
    is this process's ``VmHWM``, restarted from the resident size before the build
    (``clear_refs`` 5); ``ru_maxrss`` would not do: it carries the peak of the pytest
    process the spawn was forked from."""
    from embtable import TableConfig
    from embtable.distributed import ShardedEmbeddingBagCollection

    def status(field: str) -> int:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # (kB)

    rows, dim = 1_000_000, 16
    tables = [TableConfig(name="big", num_embeddings=rows, embedding_dim=dim)]
    plan = ShardingPlan(world_size=world, tables={"big": TableSharding.row_wise()})
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    resident = status("VmRSS")
    sharded = ShardedEmbeddingBagCollection(tables, plan)
    peak = status("VmHWM")
    shard_bytes = rows // world * dim * 4
    assert sum(p.numel() * p.element_size() for p in sharded.parameters()) == shard_bytes
    assert peak - resident < shard_bytes + (rows * dim * 4 - shard_bytes) // 2, (
        f"the rank grew by {(peak - resident) / 2**20:.1f} MiB for a {shard_bytes / 2**20:.1f} "
        f"MiB shard of a {rows * dim * 4 / 2**20:.1f} MiB table"
    )


def check_bad_batches(rank: int, world: int) -> None:
    """Other bad batches on one rank (a missing feature, another batch size, a negative id):
    every rank raises the same error naming that rank, no table changes, and the ranks stay
    in step (a good step afterwards equals the oracle's)."""
    from embtable.distributed import ShardedIndexError, ShardedValueError

    torch.manual_seed(0)
    reference = EmbeddingBagCollection(_w.bag_tables())
    sharded = shard(reference, _w.mixed_plan(world, 0))
    embtable.optim.fuse(sharded, "adam", lr=0.1)
    embtable.optim.fuse(reference, "adam", lr=0.1)
    before = sharded.full_tables()
    size = _w.GLOBAL_BATCH // world
    ids, _ = _w._rows(_w.bag_features(), 0, False)
    good = _w._kjt(ids, {}, rank * size, (rank + 1) * size)
    no_d = {k: v for k, v in ids.items() if k != "d"}
    negative = {k: [list(bag) for bag in v] for k, v in ids.items()}
    negative["a2"][0] = [-1]
    cases = [
        (1, _w._kjt(no_d, {}, rank * size, (rank + 1) * size), ShardedValueError,
         "rank 1's batch has no feature 'd'"),
        (0, _w._kjt(ids, {}, 0, size - 1), ShardedValueError, "the same local batch size"),
        (0, _w._kjt(negative, {}, 0, size), ShardedIndexError, "rank 0's batch: feature 'a2' holds id -1"),
    ]  # fmt: skip
    for bad_rank, bad, error, text in cases:
        try:
            sharded(bad if rank == bad_rank else good)
        except error as raised:
            assert text in str(raised), (text, str(raised))
        else:
            raise AssertionError(f"no error for {text!r}")
    for name, table in sharded.full_tables().items():
        assert torch.equal(table, before[name]), name
    out = sharded(good)
    expected = reference(_w._kjt(ids, {}, 0, _w.GLOBAL_BATCH))
    for feature in out.keys():
        torch.testing.assert_close(out[feature], expected[feature][rank * size : (rank + 1) * size])
    _w._loss(out.values()).backward()
    _w._loss(expected.values()).backward()
    _w._same_tables(sharded, reference, "a good step after the bad ones")


SEQ_FEATURES = {"w": 30, "v1": 16, "v2": 16}


def seq_step(collection: Any, batch: Any) -> None:
    """One training step of an (un)sharded EmbeddingCollection: the rows' sum of squares."""
    out = collection(batch)
    sum(out[f].values.pow(2).sum() for f in out.keys()).backward()


def seq_checkpoint(rank: int, world: int, folder: str) -> None:
    """A ShardedEmbeddingCollection (row- and column-wise, Adam): 2 steps, save, 2 more steps;
    rank 0 keeps the tables at the save and at the end."""
    torch.manual_seed(1)
    plan = ShardingPlan(
        world_size=world, tables={"w": TableSharding.row_wise(), "v": TableSharding.column_wise()}
    )
    sharded = shard(embtable.EmbeddingCollection(_w.seq_tables()), plan)
    embtable.optim.fuse(sharded, "adam", lr=0.05)
    for step in range(4):
        if step == 2:
            save_checkpoint(os.path.join(folder, "seq"), sharded)
            saved = sharded.full_tables()
        seq_step(sharded, _w.batches(SEQ_FEATURES, step, world, rank)[0])
    final = sharded.full_tables()
    if rank == 0:
        torch.save({"saved": saved, "final": final}, os.path.join(folder, "seq.pt"))


def check_subgroups(rank: int, world: int) -> None:
    """``shard(..., process_group=)``: ranks 0, 1 and ranks 2, 3 each shard their own collection
    over their pair (row-, table- and column-wise tables), both equal the oracle."""
    import torch.distributed as dist

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # (every rank makes every group)
    group, mine = pairs[rank // 2], rank % 2
    torch.manual_seed(0)
    reference = EmbeddingBagCollection(_w.bag_tables())
    sharded = shard(reference, _w.mixed_plan(2, 0), process_group=group)
    assert (sharded.rank, sharded.world_size) == (mine, 2)
    embtable.optim.fuse(reference, "rowwise_adagrad", lr=0.1)
    embtable.optim.fuse(sharded, "rowwise_adagrad", lr=0.1)
    size = _w.GLOBAL_BATCH // 2
    for step in range(3):
        local, global_batch = _w.batches(_w.bag_features(), step, 2, mine)
        out, expected = sharded(local), reference(global_batch)
        for feature in out.keys():
            torch.testing.assert_close(
                out[feature], expected[feature][mine * size : (mine + 1) * size]
            )
        _w._loss(out.values()).backward()
        _w._loss(expected.values()).backward()
    _w._same_tables(
        sharded, reference, f"process_group of ranks {[2 * (rank // 2), 2 * (rank // 2) + 1]}"
    )


def group_of_four(rank: int, world: int, folder: str) -> None:
    """The matrix of ``_dist_workers.exactness_matrix``'s first part on 4 ranks (every
    sharding type x pooling x rule and state dtype); EmbeddingCollection; two collections
    sharded over subgroups (``process_group=``); the 2-rank
    checkpoint resumed on a plan with column shards; a 4-rank checkpoint for 4 -> 2."""
    for turn in range(len(_w.KINDS)):
        for rule, options in _w.RULES:
            _w.train_and_compare(rank, world, _w.rotated_plan(world, turn), rule, options)
    _w.check_sequences(
        rank,
        world,
        ShardingPlan(
            world_size=world,
            tables={"w": TableSharding.row_wise(), "v": TableSharding.column_wise(ranks=[3, 0])},
        ),
    )
    _w.check_sequences(
        rank,
        world,
        ShardingPlan(
            world_size=world,
            tables={"w": TableSharding.table_wise(rank=2), "v": TableSharding.data_parallel()},
        ),
        "rowwise_adagrad",
        {"lr": 0.1},
    )
    check_subgroups(rank, world)
    expected = torch.load(os.path.join(folder, "two.pt"))
    sharded = _fresh(columns_on_four(), seed=12)
    load_checkpoint(os.path.join(folder, "two"), sharded)
    _same(sharded, expected["saved"], "loaded 2 -> 4")
    _steps(sharded, range(3, 5), world, rank)
    _same(sharded, expected["final"], "resumed 2 -> 4")
    save_checkpoint(os.path.join(folder, "four"), sharded)
    _steps(sharded, range(5, 7), world, rank)
    final = sharded.full_tables()
    if rank == 0:
        torch.save(final, os.path.join(folder, "four.pt"))


def group_of_two_resume(rank: int, world: int, folder: str) -> None:
    """The 4-rank checkpoint on 2 ranks, every table column-wise but one: resumes exactly."""
    sharded = _fresh(_w.mixed_plan(world, 2), seed=13)
    load_checkpoint(os.path.join(folder, "four"), sharded)
    _steps(sharded, range(5, 7), world, rank)
    _same(sharded, torch.load(os.path.join(folder, "four.pt")), "resumed 4 -> 2")


DEATH_TIMEOUT_S = 30.0


def group_with_a_kill(rank: int, world: int, folder: str) -> None:
    """Rank 1 exits in the middle of a step (after forward); rank 0's backward must raise
    soon, not wait for the process group's timeout (DEATH_TIMEOUT_S)."""
    sharded = _fresh(_w.mixed_plan(world, 0), seed=14)
    local, _ = _w.batches(_w.bag_features(), 0, world, rank)
    torch.distributed.barrier()
    out = sharded(local)
    if rank == 1:
        os._exit(17)  # killed mid-step
    start = time.monotonic()
    try:
        out.values().sum().backward()
    except Exception as error:  # gloo: connection closed by peer
        with open(os.path.join(folder, "kill.txt"), "w") as handle:
            handle.write(
                f"{time.monotonic() - start:.3f} {type(error).__name__}: {str(error)[:200]}"
            )
        os._exit(0)
    raise AssertionError("backward succeeded although rank 1 died")
