"""Exception classes that are both precise Python errors and the classes torch raises.

Where torch 2.13 raises ``RuntimeError`` (or ``NotImplementedError``) for a bad input to
``embedding`` / ``embedding_bag`` -- float or bool ids, offsets that do not start at 0,
decrease or run past the input, an id outside the table in a bag, ``per_sample_weights`` of
the wrong dtype or with a mode other than ``"sum"``, a weight that is not 2-D,
``padding_idx`` outside the table in ``embedding_bag`` -- embtable raises one of the classes
below.  Each derives from the precise builtin class embtable documents (``ValueError``,
``TypeError``, ``IndexError``) *and* from torch's class, so both

* ``except RuntimeError:`` (code written for torch) and
* ``except ValueError:`` / ``except TypeError:`` / ``except IndexError:``

catch it.  The message is embtable's: it names the API, the argument, the bad value and what
was expected.  Where torch only ``assert``s (``padding_idx`` outside the table in
``torch.nn.functional.embedding`` and in the module constructors, a non-2-D tensor passed to
``from_pretrained``), embtable raises a plain ``ValueError`` (a documented departure).

This module imports nothing from embtable (it sits below :mod:`embtable.ops`).

Example:
    >>> import torch
    >>> import embtable
    >>> from embtable.errors import EmbeddingValueError
    >>> weight = torch.zeros(4, 2)
    >>> try:
    ...     embtable.functional.embedding_bag(torch.tensor([0, 1]), weight, torch.tensor([1]))
    ... except RuntimeError as error:       # the clause written for torch still catches it
    ...     print(type(error).__name__, isinstance(error, ValueError))
    EmbeddingValueError True
"""

from __future__ import annotations

__all__ = [
    "EmbeddingError",
    "EmbeddingIndexError",
    "EmbeddingNotImplementedError",
    "EmbeddingTypeError",
    "EmbeddingValueError",
]


class EmbeddingError(RuntimeError):
    """Base of embtable's torch-compatible errors: ``except EmbeddingError`` catches them all.

    It is a ``RuntimeError``, the class torch raises for most bad embedding inputs.
    """


class EmbeddingValueError(ValueError, EmbeddingError):
    """A bad value (offsets, shapes, ``padding_idx``, a non-2-D weight) where torch raises
    ``RuntimeError``; also a ``ValueError``."""


class EmbeddingTypeError(TypeError, EmbeddingError):
    """A tensor of the wrong dtype (float or bool ids or offsets, non-float bag weights,
    ``per_sample_weights`` of another dtype) where torch raises ``RuntimeError``; also a
    ``TypeError``."""


class EmbeddingIndexError(IndexError, EmbeddingError):
    """An id outside the table.  torch raises ``IndexError`` (``embedding``) or
    ``RuntimeError`` (``embedding_bag``); this is both."""


class EmbeddingNotImplementedError(ValueError, NotImplementedError, EmbeddingError):
    """An argument combination torch declares unsupported with ``NotImplementedError``
    (``per_sample_weights`` with ``mode="mean"`` or ``"max"``); also a ``ValueError``."""
