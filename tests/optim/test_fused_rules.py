"""Each fused rule, N steps, against its oracle: torch's optimizers where they apply, else NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fused_oracle import Adagrad, LazyAdam, MomentumSGD, RowWiseAdagrad, reduce_rows

import embtable
from embtable.ops._fused_reference import POOL_MEAN, POOL_SUM

V, D, STEPS, N, PAD = 40, 6, 6, 30, 2


def _batches(seed: int, steps: int = STEPS, n: int = N) -> list[torch.Tensor]:
    """Skewed ids (many duplicates) that include the padding row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = (V * torch.rand(n, generator=g) ** 3).long()
        ids[::7] = PAD
        out.append(ids.reshape(5, -1))
    return out


def _targets(seed: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(*shape, generator=g) for _ in range(STEPS)]


def _train_pair(torch_table, torch_opt, table, opt_name, seed, **options):
    """Same batches through a torch table + optimizer and a fused embtable table."""
    with torch.no_grad():
        table.weight.copy_(torch_table.weight)
    fused = embtable.optim.fuse(table, opt_name, **options)
    batches = _batches(seed)
    targets = _targets(seed, (*batches[0].shape, D))
    for ids, target in zip(batches, targets):
        torch_opt.zero_grad()
        (torch_table(ids) * target).sum().backward()
        torch_opt.step()
        (table(ids) * target).sum().backward()
        fused.step()
    return fused


@pytest.mark.parametrize("freq", [False, True])
def test_sgd_equals_torch_sgd(kernel_path, freq):
    torch.manual_seed(0)
    ref = torch.nn.Embedding(V, D, padding_idx=PAD, scale_grad_by_freq=freq)
    table = embtable.Embedding(V, D, padding_idx=PAD, scale_grad_by_freq=freq)
    _train_pair(ref, torch.optim.SGD(ref.parameters(), lr=0.3), table, "sgd", 1, lr=0.3)
    torch.testing.assert_close(table.weight, ref.weight, rtol=1e-6, atol=1e-6)
    assert table.weight.grad is None


@pytest.mark.parametrize(("sparse", "freq", "lr_decay"), [(True, False, 0.0), (False, True, 0.1)])
def test_adagrad_equals_torch_adagrad(kernel_path, sparse, freq, lr_decay):
    torch.manual_seed(1)
    ref = torch.nn.Embedding(V, D, padding_idx=PAD, sparse=sparse, scale_grad_by_freq=freq)
    table = embtable.Embedding(V, D, padding_idx=PAD, scale_grad_by_freq=freq)
    opts = {"lr": 0.2, "lr_decay": lr_decay, "initial_accumulator_value": 0.1}
    torch_opt = torch.optim.Adagrad(ref.parameters(), **opts)
    _train_pair(ref, torch_opt, table, "adagrad", 2, **opts)
    torch.testing.assert_close(table.weight, ref.weight, rtol=1e-6, atol=1e-6)


def test_adam_table_bias_correction_equals_sparse_adam(kernel_path):
    torch.manual_seed(2)
    ref = torch.nn.Embedding(V, D, padding_idx=PAD, sparse=True)
    table = embtable.Embedding(V, D, padding_idx=PAD)
    torch_opt = torch.optim.SparseAdam(ref.parameters(), lr=0.05)
    fused = _train_pair(ref, torch_opt, table, "adam", 3, lr=0.05, bias_correction="table")
    torch.testing.assert_close(table.weight, ref.weight, rtol=1e-6, atol=1e-6)
    state = fused.state[table.weight]
    torch.testing.assert_close(state["exp_avg"], torch_opt.state[ref.weight]["exp_avg"])
    torch.testing.assert_close(state["exp_avg_sq"], torch_opt.state[ref.weight]["exp_avg_sq"])


def _run_numpy_oracle(oracle, opt_name, pooling, seed, **options):
    """Bags through fused_lookup and the NumPy oracle; returns (fused weight, oracle, optimizer)."""
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(V, D))
    model = oracle(weight.detach().numpy())
    fused = embtable.optim.FusedOptimizer([weight], opt_name, **options)
    g = torch.Generator().manual_seed(seed)
    for ids in _batches(seed):
        ids = ids.reshape(-1)
        cuts = torch.sort(torch.randint(0, N + 1, (5,), generator=g)).values
        offsets = torch.cat([torch.tensor([0]), cuts, torch.tensor([N])])
        psw = torch.rand(N, generator=g) if pooling == POOL_SUM else None
        target = torch.randn(len(offsets) - 1, D, generator=g)
        out = embtable.optim.fused_lookup(
            weight, ids, offsets, fused, pooling=pooling, per_sample_weights=psw,
            padding_idx=PAD, scale_grad_by_freq=True,
        )
        (out * target).sum().backward()
        mode = "mean" if pooling == POOL_MEAN else "sum"
        psw_np = None if psw is None else psw.numpy()
        model.update(reduce_rows(ids.numpy(), offsets.numpy(), target.numpy(), psw_np, mode, PAD, True))
    return weight.detach().numpy(), model, fused


@pytest.mark.parametrize("pooling", [POOL_SUM, POOL_MEAN])
@pytest.mark.parametrize(("weight_decay", "decoupled"), [(0.0, False), (0.1, False), (0.1, True)])
def test_rowwise_adagrad_equals_fbgemm_formula(kernel_path, pooling, weight_decay, decoupled):
    def oracle(w):
        return RowWiseAdagrad(w, lr=0.1, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)

    options = {"lr": 0.1, "weight_decay": weight_decay, "decoupled_weight_decay": decoupled}
    got, model, _ = _run_numpy_oracle(oracle, "rowwise_adagrad", pooling, 4, **options)
    np.testing.assert_allclose(got, model.w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", [POOL_SUM, POOL_MEAN])
@pytest.mark.parametrize(
    ("name", "weight_decay", "decoupled", "per_row"),
    [("adam", 0.0, False, True), ("adam", 0.05, False, True), ("adamw", 0.05, True, True),
     ("adamw", 0.05, True, False)],
)
def test_lazy_adam_equals_documented_formula(kernel_path, pooling, name, weight_decay, decoupled, per_row):
    def oracle(w):
        return LazyAdam(w, 0.05, (0.9, 0.99), 1e-8, weight_decay, decoupled, per_row)

    options = {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": weight_decay,
               "bias_correction": "row" if per_row else "table"}
    got, model, _ = _run_numpy_oracle(oracle, name, pooling, 5, **options)
    np.testing.assert_allclose(got, model.w, rtol=1e-5, atol=1e-6)


def test_lazy_adam_differs_from_dense_adam_on_untouched_rows(kernel_path):
    torch.manual_seed(3)
    ref = torch.nn.Embedding(V, D)
    table = embtable.Embedding(V, D)
    torch_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    _train_pair(ref, torch_opt, table, "adam", 6, lr=0.05, bias_correction="table")
    later = torch.tensor([[0, 0, 1]])
    before = table.weight.detach().clone()
    fused = embtable.optim.fused_optimizer_of(table.weight)
    (table(later) * 1.0).sum().backward()
    fused.step()
    changed = (table.weight.detach() != before).any(1)
    assert changed.nonzero().flatten().tolist() == [0, 1]  # only the rows of the batch move


@pytest.mark.parametrize(("nesterov", "weight_decay", "decoupled"), [(False, 0.0, False), (True, 0.1, False), (False, 0.1, True)])
def test_sgd_momentum_equals_documented_formula(kernel_path, nesterov, weight_decay, decoupled):
    def oracle(w):
        return MomentumSGD(w, 0.1, 0.9, nesterov, weight_decay, decoupled)

    options = {"lr": 0.1, "momentum": 0.9, "nesterov": nesterov, "weight_decay": weight_decay,
               "decoupled_weight_decay": decoupled}
    got, model, _ = _run_numpy_oracle(oracle, "sgd", POOL_SUM, 7, **options)
    np.testing.assert_allclose(got, model.w, rtol=1e-5, atol=1e-6)


# int8_rowwise state: (oracle, options, {state key: oracle attribute}) per rule.
_QUANTIZED = {
    "adam": (
        lambda w: LazyAdam(w, 0.05, (0.9, 0.99), 1e-8, 0.05, quantized=True),
        {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.05},
        {"exp_avg": "m", "exp_avg_sq": "v"},
    ),
    "adagrad": (
        lambda w: Adagrad(w, 0.1, 1e-10, initial=0.1, quantized=True),
        {"lr": 0.1, "initial_accumulator_value": 0.1},
        {"sum": "s"},
    ),
    "sgd": (
        lambda w: MomentumSGD(w, 0.1, 0.9, nesterov=True, quantized=True),
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"momentum_buffer": "b"},
    ),
}


@pytest.mark.parametrize("pooling", [POOL_SUM, POOL_MEAN])
@pytest.mark.parametrize("name", sorted(_QUANTIZED))
def test_int8_rowwise_state_equals_quantized_oracle(kernel_path, pooling, name):
    """Decode, update in float64, encode (NumPy) vs the float32 kernel: codes agree except
    where float32 rounding lands on the other side of a rounding boundary."""
    oracle, options, moments = _QUANTIZED[name]
    got, model, fused = _run_numpy_oracle(oracle, name, pooling, 8, state_dtype="int8_rowwise", **options)
    state = fused.state[fused.param_groups[0]["params"][0]]
    for key, attr in moments.items():
        codes, scale = state[key].long().numpy(), state[key + "_scale"].numpy()
        want = getattr(model, attr)
        assert state[key].dtype == (torch.int8 if key in ("exp_avg", "momentum_buffer") else torch.uint8)
        assert np.mean(codes == want.codes) > 0.99
        assert np.abs(codes - want.codes).max() <= 1
        np.testing.assert_allclose(scale, want.scale, rtol=1e-5, atol=1e-7)
    # A flipped code moves later updates of its row by about one quantization step (2/127 of
    # the row's largest |moment|), i.e. a few hundredths of lr; elsewhere only float32 rounding.
    # (Float state would leave about half the weights more than 1e-4 * lr from this oracle.)
    lr = options["lr"]
    np.testing.assert_allclose(got, model.w, rtol=0, atol=3 * (2 / 127) * lr)
    assert np.mean(np.abs(got - model.w) <= 1e-4 * lr) >= 0.95
