"""Pretrained vectors: a vocabulary bound to a table; file formats, queries, evaluation.

- :class:`Vectors` with gensim-style loaders and savers: word2vec text/binary, GloVe,
  fastText ``.vec``, Hugging Face model folders, the native memory-mapped format, and
  gensim ``KeyedVectors``;
- batched queries (``most_similar``, 3CosAdd / 3CosMul analogies, ``doesnt_match``,
  ``nearest``) and gensim-equal evaluation (``evaluate_analogies``, ``evaluate_pairs``);
- :func:`build_from` to align a task vocabulary to pretrained rows;
- :class:`FastTextVectors`: fastText ``.bin`` models, vectors for unknown words from
  character n-grams (``Vectors.load_facebook_vectors``).

Example:
    >>> import torch
    >>> from embtable.vectors import Vectors
    >>> vectors = Vectors(["king", "queen", "man", "woman"],
    ...                   torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, 1.1], [2.0, -0.9]]))
    >>> vectors.analogy("man", "woman", "king")[0][0]
    'queen'
"""

from embtable.vectors.build import Coverage, build_from
from embtable.vectors.evaluate import AnalogyResult, PairsResult, evaluate_analogies, evaluate_pairs
from embtable.vectors.io_fasttext import FastTextVectors
from embtable.vectors.vectors import Vectors
from embtable.vectors.vocab import Vocab

__all__ = [
    "AnalogyResult",
    "Coverage",
    "FastTextVectors",
    "PairsResult",
    "Vectors",
    "Vocab",
    "build_from",
    "evaluate_analogies",
    "evaluate_pairs",
]
