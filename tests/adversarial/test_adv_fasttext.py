"""Adversarial fastText ``.bin`` models: cut at every part of the format, lying word counts.

Oracle: a tiny model written by gensim (the reference writer); every prefix of it is a
truncated file and must be refused with a ``ValueError`` naming the file, never an
``IndexError``, a ``struct.error``, a huge allocation or a partial load.
"""

from __future__ import annotations

import functools
import struct
import tempfile
from pathlib import Path

import pytest
from _harness import CaseList, case, verdict

from embtable.vectors import Vectors


@functools.lru_cache(maxsize=1)
def _model_bytes() -> bytes:
    from gensim.models.fasttext import FastText, save_facebook_model

    sentences = [["the", "cat", "sat"], ["a", "dog", "ran"], ["cats", "and", "dogs"]] * 5
    model = FastText(vector_size=4, window=2, min_count=1, bucket=13, min_n=2, max_n=3, epochs=1,
                     seed=1, workers=1)  # fmt: skip
    model.build_vocab(sentences)
    model.train(sentences, total_examples=len(sentences), epochs=1)
    path = Path(tempfile.mkdtemp(prefix="adv-ft-")) / "m.bin"
    save_facebook_model(model, str(path))
    return path.read_bytes()


def _write(data: bytes) -> Path:
    path = Path(tempfile.mkdtemp(prefix="adv-ft-")) / "m.bin"
    path.write_bytes(data)
    return path


def _cut(fraction: float) -> None:
    data = _model_bytes()
    Vectors.load_facebook_vectors(_write(data[: int(len(data) * fraction)]))


def _cut_tail(count: int) -> None:
    data = _model_bytes()
    Vectors.load_facebook_vectors(_write(data[:-count]))


def _lying_words(vocab_size: int) -> None:
    data = bytearray(_model_bytes())
    offset = 8 + 4 * 12 + 8  # magic, version, 12 int args, t (a double): then vocab_size, nwords
    struct.pack_into("<2i", data, offset, vocab_size, vocab_size)
    Vectors.load_facebook_vectors(_write(bytes(data)))


def _intact() -> None:
    vectors = Vectors.load_facebook_vectors(_write(_model_bytes()))
    assert "cat" in vectors.vocab and vectors.weight.shape[1] == 4


CASES: CaseList = [case("corruption", "fasttext_intact", _intact)]
for _fraction in (0.001, 0.01, 0.03, 0.05, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99):
    CASES.append(case("loss", f"fasttext_cut_{_fraction}", _cut, _fraction, expect=ValueError,
                      match="load_facebook_vectors: .*m.bin"))
for _count in (1, 4, 17, 64):
    CASES.append(case("loss", f"fasttext_cut_tail_{_count}", _cut_tail, _count, expect=ValueError,
                      match="load_facebook_vectors: .*m.bin: the file ends"))
for _size in (2**31 - 1, 10**9, 10**6):
    CASES.append(case("crash", f"fasttext_lying_words_{_size}", _lying_words, _size, expect=ValueError,
                      match="load_facebook_vectors: .*m.bin"))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    pytest.importorskip("gensim", reason="gensim writes the reference fastText model")
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
