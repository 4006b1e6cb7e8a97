r"""Hashed tables for raw ids: the hashing trick and quotient-remainder (QR) embeddings.

Cheaper than a dynamic table (:mod:`embtable.nn.dynamic`) when collisions are acceptable:

- **hashing trick** (:class:`HashedEmbedding`, :class:`HashedEmbeddingBag`): id ``x`` reads
  row ``mix64(x ^ seed) mod num_embeddings``; distinct ids may share a row.
- **quotient-remainder** (:class:`QREmbedding`, :class:`QREmbeddingBag`; Shi et al., 2019,
  "Compositional Embeddings Using Complementary Partitions"): ``h = mix64(x ^ seed)`` selects
  row ``h mod R`` of a remainder table and row ``(h // R) mod Q`` of a quotient table; the two
  rows are combined by product (``"mult"``), sum (``"add"``) or concatenation
  (``"concat"``).  Two ids share an embedding only when both rows coincide, so ``R + Q`` rows
  separate about ``R * Q`` ids.

Strings become int64 ids with :func:`hash_ids` (stable across runs, machines and Python
versions: BLAKE2b, 8 bytes).

Example:
    >>> import torch
    >>> from embtable.nn.hashed import HashedEmbeddingBag, QREmbedding, hash_ids
    >>> hash_ids(["user:42", "user:42", "item:7"]).tolist()[0] == hash_ids("user:42").item()
    True
    >>> bags = HashedEmbeddingBag(1000, 8, mode="sum")
    >>> bags(torch.tensor([[10**15, 3]])).shape
    torch.Size([1, 8])
    >>> QREmbedding(100, 100, 8)(torch.tensor([5, 10**12])).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from embtable import functional
from embtable.nn.bag import EmbeddingBag
from embtable.nn.embedding import Embedding

__all__ = ["HashedEmbedding", "HashedEmbeddingBag", "QREmbedding", "QREmbeddingBag", "hash_ids", "hash_rows", "mix64"]

_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
_M2 = -7723592293110705685  # 0x94D049BB133111EB
GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 (the golden-ratio increment)
_QR_OPERATIONS = ("mult", "add", "concat")


def mix64(z: Tensor) -> Tensor:
    """splitmix64's bijective finalizer on int64 tensors (wrapping arithmetic, logical shifts).

    Example:
        >>> import torch
        >>> mix64(torch.tensor([0, 1])).tolist()
        [0, 6238072747940578789]
    """
    z = z ^ ((z >> 30) & ((1 << 34) - 1))
    z = z * _M1
    z = z ^ ((z >> 27) & ((1 << 37) - 1))
    z = z * _M2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def hash_ids(keys: str | bytes | Iterable[str | bytes]) -> Tensor:
    """Stable 64-bit ids of strings (or bytes): the first 8 bytes of their BLAKE2b digest.

    The same value on every run, machine and Python version (unlike ``hash()``), so ids
    written into a checkpoint stay valid.  Collisions are 64-bit random: about one expected
    among 6 * 10**9 distinct keys.

    Args:
        keys: a string, bytes, or an iterable of them.

    Returns:
        int64 tensor: 0-d for a single key, 1-D otherwise.

    Raises:
        TypeError: a key is neither ``str`` nor ``bytes``.

    Example:
        >>> hash_ids("user:42")
        tensor(-9028972112616151079)
        >>> hash_ids(["a", b"a"]).tolist()
        [3405396810240292928, 3405396810240292928]
    """
    single = isinstance(keys, (str, bytes))
    values = []
    for key in [keys] if single else keys:
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif not isinstance(key, bytes):
            raise TypeError(f"hash_ids: keys must be str or bytes, got {type(key).__name__} {key!r}")
        values.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True))
    out = torch.tensor(values, dtype=torch.int64)
    return out[0] if single else out


def _checked_ids(api: str, ids: Any) -> Tensor:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        what = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"{api}: ids must be an integer tensor, got {what}; hash strings with embtable.hash_ids")
    return ids.to(torch.int64)


def hash_rows(ids: Tensor, num_rows: int, seed: int = 0) -> Tensor:
    """Rows ``mix64(id ^ mix64(seed)) mod num_rows`` of integer ``ids`` (same shape).

    Example:
        >>> import torch
        >>> rows = hash_rows(torch.tensor([1, 2, 10**18]), 10)
        >>> bool(((rows >= 0) & (rows < 10)).all())
        True
    """
    salt = mix64(torch.tensor(seed, dtype=torch.int64))
    return torch.remainder(mix64(_checked_ids("hash_rows", ids) ^ salt), num_rows)


def _check_rows(api: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{api}: {name} must be an int >= 1, got {value!r}")


class HashedEmbedding(Embedding):
    """``Embedding`` over raw int64 ids by the hashing trick: id -> ``hash(id) mod num_embeddings``.

    Args:
        num_embeddings: rows shared by all ids.
        embedding_dim: row size.
        seed: salt of the hash.
        device, dtype: factory arguments for the weight.

    Example:
        >>> import torch
        >>> table = HashedEmbedding(50, 4)
        >>> table(torch.tensor([[7, 10**17]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, seed: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        _check_rows(type(self).__name__, "num_embeddings", num_embeddings)
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.seed = seed

    def forward(self, input: Tensor) -> Tensor:
        rows = hash_rows(input, self.num_embeddings, self.seed)
        return functional.embedding(rows, self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seed={self.seed}"


class HashedEmbeddingBag(EmbeddingBag):
    """``EmbeddingBag`` over raw int64 ids by the hashing trick (see :class:`HashedEmbedding`).

    Args:
        num_embeddings, embedding_dim, mode, include_last_offset: as :class:`embtable.EmbeddingBag`.
        seed: salt of the hash.

    Example:
        >>> import torch
        >>> HashedEmbeddingBag(50, 4, mode="mean")(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean", *, seed: int = 0,
                 include_last_offset: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        _check_rows(type(self).__name__, "num_embeddings", num_embeddings)
        super().__init__(num_embeddings, embedding_dim, mode=mode, include_last_offset=include_last_offset,
                         device=device, dtype=dtype)
        self.seed = seed

    def forward(self, input: Tensor, offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        rows = hash_rows(input, self.num_embeddings, self.seed)
        return functional.embedding_bag(rows, self.weight, offsets, mode=self.mode,
                                        per_sample_weights=per_sample_weights,
                                        include_last_offset=self.include_last_offset)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seed={self.seed}"


class QREmbedding(Module):
    """Quotient-remainder embedding of raw int64 ids (Shi et al., 2019): two small tables.

    Args:
        num_remainder: rows ``R`` of the remainder table (``hash mod R``).
        num_quotient: rows ``Q`` of the quotient table (``(hash // R) mod Q``).
        embedding_dim: output size; with ``operation="concat"`` each table holds half
            (``embedding_dim`` must be even).
        operation: ``"mult"`` (element-wise product, the paper's best), ``"add"`` or ``"concat"``.
        seed: salt of the hash.
        device, dtype: factory arguments.

    Attributes:
        remainder, quotient: the two :class:`embtable.Embedding` tables (fused optimizers
            train them like any table).

    Shape:
        - Input: ``(*)`` integer ids.  Output: ``(*, embedding_dim)``.

    Raises:
        ValueError: a size below 1, an unknown operation, an odd ``embedding_dim`` with concat.

    Example:
        >>> import torch
        >>> qr = QREmbedding(10, 20, 6, operation="concat")
        >>> qr(torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2, 2, 6])
    """

    def __init__(self, num_remainder: int, num_quotient: int, embedding_dim: int, *,
                 operation: str = "mult", seed: int = 0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        api = type(self).__name__
        _check_rows(api, "num_remainder", num_remainder)
        _check_rows(api, "num_quotient", num_quotient)
        _check_rows(api, "embedding_dim", embedding_dim)
        if operation not in _QR_OPERATIONS:
            raise ValueError(f"{api}: operation must be one of {_QR_OPERATIONS}, got {operation!r}")
        if operation == "concat" and embedding_dim % 2:
            raise ValueError(f"{api}: operation='concat' needs an even embedding_dim, got {embedding_dim}")
        part = embedding_dim // 2 if operation == "concat" else embedding_dim
        self.num_remainder, self.num_quotient = num_remainder, num_quotient
        self.embedding_dim, self.operation, self.seed = embedding_dim, operation, seed
        self.remainder = Embedding(num_remainder, part, device=device, dtype=dtype)
        self.quotient = Embedding(num_quotient, part, device=device, dtype=dtype)
        if operation == "mult":  # rows near 1 in the quotient table: a product starts as the remainder row
            with torch.no_grad():
                self.quotient.weight.normal_(1.0, 0.1)

    def rows(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(remainder_rows, quotient_rows)``: the row each id reads in each table."""
        salt = mix64(torch.tensor(self.seed, dtype=torch.int64))
        h = mix64(_checked_ids(type(self).__name__, ids) ^ salt)
        # unsigned division of the 64-bit hash: split off the sign bit first
        # (h = 2 * high + low; h // R = 2 * (high // R) + (2 * (high mod R) + low) // R)
        big_r, big_q = self.num_remainder, self.num_quotient
        high, low = (h >> 1) & ((1 << 63) - 1), h & 1
        carry = torch.remainder(high, big_r) * 2 + low
        r = torch.remainder(carry, big_r)
        high_q = torch.remainder(torch.div(high, big_r, rounding_mode="floor"), big_q)
        q = torch.remainder(high_q * 2 + torch.div(carry, big_r, rounding_mode="floor"), big_q)
        return r, q

    def forward(self, input: Tensor) -> Tensor:
        r, q = self.rows(input)
        a, b = self.remainder(r), self.quotient(q)
        if self.operation == "mult":
            return a * b
        if self.operation == "add":
            return a + b
        return torch.cat([a, b], dim=-1)

    def extra_repr(self) -> str:
        return f"{self.num_remainder}, {self.num_quotient}, {self.embedding_dim}, operation={self.operation!r}"


class QREmbeddingBag(QREmbedding):
    """Pooled :class:`QREmbedding`: each id's combined row, then sum or mean per bag.

    Args:
        As :class:`QREmbedding`, plus ``mode`` (``"sum"`` or ``"mean"``).

    Shape:
        - Input: 2-D ``(B, N)`` ids, or 1-D ids with ``offsets`` (bag starts).
          Output: ``(B, embedding_dim)``.

    Example:
        >>> import torch
        >>> bags = QREmbeddingBag(10, 20, 4, mode="sum")
        >>> bags(torch.tensor([1, 2, 3]), torch.tensor([0, 1])).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_remainder: int, num_quotient: int, embedding_dim: int, mode: str = "mean",
                 **kwargs: Any) -> None:
        if mode not in ("sum", "mean"):
            raise ValueError(f"QREmbeddingBag: mode must be 'sum' or 'mean', got {mode!r}")
        super().__init__(num_remainder, num_quotient, embedding_dim, **kwargs)
        self.mode = mode

    def forward(self, input: Tensor, offsets: Tensor | None = None) -> Tensor:  # type: ignore[override]
        api = type(self).__name__
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError(f"{api}: offsets must be None for a 2-D input")
            rows = super().forward(input)
            return rows.sum(1) if self.mode == "sum" else rows.mean(1)
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(f"{api}: expected 2-D ids, or 1-D ids with 1-D offsets")
        rows = super().forward(input)
        starts = offsets.to(torch.int64)
        lengths = torch.diff(torch.cat([starts, starts.new_tensor([input.numel()])]))
        bag = torch.repeat_interleave(torch.arange(starts.numel()), lengths)
        out = rows.new_zeros(starts.numel(), rows.shape[1]).index_add(0, bag, rows)
        if self.mode == "mean":
            out = out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"
