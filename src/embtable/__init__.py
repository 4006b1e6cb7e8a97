"""embtable: embedding tables for PyTorch.

An exact, self-implemented drop-in for ``torch.nn.Embedding`` /
``torch.nn.EmbeddingBag`` and what comes next: multi-table collections fed by
keyed jagged batches, fused sparse optimizers, pretrained vectors.

Example:
    >>> import torch
    >>> import embtable
    >>> table = embtable.Embedding(100, 16, padding_idx=0)
    >>> table(torch.tensor([[5, 9, 0]])).shape
    torch.Size([1, 3, 16])
"""

from embtable import func, functional, optim
from embtable.config import DynamicConfig, PoolingMode, TableConfig
from embtable.jagged import KeyedJagged
from embtable.nn import (
    Embedding,
    EmbeddingBag,
    EmbeddingBagCollection,
    EmbeddingCollection,
)
from embtable.nn.dynamic import DynamicEmbedding, DynamicEmbeddingBag
from embtable.nn.hashed import hash_ids
from embtable.quantization import quantize

__version__ = "0.1.0"

_LAZY = ("vectors", "viz")  # subpackages imported on first attribute access


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"embtable.{name}")
    raise AttributeError(f"module 'embtable' has no attribute {name!r}")

__all__ = [
    "DynamicConfig",
    "DynamicEmbedding",
    "DynamicEmbeddingBag",
    "hash_ids",
    "Embedding",
    "EmbeddingBag",
    "EmbeddingBagCollection",
    "EmbeddingCollection",
    "KeyedJagged",
    "PoolingMode",
    "TableConfig",
    "func",
    "functional",
    "optim",
    "quantize",
    "vectors",
    "viz",
    "__version__",
]
