"""Run one call through torch and through embtable on identical copies, and compare.

Shared by the OpInfo / ModuleInfo sweep (``test_opinfo.py``) and the edge-shape tests.
A *run* records what a call did: the exception it raised (and where), or the output, the
weight afterwards (``max_norm`` renormalizes in place), and the gradients of the weight
and of ``per_sample_weights`` for one fixed output gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Run:
    error: BaseException | None = None
    stage: str = ""  # "forward" or "backward" when error is set
    out: Tensor | None = None
    weight: Tensor | None = None
    grad: Tensor | None = None
    weights_grad: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def copy_args(weight: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Fresh leaves: a weight that requires grad, and a per_sample_weights copy."""
    weight = weight.detach().clone().requires_grad_(True)
    kwargs = dict(kwargs)
    psw = kwargs.get("per_sample_weights")
    if isinstance(psw, Tensor):
        kwargs["per_sample_weights"] = psw.detach().clone().requires_grad_(psw.requires_grad)
    return weight, kwargs


def output_grad(out: Tensor) -> Tensor:
    """A fixed, non-trivial output gradient for ``out``."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)


def run(fn: Callable[..., Tensor], ids: Tensor, weight: Tensor, kwargs: dict[str, Any]) -> Run:
    """``fn(ids, weight, **kwargs)``, then a backward with :func:`output_grad`."""
    weight, kwargs = copy_args(weight, kwargs)
    try:
        out = fn(ids, weight, **kwargs)
    except Exception as error:  # noqa: BLE001 - the class is what is compared
        return Run(error=error, stage="forward", weight=weight.detach())
    try:
        out.backward(output_grad(out))
    except Exception as error:  # noqa: BLE001
        return Run(error=error, stage="backward", out=out.detach(), weight=weight.detach())
    psw = kwargs.get("per_sample_weights")
    grad = weight.grad
    if grad is not None and grad.layout != torch.strided:
        grad = grad.coalesce()
    return Run(
        out=out.detach(),
        weight=weight.detach(),
        grad=grad,
        weights_grad=psw.grad if isinstance(psw, Tensor) else None,
    )


def assert_same_error(theirs: Run, ours: Run, context: str) -> None:
    """Both raised at the same stage, and embtable's error is an instance of torch's class."""
    assert (theirs.error is None) == (ours.error is None), (
        f"{context}: torch raised {theirs.error!r} ({theirs.stage}), embtable {ours.error!r} ({ours.stage})"
    )
    if theirs.error is not None:
        assert theirs.stage == ours.stage, f"{context}: torch raised in {theirs.stage}, embtable in {ours.stage}"
        assert isinstance(ours.error, type(theirs.error)), (
            f"{context}: torch raised {type(theirs.error).__name__}, embtable "
            f"{type(ours.error).__name__} (not a subclass): {ours.error}"
        )


def assert_same_tensor(theirs: Tensor | None, ours: Tensor | None, what: str, exact: bool) -> None:
    assert (theirs is None) == (ours is None), f"{what}: torch {theirs!r}, embtable {ours!r}"
    if theirs is None:
        return
    assert theirs.layout == ours.layout, f"{what}: layout {theirs.layout} vs {ours.layout}"
    if theirs.layout != torch.strided:
        theirs, ours = theirs.to_dense(), ours.to_dense()
    if exact:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
    else:
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m: f"{what}: {m}", **rounding(ours.dtype))


def rounding(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances for sums taken in another order: ``assert_close``'s defaults, and a few
    units in the last place for 16-bit types (each addition rounds there)."""
    return {"rtol": 1.6e-2, "atol": 1e-3} if dtype in (torch.float16, torch.bfloat16) else {}


def assert_same_run(theirs: Run, ours: Run, context: str, exact: bool = True) -> None:
    """Same raise-or-not and class; same output, weight, gradients.

    Bit for bit (``exact``), except the ``per_sample_weights`` gradient of float32/float64
    tables: torch forms each entry with its BLAS ``dot``, whose summation order is the
    library's; embtable's equals it to the dtype's rounding (``assert_close`` defaults).
    """
    assert_same_error(theirs, ours, context)
    if theirs.error is not None and theirs.stage == "forward":
        assert_same_tensor(theirs.weight, ours.weight, f"{context} weight after the error", True)
        return
    assert_same_tensor(theirs.out, ours.out, f"{context} output", exact)
    assert_same_tensor(theirs.weight, ours.weight, f"{context} weight (max_norm)", True)
    if theirs.error is None:
        assert_same_tensor(theirs.grad, ours.grad, f"{context} weight gradient", exact)
        wide = ours.weights_grad is not None and ours.weights_grad.dtype in (torch.float32, torch.float64)
        what = f"{context} per_sample_weights gradient"
        assert_same_tensor(theirs.weights_grad, ours.weights_grad, what, exact and not wide)
