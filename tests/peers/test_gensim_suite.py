"""gensim's own KeyedVectors tests, run against embtable.

The test file is gensim's INSTALLED ``gensim/test/test_keyedvectors.py`` (imported from
site-packages, not copied); its data comes with the wheel.  A small adapter maps each
gensim call onto an :class:`embtable.vectors.Vectors` call and converts tensors to the
NumPy arrays gensim's assertions expect.  Every test that still fails is listed in
``EXPECTED_DIFFERENCES`` with the reason; it runs as a strict xfail, so a test that
starts to pass must be taken off the list.  Without gensim the module skips.
"""

from __future__ import annotations

import importlib
import os
import unittest

import numpy as np
import pytest
import torch

from embtable.vectors import Vectors

gensim = pytest.importorskip(
    "gensim", reason="gensim is not installed: its KeyedVectors test suite cannot run"
)
try:
    suite = importlib.import_module("gensim.test.test_keyedvectors")
except ImportError as exc:  # a gensim without its tests
    pytest.skip(f"gensim's test_keyedvectors is not installed: {exc}", allow_module_level=True)

GensimKeyedVectors = gensim.models.keyedvectors.KeyedVectors

EXPECTED_DIFFERENCES = {
    "TestKeyedVectors.test_vectors_for_all_without_copy_vecattrs": (
        "embtable invents no counts: a vocabulary loaded without fvocab= has none, so the "
        "counts the test expects to differ are both None (gensim makes up descending ones)"
    ),
}


class KeyedVectorsAdapter:
    """gensim's ``KeyedVectors`` calls, mapped onto :class:`Vectors` (no logic of its own)."""

    def __init__(self, vector_size=0, count=0, dtype=np.float32, *, vectors=None):
        if vectors is None:
            vectors = Vectors([], torch.zeros(0, vector_size, dtype=_torch_dtype(dtype)))
        self.v = vectors

    # ---- loading and saving
    @classmethod
    def load_word2vec_format(
        cls,
        fname,
        fvocab=None,
        binary=False,
        encoding="utf8",
        unicode_errors="strict",
        limit=None,
        datatype=np.float32,
        no_header=False,
    ):
        v = Vectors.load_word2vec_format(
            fname,
            binary=binary,
            no_header=no_header,
            limit=limit,
            encoding=encoding,
            unicode_errors=unicode_errors,
            dtype=datatype,
            fvocab=fvocab,
        )
        return cls(vectors=v)

    @classmethod
    def load(cls, fname):  # gensim's own pickle: gensim unpickles, embtable wraps
        return cls(vectors=Vectors.from_gensim(GensimKeyedVectors.load(fname)))

    def save_word2vec_format(self, fname, binary=False, write_header=True):
        self.v.save_word2vec_format(fname, binary=binary, write_header=write_header)

    # ---- contents
    vector_size = property(lambda self: self.v.dim)
    vectors = property(lambda self: self.v.weight.numpy())
    index_to_key = property(lambda self: self.v.tokens)
    key_to_index = property(lambda self: self.v.vocab.index)

    def __len__(self):
        return len(self.v)

    def __contains__(self, key):
        return key in self.v

    def __getitem__(self, key):
        return self.v[key].numpy()

    def get_vector(self, key):
        return self.v[key].numpy()

    def get_vecattr(self, key, attr):
        assert attr == "count", attr
        return self.v.vocab.count(key)

    def add_vectors(self, keys, weights, replace=False):
        self.v.add_vectors(keys, weights, replace=replace)

    def __setitem__(self, keys, weights):
        self.v[keys] = weights

    def vectors_for_all(self, keys, allow_inference=True, copy_vecattrs=False):
        return type(self)(vectors=self.v.vectors_for_all(keys, allow_inference, copy_vecattrs))

    # ---- queries
    def relative_cosine_similarity(self, wa, wb, topn=10):
        return self.v.relative_cosine_similarity(wa, wb, topn)

    def most_similar(self, positive=None, negative=None, topn=10, restrict_vocab=None):
        return _numpy(self.v.most_similar(positive, negative, topn, restrict_vocab))

    def most_similar_cosmul(self, positive=None, negative=None, topn=10, restrict_vocab=None):
        return _numpy(self.v.most_similar_cosmul(positive, negative, topn, restrict_vocab))

    def similar_by_word(self, word, topn=10, restrict_vocab=None):
        return self.most_similar([word], topn=topn, restrict_vocab=restrict_vocab)

    def similar_by_vector(self, vector, topn=10, restrict_vocab=None):
        return self.most_similar([vector], topn=topn, restrict_vocab=restrict_vocab)

    def similarity(self, w1, w2):
        return self.v.similarity(w1, w2)

    def distance(self, w1, w2):
        return self.v.distance(w1, w2)

    def closer_than(self, key1, key2):
        return self.v.closer_than(key1, key2)

    def rank(self, key1, key2):
        return self.v.rank(key1, key2)

    def most_similar_to_given(self, key1, keys_list):
        return self.v.most_similar_to_given(key1, keys_list)

    def get_mean_vector(self, keys, weights=None, pre_normalize=True, post_normalize=False):
        return self.v.get_mean_vector(keys, weights, pre_normalize, post_normalize).numpy()


def _numpy(result):
    return result.numpy() if isinstance(result, torch.Tensor) else result


def _torch_dtype(dtype):
    return getattr(torch, np.dtype(dtype).name)


def _load_word2vec_format(cls, fname, binary=False, limit=None, binary_chunk_size=None, **kw):
    """gensim's module-level loader (embtable reads in its own block size)."""
    return KeyedVectorsAdapter.load_word2vec_format(fname, binary=binary, limit=limit, **kw)


def _cases():
    loader = unittest.TestLoader()
    for name in sorted(dir(suite)):
        cls = getattr(suite, name)
        if isinstance(cls, type) and issubclass(cls, unittest.TestCase):
            for method in loader.getTestCaseNames(cls):
                case = f"{name}.{method}"
                marks = ()
                if case in EXPECTED_DIFFERENCES:
                    marks = pytest.mark.xfail(strict=True, reason=EXPECTED_DIFFERENCES[case])
                yield pytest.param(cls, method, id=case, marks=marks)


def test_suite_is_the_installed_one():
    package = os.path.dirname(gensim.__file__)
    assert os.path.dirname(suite.__file__) == os.path.join(package, "test")
    assert set(EXPECTED_DIFFERENCES) <= {p.id for p in _cases()}  # no stale entries


@pytest.mark.parametrize("cls,method", list(_cases()))
def test_gensim_keyedvectors(monkeypatch, cls, method):
    monkeypatch.setattr(suite, "KeyedVectors", KeyedVectorsAdapter)
    monkeypatch.setattr(gensim.models, "KeyedVectors", KeyedVectorsAdapter)
    monkeypatch.setattr(gensim.models.keyedvectors, "_load_word2vec_format", _load_word2vec_format)
    result = unittest.TestResult()
    cls(method).run(result)
    if result.skipped:
        pytest.skip(result.skipped[0][1])
    problems = result.failures + result.errors
    if problems:
        pytest.fail(problems[0][1], pytrace=False)
