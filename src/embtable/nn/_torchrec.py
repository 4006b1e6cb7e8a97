"""TorchRec interop for the collections: configs, modules and batches coming from TorchRec.

Nothing here imports torchrec: TorchRec objects are read through their public methods
(``embedding_bag_configs()`` / ``embedding_configs()``, ``state_dict()``, the config fields), so
the collections work without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from embtable.config import TableConfig
from embtable.jagged import KeyedJagged
from embtable.nn.outputs import PooledEmbeddings

__all__ = ["as_keyed_jagged", "collection_to_torchrec", "expand_rows", "module_device", "tables_from_torchrec"]

_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}


def tables_from_torchrec(module: Any, configs_method: str, pooled: bool, api: str) -> list[TableConfig]:
    """The :class:`TableConfig` of each table of TorchRec's collection ``module``.

    Args:
        module: a ``torchrec.EmbeddingBagCollection`` or ``torchrec.EmbeddingCollection``.
        configs_method: the method listing its configs (``"embedding_bag_configs"`` or
            ``"embedding_configs"``).
        pooled: whether the tables pool (bag collection) or not.
        api: the name errors start with.

    Raises:
        TypeError: ``module`` is not a module with ``configs_method``.
        ValueError: a table embtable cannot hold (an integer data type, pooling ``NONE`` in a
            bag collection).
    """
    configs = getattr(module, configs_method, None)
    if not isinstance(module, Module) or not callable(configs):
        expected = "EmbeddingBagCollection" if pooled else "EmbeddingCollection"
        raise TypeError(f"{api}: expected a torchrec {expected}, got {type(module).__name__}")
    return [_table(config, pooled, api) for config in configs()]


def _table(config: Any, pooled: bool, api: str) -> TableConfig:
    data_type = getattr(config.data_type, "name", str(config.data_type))
    if data_type not in _DTYPES:
        raise ValueError(
            f"{api}: table {config.name!r} has data_type {data_type}; embtable tables are "
            f"floating: one of {sorted(_DTYPES)}"
        )
    pooling = "none"
    if pooled:
        pooling = getattr(config.pooling, "name", str(config.pooling))
        if pooling not in ("SUM", "MEAN"):
            raise ValueError(f"{api}: table {config.name!r} has pooling {pooling}; expected SUM or MEAN")
    bound = config.weight_init_max
    symmetric = bound is not None and config.weight_init_min == -bound
    return TableConfig(
        name=config.name,
        num_embeddings=config.num_embeddings,
        embedding_dim=config.embedding_dim,
        feature_names=list(config.feature_names) or [config.name],
        pooling=pooling.lower(),
        init="uniform",
        init_bound=bound if symmetric else None,
        dtype=_DTYPES[data_type],
    )


def module_device(module: Module) -> torch.device | None:
    """Where ``module``'s first parameter lives (``None`` without parameters)."""
    return next((p.device for p in module.parameters()), None)


def expand_rows(result: PooledEmbeddings, inverse: tuple[list[str], Tensor], api: str) -> PooledEmbeddings:
    """Each feature's pooled rows picked by its row of TorchRec's ``inverse_indices``.

    Raises:
        KeyError: a feature without a row in ``inverse``.
    """
    names, rows = inverse
    index_of = {name: i for i, name in enumerate(names)}
    tensors = []
    for feature in result.keys():
        if feature not in index_of:
            raise KeyError(
                f"{api}: the batch's inverse_indices have no row for feature {feature!r}; "
                f"they name {names}"
            )
        tensors.append(result[feature].index_select(0, rows[index_of[feature]].to(torch.int64)))
    return PooledEmbeddings(result.keys(), tensors)


def as_keyed_jagged(features: Any) -> Any:
    """A TorchRec ``KeyedJaggedTensor`` as a :class:`KeyedJagged` (sharing tensors); else as is."""
    kind = type(features)
    if kind.__name__ == "KeyedJaggedTensor" and kind.__module__.startswith("torchrec"):
        return KeyedJagged.from_torchrec(features)
    return features


def collection_to_torchrec(collection: Any, pooled: bool, api: str) -> Any:
    """TorchRec's ``EmbeddingBagCollection`` / ``EmbeddingCollection`` equal to ``collection``.

    Raises:
        ImportError: torchrec is not installed.
        ValueError: a table TorchRec cannot hold (``"max"`` pooling, a ``padding_idx``,
            ``scale_grad_by_freq``, a dtype other than float32 / float16 / bfloat16).
    """
    try:
        import torchrec
    except ImportError as error:
        raise ImportError(f"{api}: torchrec is not importable ({error})") from None
    names = {dtype: name for name, dtype in _DTYPES.items()}
    configs = []
    for table in collection.tables:
        problem = None
        if table.dtype not in names:
            problem = f"dtype {table.dtype} (TorchRec holds {sorted(_DTYPES)})"
        elif table.padding_idx is not None:
            problem = f"padding_idx={table.padding_idx} (TorchRec tables have none)"
        elif pooled and table.pooling.value not in ("sum", "mean"):
            problem = f"pooling={table.pooling.value!r} (TorchRec pools by sum or mean)"
        elif table.scale_grad_by_freq:
            problem = "scale_grad_by_freq=True (TorchRec's table configs have no such option)"
        if problem:
            raise ValueError(f"{api}: table {table.name!r} has {problem}")
        fields = dict(name=table.name, num_embeddings=table.num_embeddings,
                      embedding_dim=table.embedding_dim, feature_names=list(table.feature_names),
                      data_type=torchrec.DataType[names[table.dtype]])
        if pooled:
            configs.append(torchrec.EmbeddingBagConfig(
                pooling=torchrec.PoolingType[table.pooling.value.upper()], **fields))
        else:
            configs.append(torchrec.EmbeddingConfig(**fields))
    device = module_device(collection)
    if pooled:
        module = torchrec.EmbeddingBagCollection(tables=configs, is_weighted=collection.is_weighted(),
                                                 device=device)
    else:
        module = torchrec.EmbeddingCollection(tables=configs, device=device)
    module.load_state_dict(collection.state_dict())
    return module
