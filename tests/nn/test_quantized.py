"""Quantized modules: compiled kernels vs the reference, modules vs float modules holding the
decoded rows (the oracle), torch's quantized ops and FBGEMM's IntNBit TBE on the same bytes,
state_dict / save / load, embtable.quantize."""

from __future__ import annotations

import itertools

import pytest
import torch

import embtable
from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig
from embtable.nn import quantized as q
from embtable.storage import codecs

FORMATS = codecs.FORMATS
compiled = pytest.mark.skipif(
    not (embtable.ops.extension_available() and hasattr(torch.ops.embtable, "quantized_pool_bags")),
    reason="embtable._C without the quantized kernels",
)


def _table(seed: int, rows: int, dim: int) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- kernels


@compiled
@pytest.mark.parametrize("fmt,dim", list(itertools.product(FORMATS, [3, 16, 24, 32, 64, 128])))
def test_compiled_pooling_matches_reference(fmt, dim):
    weight = _table(0, 60, dim)
    packed = codecs.quantize_rows(weight, fmt)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 60, (50,), generator=gen)
    offsets = torch.tensor([0, 7, 7, 20, 49, 50])
    psw = torch.rand(50, generator=gen) * 2 - 1
    for pooling, weights, pad in itertools.product((1, 2, 3), (None, psw), (-1, int(ids[4]))):
        if weights is not None and pooling != 1:
            continue
        args = (packed, fmt, dim, ids, offsets, weights, pooling, pad)
        torch.testing.assert_close(q.pool_packed(*args), q.pool_packed(*args, reference=True), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(
        q.gather_packed(packed, fmt, dim, ids), q.gather_packed(packed, fmt, dim, ids, reference=True), rtol=1e-6, atol=0
    )


@compiled
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_opcheck(fmt):
    packed = codecs.quantize_rows(_table(2, 20, 8), fmt)
    code = codecs.codec(fmt).code
    ids, offsets = torch.tensor([1, 5, 5, 19]), torch.tensor([0, 1, 4])
    torch.library.opcheck(
        torch.ops.embtable.quantized_pool_bags.default, (packed, code, 8, ids, offsets, torch.rand(4), 1, -1)
    )
    torch.library.opcheck(torch.ops.embtable.quantized_pool_bags.default, (packed, code, 8, ids, offsets, None, 3, 5))
    starts = offsets[:-1]  # include_last_offset=False: the last bag ends at len(ids)
    torch.library.opcheck(torch.ops.embtable.quantized_pool_bags.default, (packed, code, 8, ids, starts, None, 1, -1, False))
    torch.testing.assert_close(
        torch.ops.embtable.quantized_pool_bags(packed, code, 8, ids, starts, None, 2, -1, False),
        q.pool_packed(packed, fmt, 8, ids, offsets, None, 2, -1, reference=True),
        rtol=1e-6, atol=1e-6,
    )
    torch.library.opcheck(torch.ops.embtable.quantized_gather_rows.default, (packed, code, 8, ids))


@compiled
@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4", "int2"])
def test_module_fast_path_matches_reference(fmt):
    # the module's O(1)-check path into the kernel (1-D / 2-D ids, int32 / int64, CSR offsets,
    # weights, padding) against the decoded-rows reference
    dim = 64
    weight = _table(5, 40, dim)
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 40, (30,), generator=gen)
    offsets = torch.tensor([0, 4, 4, 17])
    psw = torch.rand(30, generator=gen)
    for mode, last, pad, dtype, weighted in itertools.product(
        ("sum", "mean"), (False, True), (None, int(ids[2])), (torch.int64, torch.int32), (False, True)
    ):
        if weighted and mode != "sum":
            continue
        bag = q.QuantizedEmbeddingBag(40, dim, mode, include_last_offset=last, padding_idx=pad, fmt=fmt)
        bag.packed_weight = codecs.quantize_rows(weight, fmt)
        offs = torch.cat([offsets, torch.tensor([30])]) if last else offsets
        weights = psw if weighted else None
        got = bag(ids.to(dtype), offs.to(dtype), weights)
        bounds = torch.cat([offsets, torch.tensor([30])])
        expected = q.pool_packed(
            bag.packed_weight, fmt, dim, ids, bounds, weights, q._POOL[mode], -1 if pad is None else pad, reference=True
        )
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    bag = q.QuantizedEmbeddingBag(40, dim, "sum", fmt=fmt)
    bag.packed_weight = codecs.quantize_rows(weight, fmt)
    expected = q.pool_packed(bag.packed_weight, fmt, dim, ids[:28], torch.arange(0, 29, 7), None, 1, -1, reference=True)
    torch.testing.assert_close(bag(ids[:28].reshape(4, 7)), expected, rtol=1e-6, atol=1e-5)


@compiled
@pytest.mark.parametrize("fmt,dim", [("int8", 8), ("int8", 64), ("int2", 64)])  # 8- and 16-wide loops
def test_compiled_kernel_refuses_bad_ids(fmt, dim):
    packed = codecs.quantize_rows(_table(3, 4, dim), fmt)
    code = codecs.codec(fmt).code
    for bad in (9, -1):
        with pytest.raises(RuntimeError, match="outside the table"):
            torch.ops.embtable.quantized_pool_bags(
                packed, code, dim, torch.tensor([1, bad, 2]), torch.tensor([0, 2, 3]), None, 1, -1
            )


# ---------------------------------------------------------------------- single tables


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_equals_float_bag_on_decoded_rows(fmt, mode):
    torch.manual_seed(0)
    bag = embtable.EmbeddingBag(30, 12, mode=mode, padding_idx=2)
    qbag = q.QuantizedEmbeddingBag.from_float(bag, fmt)
    oracle = embtable.EmbeddingBag.from_pretrained(qbag.dequantize(), mode=mode, padding_idx=2)
    ids = torch.tensor([[1, 2, 3, 29], [2, 2, 2, 2], [0, 5, 5, 7]])
    torch.testing.assert_close(qbag(ids), oracle(ids), rtol=1e-6, atol=1e-6)
    flat, offsets = ids.reshape(-1), torch.tensor([0, 3, 3])
    torch.testing.assert_close(qbag(flat, offsets), oracle(flat, offsets), rtol=1e-6, atol=1e-6)
    if mode == "sum":
        weights = torch.rand(12)
        torch.testing.assert_close(qbag(flat, offsets, weights), oracle(flat, offsets, weights), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_embedding_equals_float_on_decoded_rows_in_original_dtype(dtype):
    torch.manual_seed(0)
    table = embtable.Embedding(20, 6, padding_idx=0, dtype=dtype)
    qtable = q.QuantizedEmbedding.from_float(table, "int4")
    ids = torch.tensor([[0, 3], [19, 3]])
    out = qtable(ids)
    assert out.dtype == dtype and out.shape == (2, 2, 6)
    assert torch.equal(out, qtable.dequantize()[ids])
    assert torch.equal(out[0, 0], torch.zeros(6, dtype=dtype))  # the zero padding row stays exact


def test_torch_modules_quantize_too():
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(10, 4, mode="sum", include_last_offset=True)
    qbag = q.QuantizedEmbeddingBag.from_float(bag, "int8")
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])
    torch.testing.assert_close(qbag(ids, offsets), bag(ids, offsets), atol=0.02, rtol=0)


def test_validation_as_the_float_modules():
    qbag = q.QuantizedEmbeddingBag(10, 4, mode="mean")
    with pytest.raises(IndexError, match="out of range"):
        qbag(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="only supported with mode='sum'"):
        qbag(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2))
    with pytest.raises(ValueError, match="offsets"):
        qbag(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(TypeError):
        qbag(torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown row format"):
        q.QuantizedEmbedding(4, 4, fmt="int16")
    with pytest.raises(IndexError):
        q.QuantizedEmbedding(4, 4)(torch.tensor([-1]))


def test_state_dict_round_trip_and_format_mismatch():
    torch.manual_seed(0)
    qbag = q.QuantizedEmbeddingBag.from_float(embtable.EmbeddingBag(16, 8, mode="sum"), "int4")
    state = qbag.state_dict()
    assert sorted(state) == ["_extra_state", "packed_weight"]
    assert state["packed_weight"].dtype == torch.uint8 and state["packed_weight"].shape == (16, 8)
    fresh = q.QuantizedEmbeddingBag(16, 8, mode="sum", fmt="int4")
    fresh.load_state_dict(state)
    ids = torch.tensor([[1, 2, 15]])
    assert torch.equal(fresh(ids), qbag(ids))
    with pytest.raises(ValueError, match="format"):
        q.QuantizedEmbeddingBag(16, 8, mode="sum", fmt="int8").load_state_dict(state)


def test_save_load_mmap(tmp_path):
    torch.manual_seed(0)
    qbag = q.QuantizedEmbeddingBag.from_float(embtable.EmbeddingBag(50, 16, mode="max", padding_idx=3), "int2")
    path = tmp_path / "table.safetensors"
    qbag.save(path)
    loaded = q.QuantizedEmbeddingBag.load(path)
    assert repr(loaded) == repr(qbag)
    assert torch.equal(loaded.packed_weight, qbag.packed_weight)
    ids = torch.tensor([[3, 4, 49], [3, 3, 3]])
    assert torch.equal(loaded(ids), qbag(ids))
    assert torch.equal(q.QuantizedEmbeddingBag.load(path, mmap=False)(ids), qbag(ids))
    with pytest.raises(ValueError, match="holds a QuantizedEmbeddingBag"):
        q.QuantizedEmbedding.load(path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        q.QuantizedEmbeddingBag.load(path)


@pytest.mark.parametrize("fmt,op", [("int8", "byte"), ("int4", "4bit"), ("int2", "2bit")])
def test_interop_with_torch_quantized_ops(fmt, op):
    """Our rows in torch's layout pool the same under torch's op; torch's prepack imports."""
    weight = _table(4, 40, 16)
    ids = torch.randint(0, 40, (25,), generator=torch.Generator().manual_seed(5))
    offsets = torch.tensor([0, 10, 10, 20])
    qbag = q.QuantizedEmbeddingBag.from_float(embtable.EmbeddingBag.from_pretrained(weight, mode="sum"), fmt)
    kernel = getattr(torch.ops.quantized, f"embedding_bag_{op}_rowwise_offsets")
    theirs = kernel(qbag.to_torch_prepacked(), ids, offsets, mode=0)
    torch.testing.assert_close(qbag(ids, offsets), theirs, rtol=1e-5, atol=1e-5)
    if fmt != "int8":  # same layout: torch's prepack loads exactly
        prepacked = getattr(torch.ops.quantized, f"embedding_bag_{op}_prepack")(weight)
        imported = q.QuantizedEmbeddingBag.from_torch_prepacked(prepacked, fmt, 16, mode="sum")
        torch.testing.assert_close(imported(ids, offsets), kernel(prepacked, ids, offsets, mode=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4", "int2", "fp16"])
def test_interop_with_fbgemm_intnbit_tbe(fmt):
    fbgemm = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_inference")
    common = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_common")
    from fbgemm_gpu.split_embedding_configs import SparseType

    sparse_type = {"int8": SparseType.INT8, "int4": SparseType.INT4, "int2": SparseType.INT2, "fp16": SparseType.FP16}
    weight = _table(6, 64, 16)
    qbag = q.QuantizedEmbeddingBag.from_float(embtable.EmbeddingBag.from_pretrained(weight, mode="sum"), fmt)
    tbe = fbgemm.IntNBitTableBatchedEmbeddingBagsCodegen(
        [("t", 64, 16, sparse_type[fmt], common.EmbeddingLocation.HOST)],
        device="cpu", pooling_mode=common.PoolingMode.SUM, output_dtype=SparseType.FP32,
    )
    tbe.fill_random_weights()
    rows = tbe.split_embedding_weights(split_scale_shifts=False)[0][0]
    rows.copy_(qbag.to_fbgemm())
    ids = torch.randint(0, 64, (30,), generator=torch.Generator().manual_seed(7))
    offsets = torch.tensor([0, 12, 12, 30])
    torch.testing.assert_close(tbe(ids.int(), offsets.int()), qbag(ids, offsets[:-1]), rtol=1e-6, atol=1e-6)
    back = q.QuantizedEmbeddingBag.from_fbgemm(rows, fmt, 16, mode="sum")
    assert torch.equal(back.packed_weight, qbag.packed_weight)


# ---------------------------------------------------------------------- collections


def _bag_tables(two_padding_rows: bool = False):
    shop = [TableConfig(name="shop", num_embeddings=10, embedding_dim=8, padding_idx=2)]
    return (shop if two_padding_rows else []) + [
        TableConfig(name="item", num_embeddings=200, embedding_dim=8, padding_idx=0,
                    feature_names=["item", "history"]),
        TableConfig(name="brand", num_embeddings=30, embedding_dim=8, pooling="mean", padding_idx=1),
        TableConfig(name="city", num_embeddings=20, embedding_dim=4, pooling="max"),
    ]


def _batch():
    return KeyedJagged.from_dict({
        "shop": [[2, 3], [2], []],
        "item": [[5], [0], [199]],
        "history": [[1, 0, 3], [], [4, 4]],
        "brand": [[1, 2], [1], [29, 3, 1]],
        "city": [[3, 4], [19], []],
    })


@pytest.mark.parametrize("two_padding_rows", [False, True])  # compiled bucketing / general path
@pytest.mark.parametrize("formats", ["int8", "int2", {"item": "int4", "brand": "bf16"}])
def test_bag_collection_equals_float_collection_on_decoded_rows(formats, two_padding_rows):
    torch.manual_seed(0)
    floats = EmbeddingBagCollection(_bag_tables(two_padding_rows))
    quant = q.QuantizedEmbeddingBagCollection.from_float(floats, formats)
    oracle = EmbeddingBagCollection(_bag_tables(two_padding_rows))
    with torch.no_grad():
        for config in _bag_tables(two_padding_rows):
            oracle.table_weight(config.name).copy_(quant.dequantize(config.name))
    got, expected = quant(_batch()), oracle(_batch())
    assert got.keys() == expected.keys()
    torch.testing.assert_close(got.values(), expected.values(), rtol=1e-6, atol=1e-6)
    if isinstance(formats, dict):
        assert quant.formats["item"] == "int4" and quant.formats["city"] == "fp32"
        assert torch.equal(quant.dequantize("city"), floats.table_weight("city").detach())
    with pytest.raises(IndexError, match="feature 'brand'"):
        quant(KeyedJagged.from_dict({**{k: [[1]] * 3 for k in ["shop", "item", "history", "city"]},
                                     "brand": [[30], [], []]}))


def test_weighted_bag_collection_and_state_dict():
    torch.manual_seed(0)
    tables = [TableConfig(name="t", num_embeddings=50, embedding_dim=16)]
    floats = EmbeddingBagCollection(tables, is_weighted=True)
    quant = q.QuantizedEmbeddingBagCollection.from_float(floats, "int8")
    values, lengths = torch.tensor([1, 2, 3]), torch.tensor([2, 1])
    weights = torch.tensor([0.5, 2.0, 1.0])
    batch = KeyedJagged(keys=["t"], values=values, lengths=lengths, weights=weights)
    torch.testing.assert_close(quant(batch).values(), floats(batch).values(), atol=0.05, rtol=0)
    state = quant.state_dict()
    assert sorted(state) == ["_extra_state", "embedding_bags.t.packed_weight"]
    fresh = q.QuantizedEmbeddingBagCollection(tables, "int8", is_weighted=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(batch).values(), quant(batch).values())


def test_embedding_collection():
    torch.manual_seed(0)
    tables = [TableConfig(name="words", num_embeddings=100, embedding_dim=8, padding_idx=0,
                          feature_names=["query", "title"], pooling="none")]
    floats = EmbeddingCollection(tables)
    quant = q.QuantizedEmbeddingCollection.from_float(floats, "fp16")
    batch = KeyedJagged.from_dict({"query": [[4, 9], [7]], "title": [[1, 0, 3], []]})
    got, expected = quant(batch), floats(batch)
    for feature in ("query", "title"):
        torch.testing.assert_close(got[feature].values, expected[feature].values, rtol=2**-10, atol=1e-6)
        assert torch.equal(got[feature].lengths, expected[feature].lengths)
    assert list(quant.state_dict()) == ["embeddings.words.packed_weight", "_extra_state"]


# ---------------------------------------------------------------------- embtable.quantize


def test_quantize_model_formats_and_tables():
    from embtable.models import MatrixFactorization

    torch.manual_seed(0)
    model = MatrixFactorization(50, 40, 8)
    user, item = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 39])
    exact = model(user, item)
    for fmt, tolerance in (("int8", 0.02), ("fp16", 0.005)):
        quantized = embtable.quantize(model, fmt)
        assert isinstance(quantized.user_vectors, q.QuantizedEmbedding)
        torch.testing.assert_close(quantized(user, item), exact, atol=tolerance, rtol=0)
    assert isinstance(model.user_vectors, embtable.Embedding)  # a copy by default
    names = embtable.quantization.table_names(model)
    mixed = embtable.quantize(model, {names[0]: "int4"})
    assert mixed.user_vectors.format == "int4" and isinstance(mixed.item_vectors, embtable.Embedding)
    only = embtable.quantize(model, "int2", tables=[names[1]])
    assert isinstance(only.user_vectors, embtable.Embedding) and only.item_vectors.format == "int2"
    with pytest.raises(KeyError, match="'nope'"):
        embtable.quantize(model, {"nope": "int8"})
    with pytest.raises(ValueError, match="unknown row format"):
        embtable.quantize(model, "int3")
    with pytest.raises(TypeError):
        embtable.quantize(torch.zeros(3), "int8")


def test_quantize_collection_in_a_model_inplace():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("sparse", EmbeddingBagCollection(_bag_tables()))
    exact = model.sparse(_batch()).values()
    same = embtable.quantize(model, {"item": "int8"}, inplace=True)
    assert same is model and isinstance(model.sparse, q.QuantizedEmbeddingBagCollection)
    assert model.sparse.formats == {"item": "int8", "brand": "fp32", "city": "fp32"}
    torch.testing.assert_close(model.sparse(_batch()).values(), exact, atol=0.05, rtol=0)
