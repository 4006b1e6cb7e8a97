"""Row formats (embtable.storage.codecs): golden bytes, torch's prepack ops as the oracle for
the integer layouts, error bounds as property tests, greedy range search, conversions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.storage import codecs

INT_FORMATS = ("int8", "int4", "int2")
TORCH_PREPACK = {
    "int4": "embedding_bag_4bit_prepack",
    "int2": "embedding_bag_2bit_prepack",
}


def _rows(seed: int, num_rows: int, dim: int, spread: float, shift: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.rand(num_rows, 1, generator=gen) * spread
    return torch.randn(num_rows, dim, generator=gen) * scale + shift


def test_golden_bytes_int8():
    # row [1, -1]: bias fp16(-1) = 0xBC00, scale fp16(2 / 255) = 0x2004 (0.0078430...)
    packed = codecs.quantize_rows(torch.tensor([[1.0, -1.0]]), "int8")
    assert packed.tolist() == [[255, 0, 0x04, 0x20, 0x00, 0xBC]]
    decoded = codecs.dequantize_rows(packed, "int8", 2)
    scale = torch.tensor(2 / 255).half().float()
    assert decoded.tolist() == [[(-1 + 255 * scale).item(), -1.0]]


def test_golden_bytes_int4_and_int2_pack_low_bits_first():
    rows = torch.tensor([[0.0, 15.0, 5.0, 10.0]])  # scale 1, bias 0: codes are the values
    assert codecs.quantize_rows(rows, "int4").tolist() == [[0xF0, 0xA5, 0x00, 0x3C, 0x00, 0x00]]
    rows2 = torch.tensor([[0.0, 1.0, 2.0, 3.0, 3.0]])  # int2: 4 codes per byte, padded
    packed = codecs.quantize_rows(rows2, "int2")
    assert packed.shape == (1, 2 + 4)
    assert packed[0, :2].tolist() == [0b11100100, 0b00000011]
    assert codecs.unpack_codes(packed, "int2", 5).tolist() == [[0, 1, 2, 3, 3]]


@pytest.mark.parametrize("fmt", ["int4", "int2"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.sampled_from([4, 8, 12, 64]), spread=st.floats(1e-3, 10.0),
       shift=st.floats(-5.0, 5.0))
def test_bytes_equal_torch_prepack(fmt, seed, dim, spread, shift):
    """FBGEMM's fused N-bit layout: byte-identical to torch's prepack op (min/max search)."""
    rows = _rows(seed, 16, dim, spread, shift)
    expected = getattr(torch.ops.quantized, TORCH_PREPACK[fmt])(rows)
    assert torch.equal(codecs.quantize_rows(rows, fmt), expected)


def test_int8_decodes_like_torch_byte_rowwise_op():
    """int8 exported to torch's byte layout pools (torch's op) to what our rows decode to."""
    rows = _rows(1, 40, 16, 2.0, 0.3)
    packed = codecs.quantize_rows(rows, "int8")
    prepacked = codecs.to_torch_prepacked(packed, "int8", 16)
    ids, offsets = torch.arange(40), torch.arange(40)
    got = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(prepacked, ids, offsets, mode=0)
    torch.testing.assert_close(got, codecs.dequantize_rows(packed, "int8", 16), rtol=1e-6, atol=1e-6)
    assert torch.equal(codecs.from_torch_prepacked(prepacked, "int8", 16), packed)
    # and torch's own byte prepack (float32 scale and bias) imports with fp16 params
    theirs = torch.ops.quantized.embedding_bag_byte_prepack(rows)
    mine = codecs.from_torch_prepacked(theirs, "int8", 16)
    reference = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(theirs, ids, offsets, mode=0)
    bound = 2.0**-10 * rows.abs().amax(1, keepdim=True) + 1e-6
    assert bool(((codecs.dequantize_rows(mine, "int8", 16) - reference).abs() <= bound).all())


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "bf16"])
def test_float_formats_are_casts(fmt):
    rows = _rows(2, 10, 7, 3.0, 0.0)
    dtype = codecs.codec(fmt).float_dtype
    packed = codecs.quantize_rows(rows, fmt)
    assert packed.shape == (10, codecs.row_bytes(fmt, 7))
    assert torch.equal(codecs.dequantize_rows(packed, fmt, 7, dtype=dtype), rows.to(dtype))


def test_row_bytes_table():
    assert [codecs.row_bytes(f, 64) for f in codecs.FORMATS] == [256, 128, 128, 68, 36, 20]
    assert codecs.row_bytes("int4", 5) == 3 + 4


@pytest.mark.parametrize("fmt", [f for f in codecs.FORMATS if f != "fp32"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 40), spread=st.floats(1e-6, 1e3),
       shift=st.floats(-100.0, 100.0))
def test_row_error_within_bound(fmt, seed, dim, spread, shift):
    rows = _rows(seed, 12, dim, spread, shift)
    decoded = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt), fmt, dim)
    error = (decoded - rows).abs().amax(1)
    assert bool((error <= codecs.error_bound(fmt, rows)).all())


@pytest.mark.parametrize("fmt", INT_FORMATS)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.floats(1e-3, 10.0))
def test_pooled_error_within_summed_bounds(fmt, seed, spread):
    gen = torch.Generator().manual_seed(seed)
    rows = _rows(seed, 30, 16, spread, 0.0)
    weights = torch.rand(30, generator=gen) * 4 - 2
    decoded = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt), fmt, 16)
    exact = (weights.unsqueeze(1) * rows).sum(0)
    approx = (weights.unsqueeze(1) * decoded).sum(0)
    bound = (weights.abs() * codecs.error_bound(fmt, rows)).sum() * (1 + 1e-5)
    assert float((approx - exact).abs().max()) <= float(bound)


def test_relative_error_of_pooled_bags_matches_the_issue():
    """N(0, 0.1) rows, bags of 20: int8 ~0.5 %, int4 ~10 %, int2 ~50 % relative RMS error."""
    rows = _rows(3, 2000, 64, 0.0, 0.0) + torch.randn(2000, 64, generator=torch.Generator().manual_seed(4)) * 0.1
    bags = torch.randint(0, 2000, (200, 20), generator=torch.Generator().manual_seed(5))
    exact = rows[bags].sum(1)
    found = {}
    for fmt in INT_FORMATS:
        decoded = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt), fmt, 64)
        found[fmt] = codecs.relative_rms(exact, decoded[bags].sum(1))
    assert 0.002 < found["int8"] < 0.01
    assert 0.05 < found["int4"] < 0.15
    assert 0.25 < found["int2"] < 0.7


@pytest.mark.parametrize("fmt", ["int4", "int2"])
def test_greedy_search_never_worse_and_helps_outliers(fmt):
    rows = _rows(6, 64, 32, 1.0, 0.0)
    rows[:, 0] = 8.0  # one outlier per row
    minmax = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt), fmt, 32)
    greedy = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt, search="greedy"), fmt, 32)
    loss_minmax = (minmax - rows).square().sum(1)
    loss_greedy = (greedy - rows).square().sum(1)
    assert bool((loss_greedy <= loss_minmax * (1 + 1e-6)).all())
    assert float(loss_greedy.sum()) < 0.95 * float(loss_minmax.sum())


@pytest.mark.parametrize("fmt", codecs.FORMATS)
def test_fbgemm_layout_round_trip(fmt):
    rows = _rows(7, 9, 8, 1.0, 0.5)
    packed = codecs.quantize_rows(rows, fmt)
    theirs = codecs.to_fbgemm(packed, fmt, 8, row_alignment=16)
    assert theirs.shape[1] % 16 == 0
    if codecs.codec(fmt).integer:  # scale and bias first
        assert torch.equal(theirs[:, :4], packed[:, -4:])
    assert torch.equal(codecs.from_fbgemm(theirs, fmt, 8), packed)


def test_edge_rows():
    rows = torch.tensor([[2.5, 2.5, 2.5], [0.0, 0.0, 0.0], [1e-8, 0.0, -1e-8]])
    for fmt in INT_FORMATS:
        decoded = codecs.dequantize_rows(codecs.quantize_rows(rows, fmt), fmt, 3)
        assert decoded[:2].tolist() == rows[:2].tolist()  # constant rows decode exactly
        assert float((decoded[2] - rows[2]).abs().max()) <= 2e-8
    assert codecs.quantize_rows(torch.empty(0, 4), "int4").shape == (0, 6)
    assert codecs.quantize_rows(torch.empty(3, 0), "int8").shape == (3, 4)
    packed = codecs.quantize_rows(torch.randn(5, 3), "int8")
    one_row = codecs.dequantize_rows(packed[2:3], "int8", 3)  # a one-row slice of a wider table
    assert torch.equal(one_row, codecs.dequantize_rows(packed, "int8", 3)[2:3])


def test_errors():
    with pytest.raises(ValueError, match="unknown row format 'int3'"):
        codecs.quantize_rows(torch.zeros(1, 2), "int3")
    with pytest.raises(ValueError, match="within"):
        codecs.quantize_rows(torch.tensor([[1e6, 0.0]]), "int8")
    with pytest.raises(ValueError, match="within"):
        codecs.quantize_rows(torch.tensor([[math.nan, 0.0]]), "int4")
    with pytest.raises(ValueError, match="2-D floating"):
        codecs.quantize_rows(torch.zeros(3, dtype=torch.long), "int8")
    with pytest.raises(ValueError, match="search"):
        codecs.quantize_rows(torch.zeros(1, 2), "int8", search="best")
    with pytest.raises(ValueError, match="integer formats"):
        codecs.quantize_rows(torch.zeros(1, 2), "fp16", search="greedy")
    with pytest.raises(ValueError, match=r"uint8 \[num_rows, 36\]"):
        codecs.dequantize_rows(torch.zeros(2, 35, dtype=torch.uint8), "int4", 64)
    with pytest.raises(ValueError, match="no prepacked layout"):
        codecs.to_torch_prepacked(torch.zeros(1, 4, dtype=torch.uint8), "fp16", 2)
