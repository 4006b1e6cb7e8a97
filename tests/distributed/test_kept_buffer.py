"""The module workspace's buffers (:func:`embtable.distributed._comm.kept_buffer`): one is
handed out again only while nothing else holds its memory, however the caller holds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.utils.dlpack

from embtable.distributed import _comm

pytestmark = pytest.mark.skipif(
    _comm._use_count is None, reason="this torch has no storage use count: never reused"
)

_HOLDERS: dict[str, Callable[[torch.Tensor], Any]] = {
    "the tensor itself": lambda t: t,
    "a view": lambda t: t.view(-1),
    "a slice": lambda t: t[1:],
    "detach()": lambda t: t.detach(),
    "numpy()": lambda t: t.numpy(),
    "a tensor autograd saved": lambda t: (t * torch.ones(t.shape, requires_grad=True)).grad_fn,
    "its storage": lambda t: t.untyped_storage(),
    "a DLPack capsule": lambda t: torch.utils.dlpack.to_dlpack(t),
}


@pytest.mark.parametrize("shape", [(4, 3), (12,)])
@pytest.mark.parametrize("holder", list(_HOLDERS))
def test_a_held_buffer_is_not_handed_out_again(holder: str, shape: tuple[int, ...]) -> None:
    kept: dict[str, Any] = {}
    like = torch.empty(0)
    first = _comm.kept_buffer(kept, "x", like, shape)
    first.fill_(7.0)
    held = _HOLDERS[holder](first)
    pointer = first.data_ptr()
    del first
    second = _comm.kept_buffer(kept, "x", like, shape)
    second.fill_(-1.0)
    assert second.data_ptr() != pointer, holder
    del second
    assert len(kept["x"]) == 2
    # the held memory was not written over
    base = kept["x"][0]
    assert base.data_ptr() == pointer, holder
    assert bool((base.view(-1)[: base.numel() if len(shape) > 1 else shape[0]] == 7.0).all())
    del held


@pytest.mark.parametrize("shape", [(4, 3), (12,)])
def test_a_dropped_buffer_is_handed_out_again(shape: tuple[int, ...]) -> None:
    kept: dict[str, Any] = {}
    like = torch.empty(0)
    first = _comm.kept_buffer(kept, "x", like, shape)
    pointer = first.data_ptr()
    view = first.view(-1)
    del first, view
    again = _comm.kept_buffer(kept, "x", like, shape)
    assert again.data_ptr() == pointer and tuple(again.shape) == shape
    # another dtype or shape (2-D) is another buffer; a shorter 1-D one is a slice of it
    other = _comm.kept_buffer(kept, "x", torch.empty(0, dtype=torch.float64), shape)
    assert other.data_ptr() != pointer
    del again, other
    if len(shape) == 1:
        short = _comm.kept_buffer(kept, "x", like, (shape[0] - 5,))
        assert short.data_ptr() == pointer and short.numel() == shape[0] - 5
    assert len(kept["x"]) == 2  # (at most two per role)


class _Result(torch.autograd.Function):
    """Returns a workspace buffer as its output (as ``_ChunkedRows`` returns its result)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kept: dict[str, Any]) -> torch.Tensor:  # type: ignore[override]
        out = _comm.kept_buffer(kept, "result", x, tuple(x.shape))
        return out.copy_(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def test_a_result_returned_by_autograd_and_kept_is_not_written_over() -> None:
    kept: dict[str, Any] = {}
    x = torch.ones(3, 4, requires_grad=True)
    results = []
    for step in range(3):  # the caller keeps every step's result
        out = _Result.apply(x * (step + 1), kept)
        out.sum().backward()
        results.append(out)
    for step, out in enumerate(results):
        assert torch.equal(out, torch.full((3, 4), float(step + 1))), step
    del results, out
    again = _Result.apply(x * 9, kept)  # (all dropped: a kept buffer is reused)
    assert again.data_ptr() in {t.data_ptr() for t in kept["result"]}


def test_a_result_returned_by_autograd_can_be_modified_in_place() -> None:
    # (a view returned by a custom Function may not be modified in place: autograd raises)
    kept: dict[str, Any] = {}
    x = torch.ones(3, 4, requires_grad=True)
    out = _Result.apply(x * 3, kept)
    out.mul_(2.0)
    out.sum().backward()
    assert torch.equal(out, torch.full((3, 4), 6.0))
    assert torch.equal(x.grad, torch.full((3, 4), 6.0))
