"""fastText ``.bin`` models against gensim: a tiny model trained here, saved in Facebook's
format by gensim, read by embtable without gensim's help; OOV vectors to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.vectors import FastTextVectors, Vectors
from embtable.vectors.io_fasttext import char_ngrams, fnv1a, ngram_buckets

gensim = pytest.importorskip("gensim", reason="gensim is not installed: it is the oracle here")
from gensim.models.fasttext import (  # noqa: E402
    FastText,
    ft_ngram_hashes,
    load_facebook_vectors,
    save_facebook_model,
)

SENTENCES = [
    "the cat sat on the mat".split(),
    "the dog sat on the log".split(),
    "un café très chaud à côté".split(),
    "日本 語 の テキスト と 東京".split(),
    "cats and dogs are friends of the café".split(),
] * 3
OOV = ["cat", "catz", "kafé", "東京都", "x", "", "dogs!", "théâtre", "on the", "ñ" * 9]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = FastText(
        vector_size=8,
        window=2,
        min_count=1,
        bucket=97,
        min_n=2,
        max_n=4,
        epochs=2,
        seed=3,
        workers=1,
    )
    model.build_vocab(SENTENCES)
    model.train(SENTENCES, total_examples=len(SENTENCES), epochs=2)
    path = str(tmp_path_factory.mktemp("ft") / "tiny.bin")
    save_facebook_model(model, path)
    return path


@pytest.fixture(scope="module")
def pair(model_path):
    return Vectors.load_facebook_vectors(model_path), load_facebook_vectors(model_path)


def test_words_and_vectors_equal_gensim(pair):
    ours, theirs = pair
    assert isinstance(ours, FastTextVectors)
    assert ours.tokens == theirs.index_to_key
    assert (
        (ours.min_n, ours.max_n, ours.bucket)
        == (2, 4, 97)
        == (theirs.min_n, theirs.max_n, theirs.bucket)
    )
    np.testing.assert_allclose(ours.weight.numpy(), theirs.vectors, atol=1e-6)
    np.testing.assert_allclose(ours.ngrams.numpy(), theirs.vectors_ngrams, atol=0)
    counts = [theirs.get_vecattr(t, "count") for t in ours.tokens]
    assert [ours.vocab.count(t) for t in ours.tokens] == counts


def test_oov_vectors_equal_gensim(pair):
    ours, theirs = pair
    for word in OOV:
        np.testing.assert_allclose(ours[word].numpy(), theirs[word], atol=1e-6, err_msg=word)
    np.testing.assert_allclose(ours[OOV].numpy(), np.stack([theirs[w] for w in OOV]), atol=1e-6)
    assert "catz" not in ours and "cat" in ours  # the vocabulary, unlike gensim's `in`
    assert ours.similarity("catz", "cats") == pytest.approx(
        float(theirs.similarity("catz", "cats")), abs=1e-6
    )


def test_queries_with_oov_words_equal_gensim(pair):
    ours, theirs = pair
    for pos, neg in [(["catz"], []), (["kafé", "the"], ["dog"])]:
        got, want = ours.most_similar(pos, neg, topn=5), theirs.most_similar(pos, neg, topn=5)
        assert [t for t, _ in got] == [t for t, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    word=st.text(alphabet="abcé日ñ<>-_ 0", max_size=9),
    minn=st.integers(1, 4),
    extra=st.integers(0, 3),
)
def test_ngram_hashes_equal_gensim(word, minn, extra):
    maxn = minn + extra
    buckets, owner = ngram_buckets([word, "pad"], minn, maxn, 2_000_003)
    want = ft_ngram_hashes(word, minn, maxn, 2_000_003)
    assert sorted(buckets[owner == 0].tolist()) == sorted(want)
    assert sorted(fnv1a(n.encode()) % 2_000_003 for n in char_ngrams(word, minn, maxn)) == sorted(
        want
    )


def test_dtype_and_load_fasttext_dispatch(model_path, pair):
    half = Vectors.load_fasttext(model_path, dtype=torch.float16)
    assert isinstance(half, FastTextVectors) and half.weight.dtype == torch.float16
    assert half["catz"].dtype == torch.float16
    np.testing.assert_allclose(half["catz"].float().numpy(), pair[1]["catz"], atol=2e-3)


def test_bad_files(tmp_path, model_path):
    data = open(model_path, "rb").read()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"load_facebook_vectors: .*cut\.bin: the file ends"):
        Vectors.load_facebook_vectors(cut)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"2 3\nnot a fasttext model at all, just some words" * 3)
    with pytest.raises(ValueError, match=r"junk\.bin"):
        Vectors.load_facebook_vectors(junk)
    with pytest.raises(FileNotFoundError, match="no such file"):
        Vectors.load_facebook_vectors(tmp_path / "none.bin")
    plain = FastTextVectors(["a"], torch.ones(1, 2), ngrams=None)
    with pytest.raises(KeyError, match="no n-grams"):
        plain["b"]


def test_unicode_errors_on_bin(tmp_path, model_path):
    data = open(model_path, "rb").read()
    assert data.count("café".encode() + b"\0") == 1
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data.replace("café".encode() + b"\0", b"caf\xc3(\0"))  # not UTF-8
    with pytest.raises(UnicodeDecodeError, match=r"bad\.bin, word \d+"):
        Vectors.load_facebook_vectors(bad)
    assert "caf\ufffd(" in Vectors.load_facebook_vectors(bad, unicode_errors="replace").tokens
    assert "caf(" in Vectors.load_facebook_vectors(bad, unicode_errors="ignore").tokens
