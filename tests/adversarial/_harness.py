"""Run adversarial cases in child processes with a memory and a time limit.

A test module of ``tests/adversarial`` lists its cases in ``CASES`` (built with :func:`case`);
the module-scoped ``outcomes`` fixture (``conftest.py``) runs them all, batched, in one child
Python that imports the module from its file and calls each case in turn.  The child writes a
line before and after each case, so when it dies (a segfault, the address-space limit, a hang
past the case's time limit) the parent knows which case did it, records that as the case's
outcome ("crash: signal 11", "hang: over 20 s") and starts a new child for the cases left.
A crash or hang is a failed case, never a dead test run.

A case is a function and its arguments; it passes when it raises the expected exception
type with a message matching ``match`` (or returns, for ``expect=None``).  A case checks
everything else itself (results against an oracle, state left unchanged) with plain asserts,
and re-raises the error it caught so that the harness checks its type and message too.

Run as a script (``python _harness.py RESULTS MODULE NAME...``) it is the child.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: The classes of the issue-13 findings; every case belongs to one.
KINDS = {
    "crash": "crashes and hangs",
    "corruption": "silent corruption",
    "loss": "data loss and partial updates",
    "error": "clear errors",
}

#: Address-space limit of a child (bytes); importing torch and embtable takes ~0.7 GiB.
MEMORY_LIMIT = 3 << 30


@dataclass(frozen=True, kw_only=True)
class Case:
    """One adversarial input: ``func(*args)`` must raise ``expect`` (matching ``match``)."""

    name: str
    kind: str
    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    expect: type[BaseException] | None = None
    match: str = ""
    timeout: float = 20.0
    one_line: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


#: The type of a module's ``CASES``.
CaseList = list[Case]


def case(
    kind: str,
    name: str,
    func: Callable[..., Any],
    *args: Any,
    expect: type[BaseException] | None = None,
    match: str = "",
    timeout: float = 20.0,
) -> Case:
    """A :class:`Case`; ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"case: kind must be one of {sorted(KINDS)}, got {kind!r}")
    return Case(name=name, kind=kind, func=func, args=args, expect=expect, match=match, timeout=timeout)


def check_names(cases: list[Case]) -> None:
    """``ValueError`` when two cases share a name."""
    seen: set[str] = set()
    for item in cases:
        if item.name in seen:
            raise ValueError(f"duplicate adversarial case name {item.name!r}")
        seen.add(item.name)


# ---------------------------------------------------------------------- parent side


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_cases(module_file: str, cases: list[Case]) -> dict[str, dict[str, Any]]:
    """Run ``cases`` of ``module_file`` in children; ``{name: outcome}``.

    An outcome is ``{"status": "returned"}``, ``{"status": "raised", "types": [...],
    "message": ...}``, ``{"status": "crash", "message": ...}`` or ``{"status": "hang", ...}``.
    """
    check_names(cases)
    outcomes: dict[str, dict[str, Any]] = {}
    timeouts = {c.name: c.timeout for c in cases}
    pending = [c.name for c in cases]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # (a crash prints its stack)
    while pending:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as handle:
            log = handle.name
        errors = tempfile.TemporaryFile("w+b")
        try:
            child = subprocess.Popen(
                [sys.executable, __file__, log, module_file, *pending],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                preexec_fn=_limit_child,
                env=env,
            )
            running, started = None, time.monotonic()
            while child.poll() is None:
                time.sleep(0.02)
                records = _read(log)
                running, started = _running(records, running, started)
                if running is not None and time.monotonic() - started > timeouts[running]:
                    child.kill()
                    child.wait()
                    outcomes[running] = {"status": "hang", "message": f"over {timeouts[running]} s"}
                    break
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
            records = _read(log)
        finally:
            errors.close()
            os.unlink(log)
        for record in records:
            if record["event"] == "done":
                outcomes[record["name"]] = record["outcome"]
        running, _ = _running(records, None, 0.0)
        if running is not None and running not in outcomes:
            code = child.returncode
            why = f"signal {-code}" if code < 0 else f"exit status {code}"
            outcomes[running] = {"status": "crash", "message": f"{why}: {stderr[-2000:]}"}
        left = [name for name in pending if name not in outcomes]
        if left and left == pending:  # the child died before any case: report it on all
            for name in left:
                outcomes[name] = {"status": "crash", "message": f"child failed: {stderr[-2000:]}"}
            left = []
        pending = left
    return outcomes


def _read(log: str) -> list[dict[str, Any]]:
    records = []
    with open(log, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


def _running(records: list[dict[str, Any]], running: str | None, started: float) -> tuple[str | None, float]:
    """The case started last and not finished (``None`` if none), and when it was first seen."""
    current = None
    for record in records:
        current = record["name"] if record["event"] == "start" else None
    if current != running:
        return current, time.monotonic()
    return running, started


def verdict(item: Case, outcome: dict[str, Any]) -> str | None:
    """Why ``outcome`` fails ``item``, or ``None`` when it passes."""
    status = outcome["status"]
    if status in ("crash", "hang"):
        return f"{status}: {outcome['message']}"
    if item.expect is None:
        if status == "raised":
            return f"expected no error, got {outcome['types'][0]}: {outcome['message']}"
        return None
    if status == "returned":
        return f"expected {item.expect.__name__}, but the call returned"
    if item.expect.__name__ not in outcome["types"]:
        return f"expected {item.expect.__name__}, got {outcome['types'][0]}: {outcome['message']}"
    if not re.search(item.match, outcome["message"], re.DOTALL):
        return f"message {outcome['message']!r} does not match {item.match!r}"
    if item.one_line and "\n" in outcome["message"].strip():
        return f"the message is not one line: {outcome['message']!r}"
    return None


# ---------------------------------------------------------------------- helpers for cases


@contextlib.contextmanager
def unchanged(snapshot: Callable[[], Any]) -> Iterator[None]:
    """Assert that ``snapshot()`` is equal before and after the block (exceptions pass on)."""
    before = snapshot()
    try:
        yield
    finally:
        after = snapshot()
        if not _same(before, after):
            raise AssertionError("the call changed the state it was to leave unchanged")


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(_bits(a), _bits(b)))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _bits(tensor: Any) -> Any:
    import torch

    return tensor.detach().contiguous().flatten().view(torch.uint8)


def clone_state(value: Any) -> Any:
    """A deep copy of nested dicts / lists of tensors and plain values."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_state(v) for v in value)
    return value


def raises(exc: type[BaseException], func: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    """The ``exc`` ``func(*args, **kwargs)`` raises; ``AssertionError`` if it returns."""
    try:
        func(*args, **kwargs)
    except exc as error:
        return error
    raise AssertionError(f"{getattr(func, '__name__', func)} accepted the input")


# ---------------------------------------------------------------------- child side


def _child(log: str, module_file: str, names: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("adversarial_cases", module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["adversarial_cases"] = module
    spec.loader.exec_module(module)
    by_name = {c.name: c for c in module.CASES}
    with open(log, "a", encoding="utf-8") as out:

        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        for name in names:
            item = by_name[name]
            emit({"event": "start", "name": name})
            began = time.perf_counter()
            try:
                with warnings.catch_warnings():  # (a case's warning filters end with it)
                    item.func(*item.args)
            except BaseException as error:  # noqa: BLE001 - every outcome is recorded
                types = [t.__name__ for t in type(error).__mro__]
                outcome = {"status": "raised", "types": types, "message": str(error)}
            else:
                outcome = {"status": "returned"}
            outcome["seconds"] = round(time.perf_counter() - began, 3)
            emit({"event": "done", "name": name, "outcome": outcome})


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _child(sys.argv[1], sys.argv[2], sys.argv[3:])
