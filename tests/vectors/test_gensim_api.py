"""gensim's KeyedVectors as the oracle for the calls gensim users bring (issue 12).

Raw vectors in queries, 2-D query arrays, header row counts, ``topn=None``, mean vectors,
distances, ``closer_than`` / ``rank``, growing the table, ``unicode_errors``, ``dtype``.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import Embedding
from embtable.vectors import Vectors

gensim = pytest.importorskip("gensim", reason="gensim is not installed: it is the oracle here")
from gensim.models import KeyedVectors  # noqa: E402
from gensim.test.utils import datapath  # noqa: E402


def table(seed: int, rows: int = 12, dim: int = 5) -> Vectors:
    g = torch.Generator().manual_seed(seed)
    return Vectors([f"w{i}" for i in range(rows)], torch.randn(rows, dim, generator=g))


def same(ours, theirs, atol=1e-6):
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=atol)


# ------------------------------------------------------------------ raw vectors in queries
def test_issue_example_mixed_query():
    v = Vectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    kv = v.to_gensim()
    vector = np.array([3.0, 0.0], dtype=np.float32)
    same(v.most_similar([vector, "b"]), kv.most_similar([vector, "b"]))
    assert [t for t, _ in v.most_similar([vector, "b"])] == ["a", "c"]  # 0.949, 0.894
    same(v.most_similar_cosmul([vector]), kv.most_similar_cosmul([vector]))
    assert v.most_similar_cosmul([vector])[0][1] == pytest.approx(2.0, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    scales=st.lists(st.floats(0.1, 5.0), min_size=1, max_size=3),
    tokens=st.lists(st.integers(0, 11), max_size=2, unique=True),
    negative=st.booleans(),
)
def test_vectors_used_as_given(seed, scales, tokens, negative):
    v = table(seed)
    kv = v.to_gensim()
    g = np.random.default_rng(seed)
    vectors = [np.float32(s) * g.standard_normal(v.dim).astype(np.float32) for s in scales]
    positive = vectors + [f"w{i}" for i in tokens]
    neg = [f"w{(tokens[0] + 1) % 12}"] if negative and tokens else []
    neg = [n for n in neg if int(n[1:]) not in tokens]
    same(v.most_similar(positive, neg, topn=5), kv.most_similar(positive, neg, topn=5), 1e-5)
    got = v.most_similar_cosmul(positive, neg, topn=5)
    want = kv.most_similar_cosmul(positive, neg, topn=5)
    same(got, want, 1e-4 * max(1.0, abs(want[0][1])))


def test_2d_array_is_one_positive_per_row():
    v = table(1)
    kv = v.to_gensim()
    rows = v.weight[:4].numpy() * np.array([[1.0], [2.0], [0.5], [3.0]], dtype=np.float32)
    same(v.most_similar(rows, topn=6), kv.most_similar(rows, topn=6))
    same(v.most_similar(torch.from_numpy(rows), topn=6), kv.most_similar(rows, topn=6))
    same(v.most_similar(positive=rows[:2], negative=rows[2:]), kv.most_similar(rows[:2], rows[2:]))
    same(v.most_similar_cosmul(rows, topn=6), kv.most_similar_cosmul(rows, topn=6), 1e-5)
    with pytest.raises(ValueError, match="a query vector must have 5 values, got 4"):
        v.most_similar(np.zeros((2, 4)))


def test_topn_none_and_zero():
    v = table(2)
    kv = v.to_gensim()
    for args in (("w1",), (["w1", "w2"], ["w3"])):
        got = v.most_similar(*args, topn=None)
        assert isinstance(got, torch.Tensor) and got.shape == (len(v),)
        np.testing.assert_allclose(got.numpy(), kv.most_similar(*args, topn=None), atol=1e-6)
        got = v.most_similar_cosmul(*args, topn=None)
        np.testing.assert_allclose(got.numpy(), kv.most_similar_cosmul(*args, topn=None), rtol=1e-5)
    assert v.most_similar("w1", topn=None, restrict_vocab=4).shape == (4,)
    assert v.most_similar_batch(["w1", "w2"], topn=None).shape == (2, len(v))
    assert v.most_similar("w1", topn=0) == [] == v.most_similar("w1", topn=np.uint8(0))
    assert v.most_similar_cosmul("w1", topn=0) == []


# ------------------------------------------------------------------------ header counts
def test_text_header_with_fewer_rows_reads_the_first(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("2 2\na 1 2\nb 3 4\nc 5 6\n\n")
    with pytest.warns(
        UserWarning, match=r"short\.txt: the header announces 2 rows but the file has 3"
    ):
        v = Vectors.load_word2vec_format(path)
    kv = KeyedVectors.load_word2vec_format(str(path))
    assert v.tokens == kv.index_to_key == ["a", "b"]
    np.testing.assert_array_equal(v.weight.numpy(), kv.vectors)
    path.write_text("2 2\na 1 2\nb 3 4\nc not numbers\n")  # rows past the count: not parsed
    with pytest.warns(UserWarning, match="announces 2 rows but the file has 3"):
        assert Vectors.load_word2vec_format(path).tokens == ["a", "b"]
    assert KeyedVectors.load_word2vec_format(str(path)).index_to_key == ["a", "b"]
    path.write_text("2 2\na 1 2\nb 3 4\n\n")  # trailing blank lines are not rows
    with _no_warning():
        assert Vectors.load_word2vec_format(path).tokens == ["a", "b"]
    with _no_warning():  # a limit below the file's rows is no surprise
        assert Vectors.load_word2vec_format(tmp_path / "short.txt", limit=1).tokens == ["a"]


def test_binary_header_with_fewer_rows_reads_the_first(tmp_path):
    path = tmp_path / "short.bin"
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    body = b"".join(t.encode() + b" " + r.tobytes() for t, r in zip("abcd", rows))
    path.write_bytes(b"2 2\n" + body)
    with pytest.warns(
        UserWarning, match=r"short\.bin: the header announces 2 vectors but the file has 4"
    ):
        v = Vectors.load_word2vec_format(path, binary=True)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=True)
    assert v.tokens == kv.index_to_key == ["a", "b"]
    np.testing.assert_array_equal(v.weight.numpy(), kv.vectors)
    path.write_bytes(b"4 2\n" + body)
    with _no_warning():
        assert Vectors.load_word2vec_format(path, binary=True).tokens == list("abcd")


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------- extras
def test_mean_vector_and_n_similarity():
    v = table(3)
    kv = v.to_gensim()
    vec = np.linspace(-1, 1, 5).astype(np.float32)
    keys = ["w1", "w4", vec, "missing"]
    for kwargs in ({}, {"pre_normalize": False}, {"post_normalize": True}):
        for weights in (None, [1.0, -2.0, 0.5, 3.0]):
            got = v.get_mean_vector(keys, weights, **kwargs)
            want = kv.get_mean_vector(keys, weights, **kwargs)
            np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    with pytest.raises(KeyError, match="'missing' is not in the vocabulary"):
        v.get_mean_vector(keys, ignore_missing=False)
    with pytest.raises(ValueError, match="weights must have one entry per key"):
        v.get_mean_vector(["w1"], [1.0, 2.0])
    assert v.n_similarity(["w1", "w2"], ["w3", "nope"]) == pytest.approx(
        kv.n_similarity(["w1", "w2"], ["w3", "nope"]), abs=1e-6
    )
    with pytest.raises(ValueError, match="n_similarity"):
        v.n_similarity([], ["w1"])


def test_distances_closer_than_rank():
    v = table(4, rows=30)
    kv = v.to_gensim()
    np.testing.assert_allclose(v.distances("w3").numpy(), kv.distances("w3"), atol=1e-6)
    np.testing.assert_allclose(
        v.distances("w3", ["w1", "w7"]).numpy(), kv.distances("w3", ["w1", "w7"]), atol=1e-6
    )
    vec = kv["w5"] * 2
    np.testing.assert_allclose(v.distances(vec).numpy(), kv.distances(vec), atol=1e-6)
    others = kv.vectors[:6]
    np.testing.assert_allclose(
        Vectors.cosine_similarities(vec, others).numpy(),
        KeyedVectors.cosine_similarities(vec, others),
        atol=1e-6,
    )
    assert v.distance("w1", "w2") == pytest.approx(kv.distance("w1", "w2"), abs=1e-6)
    for a, b in [("w0", "w0"), ("w0", "w9"), ("w4", "w17"), ("w29", "w1")]:
        assert v.closer_than(a, b) == kv.closer_than(a, b)
        assert v.rank(a, b) == kv.rank(a, b)
    assert v.most_similar_to_given("w2", ["w5", "w6", "w7"]) == kv.most_similar_to_given(
        "w2", ["w5", "w6", "w7"]
    )


# ----------------------------------------------------------------------- a growing table
def test_add_vectors_and_setitem_as_gensim():
    v = table(5, rows=4)
    kv = v.to_gensim()
    g = np.random.default_rng(0)
    steps = [
        ("add", ["x", "w1", "y"], g.standard_normal((3, 5)), {}),
        ("add", ["z", "x"], g.standard_normal((2, 5)), {"replace": True}),
        ("set", "w2", g.standard_normal(5), {}),
        ("set", ["q", "w0"], g.standard_normal((2, 5)), {}),
        ("one", "r", g.standard_normal(5), {}),
    ]
    for op, keys, rows, kwargs in steps:
        for obj in (v, kv):
            if op == "add":
                obj.add_vectors(keys, rows, **kwargs)
            elif op == "set":
                obj[keys] = rows
            else:
                obj.add_vector(keys, rows)
        assert v.tokens == kv.index_to_key
        np.testing.assert_allclose(v.weight.numpy(), kv.vectors, atol=1e-7)
    assert v.weight.dtype == torch.float32
    same(v.most_similar("x", topn=4), kv.most_similar("x", topn=4))


def test_growth_keeps_given_tensor_and_grows_embedding():
    base = torch.zeros(2, 3)
    v = Vectors(["a", "b"], base)
    for i in range(100):  # amortized: spare rows, one buffer
        v[f"t{i}"] = torch.full((3,), float(i))
    assert (
        len(v) == 102
        and v.weight.shape == (102, 3)
        and torch.equal(v["t57"], torch.full((3,), 57.0))
    )
    assert base.shape == (2, 3) and v.vocab["t99"] == 101
    assert v.most_similar("t99", topn=1)[0][0] in v.tokens
    emb = Embedding(2, 3)
    w = Vectors(["a", "b"], emb)
    w.add_vectors(["c"], [[1.0, 2.0, 3.0]])
    assert emb.weight.shape == (3, 3) and emb.num_embeddings == 3 and emb.weight.requires_grad
    assert torch.equal(emb(torch.tensor([2])), torch.tensor([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"weights must have shape \(2, 3\), got \(2, 4\)"):
        w.add_vectors(["d", "e"], np.zeros((2, 4)))
    with pytest.raises(TypeError, match="keys must be strings"):
        w.add_vectors([3], np.zeros((1, 3)))
    assert len(w) == 3  # nothing changed by the failed calls


# ------------------------------------------------------------- unicode_errors and dtype
@pytest.mark.parametrize("mode", ["replace", "ignore"])
def test_unicode_errors_as_gensim(tmp_path, mode):
    model, vocab = (
        datapath("w2v_keyedvectors_load_test.modeldata"),
        datapath("w2v_keyedvectors_load_test.vocab"),
    )
    kv = KeyedVectors.load_word2vec_format(model, fvocab=vocab, unicode_errors=mode)
    v = Vectors.load_word2vec_format(model, fvocab=vocab, unicode_errors=mode)
    assert v.tokens == kv.index_to_key
    assert [v.vocab.count(t) for t in v.tokens] == [kv.get_vecattr(t, "count") for t in v.tokens]
    np.testing.assert_array_equal(v.weight.numpy(), kv.vectors)
    kv.save_word2vec_format(str(tmp_path / "clean.bin"), binary=True)  # binary, bad bytes too
    raw = (tmp_path / "clean.bin").read_bytes()
    bad = raw.replace(kv.index_to_key[0].encode(), kv.index_to_key[0].encode() + b"\xe3\x83")
    (tmp_path / "bad.bin").write_bytes(bad)
    kb = KeyedVectors.load_word2vec_format(
        str(tmp_path / "bad.bin"), binary=True, unicode_errors=mode
    )
    vb = Vectors.load_word2vec_format(tmp_path / "bad.bin", binary=True, unicode_errors=mode)
    assert vb.tokens == kb.index_to_key
    glove = tmp_path / "g.txt"
    glove.write_bytes(open(model, "rb").read().split(b"\n", 1)[1])
    assert Vectors.load_glove(glove, unicode_errors=mode).tokens == kv.index_to_key
    shutil.copy(model, tmp_path / "m.vec")
    assert Vectors.load_fasttext(tmp_path / "m.vec", unicode_errors=mode).tokens == kv.index_to_key


def test_unicode_errors_strict(tmp_path):
    model = datapath("w2v_keyedvectors_load_test.modeldata")
    with pytest.raises(UnicodeDecodeError) as info:
        Vectors.load_word2vec_format(model)
    assert os.path.basename(model) in str(info.value) and "line 2" in str(info.value)
    with pytest.raises(UnicodeDecodeError):
        KeyedVectors.load_word2vec_format(model)
    assert Vectors.load_word2vec_format(model, errors="skip").tokens == []
    with pytest.raises(ValueError, match='unicode_errors must be "strict", "replace" or "ignore"'):
        Vectors.load_word2vec_format(model, unicode_errors="backslash")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_on_load(tmp_path, dtype):
    v = table(6)
    path = str(tmp_path / "v.txt")
    v.save_word2vec_format(path)
    v.save_word2vec_format(path + ".bin", binary=True)
    for binary, name in ((False, path), (True, path + ".bin")):
        kv = KeyedVectors.load_word2vec_format(name, binary=binary, datatype=dtype)
        ours = Vectors.load_word2vec_format(name, binary=binary, dtype=dtype)
        assert ours.weight.numpy().dtype == kv.vectors.dtype
        np.testing.assert_allclose(ours.weight.numpy(), kv.vectors, rtol=1e-7)
    assert Vectors.load_glove(_glove(tmp_path, v), dtype="float16").weight.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype must be float16, float32 or float64"):
        Vectors.load_word2vec_format(path, dtype=torch.int8)


def _glove(tmp_path, v):
    path = tmp_path / "g.txt"
    v.save_glove(path)
    return path


def test_vectors_for_all_and_relative_cosine_similarity():
    v = table(7, rows=20)
    v = Vectors(v.tokens, v.weight, counts=list(range(20, 0, -1)))
    kv = v.to_gensim()
    for i, t in enumerate(kv.index_to_key):
        kv.set_vecattr(t, "count", 20 - i)
    keys = ["w3", "nope", "w1", "w3", "w19"]
    ours, theirs = (
        v.vectors_for_all(keys, copy_vecattrs=True),
        kv.vectors_for_all(keys, copy_vecattrs=True),
    )
    assert ours.tokens == theirs.index_to_key == ["w3", "w1", "w19"]
    np.testing.assert_array_equal(ours.weight.numpy(), theirs.vectors)
    assert [ours.vocab.count(t) for t in ours.tokens] == [
        theirs.get_vecattr(t, "count") for t in ours.tokens
    ]
    ours.add_vectors(["new"], np.ones((1, 5)))  # a copy: the source does not grow
    assert len(v) == 20
    for a, b, n in [("w1", "w2", 10), ("w0", "w5", 3)]:
        assert v.relative_cosine_similarity(a, b, n) == pytest.approx(
            kv.relative_cosine_similarity(a, b, n), abs=1e-6
        )
