"""Spawning gloo groups on 127.0.0.1 for the distributed tests (shared by the test files)."""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, timeout_s: float
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )
    try:
        fn(rank, world, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def spawn(fn: Callable[..., Any], world: int, *args: Any, timeout_s: float = 60.0) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo processes; raise if any fails."""
    mp.spawn(_entry, args=(world, free_port(), fn, args, timeout_s), nprocs=world, join=True)


def concat_batches(batches: list[Any]) -> Any:
    """The global batch: the examples of every rank's KeyedJagged, rank after rank."""
    from embtable import KeyedJagged

    keys = batches[0].keys()
    values, lengths, weights = [], [], []
    for key in keys:
        for b in batches:
            p = b.keys().index(key)
            starts, stride = b.offset_per_key(), b.stride()
            values.append(b.values()[starts[p] : starts[p + 1]])
            lengths.append(b.lengths()[p * stride : (p + 1) * stride])
            if b.weights() is not None:
                weights.append(b.weights()[starts[p] : starts[p + 1]])
    return KeyedJagged(
        keys, torch.cat(values), torch.cat(lengths), weights=torch.cat(weights) if weights else None
    )


def _raw_entry(
    rank: int,
    world: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    timeout_s: float,
    folder: str,
) -> None:
    try:
        _entry(rank, world, port, fn, args, timeout_s)
    except BaseException:
        with open(os.path.join(folder, f"error-{rank}.txt"), "w") as handle:
            handle.write(traceback.format_exc())
        os._exit(1)


def spawn_raw(
    fn: Callable[..., Any],
    world: int,
    folder: str,
    *args: Any,
    timeout_s: float = 5.0,
    wait_s: float = 60.0,
) -> list[int | None]:
    """Like :func:`spawn`, but a failing rank does not stop the others: the exit codes
    (``None``: still running after ``wait_s``, then killed); tracebacks in ``folder/error-<rank>.txt``."""
    context = mp.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(
            target=_raw_entry, args=(r, world, port, fn, (folder, *args), timeout_s, folder)
        )
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    codes: list[int | None] = []
    for proc in procs:
        proc.join(wait_s)
        codes.append(proc.exitcode)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return codes
