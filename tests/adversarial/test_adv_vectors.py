"""Adversarial vector files: lying headers, corrupt and truncated files, saves that fail or die.

Oracles: the bytes and tables written before (a failed or killed save must leave the old file
loading exactly as before, or the new one complete), hand-written files with a known error
line, and the size of the file (no loader may allocate more than the file can hold).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _harness import CaseList, case, raises, verdict

from embtable.vectors import Vectors


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="adv-vectors-"))


def _small(n: int = 4, dim: int = 3, seed: int = 0) -> Vectors:
    torch.manual_seed(seed)
    return Vectors([f"w{i}" for i in range(n)], torch.randn(n, dim))


def _same(a: Vectors, b: Vectors) -> bool:
    return a.tokens == b.tokens and torch.equal(a.weight, b.weight)


# ---------------------------------------------------------------- crashes and hangs

def _huge_header(text: str, binary: bool) -> None:
    folder = _tmp()
    (folder / "v.txt").write_bytes(text.encode())
    Vectors.load_word2vec_format(folder / "v.txt", binary=binary)


def _tokenizer_huge_id(ids: list[int]) -> None:
    folder = _tmp()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(3, 2)}, folder / "pytorch_model.bin")
    vocab = {f"t{i}": i for i in ids}
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    Vectors.load_hf(folder)


def _skip_duplicates(count: int) -> None:
    folder = _tmp()
    lines = [f"{2 * count} 2\n"] + [f"w{i} 1 2\n" for i in range(count)]
    lines += [f"w{count - 1 - i} 3 4\n" for i in range(count)]
    (folder / "v.txt").write_text("".join(lines))
    import logging

    logging.disable(logging.WARNING)
    start = time.perf_counter()
    vectors = Vectors.load_word2vec_format(folder / "v.txt", errors="skip")
    assert len(vectors) == count and vectors.weight[:, 0].eq(1).all()
    assert time.perf_counter() - start < 5.0, "errors='skip' is too slow on duplicates"


# ---------------------------------------------------------------- silent corruption

BAD_TOKENS = ["two words", "tab\there", "new\nline", "", "cr\rx", "nul\x00", "nbsp\u00a0x", "ls\u2028x", " lead"]


def _write(vectors: Vectors, writer: str, target: Path) -> None:
    if writer == "save_word2vec_binary":
        vectors.save_word2vec_format(target, binary=True)
    else:
        getattr(vectors, writer)(target)


def _save_refuses_token(token: str, writer: str) -> None:
    folder = _tmp()
    target = folder / "v.txt"
    _write(_small(), writer, target)
    before = target.read_bytes()
    bad = Vectors(["ok", token], torch.ones(2, 3))
    error = raises(ValueError, _write, bad, writer, target)
    assert target.read_bytes() == before, "a refused save changed the previous file"
    assert sorted(os.listdir(folder)) == ["v.txt"], "a refused save left a temporary file"
    raise error


def _unencodable_keeps_file() -> None:
    folder = _tmp()
    target = folder / "v.txt"
    _small().save_word2vec_format(target)
    before = target.read_bytes()
    bad = Vectors(["ok", "caf\u00e9"], torch.ones(2, 3))
    error = raises(ValueError, bad.save_word2vec_format, target, encoding="ascii")
    assert target.read_bytes() == before
    raise error


def _duplicate_in_constructor(tokens) -> None:
    Vectors(tokens, torch.zeros(len(tokens), 2))


def _native_vocab(meta) -> None:
    folder = _tmp()
    _small(3).save(folder / "n")
    (folder / "n" / "vocab.json").write_text(json.dumps(meta) if not isinstance(meta, str) else meta)
    Vectors.load(folder / "n")


def _hf_vocab(kind: str, content: str) -> None:
    folder = _tmp()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, folder / "pytorch_model.bin")
    (folder / ("vocab.txt" if kind == "txt" else "tokenizer.json")).write_text(content)
    Vectors.load_hf(folder)


def _table_kind(kind: str) -> None:
    folder = _tmp()
    good = _small(3)
    good.save(folder / "n")
    table = folder / "n" / "vectors.safetensors"
    raw = table.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    if kind == "offsets_end_short":
        header["weight"]["data_offsets"][1] -= 4
    elif kind == "offsets_end_long":
        header["weight"]["data_offsets"][1] += 4
    elif kind == "offsets_past_file":
        header["weight"]["data_offsets"] = [8, 8 + 36]
    elif kind == "shape_3d":
        header["weight"]["shape"] = [3, 3, 1]
    elif kind == "shape_negative":
        header["weight"]["shape"] = [-3, -3]
    elif kind == "dtype_int":
        header["weight"]["dtype"] = "I32"
    elif kind == "header_list":
        header = [1, 2]
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    table.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + size :])
    Vectors.load(folder / "n")


def _int_table(dtype: str) -> None:
    Vectors(["a", "b"], torch.zeros(2, 2, dtype=getattr(torch, dtype)))


def _npy_table(kind: str) -> None:
    folder = _tmp()
    _small(3).save(folder / "n", format="npy")
    table = folder / "n" / "vectors.npy"
    if kind == "int":
        np.save(table, np.zeros((3, 3), dtype=np.int32))
    elif kind == "object":
        np.save(table, np.array([[1, "a"], [2, "b"], [3, "c"]], dtype=object), allow_pickle=True)
    elif kind == "truncated":
        table.write_bytes(table.read_bytes()[:-5])
    elif kind == "one_d":
        np.save(table, np.zeros(3, dtype=np.float32))
    Vectors.load(folder / "n")


# ---------------------------------------------------------------- data loss

def _native_crash_at(step: int, fmt: str) -> None:
    """Fail the k-th os.replace / unlink of a save over an old folder: old or new must load."""
    folder = _tmp() / "n"
    old, new = _small(3, seed=1), _small(5, seed=2)
    old.save(folder, format=fmt)
    calls = {"n": 0}
    real_replace, real_unlink = os.replace, Path.unlink

    def bomb() -> None:
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("killed")

    def replace(*args, **kwargs):
        bomb()
        return real_replace(*args, **kwargs)

    def unlink(self, *args, **kwargs):
        bomb()
        return real_unlink(self, *args, **kwargs)

    os.replace, Path.unlink = replace, unlink
    try:
        new.save(folder, format="npy" if fmt == "safetensors" and step % 2 else fmt)
    except KeyboardInterrupt:
        pass
    finally:
        os.replace, Path.unlink = real_replace, real_unlink
    back = Vectors.load(folder, mmap=False)
    assert _same(back, old) or _same(back, new), "the folder holds neither the old nor the new save"
    again = _small(2, seed=3)
    again.save(folder)  # and the folder stays usable
    assert _same(Vectors.load(folder, mmap=False), again)


_KILL_SCRIPT = """
import sys, torch
from embtable.vectors import Vectors
folder, fmt = sys.argv[1], sys.argv[2]
i = 0
while True:
    i += 1
    n = 2000 + i % 7
    Vectors([f"w{j}" for j in range(n)], torch.full((n, 64), float(i))).save(folder, format=fmt) \\
        if fmt in ("safetensors", "npy") else \\
        Vectors([f"w{j}" for j in range(n)], torch.full((n, 64), float(i))).save_word2vec_format(folder)
    print(i, flush=True)
"""


def _sigkill_mid_save(delays: tuple[float, ...]) -> None:
    """SIGKILL processes that save in a loop (one per format), at given moments: every
    target must then load whole, as one save or another, never a mix or a prefix."""
    base = _tmp()
    formats = {"safetensors": base / "s", "word2vec": base / "v.txt"}  # (npy: the crash_at cases)
    for delay in delays:
        children = {
            fmt: subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(target), fmt],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for fmt, target in formats.items()
        }
        for child in children.values():
            child.stdout.readline()  # one complete save first
        time.sleep(delay)
        for child in children.values():
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        for fmt, target in formats.items():
            back = (Vectors.load(target, mmap=False) if fmt != "word2vec"
                    else Vectors.load_word2vec_format(target))
            n = len(back)
            assert 2000 <= n <= 2006 and back.tokens == [f"w{j}" for j in range(n)], fmt
            assert back.weight.eq(back.weight[0, 0]).all(), f"{fmt}: rows from two saves mixed"


#: kind -> (save into path, load path, the file to cut inside path)
_FORMATS = {
    "word2vec": (lambda v, p: v.save_word2vec_format(p), lambda p: Vectors.load_word2vec_format(p), ""),
    "binary": (lambda v, p: v.save_word2vec_format(p, binary=True),
               lambda p: Vectors.load_word2vec_format(p, binary=True), ""),
    "glove": (lambda v, p: v.save_glove(p), lambda p: Vectors.load_glove(p), ""),
    "native": (lambda v, p: v.save(p), lambda p: Vectors.load(p), "vectors.safetensors"),
}


def _truncated(kind: str, cut: int) -> None:
    save, load, inner = _FORMATS[kind]
    path = _tmp() / "v"
    save(_small(6, 4), path)
    file = path / inner if inner else path
    raw = file.read_bytes()
    file.write_bytes(raw[: len(raw) - cut])
    with warnings.catch_warnings():
        if kind in ("word2vec", "glove") and cut < 20:  # cut inside the last line's numbers
            warnings.simplefilter("error")  # the warning is the only sign
        load(path)


# ---------------------------------------------------------------- clear errors

def _hf_weights(kind: str) -> None:
    folder = _tmp()
    (folder / "vocab.txt").write_text("a\nb\n")
    if kind == "bin_garbage":
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04garbage")
    elif kind == "bin_empty":
        (folder / "pytorch_model.bin").write_bytes(b"")
    elif kind == "bin_pickled_class":
        import pickle

        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Path("a")}))
    elif kind == "bin_not_dict":
        torch.save([torch.zeros(2, 2)], folder / "pytorch_model.bin")
    elif kind == "bin_not_tensor":
        torch.save({"embeddings.word_embeddings.weight": [1, 2]}, folder / "pytorch_model.bin")
    elif kind == "safetensors_garbage":
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif kind == "safetensors_truncated":
        from safetensors.torch import save_file

        save_file({"embeddings.word_embeddings.weight": torch.zeros(2, 8)}, str(folder / "model.safetensors"))
        raw = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(raw[:-9])
    Vectors.load_hf(folder)


def _native_garbage(kind: str) -> None:
    folder = _tmp() / "n"
    _small(3).save(folder)
    if kind == "vocab_not_json":
        (folder / "vocab.json").write_text("{tokens: [")
    elif kind == "vocab_deep":
        (folder / "vocab.json").write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "vocab_latin1":
        (folder / "vocab.json").write_bytes(b'{"tokens": ["caf\xe9"]}')
    elif kind == "table_garbage":
        (folder / "vectors.safetensors").write_bytes(b"\xff" * 16)
    elif kind == "table_empty":
        (folder / "vectors.safetensors").write_bytes(b"")
    elif kind == "table_header_huge":
        (folder / "vectors.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    Vectors.load(folder)


CASES: CaseList = []
_HEADERS = ["10000000000 3\na 1 2 3\n", "1000000000000000 3\na 1 2 3\n", "1 1000000000\na 1 2 3\n",
            "3 1000000000\na 1\n", "4611686018427387904 4611686018427387904\na 1\n", "99999999 99999\n"]
for _i, _text in enumerate(_HEADERS):
    for _binary in (False, True):
        CASES.append(case("crash", f"huge_header_{_i}_{'bin' if _binary else 'text'}", _huge_header, _text,
                          _binary, expect=ValueError, match="load_word2vec_format: .*v.txt, (line|vector) \\d+"))
for _ids in ([0, 1, 10**12], [0, 2**40], [0, 1, 2, 10**9]):
    CASES.append(case("crash", f"tokenizer_id_{_ids[-1]}", _tokenizer_huge_id, _ids, timeout=10,
                      expect=ValueError, match="tokenizer.json: ids run up to"))
CASES.append(case("crash", "skip_15000_duplicates", _skip_duplicates, 15000, timeout=20))
for _writer in ("save_word2vec_format", "save_word2vec_binary", "save_glove"):
    for _j, _token in enumerate(BAD_TOKENS):
        CASES.append(case("corruption", f"{_writer}_token_{_j}", _save_refuses_token, _token, _writer,
                          expect=ValueError, match="save: .*v.txt: token 1"))
CASES.append(case("loss", "unencodable_keeps_file", _unencodable_keeps_file, expect=ValueError,
                  match="cannot be encoded as ascii"))
for _tokens, _exc in ((["a", "b", "a"], ValueError), (["x", "x"], ValueError), (["a", 3], TypeError),
                      (["a", None], TypeError), ("ab", TypeError), ([b"a", b"b"], TypeError)):
    CASES.append(case("corruption", f"constructor_tokens_{_tokens!r}", _duplicate_in_constructor, _tokens,
                      expect=_exc, match="Vectors: "))
for _j, _meta in enumerate([{"tokens": "abc", "counts": None}, {"tokens": ["a", "b", "a"], "counts": None},
                            {"tokens": ["a", 1, "c"], "counts": None}, {"tokens": ["a", None, "c"]},
                            {"tokens": ["a", "b", "c"], "counts": [1, 2]}, {"tokens": ["a", "b", "c"], "counts": "123"},
                            {"tokens": ["a", "b", "c"], "counts": [1, 2.5, 3]}, {"tokens": ["a", "b", "c"], "counts": [True, 1, 2]},
                            {"tokens": ["a", "b", "c"], "table": "../../etc/passwd"}, [1, 2, 3], "null", "123"]):
    CASES.append(case("corruption", f"native_vocab_{_j}", _native_vocab, _meta, expect=ValueError,
                      match="Vectors.load: .*vocab.json"))
for _j, (_kind, _content) in enumerate([
        ("txt", "a\nb\na\nc\n"), ("txt", "a\na\n"),
        ("json", json.dumps({"model": {"vocab": {"a": 0, "b": 0, "c": 1}}})),
        ("json", json.dumps({"model": {"vocab": {"a": 0, "b": -1}}})),
        ("json", json.dumps({"model": {"vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": 1, "content": "x"}]})),
        ("json", json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}}, "added_tokens": [{"id": 3, "content": "a"}]})),
        ("json", json.dumps({"model": {"vocab": {"a": "0"}}})), ("json", json.dumps({"model": {"vocab": {"a": 0.5}}})),
        ("json", json.dumps({"model": {"vocab": {"a": True}}})), ("json", json.dumps({"model": {"vocab": [["a", 0], ["a", 1]]}})),
        ("json", json.dumps({"model": {"vocab": [["a", 0], [3, 1]]}})), ("json", "{not json"), ("json", "[]"),
        ("json", "[" * 50_000 + "]" * 50_000)]):
    CASES.append(case("corruption", f"hf_vocab_{_kind}_{_j}", _hf_vocab, _kind, _content, expect=ValueError,
                      match="Vectors.load_hf: .*(vocab.txt|tokenizer.json)"))
for _kind in ("offsets_end_short", "offsets_end_long", "offsets_past_file", "shape_3d", "shape_negative",
              "dtype_int", "header_list"):
    CASES.append(case("corruption", f"safetensors_{_kind}", _table_kind, _kind, expect=ValueError,
                      match="Vectors.load: .*vectors.safetensors"))
for _dtype in ("int64", "int32", "bool", "uint8"):
    CASES.append(case("corruption", f"table_dtype_{_dtype}", _int_table, _dtype, expect=TypeError,
                      match="Vectors: the table must be floating"))
for _kind in ("int", "object", "truncated", "one_d"):
    CASES.append(case("corruption", f"npy_{_kind}", _npy_table, _kind, expect=ValueError,
                      match="Vectors.load: .*vectors.npy"))
for _fmt in ("safetensors", "npy"):
    for _step in range(1, 6):
        CASES.append(case("loss", f"native_crash_at_{_fmt}_{_step}", _native_crash_at, _step, _fmt))
CASES.append(case("loss", "sigkill_mid_save", _sigkill_mid_save, (0.02,), timeout=90))
for _kind, _match in (("word2vec", "load_word2vec_format: "), ("binary", "load_word2vec_format: "),
                      ("glove", "load_glove: "), ("native", "Vectors.load: ")):
    for _cut in (1, 7, 20, 45):
        _text = _kind in ("word2vec", "glove") and _cut < 20  # cut inside the last line's numbers
        CASES.append(case("loss", f"truncated_{_kind}_{_cut}", _truncated, _kind, _cut,
                          expect=UserWarning if _text else ValueError,
                          match=_match + (".*may be truncated" if _text else "")))
for _kind in ("bin_garbage", "bin_empty", "bin_pickled_class", "bin_not_dict", "bin_not_tensor",
              "safetensors_garbage", "safetensors_truncated"):
    CASES.append(case("error", f"hf_weights_{_kind}", _hf_weights, _kind, expect=ValueError,
                      match="Vectors.load_hf: .*(pytorch_model.bin|model.safetensors)"))
for _kind in ("vocab_not_json", "vocab_deep", "vocab_latin1", "table_garbage", "table_empty", "table_header_huge"):
    CASES.append(case("error", f"native_{_kind}", _native_garbage, _kind, expect=ValueError,
                      match="Vectors.load: .*(vocab.json|vectors.safetensors)"))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
