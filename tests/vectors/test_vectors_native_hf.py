"""Native (memory-mapped) format, Hugging Face folders, gensim conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embtable.vectors import Vectors, Vocab
from embtable.vectors.io_native import read_safetensors_header


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_native_round_trip(tmp_path, small, fmt):
    small.vocab.counts = np.arange(20)[::-1].copy()
    small.save(tmp_path / "native", format=fmt)
    back = Vectors.load(tmp_path / "native")
    assert back.tokens == small.tokens
    assert back.vocab.counts.tolist() == list(range(20))[::-1]
    assert torch.equal(back.weight, small.weight)
    # memory-mapped copy-on-write: writable in memory, file untouched
    back.weight[0, 0] = 123.0
    assert Vectors.load(tmp_path / "native").weight[0, 0] == small.weight[0, 0]
    assert torch.equal(Vectors.load(tmp_path / "native", mmap=False).weight, small.weight)


def test_native_safetensors_is_standard(tmp_path, small):
    safetensors = pytest.importorskip("safetensors.torch")
    small.save(tmp_path / "n")
    loaded = safetensors.load_file(str(tmp_path / "n" / "vectors.safetensors"))
    assert torch.equal(loaded["weight"], small.weight)
    header, start = read_safetensors_header(tmp_path / "n" / "vectors.safetensors")
    assert start % 8 == 0
    assert header["weight"] == {"dtype": "F32", "shape": [20, 6], "data_offsets": [0, 480]}
    raw = (tmp_path / "n" / "vectors.safetensors").read_bytes()
    assert raw[start:] == small.weight.numpy().tobytes()  # golden bytes: row-major float32
    # files written by the safetensors package open too
    safetensors.save_file(
        {"weight": small.weight.half()}, str(tmp_path / "n" / "vectors.safetensors")
    )
    assert Vectors.load(tmp_path / "n").weight.dtype == torch.float16


def test_native_open_maps_instead_of_reading(tmp_path, monkeypatch):
    big = Vectors([f"t{i}" for i in range(5_000)], torch.zeros(5_000, 300))
    big.save(tmp_path / "big")
    mapped = []
    real_memmap = np.memmap

    def spy(*args, **kwargs):
        mapped.append(kwargs.get("mode"))
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", spy)
    opened = Vectors.load(tmp_path / "big")
    assert mapped == ["c"]  # one copy-on-write map, no read of the table
    index = opened.vocab._index  # built once, by the open's duplicate check, then kept
    assert index is not None and len(index) == 5_000
    assert opened.vocab["t4999"] == 4999 and opened.vocab._index is index


def test_native_errors(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="no vocab.json"):
        Vectors.load(tmp_path)
    small.save(tmp_path / "n")
    (tmp_path / "n" / "vocab.json").write_text(json.dumps({"tokens": ["a"], "counts": None}))
    with pytest.raises(ValueError, match="holds 20 rows but 1 tokens"):
        Vectors.load(tmp_path / "n")
    with pytest.raises(ValueError, match='format must be "safetensors" or "npy"'):
        small.save(tmp_path / "m", format="pickle")


def _fake_bert(folder, name="bert.embeddings.word_embeddings.weight", rows=6, vocab="txt"):
    safetensors = pytest.importorskip("safetensors.torch")
    folder.mkdir()
    table = torch.arange(rows * 4, dtype=torch.float32).reshape(rows, 4)
    tensors = {name: table, "bert.encoder.layer.0.weight": torch.ones(4, 4)}
    safetensors.save_file(tensors, str(folder / "model.safetensors"))
    tokens = ["[PAD]", "[UNK]", "the", "cat", "猫", "##s"]
    if vocab == "txt":
        (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    else:
        spec = {
            "model": {"vocab": {t: i for i, t in enumerate(tokens[:4])}},
            "added_tokens": [{"id": 4, "content": "猫"}, {"id": 5, "content": "##s"}],
        }
        (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return table, tokens


@pytest.mark.parametrize("vocab", ["txt", "json"])
def test_hf_folder(tmp_path, vocab):
    table, tokens = _fake_bert(tmp_path / "m", vocab=vocab, rows=8)
    v = Vectors.load_hf(tmp_path / "m")
    assert v.tokens == tokens
    assert torch.equal(v.weight, table[:6])  # padded rows past the vocabulary dropped
    assert torch.equal(v["cat"], table[3])


def test_hf_names_and_bin(tmp_path):
    _fake_bert(tmp_path / "a", name="model.embed_tokens.weight")
    assert Vectors.load_hf(tmp_path / "a").weight.shape == (6, 4)
    _fake_bert(tmp_path / "b", name="custom.table")
    with pytest.raises(KeyError, match="no input-embedding tensor"):
        Vectors.load_hf(tmp_path / "b")
    assert Vectors.load_hf(tmp_path / "b", tensor_name="custom.table").weight.shape == (6, 4)
    (tmp_path / "c").mkdir()
    torch.save({"transformer.wte.weight": torch.eye(6, 3)}, tmp_path / "c" / "pytorch_model.bin")
    (tmp_path / "c" / "vocab.txt").write_text("a\nb\nc\nd\ne\nf\n")
    v = Vectors.load_hf(tmp_path / "c" / "pytorch_model.bin")
    assert torch.equal(v.weight, torch.eye(6, 3))
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        Vectors.load_hf(tmp_path / "nothing")


def test_hf_minilm(minilm, minilm_dir):
    safetensors = pytest.importorskip("safetensors.torch")
    assert len(minilm) == 30522 and minilm.dim == 384
    assert minilm.tokens[:2] == ["[PAD]", "[unused0]"] and minilm.vocab["the"] == 1996
    state = safetensors.load_file(str(minilm_dir / "model.safetensors"))
    assert torch.equal(minilm.weight, state["embeddings.word_embeddings.weight"])
    assert minilm.most_similar("king", topn=2)[1][0] == "queen"


def test_gensim_round_trip(small):
    pytest.importorskip("gensim")
    small.vocab.counts = np.arange(20)
    kv = small.to_gensim()
    assert kv.index_to_key == small.tokens and kv.get_vecattr("w3", "count") == 3
    np.testing.assert_array_equal(kv["King"], small["King"].numpy())
    back = Vectors.from_gensim(kv)
    assert back.tokens == small.tokens and back.vocab.counts.tolist() == list(range(20))
    assert np.shares_memory(back.weight.numpy(), kv.vectors)
    with pytest.raises(TypeError, match="expected a gensim KeyedVectors"):
        Vectors.from_gensim(object())


def test_vocab_errors_suggest():
    vocab = Vocab(["apple", "apply", "orange"])
    with pytest.raises(KeyError, match="did you mean 'apply', 'apple'"):
        vocab["appel"]
    with pytest.raises(KeyError, match="did you mean 'orange'"):
        vocab["Orange"]
    with pytest.raises(ValueError, match="one entry per token"):
        Vocab(["a"], counts=[1, 2])
