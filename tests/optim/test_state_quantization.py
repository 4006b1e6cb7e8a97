"""int8_rowwise optimizer state: the encoding's error bounds, memory, untouched rows, conversion."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from fused_oracle import encode_rows as encode_rows_f64
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable.ops._fused_reference import decode_rows, encode_rows

_ROWS = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
    elements=st.floats(-(2.0**100), 2.0**100, width=32) | st.just(np.float32(0.0)),
)


def _bound(q: np.ndarray, scale: np.ndarray, signed: bool) -> np.ndarray:
    """Largest |decode(encode(x)) - x| of an entry with code q: with |t - q / n| <= 0.5 / n for
    t = (|x| / scale)^(1/2) (signed, n = 127) or ^(1/4) (unsigned, n = 255), factor
    t^k - u^k; plus float32 rounding of the scale-sized values."""
    q = np.abs(q.astype(np.float64))
    if signed:  # t^2 - u^2 = (t - u)(t + u)
        exact = 0.5 * (2 * q + 0.5) / 127**2
    else:  # t^4 - u^4 = (t - u)(t + u)(t^2 + u^2)
        exact = 0.5 * (2 * q + 0.5) * ((q + 0.5) ** 2 + q**2) / 255**4
    return (exact + 1e-6) * scale[:, None] + 1e-38


@settings(max_examples=60, deadline=None)
@given(x=_ROWS, signed=st.booleans(), zero_row=st.booleans())
def test_encode_decode_round_trip_within_the_documented_bound(x, signed, zero_row):
    if zero_row:
        x[0] = 0.0
    if not signed:
        x = np.abs(x)
    codes, scale = encode_rows(torch.from_numpy(x), signed)
    assert codes.dtype == (torch.int8 if signed else torch.uint8) and scale.dtype == torch.float32
    q, s = codes.numpy().astype(np.int64), scale.numpy()
    np.testing.assert_array_equal(s, np.abs(x).max(1))
    if signed:
        assert q.min() >= -127 and q.max() <= 127
        assert np.all((np.sign(q) == np.sign(x)) | (q == 0))
    decoded = decode_rows(codes, scale, signed).numpy()
    assert decoded.dtype == np.float32
    assert np.all(np.abs(decoded.astype(np.float64) - x) <= _bound(q, s, signed))
    np.testing.assert_array_equal(np.abs(decoded).max(1), s)  # each row's largest entry is exact
    if zero_row:
        assert s[0] == 0 and not q[0].any() and not decoded[0].any()
    want, _ = encode_rows_f64(x, signed)  # float64: only rounding-boundary cases may differ
    assert np.abs(q - want).max() <= 1


def test_tiny_entries_are_not_flushed_and_negatives_are_zero_when_unsigned():
    x = torch.tensor([[1.0, 1e-8, 3e-10, 1e-12, -5.0]])
    codes, scale = encode_rows(x, False)
    assert codes.tolist() == [[255, 3, 1, 0, 0]] and scale.item() == 1.0
    assert decode_rows(codes, scale, False)[0, 2].item() == pytest.approx(255.0**-4)  # 2.4e-10
    codes, _ = encode_rows(x, True)
    assert codes.tolist() == [[57, 0, 0, 0, -127]]


def _trained(optimizer: str, state_dtype: str, steps: int = 3, **options):
    torch.manual_seed(0)
    table = embtable.Embedding(50, 12)
    opt = embtable.optim.fuse(table, optimizer, lr=0.05, state_dtype=state_dtype, **options)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        (table(torch.randint(0, 50, (40,), generator=g)) ** 2).sum().backward()
    return table, opt


def test_adam_state_bytes():
    v, d = 50, 12
    table, opt = _trained("adam", "int8_rowwise")
    state = opt.state[table.weight]
    moments = ("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale")
    assert sum(state[k].nbytes for k in moments) == 2 * v * d + 8 * v
    assert state["row_step"].nbytes == 8 * v
    assert set(state) == {*moments, "row_step", "table_step"}


@pytest.mark.parametrize(("optimizer", "options"), [("adam", {}), ("adagrad", {}), ("sgd", {"momentum": 0.9})])
def test_untouched_rows_keep_codes_and_scales(kernel_path, optimizer, options):
    table, opt = _trained(optimizer, "int8_rowwise", **options)
    state = opt.state[table.weight]
    before = {k: v.clone() for k, v in state.items() if torch.is_tensor(v)}
    (table(torch.tensor([3, 4, 4])) ** 2).sum().backward()
    changed = set()
    for key, old in before.items():
        rows = (state[key] != old).reshape(len(old), -1).any(1).nonzero().flatten().tolist()
        assert set(rows) <= {3, 4}, key
        changed.update(rows)
    assert changed == {3, 4}


def test_load_state_dict_converts_between_state_dtypes():
    table, opt = _trained("adam", "int8_rowwise")
    saved = opt.state_dict()
    quantized = {k: v.clone() for k, v in opt.state[table.weight].items() if torch.is_tensor(v)}
    saved["param_groups"][0]["state_dtype"] = "float32"
    plain = embtable.optim.FusedOptimizer([table.weight], "adam")
    plain.load_state_dict(saved)
    state = plain.state[table.weight]
    assert "exp_avg_scale" not in state and state["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(
        state["exp_avg_sq"], decode_rows(quantized["exp_avg_sq"], quantized["exp_avg_sq_scale"], False)
    )
    saved = plain.state_dict()
    again = embtable.optim.FusedOptimizer([table.weight], "adam", state_dtype="int8_rowwise")
    again.load_state_dict(saved)  # the configured state_dtype is kept: the moments are encoded
    assert again.param_groups[0]["state_dtype"] == "int8_rowwise"
    for key, value in quantized.items():
        assert torch.equal(again.state[table.weight][key], value), key
