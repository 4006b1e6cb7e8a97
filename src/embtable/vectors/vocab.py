"""``Vocab``: tokens <-> ids, optional counts, with helpful errors for unknown tokens."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

__all__ = ["Vocab"]

_SUGGEST_POOL = 20000  # tokens scanned for "did you mean" suggestions


class Vocab:
    """An ordered vocabulary: ``tokens[i]`` is the token of row ``i``.

    The token -> id dictionary is built once: on first use, or by a loader that
    checks the tokens with it (the native loader does: its duplicate check *is* the
    index, handed over, so an open costs reading the list and one dictionary, and
    the first lookup nothing more).

    Args:
        tokens: the tokens in row order; they must be distinct strings.
        counts: optional per-token frequencies (same length as ``tokens``).

    Raises:
        ValueError: ``counts`` has the wrong length.

    Example:
        >>> vocab = Vocab(["the", "cat", "sat"], counts=[10, 3, 2])
        >>> vocab["cat"], len(vocab), "dog" in vocab
        (1, 3, False)
        >>> vocab.count("the")
        10
    """

    def __init__(self, tokens: Sequence[str], counts: Sequence[int] | np.ndarray | None = None):
        self.tokens: list[str] = tokens if isinstance(tokens, list) else list(tokens)
        if counts is not None:
            counts = np.asarray(counts, dtype=np.int64)
            if counts.shape != (len(self.tokens),):
                raise ValueError(
                    f"Vocab: counts must have one entry per token ({len(self.tokens)}), "
                    f"got shape {counts.shape}"
                )
        self.counts: np.ndarray | None = counts
        self._index: dict[str, int] | None = None
        self._checked = False  # True: the tokens are known distinct strings (see below)

    @classmethod
    def _checked_tokens(
        cls, tokens: list[str], index: dict[str, int], counts: Sequence[int] | None = None
    ) -> Vocab:
        """A vocabulary whose tokens the caller has checked (distinct ``str``), with the
        token -> row dictionary it built doing so (private: the loaders' trusted path).

        ``Vectors`` does not check such a vocabulary again and the lazy index is not
        rebuilt: a native open checks and indexes its tokens once."""
        vocab = cls(tokens, counts)
        vocab._index = index
        vocab._checked = True
        return vocab

    @property
    def index(self) -> dict[str, int]:
        """The token -> id dictionary (built lazily; the first occurrence wins)."""
        if self._index is None:
            index = dict(zip(self.tokens, range(len(self.tokens))))
            if len(index) != len(self.tokens):
                index = {}
                for i, token in enumerate(self.tokens):
                    index.setdefault(token, i)
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.index

    def __getitem__(self, token: str) -> int:
        try:
            return self.index[token]
        except (KeyError, TypeError):
            raise KeyError(self.missing_message(token)) from None

    def get(self, token: str, default: int | None = None) -> int | None:
        """The id of ``token``, or ``default`` when it is not in the vocabulary."""
        return self.index.get(token, default)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """The ids of ``tokens``; ``KeyError`` (with suggestions) for an unknown one."""
        index = self.index
        out = []
        for token in tokens:
            i = index.get(token)
            if i is None:
                raise KeyError(self.missing_message(token))
            out.append(i)
        return out

    def append(self, tokens: Sequence[str]) -> None:
        """Add new, distinct tokens at the end (ids ``len(self)``, ...); counts get 0.

        The caller checks that they are new (``Vectors.add_vectors`` does).
        """
        if not getattr(self, "_own_tokens", False):  # never grow a list the caller still holds
            self.tokens = list(self.tokens)
            self._own_tokens = True
        index = self.index
        for token in tokens:
            index[token] = len(self.tokens)
            self.tokens.append(token)
        if self.counts is not None:
            grown = np.zeros(len(self.tokens), dtype=np.int64)
            grown[: self.counts.shape[0]] = self.counts
            self.counts = grown

    def count(self, token: str) -> int | None:
        """The stored count of ``token``, or ``None`` when the vocabulary has no counts."""
        i = self[token]
        return None if self.counts is None else int(self.counts[i])

    def suggest(self, token: str, n: int = 3) -> list[str]:
        """Up to ``n`` known tokens that look like ``token`` (difflib ratio >= 0.6)."""
        if not isinstance(token, str):
            return []
        lowered = token.lower()
        if lowered != token and lowered in self.index:
            return [lowered]
        pool = [t for t in self.tokens[:_SUGGEST_POOL] if abs(len(t) - len(token)) <= 3]
        return difflib.get_close_matches(token, pool, n=n)

    def missing_message(self, token: object) -> str:
        """The ``KeyError`` text for an unknown token, with close matches when there are any."""
        text = f"Vectors: token {token!r} is not in the vocabulary ({len(self)} tokens)"
        close = self.suggest(token) if isinstance(token, str) else []
        if close:
            text += "; did you mean " + ", ".join(repr(t) for t in close) + "?"
        return text

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.tokens[:5])
        more = ", ..." if len(self) > 5 else ""
        return f"Vocab([{head}{more}], size={len(self)})"
