"""fastText ``.bin`` models (Facebook's binary format): words, n-gram buckets, OOV vectors.

A ``.bin`` file holds the training arguments, the dictionary (words with counts) and the
input matrix: one row per word, then ``bucket`` rows of hashed character n-grams.  As in
fastText and gensim's ``FastTextKeyedVectors``:

- the n-grams of a word are the substrings of ``"<" + word + ">"`` of ``minn`` to
  ``maxn`` characters (UTF-8 characters, not bytes; the lone ``"<"`` and ``">"`` are not
  n-grams), each hashed with 32-bit FNV-1a over its UTF-8 bytes (each byte sign-extended,
  as fastText's ``char``) into ``hash % bucket``;
- a known word's vector is the mean of its own row and its n-gram rows;
- an unknown word's vector is the mean of its n-gram rows (zeros when it has none).

Example:
    >>> ngrams = char_ngrams("où", 1, 3)
    >>> ngrams
    ['o', 'ù', '<o', 'où', 'ù>', '<où', 'où>']
    >>> [fnv1a(n.encode()) % 100 for n in ngrams[:2]]
    [34, 73]
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embtable.vectors.vectors import Vectors, _load_dtype
from embtable.vectors.vocab import Vocab

__all__ = ["FastTextArgs", "FastTextVectors", "char_ngrams", "fnv1a", "ngram_buckets"]

_MAGIC = 793712314  # fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
_ARGS = ("dim", "ws", "epoch", "min_count", "neg", "word_ngrams", "loss", "model", "bucket")
_ARGS2 = ("minn", "maxn", "lr_update_rate")
_WORDS_PER_CHUNK = 1 << 16


@dataclass(frozen=True, kw_only=True)
class FastTextArgs:
    """The training arguments stored in a ``.bin`` file (fastText's ``Args``)."""

    dim: int
    ws: int
    epoch: int
    min_count: int
    neg: int
    word_ngrams: int
    loss: int
    model: int
    bucket: int
    minn: int
    maxn: int
    lr_update_rate: int
    t: float
    ntokens: int


def fnv1a(data: bytes) -> int:
    """fastText's 32-bit hash of a byte string (FNV-1a, bytes sign-extended as C ``char``).

    Example:
        >>> fnv1a(b"<a"), fnv1a("é".encode())
        (1761008750, 1023043777)
    """
    h = 2166136261
    for b in data:
        h = ((h ^ ((b - 256 if b > 127 else b) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return h


def char_ngrams(word: str, minn: int, maxn: int) -> list[str]:
    """The character n-grams of ``word`` in fastText's order (reference for
    :func:`ngram_buckets`)."""
    chars = "<" + word + ">"
    out = []
    for n in range(minn, maxn + 1):
        for i in range(len(chars) - n + 1):
            if n == 1 and (i == 0 or i == len(chars) - 1):
                continue
            out.append(chars[i : i + n])
    return out


def ngram_buckets(
    words: Sequence[str], minn: int, maxn: int, bucket: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of every character n-gram of every word, vectorized over all the words.

    Returns:
        ``(buckets, owner)``: int64 arrays, one entry per n-gram: its row among the n-gram
        rows (``fnv1a(ngram) % bucket``) and the index of its word in ``words``.
    """
    if not words or bucket <= 0 or maxn <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    enc = [("<" + w + ">").encode("utf-8") for w in words]
    lens = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    buf = np.frombuffer(b"".join(enc), dtype=np.uint8)
    word_start = np.concatenate(([0], np.cumsum(lens)[:-1]))
    word_end = word_start + lens
    char_pos = np.flatnonzero((buf & 0xC0) != 0x80)  # first byte of every UTF-8 character
    owner_c = np.searchsorted(word_start, char_pos, side="right") - 1
    nchars = np.bincount(owner_c, minlength=len(words))
    first = np.concatenate(([0], np.cumsum(nchars)[:-1]))
    k = np.arange(char_pos.size) - first[owner_c]  # character index within its word
    left = nchars[owner_c] - k  # characters from this one to the word's end
    starts, ends, owners = [], [], []
    for n in range(max(minn, 1), maxn + 1):
        ok = left >= n
        if n == 1:
            ok &= (k != 0) & (left != 1)  # not the lone "<" or ">"
        g = np.flatnonzero(ok)
        inside = left[g] > n
        end = np.where(inside, char_pos[np.minimum(g + n, char_pos.size - 1)], 0)
        end[~inside] = word_end[owner_c[g[~inside]]]
        starts.append(char_pos[g])
        ends.append(end)
        owners.append(owner_c[g])
    start, end, owner = np.concatenate(starts), np.concatenate(ends), np.concatenate(owners)
    signed = buf.view(np.int8).astype(np.int64) & 0xFFFFFFFF  # C char, sign-extended
    h = np.full(start.size, 2166136261, dtype=np.int64)
    length = end - start
    for j in range(int(length.max()) if length.size else 0):
        m = np.flatnonzero(length > j)
        h[m] = ((h[m] ^ signed[start[m] + j]) * 16777619) & 0xFFFFFFFF
    return h % bucket, owner


def _fail(path: str, problem: str) -> ValueError:
    return ValueError(f"load_facebook_vectors: {path}: {problem}")


def read_facebook_bin(
    path: str | os.PathLike, *, encoding: str = "utf-8", unicode_errors: str = "strict"
) -> tuple[FastTextArgs, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read a fastText ``.bin`` model without gensim.

    Returns:
        ``(args, words, counts, word_rows, ngram_rows)``: the raw input rows of the words
        (``(nwords, dim)``) and of the n-gram buckets (``(bucket, dim)``, a copy-on-write
        memory map), float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a fastText model, a supervised or quantized (``.ftz``) model, or a
            truncated file, naming the file.
        UnicodeDecodeError: a word does not decode with ``unicode_errors="strict"``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_facebook_vectors: no such file {path!r}")
    with open(path, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        if size < 64:
            raise _fail(path, f"{size} bytes is too short for a fastText .bin model")
        data = mmap.mmap(fin.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(path, data, encoding, unicode_errors)
    except struct.error:
        raise _fail(path, "the file ends early (truncated?)") from None
    finally:
        data.close()


def _check_output_matrix(path: str, data: bytes, pos: int, new_format: bool) -> None:
    """The output matrix after the input one must be whole too (a cut file is refused even
    where the rows read are complete: it is not the file that was written)."""
    if new_format:
        if pos >= len(data):
            raise _fail(path, "the file ends after the input matrix (truncated?)")
        if data[pos]:
            return  # a quantized output matrix: its size is not checked here
        pos += 1
    rows, dim = struct.unpack_from("<2q", data, pos)
    if rows < 0 or dim < 0 or pos + 16 + 4 * rows * dim != len(data):
        raise _fail(path, f"the file ends inside the {rows} x {dim} output matrix (truncated?)")


def _parse(path, data, encoding, unicode_errors):
    magic, version = struct.unpack_from("<2i", data, 0)
    new_format = magic == _MAGIC
    pos = 8
    values: dict[str, Any] = {} if new_format else {"dim": magic, "ws": version}
    names = (_ARGS if new_format else _ARGS[2:]) + _ARGS2
    for name, value in zip(names, struct.unpack_from(f"<{len(names)}i", data, pos)):
        values[name] = value
    pos += 4 * len(names)
    (values["t"],) = struct.unpack_from("<d", data, pos)
    pos += 8
    vocab_size, nwords, nlabels = struct.unpack_from("<3i", data, pos)
    pos += 12
    if nlabels > 0:
        raise _fail(path, f"a supervised model ({nlabels} labels); only word vectors are read")
    (values["ntokens"],) = struct.unpack_from("<q", data, pos)
    pos += 8
    prune = 0
    if new_format:
        (prune,) = struct.unpack_from("<q", data, pos)
        pos += 8
    if not 0 <= nwords <= vocab_size or values["dim"] <= 0 or values["bucket"] < 0:
        raise _fail(path, "not a fastText .bin model (bad header)")
    if vocab_size * 10 > len(data) - pos:  # a word takes >= 10 bytes: refused before allocating
        raise _fail(path, f"the header announces {vocab_size} words, more than the file holds (truncated?)")
    words, counts = [], np.empty(nwords, dtype=np.int64)
    for i in range(vocab_size):
        end = data.find(b"\0", pos)
        if end < 0:
            raise _fail(path, f"the file ends inside word {i + 1} of {vocab_size}")
        raw = data[pos:end]
        try:
            word = raw.decode(encoding, unicode_errors)
        except UnicodeDecodeError as exc:
            text = f"load_facebook_vectors: {path}, word {i + 1}: {raw[:40]!r} is not valid " + (
                f'{encoding}; pass the right encoding=, or unicode_errors="replace" or "ignore"'
            )
            raise UnicodeDecodeError(exc.encoding, exc.object, exc.start, exc.end, text) from None
        count, _kind = struct.unpack_from("<qb", data, end + 1)
        pos = end + 10
        if i < nwords:
            words.append(word)
            counts[i] = count
    pos += 8 * max(prune, 0)
    if pos + (1 if new_format else 0) + 16 > len(data):
        raise _fail(path, "the file ends before the input matrix (truncated?)")
    if new_format:
        if data[pos]:
            raise _fail(path, "a quantized model (.ftz) is not supported; use the .bin")
        pos += 1
    rows, dim = struct.unpack_from("<2q", data, pos)
    pos += 16
    if dim != values["dim"] or rows != nwords + values["bucket"]:
        raise _fail(
            path,
            f"the input matrix is {rows} x {dim}; expected {nwords} words + "
            f"{values['bucket']} buckets x {values['dim']}",
        )
    if pos + 4 * rows * dim > len(data):
        raise _fail(path, f"the file ends inside the {rows} x {dim} input matrix (truncated?)")
    _check_output_matrix(path, data, pos + 4 * rows * dim, new_format)
    matrix = np.memmap(path, dtype=np.float32, mode="c", offset=pos, shape=(rows, dim))
    args = FastTextArgs(**values)
    return args, words, counts, np.array(matrix[:nwords]), matrix[nwords:]


class FastTextVectors(Vectors):
    """:class:`Vectors` of a fastText model: unknown words get vectors from their n-grams.

    ``vectors[word]`` and queries accept any word; ``word in vectors`` and ``vocab`` are
    about the known words only (gensim's ``word in wv`` is always true).

    Args:
        vocab, table, counts: as :class:`Vectors`; the table holds the known words' vectors.
        ngrams: the ``(bucket, dim)`` n-gram rows (``None``: no n-grams, unknown words
            raise ``KeyError``).
        min_n, max_n: n-gram lengths in characters.

    Attributes:
        ngrams, min_n, max_n: as given; ``bucket``: the number of n-gram rows.
        args: the model's :class:`FastTextArgs` (set by :meth:`load`).

    Example:
        >>> v = FastTextVectors(["ab"], torch.tensor([[1.0, 1.0]]),
        ...                     ngrams=torch.eye(2), min_n=2, max_n=2)
        >>> v["zz"]  # '<z' and 'z>' and 'zz' hash to buckets 1, 1, 1
        tensor([0., 1.])
    """

    def __init__(
        self,
        vocab: Vocab | Sequence[str],
        table: Any,
        counts: Sequence[int] | np.ndarray | None = None,
        *,
        ngrams: Tensor | np.ndarray | None = None,
        min_n: int = 3,
        max_n: int = 6,
    ):
        super().__init__(vocab, table, counts)
        if ngrams is not None:
            ngrams = torch.as_tensor(ngrams)
            if ngrams.dim() != 2 or ngrams.shape[1] != self.dim:
                raise ValueError(
                    f"FastTextVectors: ngrams must have shape (bucket, {self.dim}), "
                    f"got {tuple(ngrams.shape)}"
                )
        if not 0 <= min_n <= max_n:
            raise ValueError(f"FastTextVectors: need 0 <= min_n <= max_n, got {min_n}, {max_n}")
        self.ngrams = ngrams
        self.min_n, self.max_n = min_n, max_n

    @property
    def bucket(self) -> int:
        """Number of n-gram rows (0 without n-grams)."""
        return 0 if self.ngrams is None else self.ngrams.shape[0]

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        encoding: str = "utf-8",
        unicode_errors: str = "strict",
        dtype: Any = torch.float32,
    ) -> FastTextVectors:
        """Read a fastText ``.bin`` model (see :func:`read_facebook_bin`).

        Known words' vectors are composed as gensim's ``load_facebook_vectors`` composes
        them (own row and n-gram rows averaged); the n-gram rows stay memory-mapped.
        """
        from embtable.vectors.io_word2vec import check_unicode_errors

        torch_dtype = _load_dtype(dtype, "load_facebook_vectors")
        check_unicode_errors(unicode_errors, "load_facebook_vectors")
        args, words, counts, word_rows, ngram_rows = read_facebook_bin(
            path, encoding=encoding, unicode_errors=unicode_errors
        )
        ngrams = torch.from_numpy(ngram_rows) if args.bucket and args.maxn else None
        table = torch.from_numpy(word_rows)
        if ngrams is not None:
            table = _compose(table, ngrams, words, args.minn, args.maxn)
        vectors = cls(
            words, table.to(torch_dtype), counts, ngrams=ngrams, min_n=args.minn, max_n=args.maxn
        )
        vectors.args = args
        return vectors

    def _oov(self, token: str) -> Tensor:
        """Mean of the token's n-gram rows (zeros when it has none), float32."""
        if self.ngrams is None:
            raise KeyError(
                self.vocab.missing_message(token) + " and the model has no n-grams to build it"
            )
        buckets, _ = ngram_buckets([token], self.min_n, self.max_n, self.bucket)
        if buckets.size == 0:
            return torch.zeros(self.dim)
        return self.ngrams[torch.from_numpy(buckets)].float().mean(0)

    def __getitem__(self, token: str | Sequence[str]) -> Tensor:
        if isinstance(token, str):
            i = self.vocab.get(token)
            return self.weight[i] if i is not None else self._oov(token).to(self.weight.dtype)
        return torch.stack([self[t] for t in token]) if len(token) else self.weight[:0]


def _compose(word_rows: Tensor, ngrams: Tensor, words: list[str], minn: int, maxn: int) -> Tensor:
    """``(own row + sum of n-gram rows) / (1 + number of n-grams)`` for every word.

    The n-gram sums are pooled bags (``embedding_bag(mode="sum")``), so no gathered copy
    of the n-gram rows is ever built.
    """
    from embtable import functional

    out = word_rows.clone()
    for lo in range(0, len(words), _WORDS_PER_CHUNK):
        chunk = words[lo : lo + _WORDS_PER_CHUNK]
        buckets, owner = ngram_buckets(chunk, minn, maxn, ngrams.shape[0])
        order = np.argsort(owner, kind="stable")
        sizes = np.bincount(owner, minlength=len(chunk))
        offsets = torch.from_numpy(np.concatenate(([0], np.cumsum(sizes)[:-1])))
        sums = functional.embedding_bag(
            torch.from_numpy(buckets[order]), ngrams, offsets, mode="sum"
        )
        hi = lo + len(chunk)
        out[lo:hi] = (out[lo:hi] + sums) / torch.from_numpy(sizes + 1).float()[:, None]
    return out
