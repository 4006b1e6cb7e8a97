"""PyTorch's own samples for embedding / embedding_bag, run through torch and embtable side by side.

The OpInfo entries ``nn.functional.embedding`` / ``nn.functional.embedding_bag`` and the
ModuleInfo entry of ``nn.Embedding`` ship in torch 2.13's wheel
(``torch.testing._internal``).  Every sample runs in float32, float64, bfloat16 and float16,
with the weight gradient dense and sparse: the same raise-or-not (embtable's error an
instance of torch's class), the same output, the same weight after ``max_norm``, the same
gradients, bit for bit.  A case where embtable departs from torch on purpose is an entry of
:data:`DEPARTURES`, naming the docs line that documents it, and is checked against the
documented behaviour instead.  (torch ships no ModuleInfo for ``nn.EmbeddingBag``; its
module is covered through the functional samples and ``test_module_samples`` below.)
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("expecttest")  # torch.testing._internal imports it

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

import embtable  # noqa: E402
from embtable import functional  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _torch_samples as ts  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
F = torch.nn.functional

#: Documented departures: case -> the docs line that states it.
DEPARTURES = {
    "bag_scale_grad_by_freq": "docs/bags.md: departures table, `scale_grad_by_freq=True` (CPU), pytorch #190063",
    "sparse_max": "docs/bags.md: departures table, `mode=\"max\"` with `sparse=True`",
    "sparse_scale_grad_by_freq": "docs/embedding.md: departures table, `sparse=True` with `scale_grad_by_freq=True`",
}

OPS = {
    "nn.functional.embedding": (F.embedding, functional.embedding),
    "nn.functional.embedding_bag": (F.embedding_bag, functional.embedding_bag),
}


def _opinfo(name: str):
    return next(op for op in op_db if op.name == name and op.variant_test_name == "")


def _departure(name: str, kwargs: dict) -> str | None:
    bag = name.endswith("embedding_bag")
    if not kwargs.get("sparse"):
        if bag and kwargs.get("scale_grad_by_freq") and kwargs.get("mode", "mean") != "max":
            return "bag_scale_grad_by_freq"
        return None
    if name.endswith("embedding_bag") and kwargs.get("mode") == "max":
        return "sparse_max"
    if kwargs.get("scale_grad_by_freq"):
        return "sparse_scale_grad_by_freq"
    return None


def _exact(name: str, dtype: torch.dtype, kwargs: dict) -> bool:
    """Bit for bit, except bags of float32/float64 tables.  There torch adds a row's gradient
    contributions in the order of its (unstable) sort of the ids and forms weighted sums with
    fused multiply-adds (BLAS ``axpy``); embtable adds in input order (its compiled kernels,
    which this issue leaves alone) with a product and a sum.  The two agree to the dtype's
    rounding (``assert_close``'s defaults).  The same holds for ``embedding`` with
    ``scale_grad_by_freq`` (torch adds ``scale * row`` in one fused step, embtable rounds the
    product first).  16-bit tables are compared bit for bit."""
    wide = dtype in (torch.float32, torch.float64)
    scaled = bool(kwargs.get("scale_grad_by_freq"))  # torch: grad += scale * row, one fused step
    return not (wide and (name.endswith("embedding_bag") or scaled))


def _frequency_oracle(ids, weight, offsets=None, mode="mean", per_sample_weights=None, padding_idx=None,
                      include_last_offset=False, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                      sparse=False):
    """Departure 3's documented bag: each position's gradient divided by its id's count in the
    batch, composed from torch ops that do it right (``F.embedding``'s frequency scaling,
    then the pooling as sums)."""
    if ids.dim() == 2:
        num_bags, length = ids.shape
        flat, bag_of = ids.reshape(-1), torch.arange(num_bags).repeat_interleave(length)
    else:
        num_bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
        bounds = torch.cat([offsets[:num_bags], torch.tensor([ids.numel()])])
        flat, bag_of = ids, torch.arange(num_bags).repeat_interleave(bounds.diff())
    if max_norm is not None:  # renormalize the table in place, as the lookup would
        with torch.no_grad():
            F.embedding(flat, weight, max_norm=max_norm, norm_type=norm_type)
    table = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight
    rows = F.embedding(flat, table, padding_idx=padding_idx, scale_grad_by_freq=True)
    keep = torch.ones_like(flat, dtype=rows.dtype)
    if padding_idx is not None:
        keep = (flat != padding_idx % weight.shape[0]).to(rows.dtype)
    factor = keep if per_sample_weights is None else keep * per_sample_weights.reshape(-1)
    out = rows.new_zeros((num_bags, weight.shape[1])).index_add(0, bag_of, rows * factor.unsqueeze(1))
    if mode == "mean":
        count = torch.zeros(num_bags, dtype=rows.dtype).index_add(0, bag_of, keep)
        out = out / count.clamp(min=1).unsqueeze(1)
    return out.to(weight.dtype)


def _check_bag_frequency(theirs: ts.Run, ours: ts.Run, oracle: ts.Run, context: str) -> None:
    """torch 2.13 divides by a wrong count; embtable equals the documented oracle (to rounding:
    the oracle sums in another order)."""
    assert theirs.error is None and ours.error is None, f"{context}: {theirs.error!r} {ours.error!r}"
    ts.assert_same_run(oracle, ours, f"{context} vs the documented oracle", exact=False)


def _check_departure(case: str, theirs: ts.Run, ours: ts.Run, dense: ts.Run, context: str) -> None:
    """torch refuses these; embtable gives the sparse form of the dense gradient."""
    assert theirs.error is not None, f"{context}: torch no longer refuses {case} ({DEPARTURES[case]})"
    assert ours.error is None, f"{context}: {ours.error!r}"
    assert dense.error is None
    ts.assert_same_tensor(dense.out, ours.out, f"{context} output", True)
    # the same sums, coalesced in another order (16-bit: rounded in another order)
    torch.testing.assert_close(ours.grad.to_dense(), dense.grad, **ts.rounding(dense.grad.dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_opinfo_samples(name: str, dtype: torch.dtype) -> None:
    """Every sample torch ships: those for gradient checks (``requires_grad=True``, whose
    ``per_sample_weights`` require grad) and the wider set without (``padding_idx``,
    ``max_norm``, ``scale_grad_by_freq``, ``sparse``; the weight's gradient is taken anyway)."""
    theirs_fn, ours_fn = OPS[name]
    op = _opinfo(name)
    samples = [*op.sample_inputs("cpu", dtype, requires_grad=True), *op.sample_inputs("cpu", dtype, requires_grad=False)]
    assert samples
    for i, sample in enumerate(samples):
        ids = sample.args[0]
        for sparse in (False, True):
            kwargs = dict(sample.kwargs, sparse=sparse or bool(sample.kwargs.get("sparse")))
            context = f"{name} sample {i} {dtype} kwargs={ {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)} }"
            theirs = ts.run(theirs_fn, ids, sample.input, kwargs)
            ours = ts.run(ours_fn, ids, sample.input, kwargs)
            case = _departure(name, kwargs)
            if case == "bag_scale_grad_by_freq":
                oracle = ts.run(_frequency_oracle, ids, sample.input, kwargs)
                _check_bag_frequency(theirs, ours, oracle, context)
            elif case is not None:
                dense = ts.run(ours_fn, ids, sample.input, dict(kwargs, sparse=False))
                _check_departure(case, theirs, ours, dense, context)
            else:
                ts.assert_same_run(theirs, ours, context, exact=_exact(name, dtype, kwargs))


@pytest.mark.parametrize("name", sorted(OPS))
def test_opinfo_error_inputs(name: str) -> None:
    """The error samples torch ships (a non-2-D weight): torch's class, embtable's message."""
    theirs_fn, ours_fn = OPS[name]
    op = _opinfo(name)
    if op.error_inputs_func is None:
        pytest.skip(f"torch ships no error inputs for {name}")
    errors = list(op.error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises(error.error_type, match=error.error_regex):
            theirs_fn(sample.args[0], sample.input, **sample.kwargs)
        with pytest.raises(error.error_type) as caught:
            ours_fn(sample.args[0], sample.input, **sample.kwargs)
        assert isinstance(caught.value, ValueError)  # the precise class stays
        assert "weight must be 2-D" in str(caught.value)


def _module_info(cls: type) -> object:
    return next(m for m in module_db if m.module_cls is cls)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_samples(dtype: torch.dtype) -> None:
    """ModuleInfo samples of ``nn.Embedding`` (and the same inputs for ``nn.EmbeddingBag``)."""
    info = _module_info(torch.nn.Embedding)
    inputs = info.module_inputs_func(info, "cpu", dtype, requires_grad=True, training=True)
    assert inputs
    for i, sample in enumerate(inputs):
        kwargs = dict(sample.constructor_input.kwargs, dtype=dtype)
        for sparse in (False, True):
            torch.manual_seed(i)
            theirs = torch.nn.Embedding(*sample.constructor_input.args, **kwargs, sparse=sparse)
            torch.manual_seed(i)
            ours = embtable.Embedding(*sample.constructor_input.args, **kwargs, sparse=sparse)
            assert torch.equal(theirs.weight, ours.weight)  # same seed, same draw
            ids = sample.forward_input.args[0]
            a = ts.run(lambda x, w, m=theirs: F.embedding(x, w, sparse=m.sparse), ids, theirs.weight, {})
            b_out = ours(ids)
            theirs_out = theirs(ids)
            ts.assert_same_tensor(theirs_out, b_out, f"module sample {i}", True)
            b_out.backward(ts.output_grad(b_out))
            theirs_out.backward(ts.output_grad(theirs_out))
            grad_a, grad_b = theirs.weight.grad, ours.weight.grad
            if sparse:
                grad_a, grad_b = grad_a.coalesce(), grad_b.coalesce()
            ts.assert_same_tensor(grad_a, grad_b, f"module sample {i} sparse={sparse} grad", True)
            assert a.error is None
            # the same ids as bags of one row each through EmbeddingBag (sum of one row = the row)
            bag_theirs = torch.nn.EmbeddingBag(*sample.constructor_input.args, **kwargs, mode="sum")
            bag_ours = embtable.EmbeddingBag.from_pretrained(bag_theirs.weight.detach().clone(), mode="sum")
            bags = ids.reshape(-1, 1)
            ts.assert_same_tensor(bag_theirs(bags).detach(), bag_ours(bags), f"bag sample {i}", True)


def test_module_error_inputs() -> None:
    """ModuleInfo error samples of ``nn.Embedding``: embtable raises an instance of torch's class."""
    info = _module_info(torch.nn.Embedding)
    errors = info.module_error_inputs_func(info, "cpu", torch.float32, requires_grad=False, training=True)
    assert errors
    for error in errors:
        sample = error.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type):
                torch.nn.Embedding(*args, **kwargs)
            with pytest.raises(error.error_type) as caught:
                embtable.Embedding(*args, **kwargs)
            assert isinstance(caught.value, ValueError)
            continue
        theirs, ours = torch.nn.Embedding(*args, **kwargs), embtable.Embedding(*args, **kwargs)
        with pytest.raises(error.error_type, match=error.error_regex):
            theirs(*sample.forward_input.args)
        with pytest.raises(error.error_type):
            ours(*sample.forward_input.args)
