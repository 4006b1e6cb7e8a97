"""``embtable.quantize`` (module ``embtable.quantization``): swap a model's embedding tables for quantized inference tables.

Every :class:`~embtable.Embedding`, :class:`~embtable.EmbeddingBag`,
:class:`~embtable.EmbeddingBagCollection` and :class:`~embtable.EmbeddingCollection` (and
torch's ``nn.Embedding`` / ``nn.EmbeddingBag``) of the model, or the chosen tables, is
replaced by its quantized twin of :mod:`embtable.nn.quantized`, with the same ``forward``
and outputs in the original dtype.

Example:
    >>> import torch
    >>> import embtable
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.ModuleDict({
    ...     "users": embtable.Embedding(10_000, 32),
    ...     "genres": embtable.EmbeddingBag(20, 32, mode="mean"),
    ... })
    >>> small = embtable.quantize(model, {"users": "int4", "genres": "fp16"})
    >>> small["users"], small["genres"]
    (QuantizedEmbedding(10000, 32, format='int4'), QuantizedEmbeddingBag(20, 32, format='fp16', mode='mean'))
    >>> small["users"](torch.tensor([3, 4])).dtype
    torch.float32
    >>> embtable.quantize(model, "int8", tables=["genres"])["users"]
    Embedding(10000, 32)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch.nn import Module

from embtable.nn.bag import EmbeddingBag
from embtable.nn.collection import EmbeddingBagCollection, EmbeddingCollection
from embtable.nn.embedding import Embedding
from embtable.nn.quantized import (
    QuantizedEmbedding,
    QuantizedEmbeddingBag,
    QuantizedEmbeddingBagCollection,
    QuantizedEmbeddingCollection,
)
from embtable.storage import codecs

__all__ = ["quantize", "table_names"]

_SINGLE = {
    Embedding: QuantizedEmbedding,
    torch.nn.Embedding: QuantizedEmbedding,
    EmbeddingBag: QuantizedEmbeddingBag,
    torch.nn.EmbeddingBag: QuantizedEmbeddingBag,
}
_COLLECTIONS = {
    EmbeddingBagCollection: QuantizedEmbeddingBagCollection,
    EmbeddingCollection: QuantizedEmbeddingCollection,
}


def _single_class(module: Module) -> type | None:
    for kind, quantized in _SINGLE.items():
        if isinstance(module, kind):
            return quantized
    return None


def _collection_class(module: Module) -> type | None:
    for kind, quantized in _COLLECTIONS.items():
        if isinstance(module, kind):
            return quantized
    return None


def table_names(model: Module) -> list[str]:
    """The names :func:`quantize` knows the model's tables by: the qualified module name of
    each single table (``""`` for a model that is one table), and the config name of each
    table of a collection.

    Example:
        >>> import torch
        >>> import embtable
        >>> table_names(torch.nn.Sequential(embtable.Embedding(5, 2)))
        ['0']
    """
    names = []
    for path, module in model.named_modules():
        if _single_class(module) is not None:
            names.append(path)
        elif _collection_class(module) is not None:
            names.extend(config.name for config in module.tables)
    return names


def quantize(
    model: Module,
    formats: str | dict[str, str] = "int8",
    *,
    tables: Iterable[str] | None = None,
    search: str = "minmax",
    inplace: bool = False,
) -> Module:
    """The model with its embedding tables quantized for inference.

    Args:
        model: any module (or a table itself).
        formats: one row format for every chosen table (``"int8"``, ``"int4"``, ``"int2"``,
            ``"fp16"``, ``"bf16"``), or ``{table name: format}`` for mixed precision (e.g.
            int4 for the big tables, fp16 for the small ones); names as in
            :func:`table_names`.
        tables: quantize only these tables (default: every table, or the dict's tables).
            The other tables of a collection with a chosen table are kept as ``"fp32"``
            rows inside its quantized twin; other single tables stay as they are.
        search: ``"minmax"`` (default) or ``"greedy"`` (integer formats; see
            :func:`embtable.storage.codecs.quantize_rows`).
        inplace: modify ``model`` instead of a deep copy of it.

    Returns:
        The quantized model (``model`` itself with ``inplace=True``).

    Raises:
        TypeError: ``model`` is not a module.
        KeyError: a table name that the model does not have.
        ValueError: an unknown format or search.
    """
    api = "quantize"
    if not isinstance(model, Module):
        raise TypeError(f"{api}: model must be a torch.nn.Module, got {type(model).__name__}")
    known = table_names(model)
    if isinstance(formats, str):
        fmt = codecs.codec(formats, api).name
        chosen = {name: fmt for name in known}
    elif isinstance(formats, dict):
        chosen = {}
        for name, fmt in formats.items():
            chosen[name] = codecs.codec(fmt, api).name
    else:
        raise TypeError(f"{api}: formats must be a format name or a {{table: format}} dict, got {type(formats).__name__}")
    if tables is not None:
        wanted = [tables] if isinstance(tables, str) else list(tables)
        _check_names(wanted, known, api, "tables")
        chosen = {name: fmt for name, fmt in chosen.items() if name in wanted}
    _check_names(list(chosen), known, api, "formats")
    if search not in ("minmax", "greedy"):
        raise ValueError(f"{api}: search must be 'minmax' or 'greedy', got {search!r}")
    if not inplace:
        model = copy.deepcopy(model)
    replacement = _quantized(model, "", chosen, search)
    if replacement is not None:
        return replacement
    for path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{path}.{name}" if path else name
            new = _quantized(child, full, chosen, search)
            if new is not None:
                setattr(parent, name, new)
    return model


def _check_names(names: list[str], known: list[str], api: str, argument: str) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(f"{api}: {argument} names table {unknown[0]!r}, which the model does not have; its tables are {known}")


def _quantized(module: Module, path: str, chosen: dict[str, str], search: str) -> Module | None:
    single = _single_class(module)
    if single is not None:
        return single.from_float(module, chosen[path], search=search) if path in chosen else None
    collection = _collection_class(module)
    if collection is not None:
        mine = {c.name: chosen[c.name] for c in module.tables if c.name in chosen}
        return collection.from_float(module, mine, search=search) if mine else None
    return None
