"""word2vec text / binary, GloVe and fastText .vec: round trips, gensim parity, malformed files."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.vectors import Vectors
from embtable.vectors._floats import field_bounds, parse_fields


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- float parsing
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
            st.floats(-1e3, 1e3).map(lambda x: f"{x:.5f}"),
            st.floats(-10, 10).map(lambda x: f"{x:.9g}"),
            st.integers(-(10**14), 10**14).map(str),
            st.sampled_from(
                ["-0", "+1.5", ".5", "5.", "1e-5", "-2.5E+3", "nan", "-inf", "0.0000001"]
            ),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_parse_fields_equals_float32_of_float(texts):
    buf = (" ".join(texts) + "\n").encode()
    a = np.frombuffer(buf, np.uint8)
    starts, ends = field_bounds(a)
    values, bad = parse_fields(a, starts, ends)
    expected = np.array([np.float32(float(t)) for t in texts], dtype=np.float32)
    assert bad.size == 0
    np.testing.assert_array_equal(values, expected)
    assert np.array_equal(np.signbit(values), np.signbit(expected))


def test_parse_fields_reports_non_numbers():
    buf = b"1.5 abc 1.2.3 - -. 7"
    a = np.frombuffer(buf, np.uint8)
    values, bad = parse_fields(a, *field_bounds(a))
    assert bad.tolist() == [1, 2, 3, 4]
    assert values[0] == 1.5 and values[5] == 7


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("binary", [False, True])
def test_word2vec_round_trip(tmp_path, small, binary):
    path = tmp_path / "v.w2v"
    small.save_word2vec_format(path, binary=binary)
    back = Vectors.load_word2vec_format(path, binary=binary)
    assert back.tokens == small.tokens
    assert torch.equal(back.weight, small.weight)


def test_glove_and_fasttext(tmp_path, small):
    small.save_glove(tmp_path / "g.txt")
    assert (tmp_path / "g.txt").read_text().split("\n")[0].split()[0] == "w0"
    back = Vectors.load_glove(tmp_path / "g.txt")
    assert back.tokens == small.tokens and torch.equal(back.weight, small.weight)
    # fastText .vec: header, then lines ending with a space
    lines = ["3 2", "a 1 2 ", "b 3.5 -4 ", "ü 0 0.25 "]
    back = Vectors.load_fasttext(write(tmp_path / "f.vec", "\n".join(lines) + "\n"))
    assert back.tokens == ["a", "b", "ü"]
    assert back.weight.tolist() == [[1, 2], [3.5, -4], [0, 0.25]]


def test_limit_and_no_trailing_newline(tmp_path):
    path = write(tmp_path / "v.txt", "3 2\na 1 2\nb 3 4\nc 5 6")
    assert Vectors.load_word2vec_format(path).weight.tolist() == [[1, 2], [3, 4], [5, 6]]
    two = Vectors.load_word2vec_format(path, limit=2)
    assert two.tokens == ["a", "b"]
    assert Vectors.load_word2vec_format(path, binary=False, limit=0).weight.shape == (0, 2)


def test_precision(tmp_path):
    v = Vectors(["a"], torch.tensor([[1 / 3, 2 / 3]]))
    v.save_word2vec_format(tmp_path / "p.txt", precision=3)
    assert (tmp_path / "p.txt").read_text() == "1 2\na 0.333 0.667\n"


def test_matches_gensim(tmp_path, small):
    gensim = pytest.importorskip("gensim.models")
    rng = np.random.default_rng(1)
    tokens = [f"t{i}" for i in range(300)] + ["日本", "naïve"]
    matrix = rng.standard_normal((302, 17)).astype(np.float32) * 10.0 ** rng.integers(
        -6, 3, (302, 17)
    )
    for binary in (False, True):
        path = tmp_path / f"m{binary}"
        Vectors(tokens, torch.from_numpy(matrix)).save_word2vec_format(path, binary=binary)
        kv = gensim.KeyedVectors.load_word2vec_format(path, binary=binary)
        ours = Vectors.load_word2vec_format(path, binary=binary)
        assert ours.tokens == kv.index_to_key
        np.testing.assert_array_equal(ours.weight.numpy(), kv.vectors)
    kv.save_word2vec_format(tmp_path / "gensim.bin", binary=True)
    Vectors(tokens, torch.from_numpy(matrix)).save_word2vec_format(
        tmp_path / "ours.bin", binary=True
    )
    assert (tmp_path / "gensim.bin").read_bytes() == (tmp_path / "ours.bin").read_bytes()


def test_binary_with_newlines_after_vectors(tmp_path):
    rows = [("a", [1.0, 2.0]), ("bb", [3.0, -4.0])]
    data = b"2 2\n" + b"".join(t.encode() + b" " + struct.pack("<2f", *v) + b"\n" for t, v in rows)
    back = Vectors.load_word2vec_format(write(tmp_path / "c.bin", data), binary=True)
    assert back.tokens == ["a", "bb"] and back.weight.tolist() == [[1, 2], [3, -4]]


# ---------------------------------------------------------------- malformed files
MALFORMED = [
    ("ragged", "2 3\na 1 2 3\nb 1 2\n", "line 3", "ragged row"),
    ("too many", "2 2\na 1 2\nb 1 2 3\n", "line 3", "ragged row"),
    ("non-numeric", "2 2\na 1 2\nb 1 x2\n", "line 3", "value 2 is not a number"),
    ("duplicate", "3 2\na 1 2\nb 1 2\na 3 4\n", "line 4", "duplicate token 'a' (first on line 2)"),
    ("header short", "3 2\na 1 2\nb 1 2\n", "line 3", "announces 3 rows"),
    # a header announcing fewer rows than the file has is read as gensim reads it, with a
    # warning (issue 12): tests/vectors/test_gensim_api.py
    ("header bad", "two 2\na 1 2\n", "line 1", "header 'count dim'"),
]


@pytest.mark.parametrize("name,text,where,what", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_strict(tmp_path, name, text, where, what):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError) as info:
        Vectors.load_word2vec_format(path)
    message = str(info.value)
    assert message.startswith("load_word2vec_format: ") and str(path) in message
    assert f"{where}:" in message and what in message


def test_wrong_encoding(tmp_path):
    path = write(tmp_path / "latin.txt", "2 1\ncaf\xe9 1\nb 2\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 2: token b'caf\\xe9' is not valid utf-8"):
        Vectors.load_word2vec_format(path)
    assert Vectors.load_word2vec_format(path, encoding="latin-1").tokens == ["café", "b"]


def test_skip_logs_and_skips(tmp_path, caplog):
    text = "6 2\na 1 2\nb 1\nc 1 q\na 5 6\nd 3 4\n\xff 0 0\n".encode("latin-1")
    path = write(tmp_path / "bad.txt", text)
    with caplog.at_level(logging.WARNING, logger="embtable.vectors"):
        v = Vectors.load_word2vec_format(path, errors="skip")
    assert v.tokens == ["a", "d"]
    assert v.weight.tolist() == [[1, 2], [3, 4]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where in ("line 3", "line 4", "line 5", "line 7"):
        assert where in logged
    with pytest.raises(ValueError, match='errors must be "strict" or "skip"'):
        Vectors.load_word2vec_format(path, errors="ignore")


def test_binary_malformed(tmp_path):
    good = b"a " + struct.pack("<2f", 1, 2)
    truncated = write(tmp_path / "t.bin", b"3 2\n" + good + b"b " + struct.pack("<2f", 3, 4))
    with pytest.raises(ValueError, match=r"vector 3 .*announces 3 vectors.*ends after 2"):
        Vectors.load_word2vec_format(truncated, binary=True)
    dup = write(tmp_path / "d.bin", b"2 2\n" + good + good)
    with pytest.raises(ValueError, match="vector 2 .*duplicate token 'a'"):
        Vectors.load_word2vec_format(dup, binary=True)
    assert Vectors.load_word2vec_format(dup, binary=True, errors="skip").tokens == ["a"]


def test_glove_without_header_counts_rows(tmp_path):
    path = write(tmp_path / "g.txt", "a 1 2\nb 3 4\n\n")
    assert Vectors.load_glove(path).tokens == ["a", "b"]
    with pytest.raises(ValueError, match="line 2: expected a token and 2 numbers"):
        Vectors.load_glove(write(tmp_path / "r.txt", "a 1 2\nb 3\n"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        Vectors.load_word2vec_format(tmp_path / "nope.txt")


def test_progress_bar(tmp_path, small, capsys):
    pytest.importorskip("tqdm")
    small.save_word2vec_format(tmp_path / "v.txt")
    back = Vectors.load_word2vec_format(tmp_path / "v.txt", progress=True)
    assert back.tokens == small.tokens
    assert "v.txt" in capsys.readouterr().err  # the bar's description
