"""Errors every rank of a sharded collection raises together (also ``RuntimeError``s)."""

from __future__ import annotations

__all__ = ["ShardedError", "ShardedIndexError", "ShardedValueError"]


class ShardedError(RuntimeError):
    """Base of the errors every rank raises together (also a ``RuntimeError``)."""


class ShardedIndexError(IndexError, ShardedError):
    """An id outside its table on some rank: raised on every rank, before any update."""


class ShardedValueError(ValueError, ShardedError):
    """A batch that does not fit the collection on some rank: raised on every rank."""
