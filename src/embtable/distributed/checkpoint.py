r"""Checkpoints of sharded tables that load on any number of ranks, or without torch.distributed.

:func:`save_checkpoint` writes every rank's shards (and their fused optimizer state) with
``torch.distributed.checkpoint`` (DCP) under global, per-table keys:

- ``embedding_bags.<table>.weight`` (``embeddings.<table>.weight`` for an
  :class:`~embtable.distributed.ShardedEmbeddingCollection`): ``[num_embeddings,
  embedding_dim]``, the ``state_dict`` keys of the unsharded collection, of a
  ``ModuleDict`` of ``torch.nn.EmbeddingBag`` and of TorchRec's ``EmbeddingBagCollection``;
- ``optimizer.<table>.<state>``: each optimizer state tensor of the table (``[N, D]`` or
  ``[N]``; int8_rowwise codes and their ``_scale``), and ``optimizer.<table>.table_step``.

Each sharded tensor is saved as the chunks its ranks hold, so DCP reshards on load:
:func:`load_checkpoint` reads a checkpoint of N ranks into a collection sharded over M
ranks with any plan, :func:`load_unsharded` into a plain collection in one process (with
its fused optimizer's state when it is fused), and :func:`load_tables` gives plain
``{key: tensor}`` for ``torch.nn`` modules and TorchRec's ``EmbeddingBagCollection``.

Atomicity: the ranks write into ``<path>.partial-<token>``; only after every rank's part is
written does rank 0 add ``embtable_manifest.json`` (last, fsynced) and rename the folder to
``path``.  A checkpoint without its manifest (an interrupted save) is refused by every loader.

Column-wise tables with a per-row optimizer state (row-wise Adagrad, int8_rowwise scales,
Adam's row steps): every column shard holds the whole row's state (the shards agree on it
every step); the checkpoint holds the first column shard's, and loading gives it to every
column shard.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor

from embtable._atomic import atomic_write_bytes, fsync_dir
from embtable.distributed._base import ShardedTables as _ShardedTables
from embtable.distributed.plan import Shard, ShardingType

__all__ = ["MANIFEST", "load_checkpoint", "load_tables", "load_unsharded", "save_checkpoint"]

#: The file whose presence marks a complete checkpoint (written last).
MANIFEST = "embtable_manifest.json"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's FutureWarning about ShardedTensor (DCP's resharding of uneven
    row / column chunks placed on chosen ranks needs it; DTensor has no such placements)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def _sharded_tensor(
    local: list[tuple[Tensor, Shard, bool]], size: tuple[int, ...], sharded: _ShardedTables
) -> Any:
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard as ChunkShard
    from torch.distributed._shard.sharded_tensor import init_from_local_shards

    rank = dist.get_global_rank(sharded.group, sharded.rank)
    shards = []
    for tensor, shard, row_only in local:
        offsets = [shard.row_offset] if row_only else [shard.row_offset, shard.col_offset]
        sizes = list(tensor.shape)
        meta = ShardMetadata(
            shard_offsets=offsets, shard_sizes=sizes, placement=f"rank:{rank}/{tensor.device}"
        )
        shards.append(ChunkShard(tensor=tensor, metadata=meta))
    with _quiet():
        return init_from_local_shards(shards, *size, process_group=sharded.group)


def _optimizer_of(sharded: _ShardedTables, table: str) -> tuple[Any, Any, Tensor] | None:
    """(FusedOptimizer, param group, grouped weight) of the local collection holding ``table``."""
    from embtable.functional import FUSED_ATTR

    holder = sharded.holder_of(table)
    if holder is None:
        return None
    weight = holder.grouped_weights[holder.plan.tables[table].group]
    optimizer = getattr(weight, FUSED_ATTR, None)
    if optimizer is None:
        return None
    return optimizer, optimizer._group_of[id(weight)], weight


def _state_entries(sharded: _ShardedTables, with_optimizer: bool) -> dict[str, Any]:
    """The DCP state dict of ``sharded``: views of its shards, sharded or plain as they are held."""
    key = "embedding_bags" if sharded._pooled else "embeddings"
    state: dict[str, Any] = {}
    for config in sharded.tables:
        name, kind = config.name, sharded._kind[config.name]
        shard = sharded.local_shard(name)
        holder = sharded.holder_of(name)
        size = (config.num_embeddings, config.embedding_dim)
        weight = holder.table_weight(name) if holder is not None else None
        if kind is ShardingType.DATA_PARALLEL:
            state[f"{key}.{name}.weight"] = weight
        else:
            local = [] if weight is None else [(weight, shard, False)]
            state[f"{key}.{name}.weight"] = _sharded_tensor(local, size, sharded)
        if not with_optimizer:
            continue
        found = _optimizer_of(sharded, name)
        opt_state: dict[str, Any] = {}
        if found is not None:
            optimizer, group, grouped = found
            opt_state = _ensure_state(optimizer, grouped, group)
        names = _agreed(sharded, sorted(k for k, v in opt_state.items() if isinstance(v, Tensor)))
        place = holder.plan.tables[name] if holder is not None else None
        for state_name in names:
            tensor = None
            if found is not None:
                tensor = opt_state[state_name].narrow(0, place.row_offset, place.num_rows)
            is_row = _is_row_state(sharded, tensor)  # a collective: every rank, every name
            entry = f"optimizer.{name}.{state_name}"
            if kind is ShardingType.DATA_PARALLEL:
                state[entry] = tensor
            elif kind is ShardingType.COLUMN_WISE and is_row:
                state[entry] = _row_state_of_first_column(sharded, name, tensor, config)
            else:
                shape = (config.num_embeddings,) if is_row else size
                local = [] if tensor is None else [(tensor, shard, is_row)]
                state[entry] = _sharded_tensor(local, shape, sharded)
        step = opt_state.get("table_step", 0)
        state[f"optimizer.{name}.table_step"] = torch.tensor(step, dtype=torch.int64)
    return state


def _ensure_state(optimizer: Any, weight: Tensor, group: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state of ``weight``, created (fresh, as the first step would) if none yet."""
    if not optimizer.state.get(weight):
        optimizer.state[weight] = {
            **optimizer.rule.init_state(weight.detach(), group),
            "table_step": 0,
        }
    return optimizer.state[weight]


def _agreed(sharded: _ShardedTables, names: list[str]) -> list[str]:
    """The optimizer state names of a table as its holders see them (ranks without it see none)."""
    gathered: list[Any] = [None] * sharded.world_size
    dist.all_gather_object(gathered, names, group=sharded.group)
    union = sorted({n for found in gathered for n in found})
    return union


def _is_row_state(sharded: _ShardedTables, tensor: Tensor | None) -> bool:
    flags: list[Any] = [None] * sharded.world_size
    dist.all_gather_object(
        flags, None if tensor is None else tensor.dim() == 1, group=sharded.group
    )
    return any(flag for flag in flags if flag is not None)


def _row_state_of_first_column(
    sharded: _ShardedTables, table: str, tensor: Tensor | None, config: Any
) -> Any:
    first = sharded._shards[table][0]
    local = []
    if tensor is not None and first.rank == sharded.rank:
        local = [
            (
                tensor,
                Shard(
                    rank=first.rank,
                    row_offset=0,
                    num_rows=config.num_embeddings,
                    col_offset=0,
                    num_cols=0,
                ),
                True,
            )
        ]
    return _sharded_tensor(local, (config.num_embeddings,), sharded)


def save_checkpoint(
    path: str | os.PathLike[str], sharded: _ShardedTables, *, optimizer: bool = True
) -> None:
    """Write ``sharded``'s tables (and fused optimizer state) to the folder ``path``; every rank calls it.

    The write is atomic: ``path`` appears (replacing an older checkpoint there) only after
    every rank's part is written; on any failure every rank raises and ``path`` is untouched.

    Args:
        path: the checkpoint folder (on a file system every rank sees).
        sharded: a :class:`~embtable.distributed.ShardedEmbeddingBagCollection` or
            :class:`~embtable.distributed.ShardedEmbeddingCollection`.
        optimizer: also save the state of the fused optimizers of its tables.

    Raises:
        torch.distributed.checkpoint.api.CheckpointException: a rank failed to write.
    """
    path = os.path.abspath(os.fspath(path))
    token = [uuid.uuid4().hex if sharded.rank == 0 else None]
    dist.broadcast_object_list(
        token, src=dist.get_global_rank(sharded.group, 0), group=sharded.group
    )
    partial = f"{path}.partial-{token[0]}"
    with _quiet():
        state = _state_entries(sharded, optimizer)
    try:
        with _quiet():
            dcp.save(
                state, storage_writer=dcp.FileSystemWriter(partial), process_group=sharded.group
            )
    except BaseException:
        if sharded.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    dist.barrier(group=sharded.group)
    if sharded.rank == 0:
        manifest = {
            "format": "embtable.distributed/1",
            "world_size": sharded.world_size,
            "plan": sharded.plan.to_dict(),
            "tables": {c.name: [c.num_embeddings, c.embedding_dim] for c in sharded.tables},
            "pooled": sharded._pooled,
            "optimizer": optimizer,
        }
        atomic_write_bytes(os.path.join(partial, MANIFEST), json.dumps(manifest, indent=1).encode())
        old = None
        if os.path.exists(path):
            old = f"{path}.old-{token[0]}"
            os.replace(path, old)
        os.replace(partial, path)
        fsync_dir(os.path.dirname(path))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=sharded.group)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete checkpoint.

    Raises:
        FileNotFoundError: ``path`` is missing or holds no manifest (an interrupted save).
    """
    file = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"embtable.distributed: {os.fspath(path)!r} is not a complete checkpoint (no {MANIFEST}; "
            f"an interrupted save leaves only a '.partial-*' folder, which is never loaded)"
        )
    with open(file) as handle:
        return json.load(handle)


def load_checkpoint(
    path: str | os.PathLike[str], sharded: _ShardedTables, *, optimizer: bool = True
) -> None:
    """Load a checkpoint written by any number of ranks into ``sharded`` (any plan); every rank calls it.

    Each rank reads the rows of its shards; with ``optimizer=True`` the fused optimizer
    state of the tables (its moments and steps) too, so training resumes exactly where the
    saved run was.  Fuse the collection (:func:`embtable.optim.fuse`) before loading.

    Raises:
        FileNotFoundError: no complete checkpoint at ``path``.
        ValueError: the checkpoint's tables have other shapes.
    """
    manifest = read_manifest(path)
    _check_tables(manifest, {c.name: [c.num_embeddings, c.embedding_dim] for c in sharded.tables})
    with _quiet():
        state = _state_entries(sharded, optimizer and manifest["optimizer"])
    with _quiet():
        dcp.load(
            state, storage_reader=dcp.FileSystemReader(os.fspath(path)), process_group=sharded.group
        )
    if optimizer and manifest["optimizer"]:
        for config in sharded.tables:
            found = _optimizer_of(sharded, config.name)
            if found is not None:  # tables of one local group step together: one table_step
                opt, _, grouped = found
                opt.state[grouped]["table_step"] = int(state[f"optimizer.{config.name}.table_step"])
        _spread_row_state(sharded, state)


def _spread_row_state(sharded: _ShardedTables, state: dict[str, Any]) -> None:
    """Column-wise tables: copy the loaded first-column per-row state into every column shard."""
    for config in sharded.tables:
        if sharded._kind[config.name] is not ShardingType.COLUMN_WISE:
            continue
        found = _optimizer_of(sharded, config.name)
        for key, value in state.items():
            if not key.startswith(f"optimizer.{config.name}.") or key.endswith(".table_step"):
                continue
            if not hasattr(value, "local_shards") or len(value.size()) != 1:
                continue
            full = torch.zeros(value.size(), dtype=_dtype_of(value), device=sharded._device())
            for chunk in value.local_shards():
                full[: chunk.tensor.numel()] = chunk.tensor
            dist.broadcast(
                full,
                dist.get_global_rank(sharded.group, _group_rank(sharded, config.name)),
                group=sharded.group,
            )
            if found is not None:
                opt, _, grouped = found
                place = sharded.holder_of(config.name).plan.tables[config.name]
                name = key.rsplit(".", 1)[1]
                opt.state[grouped][name].narrow(0, place.row_offset, place.num_rows).copy_(full)


def _group_rank(sharded: _ShardedTables, table: str) -> int:
    return sharded._shards[table][0].rank


def _dtype_of(value: Any) -> torch.dtype:
    return value.dtype


def _check_tables(manifest: dict[str, Any], tables: dict[str, list[int]]) -> None:
    saved = {name: list(shape) for name, shape in manifest["tables"].items()}
    wanted = {name: shape for name, shape in tables.items()}
    missing = [n for n in wanted if n not in saved]
    wrong = [n for n in wanted if n in saved and saved[n] != wanted[n]]
    if missing or wrong:
        raise ValueError(
            f"embtable.distributed: the checkpoint's tables {saved} do not fit the collection's "
            f"{wanted} (missing {missing}, other shapes {wrong})"
        )


def _read_plain(path: str | os.PathLike[str], wanted: Any) -> dict[str, Tensor]:
    """The checkpoint's entries whose key ``wanted(key)`` accepts, as plain tensors (no dist)."""
    reader = dcp.FileSystemReader(os.fspath(path))
    metadata = reader.read_metadata()
    state = {}
    for key, meta in metadata.state_dict_metadata.items():
        if wanted(key) and hasattr(meta, "size"):
            state[key] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    if state:
        with _quiet():
            dcp.load(state, storage_reader=reader, no_dist=True)
    return state


def load_tables(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The checkpoint's tables as plain tensors, in one process (no torch.distributed needed).

    Returns:
        ``{"embedding_bags.<table>.weight": [N, D] tensor, ...}``: load it into a
        ``ModuleDict`` of ``torch.nn.EmbeddingBag`` named ``embedding_bags``, TorchRec's
        ``EmbeddingBagCollection``, or an embtable collection.

    Raises:
        FileNotFoundError: no complete checkpoint at ``path``.
    """
    read_manifest(path)
    return _read_plain(path, lambda k: k.endswith(".weight") and not k.startswith("optimizer."))


def _plain_optimizer_state(
    path: str | os.PathLike[str], collection: torch.nn.Module
) -> list[tuple[Any, Tensor, dict[str, Any], dict[str, Tensor], int]]:
    """For each fused grouped weight of a plain ``collection``: (optimizer, weight, param
    group, ``{state name: [group rows, ...] tensor}`` read from the checkpoint, table step).
    Reads and checks everything; changes nothing."""
    from embtable.functional import FUSED_ATTR

    plan = getattr(collection, "plan", None)
    if plan is None or not hasattr(collection, "grouped_weights"):
        return []
    saved = _read_plain(path, lambda k: k.startswith("optimizer."))
    by_group: dict[int, list[str]] = {}
    for name, place in plan.tables.items():
        by_group.setdefault(place.group, []).append(name)
    found = []
    for group_index, names in by_group.items():
        weight = collection.grouped_weights[group_index]
        optimizer = getattr(weight, FUSED_ATTR, None)
        if optimizer is None:
            continue
        group = optimizer._group_of[id(weight)]
        current = optimizer.state.get(weight) or optimizer.rule.init_state(weight.detach(), group)
        wanted = {k: v for k, v in current.items() if isinstance(v, Tensor)}
        full = {k: torch.empty_like(v) for k, v in wanted.items()}
        step = 0
        for table in names:
            place = plan.tables[table]
            for state_name, tensor in wanted.items():
                key = f"optimizer.{table}.{state_name}"
                value = saved.get(key)
                expected = (place.num_rows, *tensor.shape[1:])
                if value is None or tuple(value.shape) != expected or value.dtype != tensor.dtype:
                    held = sorted(
                        k.rsplit(".", 1)[1] for k in saved if k.startswith(f"optimizer.{table}.")
                    )
                    got = None if value is None else (tuple(value.shape), value.dtype)
                    raise ValueError(
                        f"load_unsharded: the checkpoint's optimizer state of table {table!r} does "
                        f"not fit the collection's fused optimizer: {key} is {got}, expected "
                        f"{(expected, tensor.dtype)} (saved states {held}; fuse with the saved "
                        f"run's rule and state_dtype, or pass optimizer=False)"
                    )
                full[state_name].narrow(0, place.row_offset, place.num_rows).copy_(value)
            table_step = saved.get(f"optimizer.{table}.table_step")
            step = max(step, 0 if table_step is None else int(table_step))
        found.append((optimizer, weight, group, full, step))
    return found


def _check_plain_keys(tables: dict[str, Tensor], collection: torch.nn.Module) -> None:
    """Raise before any write where ``load_state_dict`` would fail after copying some tables
    (it copies the matching keys first, then raises for missing / unexpected ones)."""
    current = {k: tuple(v.shape) for k, v in collection.state_dict().items()}
    missing = sorted(set(current) - set(tables))
    unexpected = sorted(set(tables) - set(current))
    shapes = [
        f"{k}: {tuple(v.shape)} saved, {current[k]} in the collection"
        for k, v in tables.items()
        if k in current and tuple(v.shape) != current[k]
    ]
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"load_unsharded: the collection's tables do not match the checkpoint's "
            f"(missing in the checkpoint: {missing}; not in the collection: {unexpected}; "
            f"other shapes: {shapes}); nothing was loaded"
        )


def load_unsharded(
    path: str | os.PathLike[str], collection: torch.nn.Module, *, optimizer: bool = True
) -> None:
    """Load a sharded checkpoint into a plain (unsharded) collection, in one process.

    With ``optimizer=True`` and ``collection`` fused (:func:`embtable.optim.fuse` with the
    saved run's rule and ``state_dtype``, before loading), the fused optimizer state is
    loaded too (moments, row steps; a group of tables takes the largest ``table_step`` of
    its tables), so training resumed in one process continues as the sharded run would
    have.  An unfused collection (or ``optimizer=False``) loads the weights only.

    Raises:
        FileNotFoundError: no complete checkpoint at ``path``.
        ValueError: the saved optimizer state does not fit the fused optimizer (another rule
            or state dtype); nothing is loaded then.
        RuntimeError: the collection's tables do not match the checkpoint's (a key missing
            on either side, another shape; the keys are named); nothing is loaded then.
        TypeError: ``optimizer`` is not a bool.
    """
    if not isinstance(optimizer, bool):
        raise TypeError(f"load_unsharded: optimizer must be a bool, got {optimizer!r}")
    manifest = read_manifest(path)
    tables = load_tables(path)
    _check_plain_keys(tables, collection)
    states = []
    if optimizer and manifest.get("optimizer"):
        states = _plain_optimizer_state(path, collection)
    collection.load_state_dict(tables)
    for fused, weight, group, full, step in states:
        state = _ensure_state(fused, weight, group)
        with torch.no_grad():
            for name, value in full.items():
                state[name].copy_(value)
        state["table_step"] = step
