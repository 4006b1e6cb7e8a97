"""``embtable::embedding_lookup`` (the lookup with its autograd formula in C++) against the Python
``_EmbeddingFunction`` (its oracle) and ``torch.nn.functional.embedding``; opcheck, gradcheck,
and which lookups take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from embtable import _functions, ops
from embtable import functional as F

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="embtable._C is not built")


def _op():
    return _functions.compiled_embedding_op()


def _is_compiled(out: torch.Tensor) -> bool:
    return "EmbeddingLookup" in out.grad_fn.name()


@st.composite
def lookups(draw):
    num_rows = draw(st.integers(1, 12))
    dim = draw(st.integers(1, 6))
    shape = draw(st.sampled_from([(), (0,), (5,), (3, 4), (2, 0), (2, 3, 2)]))
    pad = draw(st.one_of(st.none(), st.integers(0, num_rows - 1)))
    return {
        "num_rows": num_rows, "dim": dim, "shape": shape, "padding_idx": pad,
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "id_dtype": draw(st.sampled_from([torch.int64, torch.int32])),
        "scale_grad_by_freq": draw(st.booleans()), "sparse": draw(st.booleans()),
        "strided": draw(st.booleans()),  # a non-contiguous table (index_select instead of the kernel)
        "expanded": draw(st.booleans()),  # a stride-0 output gradient, as out.sum() gives
        "seed": draw(st.integers(0, 2**16)),
    }


def _backward(lookup, weight: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight = weight.detach().clone().requires_grad_()
    out = lookup(weight)
    out.backward(grad)
    return out, weight.grad


def _same_sparse(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same COO tensor as stored: layout, size, coalesced flag, indices and values in order."""
    assert a.is_sparse and b.is_sparse and a.shape == b.shape
    assert a.is_coalesced() == b.is_coalesced()
    assert a._indices().dtype == b._indices().dtype == torch.int64
    assert torch.equal(a._indices(), b._indices()) and torch.equal(a._values(), b._values())


@settings(max_examples=60, deadline=None)
@given(lookups())
def test_op_matches_python_function_and_torch(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    num_rows, dim, shape, pad = case["num_rows"], case["dim"], case["shape"], case["padding_idx"]
    freq, sparse = case["scale_grad_by_freq"], case["sparse"]
    weight = torch.randn(num_rows, dim, generator=gen, dtype=case["dtype"])
    if case["strided"]:
        weight = torch.randn(dim, num_rows, generator=gen, dtype=case["dtype"]).t()
    ids = torch.randint(0, num_rows, shape, generator=gen).to(case["id_dtype"])
    grad = torch.randn(*shape, dim, generator=gen, dtype=case["dtype"])
    if case["expanded"]:
        grad = torch.randn(dim, generator=gen, dtype=case["dtype"]).expand(*shape, dim)
    out_shape = (*shape, dim)

    def compiled(w):
        return _op()(w, ids, -1 if pad is None else pad, freq, sparse)

    def python(w):
        return _functions._EmbeddingFunction.apply(w, ids.reshape(-1), out_shape, pad, freq, sparse)

    # torch 2.13 refuses sparse + scale_grad_by_freq and fails on a 0-d input with sparse +
    # padding_idx (DESIGN departure 1): its dense gradient is the oracle there.
    torch_sparse = sparse and not freq and ids.dim() > 0

    def reference(w):
        return torch_F.embedding(ids, w, padding_idx=pad, scale_grad_by_freq=freq, sparse=torch_sparse)

    out, got = _backward(compiled, weight, grad)
    py_out, py_grad = _backward(python, weight, grad)
    torch_out, torch_grad = _backward(reference, weight, grad)
    assert out.shape == out_shape and out.dtype == weight.dtype
    assert torch.equal(out, py_out) and torch.equal(out, torch_out)
    assert got.is_sparse == sparse and got.dtype == weight.dtype
    if sparse:  # the Python Function's COO tensor, entry for entry
        _same_sparse(got, py_grad)
        if torch_sparse:
            _same_sparse(got, torch_grad)
    else:
        assert torch.equal(got, py_grad)
    dense = got.to_dense() if sparse else got
    torch_dense = torch_grad.to_dense() if torch_grad.is_sparse else torch_grad
    if freq:  # torch adds scale * row in one fused step, embtable rounds the product first
        torch.testing.assert_close(dense, torch_dense)
    else:
        assert torch.equal(dense, torch_dense)


@pytest.mark.parametrize("sparse", [False, True])
def test_functional_lookup_takes_the_op_with_torchs_max_norm(sparse: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(9, 4, generator=gen) * 3
    ids = torch.tensor([[0, 3, 3], [8, 1, 0]])
    grad = torch.randn(2, 3, 4, generator=gen)
    kwargs = {"padding_idx": 1, "max_norm": 1.5, "sparse": sparse}
    ours, theirs = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    out, expected = F.embedding(ids, ours, **kwargs), torch_F.embedding(ids, theirs, **kwargs)
    assert _is_compiled(out)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(out, expected) and torch.equal(ours.detach(), theirs.detach())  # renormed alike
    if sparse:
        _same_sparse(ours.grad, theirs.grad)
    else:
        assert torch.equal(ours.grad, theirs.grad)


def _error(ids: torch.Tensor, weight: torch.Tensor) -> tuple[type, str]:
    with pytest.raises(IndexError) as info:
        F.embedding(ids, weight)
    return type(info.value), str(info.value)


def test_errors_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.randn(5, 2, requires_grad=True)
    cases = [(torch.tensor([[1, 5]]), weight), (torch.tensor([-1]), weight.double()),
             (torch.tensor([7], dtype=torch.int32), weight)]
    errors = [_error(*case) for case in cases]
    assert "embedding: id 5 is out of range for a table of 5 rows" in errors[0][1]
    monkeypatch.setattr(_functions, "compiled_embedding", lambda *args: None)
    monkeypatch.setattr(F, "compiled_embedding", lambda *args: None)
    assert errors == [_error(*case) for case in cases]  # as the Python Function raises them
    assert torch.count_nonzero(weight.grad if weight.grad is not None else torch.zeros(1)) == 0
    with pytest.raises(TypeError, match="float32 or float64"):
        _op()(weight.half(), torch.tensor([1]), -1, False, False)
    with pytest.raises(ValueError, match="must be 2-D"):
        _op()(torch.randn(5), torch.tensor([1]), -1, False, False)


class _Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_which_lookups_take_the_op() -> None:
    ids = torch.tensor([2, 0, 2])
    weight = torch.randn(4, 3, requires_grad=True)
    assert _is_compiled(F.embedding(ids, weight))
    assert _is_compiled(F.embedding(ids, torch.nn.Parameter(weight.detach().double())))
    assert F.embedding(ids, weight.detach()).grad_fn is None  # no gradient needed: a bare gather
    for other in (weight.detach().half().requires_grad_(), weight.detach().bfloat16().requires_grad_()):
        assert "_EmbeddingFunction" in F.embedding(ids, other).grad_fn.name()
    with _Passthrough():
        assert "_EmbeddingFunction" in F.embedding(ids, weight).grad_fn.name()
    assert _functions.compiled_embedding(weight.detach().to("meta"), ids, None, False, False) is None
    # torch.func transforms and forward AD keep the Python Functions (their vmap and jvp rules)
    grads = torch.func.grad(lambda w: F.embedding(ids, w).sum())(weight.detach())
    assert torch.equal(grads, torch.tensor([[1.0] * 3, [0.0] * 3, [2.0] * 3, [0.0] * 3]))


def test_without_the_extension_the_python_function_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_functions, "_COMPILED_LOOKUP", [])
    monkeypatch.setattr(ops, "extension_available", lambda: False)
    weight = torch.randn(4, 3, requires_grad=True)
    out = F.embedding(torch.tensor([1, 1]), weight, sparse=True)
    assert "_EmbeddingFunction" in out.grad_fn.name()
    out.sum().backward()
    assert torch.equal(weight.grad.to_dense()[1], torch.full((3,), 2.0))


def test_a_build_without_the_op_runs_the_python_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_functions, "_COMPILED_LOOKUP", [])
    monkeypatch.setattr(_functions, "hasattr", lambda *args: False, raising=False)  # a stale _C
    weight = torch.randn(4, 3, requires_grad=True)
    assert "_EmbeddingFunction" in F.embedding(torch.tensor([1, 2]), weight).grad_fn.name()
    assert _functions._COMPILED_LOOKUP == [None]


def test_gradcheck_float64() -> None:
    weight = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[2, 0, 5], [2, 2, 1]])
    assert torch.autograd.gradcheck(lambda w: _op()(w, ids, -1, False, False), (weight,))
    # padding_idx and the frequency scale are not derivatives (as in torch), but the backward
    # is linear in the output gradient: its own derivative (double backward) is checked
    for pad, freq in ((-1, False), (2, True)):
        assert torch.autograd.gradgradcheck(lambda w, p=pad, f=freq: _op()(w, ids, p, f, False), (weight,))


def test_graph_rules_as_torchs() -> None:
    """Saved ids are version-checked and freed by the first backward, as torch's node's are."""
    weight = torch.randn(6, 2, requires_grad=True)
    ids = torch.tensor([[1, 4], [4, 0]])
    out = F.embedding(ids, weight)
    assert out.grad_fn.name() == "EmbeddingLookupBackward" and out.requires_grad
    out.sum().backward(retain_graph=True)
    out.sum().backward()  # accumulates
    assert torch.equal(weight.grad[4], torch.full((2,), 4.0))
    with pytest.raises(RuntimeError, match="second time"):
        out.sum().backward()
    out = F.embedding(ids, weight)
    ids.add_(1)  # modified after it was saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(weight.detach(), torch.ones(6, 2))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            _op()(dual, ids, -1, False, False)


@pytest.mark.parametrize("freq", [False, True])
def test_batched_output_gradients(freq: bool) -> None:
    """``autograd.grad(..., is_grads_batched=True)`` runs the backward inside vmap."""
    weight = torch.randn(7, 3, requires_grad=True)
    ids = torch.tensor([[1, 4, 1], [0, 6, 4]])
    grads = torch.randn(5, 2, 3, 3)
    out = _op()(weight, ids, 4, freq, False)
    (batched,) = torch.autograd.grad(out, weight, grads, is_grads_batched=True, retain_graph=True)
    for g, b in zip(grads, batched):
        (one,) = torch.autograd.grad(out, weight, g, retain_graph=True)
        torch.testing.assert_close(b, one, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("pad", "freq", "sparse"), [(-1, False, False), (2, True, False), (-1, False, True),
                                                    (2, True, True)])
def test_opcheck(pad: int, freq: bool, sparse: bool) -> None:
    weight = torch.randn(10, 3, requires_grad=True)
    torch.library.opcheck(_op(), (weight, torch.tensor([[1, 2], [2, 9]]), pad, freq, sparse))
