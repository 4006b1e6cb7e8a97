"""Worker of ``test_memory_chunks.py`` (imported by name in the spawned processes)."""

from __future__ import annotations

import torch


def chunked_worker(rank: int, world: int) -> None:
    import _dist_workers as workers

    import embtable
    from embtable import EmbeddingBagCollection
    from embtable.distributed import ShardedEmbeddingBagCollection, _chunked

    cls = ShardedEmbeddingBagCollection
    tables, fused_plan = _fused_case(world)
    taken = []
    fused_local = _chunked.fused_local

    def spy(*args):
        found = fused_local(*args)
        taken.append(found is not None)
        return found

    _chunked.fused_local = spy
    features = {f: c.num_embeddings for c in tables for f in c.feature_names}
    for rule, options in (("rowwise_adagrad", {"lr": 0.1}), ("adam", {"lr": 0.05})):
        made = []
        for chunks in (1, 3):
            torch.manual_seed(0)
            source = EmbeddingBagCollection(tables)
            module = embtable.distributed.shard(source, fused_plan)
            module.memory_chunks = chunks
            embtable.optim.fuse(module, rule, **options)
            made.append(module)
        for step in range(3):
            local, _ = workers.batches(features, step, world, rank)
            outs = []
            for module in made:
                module.stats.reset()
                out = module(local).values()
                workers._loss(out).backward()
                outs.append((out.detach(), module.stats.calls, module.stats.total_bytes()))
            (one, calls_one, bytes_one), (chunked, calls_chunked, bytes_chunked) = outs
            assert torch.equal(one, chunked), f"{rule} step {step}: outputs differ"
            # 3 chunks: 2 more all_to_alls of rows forward and 2 more backward; same bytes
            assert calls_chunked == calls_one + 4 and bytes_chunked == bytes_one
        for name, table in made[0].full_tables().items():
            assert torch.equal(table, made[1].full_tables()[name]), f"{rule}: table {name}"
    assert taken and all(taken), "the fused lookup was not split by chunk"
    _chunked.fused_local = fused_local

    # the workspace: a result kept past the next step is not written over (its values are
    # those of a module that makes every buffer anew); a dropped one's buffer is reused
    made = []
    for kept in (True, False):
        torch.manual_seed(0)
        module = embtable.distributed.shard(EmbeddingBagCollection(tables), fused_plan)
        module.memory_chunks = 3
        embtable.optim.fuse(module, "rowwise_adagrad", lr=0.1)
        if not kept:
            module._kept = None
        made.append(module)
    outs = {}  # (step, module): result; step 0's kept to the end, step 1's dropped
    for step in range(3):
        local, _ = workers.batches(features, step, world, rank)
        for i, module in enumerate(made):
            out = module(local).values()
            workers._loss(out).backward()
            outs[step, i] = out
        del out
        if step == 1:
            pointer = outs.pop((1, 0)).data_ptr()
            del outs[1, 1]
    assert torch.equal(outs[0, 0], outs[0, 1]), "a kept result was written over"
    assert outs[2, 0].data_ptr() == pointer, "a dropped result's buffer was not reused"
    assert torch.equal(outs[2, 0], outs[2, 1]), "outputs differ from a module without one"

    # not fused: the rows pooled at once (autograd), exchanged in chunks; equal gradients
    made = []
    for chunks in (1, 3):
        torch.manual_seed(0)
        module = embtable.distributed.shard(EmbeddingBagCollection(tables), fused_plan)
        module.memory_chunks = chunks
        local, _ = workers.batches(features, 0, world, rank)
        out = module(local).values()
        workers._loss(out).backward()
        grads = [p.grad.to_dense() for p in module.parameters()]
        made.append((out.detach(), grads))
    assert torch.equal(made[0][0], made[1][0]), "not fused: outputs differ"
    for one, chunked in zip(made[0][1], made[1][1]):
        assert torch.equal(one, chunked), "not fused: gradients differ"

    # mixed plans (row-wise mean with padding, column-wise, data-parallel; several buckets:
    # the rows are pooled at once and exchanged in chunks) against one process; 8 chunks:
    # more chunks than a rank has tables (empty chunks on every rank)
    default = cls.memory_chunks
    try:
        for variant, chunks in ((0, 3), (3, 8)):
            cls.memory_chunks = chunks
            workers.train_and_compare(
                rank, world, workers.mixed_plan(world, variant), "adam", {"lr": 0.05}, steps=3
            )
        workers.train_and_compare(
            rank, world, fused_plan, "rowwise_adagrad", {"lr": 0.1}, steps=3, tables=tables
        )
    finally:
        cls.memory_chunks = default


def int32_ids_worker(rank: int, world: int) -> None:
    """The received ids stay int32 where the wire is int32: the workspace's ids buffer is
    int32 and the ids the chunked fused lookup keeps for backward are that buffer (shifted in
    place), not a copy; outputs and tables equal one process's, also with an int64 wire."""
    import _dist_workers as workers

    from embtable.distributed import ShardedEmbeddingBagCollection, _agree

    cls = ShardedEmbeddingBagCollection
    tables, plan = _fused_case(world)
    features = {f: c.num_embeddings for c in tables for f in c.feature_names}
    default, limit = cls.memory_chunks, _agree._INT32_LIMIT
    try:
        cls.memory_chunks = 3
        for wide in (False, True):
            _agree._INT32_LIMIT = 10 if wide else limit  # (tables of 10-60 rows: int64 ids)
            sharded = workers.train_and_compare(
                rank, world, plan, "rowwise_adagrad", {"lr": 0.1}, steps=3, tables=tables
            )
            local, _ = workers.batches(features, 5, world, rank)
            out = sharded(local).values()
            pool = sharded._kept["ids"]
            ids, offsets = out.grad_fn.saved_tensors  # (_ChunkedRows: the fused lookup's)
            want = torch.int64 if wide else torch.int32
            assert {b.dtype for b in pool} == {want}, f"wide={wide}: the ids buffers' dtype"
            assert ids.dtype == torch.int32 and offsets.dtype == torch.int64
            at = ids.untyped_storage().data_ptr()
            shared = any(at == b.untyped_storage().data_ptr() for b in pool)
            assert shared != wide, f"wide={wide}: kept ids shared with the buffer: {shared}"
            workers._loss(out).backward()
        _agree._INT32_LIMIT = limit
        _forwards_before_backwards(rank, world, tables, plan, features)
    finally:
        cls.memory_chunks, _agree._INT32_LIMIT = default, limit


def _forwards_before_backwards(rank, world, tables, plan, features) -> None:
    """Three forwards, then their backwards: each step's ids, shifted in place in the
    workspace's ids buffer and kept for its backward, are not handed to a later step's
    exchange (nor shifted again) while that backward still holds them; the tables equal a
    module's that makes every buffer anew (``_kept = None``)."""
    import _dist_workers as workers

    import embtable
    from embtable import EmbeddingBagCollection

    made = []
    for kept in (True, False):
        torch.manual_seed(0)
        module = embtable.distributed.shard(EmbeddingBagCollection(tables), plan)
        embtable.optim.fuse(module, "rowwise_adagrad", lr=0.1)
        if not kept:
            module._kept = None
        made.append(module)
    for module in made:
        outs, saved = [], []
        for step in range(3):  # (3: more steps in flight than the 2 kept buffers per role)
            local, _ = workers.batches(features, step, world, rank)
            out = module(local).values()
            ids = out.grad_fn.saved_tensors[0]
            assert ids.dtype == torch.int32
            saved.append((ids, ids.clone()))
            outs.append(out)
        for ids, then in saved:
            assert torch.equal(ids, then), "kept ids written over by a later step"
        for out in outs:
            workers._loss(out).backward()
    tables_of = [module.full_tables() for module in made]
    for name, table in tables_of[0].items():
        assert torch.equal(table, tables_of[1][name]), f"forwards before backwards: {name}"


def _fused_case(world: int):
    """Sum tables of one dim: the fused lookup is split by chunk (one bucket), a row-wise table
    (partial sums from both ranks) among table-wise ones, a table read by two features."""
    from embtable import TableConfig
    from embtable.distributed import ShardingPlan, TableSharding

    tables = [
        TableConfig(name="t0", num_embeddings=30, embedding_dim=8, feature_names=["f0", "g0"]),
        TableConfig(name="t1", num_embeddings=50, embedding_dim=8),
        TableConfig(name="t2", num_embeddings=20, embedding_dim=8, padding_idx=2),
        TableConfig(name="t3", num_embeddings=60, embedding_dim=8),
        TableConfig(name="t4", num_embeddings=10, embedding_dim=8),
        TableConfig(name="t5", num_embeddings=40, embedding_dim=8),
    ]
    fused_plan = ShardingPlan(
        world_size=world,
        tables={
            "t0": TableSharding.table_wise(rank=0),
            "t1": TableSharding.table_wise(rank=1),
            "t2": TableSharding.table_wise(rank=0),
            "t3": TableSharding.row_wise(boundaries=[0, 25, 60]),
            "t4": TableSharding.table_wise(rank=1),
            "t5": TableSharding.table_wise(rank=0),
        },
    )
    return tables, fused_plan
