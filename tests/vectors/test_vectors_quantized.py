"""Quantized vectors: scores on the codes vs cosines of the decoded table (the oracle),
neighbours vs the float32 vectors, analogies, files, `embtable convert --quantize`."""

from __future__ import annotations

import pytest
import torch

from embtable.cli.main import main as cli_main
from embtable.storage import codecs
from embtable.vectors import Vectors
from embtable.vectors.quantized import QuantizedVectors


def _clustered(num: int = 600, dim: int = 32, seed: int = 0) -> Vectors:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(30, dim, generator=gen)
    rows = centres[torch.arange(num) % 30] + 0.3 * torch.randn(num, dim, generator=gen)
    return Vectors([f"w{i}" for i in range(num)], rows + 0.5)  # an offset: biases matter


@pytest.mark.parametrize("fmt", ["int8", "int4", "int2", "fp16", "bf16"])
def test_scores_on_codes_equal_cosines_of_decoded_rows(fmt):
    vectors = _clustered()
    small = vectors.quantize(fmt)
    decoded = small.dequantize().double()
    queries = torch.nn.functional.normalize(torch.randn(20, 32, generator=torch.Generator().manual_seed(1)), dim=1)
    scores, ids = small.top_scores(queries, [[] for _ in range(20)], topn=5)
    exact = (queries.double() @ decoded.T) / decoded.norm(dim=1)
    chosen = exact.gather(1, ids)
    # scores from the codes (s * (q . c) + b' * sum(q)) are the decoded rows' cosines
    assert float((scores.double() - chosen).abs().max()) <= 1e-5
    assert float((exact.topk(5, dim=1).values - chosen).max()) <= 2e-5


def test_int8_neighbours_and_analogies_match_float():
    vectors = _clustered()
    small = vectors.quantize("int8")
    probe = [f"w{i}" for i in range(0, 600, 7)]
    assert small.topn_overlap(vectors, probe, topn=10) >= 0.95
    assert small.nbytes() == 600 * (32 + 4)
    triples = [("w1", "w2", "w3"), ("w10", "w40", "w70")]
    expected = [r[0][0] for r in vectors.analogies(triples, topn=1)]
    assert [r[0][0] for r in small.analogies(triples, topn=1)] == expected
    assert small.most_similar(positive=["w2", "w3"], negative=["w1"], topn=1)[0][0] == expected[0]


def test_hand_made_analogy():
    tokens = ["king", "man", "woman", "queen", "apple"]
    table = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    small = Vectors(tokens, table).quantize("int8")
    assert small.analogies([("man", "king", "woman")])[0][0][0] == "queen"
    assert torch.allclose(small["queen"], table[3], atol=0.01)


def test_save_load_mmap_and_cli(tmp_path):
    vectors = _clustered(200, 16)
    small = vectors.quantize("int4")
    small.save(tmp_path / "q")
    loaded = QuantizedVectors.load(tmp_path / "q")
    assert repr(loaded) == repr(small) and loaded.format == "int4"
    assert torch.equal(loaded.packed, small.packed)
    assert loaded.most_similar("w5", topn=5) == small.most_similar("w5", topn=5)
    vectors.save(tmp_path / "native")
    assert cli_main(["convert", str(tmp_path / "native"), str(tmp_path / "cli"), "--quantize", "int8"]) == 0
    from_cli = QuantizedVectors.load(tmp_path / "cli")
    assert torch.equal(from_cli.packed, codecs.quantize_rows(vectors.weight, "int8"))
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        QuantizedVectors.load(tmp_path / "native")


def test_errors():
    small = _clustered(50, 8).quantize("int8")
    with pytest.raises(KeyError):
        small.most_similar("nope")
    with pytest.raises(ValueError, match="at least one"):
        small.most_similar()
    with pytest.raises(ValueError, match="uint8"):
        QuantizedVectors(["a", "b"], torch.zeros(2, 5, dtype=torch.uint8), "int8", 8)


def test_a_save_that_dies_before_its_manifest_leaves_the_old_vectors(tmp_path, monkeypatch):
    """The rows of a new save never pair with the old vocab.json, whatever step fails."""
    from embtable.vectors import quantized as module

    old = _clustered(50, 8).quantize("int8")
    new = _clustered(50, 8, seed=1).quantize("int8")  # same tokens and size: a mix would load
    old.save(tmp_path / "q")
    new.save(tmp_path / "q")  # a second save switches to the other rows file
    old.save(tmp_path / "q")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["vectors.quantized.safetensors", "vocab.json"]

    def die(*_args, **_kwargs):
        raise OSError("killed before the manifest")

    monkeypatch.setattr(module, "atomic_write_bytes", die)
    with pytest.raises(OSError, match="killed"):
        new.save(tmp_path / "q")
    loaded = QuantizedVectors.load(tmp_path / "q")
    assert torch.equal(loaded.packed, old.packed) and not torch.equal(old.packed, new.packed)
    monkeypatch.undo()
    new.save(tmp_path / "q")  # the next save after the failed one completes normally
    assert torch.equal(QuantizedVectors.load(tmp_path / "q").packed, new.packed)
