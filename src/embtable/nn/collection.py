r"""``EmbeddingBagCollection`` and ``EmbeddingCollection``: many tables, one batched lookup.

Storage.  Tables of equal ``(embedding_dim, dtype)`` (and ``scale_grad_by_freq``) live in
one grouped weight, a ``Parameter`` of shape ``[sum of their num_embeddings, embedding_dim]`` named
``grouped_weight_<g>``; a table is a block of consecutive rows of it (see
:mod:`embtable.nn.grouping` for the exact mapping table -> (group, row offset), which fused
optimizers use to update the grouped weights in place).  :meth:`table_weight` gives a
table's rows as a view.

Lookup.  A forward pass concatenates the ids of every feature of a group that shares a
pooling mode, shifts each feature's ids by its table's row offset, and pools the whole
group with one :func:`embtable.functional.embedding_bag` call (one call per
``(group, pooling mode)``; a collection of equal-dim tables of one mode makes a single
call).  Each table's ``padding_idx`` becomes a global padding row of its group: with one
such row per call it is passed as ``padding_idx``; with several, their ids are dropped
before pooling, which is exactly torch's rule (padding entries are not pooled, not counted
in a mean, get no gradient; a bag of only padding gives zeros).

``scale_grad_by_freq``.  A table with the flag gets the gradient of a loop of
``torch.nn.Embedding`` modules with ``scale_grad_by_freq=True``, one call per feature, pooled
as ``torch.nn.EmbeddingBag`` pools: a row's gradient from feature ``f`` is divided by the
count of its id among ``f``'s ids in the batch (torch 2.13's CPU ``EmbeddingBag`` with the
flag divides by a wrong count, pytorch #190063, docs/bags.md).  The simplest exact way:
such tables get groups (so a fused group's step count, one per lookup call, stays that of
the other tables) and buckets of their own and take the general path.  In a bucket where no table is read by two of its
features, distinct features never share a row, so the kernels' count over the call's ids
(:func:`embtable.functional.embedding_bag` with the flag; fused: the fused update with the
flag) is the per-feature count; a bucket with a shared table takes
:func:`embtable.nn._freq.scaled_lookup`, one call whose backward counts each
``(feature, row)`` pair (fused tables: one update of the distinct rows per bucket and step).

state_dict.  Keys are per table, as in TorchRec and in a ``ModuleDict`` of torch
modules: ``embedding_bags.<table>.weight`` (bag collection) or
``embeddings.<table>.weight`` (non-pooled collection), each ``[num_embeddings,
embedding_dim]``, so a collection loads from, and into, a loop of ``torch.nn.EmbeddingBag``
/ ``torch.nn.Embedding`` modules.  The tensors of :meth:`state_dict` are views of the
grouped storage (like any module's state_dict, they share memory with the parameters).
Loading copies each table into its rows (also with ``assign=True``: the grouped storage
stays one tensor), and copies nothing if any table has the wrong shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.nn import Module, ModuleDict, Parameter

from embtable import functional, ops
from embtable._functions import _GroupedBagFunction, _GroupedBagFunctionJvp
from embtable._functions import function_for as _function_for
from embtable.config import PoolingMode, TableConfig
from embtable.jagged import KeyedJagged, _complete_cumsum
from embtable.nn import dynamic as _dynamic
from embtable.nn._freq import scaled_lookup
from embtable.nn._torchrec import as_keyed_jagged as _as_keyed_jagged
from embtable.nn._torchrec import collection_to_torchrec, module_device, tables_from_torchrec
from embtable.nn._torchrec import expand_rows as _expand_rows
from embtable.nn.grouping import CollectionPlan, LookupBucket, plan_groups
from embtable.nn.outputs import JaggedEmbeddings, JaggedRows, PooledEmbeddings
from embtable.ops._memory import empty_table

__all__ = ["BucketInput", "EmbeddingBagCollection", "EmbeddingCollection"]

_POOL_CODES = {PoolingMode.SUM: ops.POOL_SUM, PoolingMode.MEAN: ops.POOL_MEAN}


class BucketInput(NamedTuple):
    """The ids of one :class:`~embtable.nn.grouping.LookupBucket`, ready for one pooled call.

    Attributes:
        ids: ``[N]`` int64 rows of the group's grouped weight (ids shifted by row offsets;
            with several padding rows, padding ids already dropped).
        offsets: ``[F_bucket * B + 1]`` int64 bag boundaries (``include_last_offset`` style);
            bag ``j * B + b`` is example ``b`` of the bucket's ``j``-th feature.
        per_sample_weights: ``[N]`` weights in the weight's dtype, or ``None``.
        padding_idx: the one padding row left for the kernel to skip, or ``None``.
        counts: ids per feature of the bucket (before dropping padding ids).
    """

    ids: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    padding_idx: int | None
    counts: list[int]


class _GroupedTables(Module):
    """Grouped storage, per-table views and per-table state_dict keys (shared by both collections)."""

    _state_key: ClassVar[str]
    _pooled: ClassVar[bool]
    _is_weighted: bool = False  # whether lookups use the batch's per-value weights

    plan: CollectionPlan
    tables: tuple[TableConfig, ...]
    feature_names: list[str]
    embedding_dims: list[int]

    def __init__(self, tables: Sequence[TableConfig], device: torch.device | str | None = None) -> None:
        super().__init__()
        api = type(self).__name__
        tables, dynamic_rows = _dynamic.plan_configs(tables)  # dynamic tables: docs/dynamic.md
        self.plan = plan_groups(tables, pooled=self._pooled, api=api)
        self.tables = tuple(self.plan.configs.values())
        for config in self.tables:
            self._check_pooling(config, api)
            if config.storage is not None:  # a disk table would silently become a RAM table
                raise ValueError(
                    f"{api}: table {config.name!r} has storage={config.storage!r}; tables on disk "
                    f"are served by embtable.nn.disk.Disk{api} (docs/storage.md)"
                )
        self.feature_names = list(self.plan.features)
        self.embedding_dims = [place.embedding_dim for place in self.plan.features.values()]
        for group in self.plan.groups:
            weight = empty_table((group.num_rows, group.embedding_dim), group.dtype, device)
            self.register_parameter(f"grouped_weight_{group.index}", Parameter(weight))
        self._bucket_consts = [self._constants(bucket) for bucket in self.plan.buckets]
        if dynamic_rows:
            self.dynamic_tables = ModuleDict({n: _dynamic.DynamicTableState(r) for n, r in dynamic_rows.items()})
        self.reset_parameters()

    def _check_pooling(self, config: TableConfig, api: str) -> None:
        raise NotImplementedError

    def _constants(self, bucket: LookupBucket) -> dict[str, Any]:
        places = [self.plan.features[f] for f in bucket.features]
        return {
            "tables": [p.table for p in places],
            "row_offsets": [p.row_offset for p in places],
            "num_rows": [p.num_rows for p in places],
            "padding_rows": torch.tensor(bucket.padding_rows, dtype=torch.int64),
            "feature_rows": torch.tensor([[p.row_offset, p.num_rows] for p in places], dtype=torch.int64),
            # scale_grad_by_freq: a table read by two features of the bucket counts per feature
            "per_feature": bucket.scale_grad_by_freq and len({p.table for p in places}) < len(places),
        }

    # ------------------------------------------------------------------ storage access

    @property
    def grouped_weights(self) -> list[Parameter]:
        """The grouped weight of each group, in group order (``plan.groups``)."""
        return [getattr(self, f"grouped_weight_{group.index}") for group in self.plan.groups]

    def table_weight(self, table: str) -> Tensor:
        """Table ``table``'s ``[num_embeddings, embedding_dim]`` rows: a view of the grouped weight.

        Writes into the view (under ``torch.no_grad()``) change the collection's weight.

        Raises:
            KeyError: no such table.
        """
        place = self._placement(table)
        return self.grouped_weights[place.group].narrow(0, place.row_offset, place.num_rows)

    def table_weights(self) -> dict[str, Tensor]:
        """``{table: view of its rows}`` for every table, in configuration order."""
        return {config.name: self.table_weight(config.name) for config in self.tables}

    def table_grad(self, table: str) -> Tensor | None:
        """The rows of the grouped weight's ``.grad`` that belong to ``table`` (``None`` before backward)."""
        place = self._placement(table)
        grad = self.grouped_weights[place.group].grad
        if grad is None:
            return None
        return grad.narrow(0, place.row_offset, place.num_rows)

    def _placement(self, table: str) -> Any:
        try:
            return self.plan.tables[table]
        except (KeyError, TypeError):
            raise KeyError(
                f"{type(self).__name__}: no table {table!r}; the tables are {list(self.plan.configs)}"
            ) from None

    def reset_parameters(self) -> None:
        """Initialize every table from its config's ``init`` (in table order) and zero padding rows.

        With the default ``init="normal"`` and a given seed, each table gets the weights a
        ``torch.nn.EmbeddingBag`` / ``torch.nn.Embedding`` of the same shape would get when
        the modules are created in table order from that seed.
        """
        for config in self.tables:
            config.init_weight_(self.table_weight(config.name))
        _dynamic.reset_dynamic_tables(self)

    # ------------------------------------------------------------------ state_dict

    def _state_keys(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}{self._state_key}.{config.name}.weight": config.name for config in self.tables}

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for key, table in self._state_keys(prefix).items():
            rows = self.table_weight(table)
            destination[key] = rows if keep_vars else rows.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        expected = self._state_keys(prefix)
        loads, errors = [], []
        for key, table in expected.items():
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value, rows = state_dict[key], self.table_weight(table)
            if not isinstance(value, Tensor):
                errors.append(
                    f'While copying the parameter named "{key}", expected torch.Tensor or '
                    f"Tensor-like object from checkpoint but received {type(value)}"
                )
            elif value.shape != rows.shape:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape {value.shape} from "
                    f"checkpoint, the shape in current model is {rows.shape}."
                )
            else:
                loads.append((rows, value))
        error_msgs.extend(errors)
        if not errors:  # all tables or none: a failed load leaves the weights as they were
            with torch.no_grad():
                for rows, value in loads:
                    rows.copy_(value)
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key not in expected:
                    child = key[len(prefix) :].split(".", 1)[0]
                    if child not in self._modules:
                        unexpected_keys.append(key)

    # ------------------------------------------------------------------ lookups

    def _remap(self, features: Any) -> Any:
        """``features`` with dynamic / hashed tables' ids replaced by rows (docs/dynamic.md).

        Inside ``torch.func.vmap`` (one example of a :class:`embtable.func.KeyedJaggedStack`)
        hashed ids are remapped per example; dynamic tables, whose lookups admit ids into a
        shared slot map, are refused.
        """
        static = getattr(features, "_static_length_per_key", None)
        vmapped = isinstance(features, KeyedJagged) and ops.batched(features.values())
        if vmapped and getattr(self, "dynamic_tables", None):
            raise ValueError(
                f"{type(self).__name__}: torch.func.vmap over a collection with dynamic tables "
                f"({list(self.dynamic_tables)}) is not supported: their lookups admit ids into one "
                f"shared slot map; use a loop of single-example gradients"
            )
        remapped = _dynamic.remap_batch(self, features)
        if static is not None and remapped is not features:
            remapped._static_length_per_key = static  # same lengths, new ids
        return remapped

    def bucket_inputs(self, features: KeyedJagged) -> list[BucketInput]:
        """The pooled-call inputs of every bucket of ``plan.buckets`` for the batch ``features``.

        Validates the batch (features present, ids within their tables, weights usable)
        before anything is looked up; used by :meth:`forward`, and by fused optimizers that
        replay a lookup's rows.

        Raises:
            TypeError: ``features`` is not a :class:`~embtable.KeyedJagged`.
            KeyError: a feature of the collection is missing from ``features``.
            IndexError: an id lies outside its table (the message names feature and table).
            ValueError: per-value weights reach a table whose pooling is not ``"sum"``;
                a weighted collection (``is_weighted=True``) gets a batch without weights;
                ``features`` is on another device than the weights.
        """
        api = type(self).__name__
        features = _as_keyed_jagged(features)
        if not isinstance(features, KeyedJagged):
            raise TypeError(f"{api}: expected a KeyedJagged batch, got {type(features).__name__}")
        if self._is_weighted and features.weights() is None:
            raise ValueError(
                f"{api}: the collection is weighted (is_weighted=True) but the batch has no "
                f"weights; give KeyedJagged(..., weights=...) or use is_weighted=False"
            )
        device = self.grouped_weights[0].device
        if features.device != device and device.type != "meta":  # meta tables: shapes from a real batch
            raise ValueError(
                f"{api}: the batch is on {features.device} but the tables on {device}; "
                f"move it with features.to({str(device)!r})"
            )
        index_of = {key: i for i, key in enumerate(features.keys())}
        missing = [f for f in self.feature_names if f not in index_of]
        if missing:
            raise KeyError(
                f"{api}: the batch has no feature {missing[0]!r} (read from table "
                f"{self.plan.features[missing[0]].table!r}); its keys are {features.keys()}"
            )
        return [
            self._bucket_input(features, bucket, consts, index_of, api)
            for bucket, consts in zip(self.plan.buckets, self._bucket_consts)
        ]

    def _bucket_input(
        self,
        features: KeyedJagged,
        bucket: LookupBucket,
        consts: dict[str, Any],
        index_of: dict[str, int],
        api: str,
    ) -> BucketInput:
        batch = features.stride()
        starts = features.offset_per_key()
        positions = [index_of[f] for f in bucket.features]
        counts = [starts[p + 1] - starts[p] for p in positions]
        ids, lengths, weights = _bucket_slices(features, positions, batch)
        if not self._is_weighted:
            weights = None  # TorchRec's is_weighted=False: the batch's weights are ignored
        if weights is not None and bucket.pooling in (PoolingMode.MEAN, PoolingMode.MAX):
            raise ValueError(
                f"{api}: the batch carries per-value weights, but feature {bucket.features[0]!r} "
                f"(table {consts['tables'][0]!r}) uses pooling={bucket.pooling.value!r}; weights "
                f"apply only to pooling='sum' (as torch's per_sample_weights): drop them or use sum"
            )
        ids = _shift_ids(ids, counts, bucket.features, consts, api)
        padding_rows = bucket.padding_rows
        padding_idx = padding_rows[0] if len(padding_rows) == 1 else None
        if len(padding_rows) > 1 and self._pooled:
            if ops.batched(ids):  # inside vmap (shapes stay): every padding id becomes the first
                ids = torch.where(_is_any(ids, consts["padding_rows"]), padding_rows[0], ids)
                padding_idx = padding_rows[0]
            else:
                ids, lengths, weights = _drop_rows(ids, lengths, weights, consts["padding_rows"])
        offsets = _complete_cumsum(lengths)  # (vmap-able)
        if weights is not None:
            weights = weights.to(self.grouped_weights[bucket.group].dtype)
        return BucketInput(ids, offsets, weights, padding_idx, counts)


class EmbeddingBagCollection(_GroupedTables):
    r"""Several pooled embedding tables looked up together from one :class:`~embtable.KeyedJagged`.

    Each feature of the batch is pooled (sum, mean or max, as set by its table's
    ``pooling``) over each example's ids in the table the feature reads, exactly as a
    ``torch.nn.EmbeddingBag(num_embeddings, embedding_dim, mode=pooling,
    padding_idx=padding_idx)`` per table would, but in one batched pass: see the module
    docstring for the grouped storage and lookup.  Several features may share one table.
    Any ``embedding_dim``, max pooling and ``padding_idx`` work (FBGEMM's batched tables
    need dims that are multiples of 4 and have neither).

    Args:
        tables: the table configs (``pooling`` must be ``"sum"``, ``"mean"`` or ``"max"``).
        is_weighted: as in TorchRec: ``False`` (default) ignores the batch's per-value
            weights; ``True`` weights each id of a ``"sum"`` table by its value's weight
            (as ``per_sample_weights``) and needs weighted batches.
        device: where to allocate the tables.

    Attributes:
        tables: the configs, in order.
        feature_names: every feature, tables in order then each table's ``feature_names``:
            the order of the result's :meth:`~embtable.nn.outputs.PooledEmbeddings.values`
            columns.
        embedding_dims: each feature's embedding dim, in ``feature_names`` order.
        plan: the grouped layout (:class:`~embtable.nn.grouping.CollectionPlan`).
        grouped_weight_<g>: the grouped weights (parameters), one per ``(dim, dtype)``.

    Shape:
        - Input: a :class:`~embtable.KeyedJagged` with every feature of the collection
          (others are ignored), batch size ``B``, or a batch size per feature
          (``stride_per_key``); with ``is_weighted=True``, per-value weights weight the
          ids of ``"sum"`` tables.
        - Output: :class:`~embtable.nn.outputs.PooledEmbeddings`; ``result[feature]`` is
          ``(B, D_feature)`` (``B`` the feature's own batch size), ``result.values()`` is
          ``(B, sum(embedding_dims))`` when every feature has the same batch size.

    Raises:
        ValueError: duplicate table names, a feature in two tables, ``pooling="none"``
            (use :class:`EmbeddingCollection`).
        TypeError: ``is_weighted`` is not a bool.

    Example:
        >>> import torch
        >>> from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
        >>> _ = torch.manual_seed(0)
        >>> collection = EmbeddingBagCollection([
        ...     TableConfig(name="category", num_embeddings=100, embedding_dim=32),
        ...     TableConfig(name="brand", num_embeddings=500, embedding_dim=16, pooling="mean",
        ...                 feature_names=["brand", "viewed_brands"]),
        ... ])
        >>> batch = KeyedJagged.from_dict({
        ...     "category": [[5], [12], [33]],
        ...     "brand": [[45], [123], [67]],
        ...     "viewed_brands": [[1, 2, 3], [], [7]],
        ... })
        >>> result = collection(batch)
        >>> result.keys()
        ['category', 'brand', 'viewed_brands']
        >>> result["viewed_brands"].shape, result.values().shape
        (torch.Size([3, 16]), torch.Size([3, 64]))
        >>> list(collection.state_dict())
        ['embedding_bags.category.weight', 'embedding_bags.brand.weight']
    """

    _state_key = "embedding_bags"
    _pooled = True

    def __init__(
        self,
        tables: Sequence[TableConfig],
        is_weighted: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(is_weighted, bool):
            raise TypeError(
                f"EmbeddingBagCollection: is_weighted must be a bool, got {is_weighted!r} "
                f"(the signature is (tables, is_weighted=False, device=None), as TorchRec's)"
            )
        super().__init__(tables, device=device)
        self._is_weighted = is_weighted

    def is_weighted(self) -> bool:  # type: ignore[override]
        """Whether lookups use the batch's per-value weights (TorchRec's ``is_weighted()``)."""
        return self._is_weighted

    def embedding_bag_configs(self) -> list[TableConfig]:
        """The table configs, in order (TorchRec's ``embedding_bag_configs()``: models such as
        TorchRec's ``DLRM`` read ``embedding_dim`` and ``feature_names`` from them)."""
        return list(self.tables)

    @classmethod
    def from_torchrec(
        cls, module: Any, *, device: torch.device | str | None = None
    ) -> EmbeddingBagCollection:
        """The collection equal to TorchRec's ``EmbeddingBagCollection`` ``module``.

        Same tables (names, sizes, features, pooling, dtype), same ``is_weighted``, and a copy
        of its weights, so both give the same pooled values for the same batch.  A TorchRec
        ``KeyedJaggedTensor`` may be passed to the result directly (it is converted, sharing
        its tensors).

        Args:
            module: a ``torchrec.EmbeddingBagCollection``.
            device: where to put the tables (default: where ``module``'s are).

        Raises:
            TypeError: ``module`` is not a TorchRec ``EmbeddingBagCollection``.
            ValueError: a table TorchRec can hold but embtable cannot (an integer data type,
                pooling ``NONE``).

        Example (needs torchrec, an optional peer, so the doctest run skips it;
        ``tests/nn/test_collection_torchrec.py`` runs the same)::

            >>> import torch, torchrec  # doctest: +SKIP
            >>> from embtable import EmbeddingBagCollection, KeyedJagged  # doctest: +SKIP
            >>> theirs = torchrec.EmbeddingBagCollection(tables=[torchrec.EmbeddingBagConfig(
            ...     name="t", num_embeddings=10, embedding_dim=4, feature_names=["f"])])  # doctest: +SKIP
            >>> ours = EmbeddingBagCollection.from_torchrec(theirs)  # doctest: +SKIP
            >>> kjt = KeyedJagged.from_dict({"f": [[1, 2], [3]]}).to_torchrec()  # doctest: +SKIP
            >>> torch.equal(ours(kjt).values(), theirs(kjt).values())  # doctest: +SKIP
            True
        """
        api = "EmbeddingBagCollection.from_torchrec"
        tables = tables_from_torchrec(module, "embedding_bag_configs", True, api)
        if not callable(getattr(module, "is_weighted", None)):
            raise TypeError(f"{api}: expected a torchrec EmbeddingBagCollection, got {type(module).__name__}")
        device = module_device(module) if device is None else device
        collection = cls(tables, is_weighted=bool(module.is_weighted()), device=device)
        collection.load_state_dict(module.state_dict())
        return collection

    def to_torchrec(self) -> Any:
        """TorchRec's ``EmbeddingBagCollection`` with these tables, ``is_weighted`` and weights.

        Raises:
            ImportError: torchrec is not installed.
            ValueError: a table TorchRec cannot hold (``"max"`` pooling, a ``padding_idx``,
                ``scale_grad_by_freq``, float64).
        """
        return collection_to_torchrec(self, True, "EmbeddingBagCollection.to_torchrec")

    def _check_pooling(self, config: TableConfig, api: str) -> None:
        if config.pooling is PoolingMode.NONE:
            raise ValueError(
                f"{api}: table {config.name!r} has pooling='none'; an EmbeddingBagCollection "
                f"pools every table: use 'sum', 'mean' or 'max', or put the table in an "
                f"EmbeddingCollection"
            )

    def forward(self, features: KeyedJagged) -> PooledEmbeddings:
        """Pool every feature of ``features``; see the class docstring for shapes.

        With TorchRec's ``inverse_indices`` on the batch, feature ``f``'s pooled rows are
        expanded to ``[B, D]`` by ``inverse_indices`` (row ``b`` is pooled row
        ``inverse[f][b]``), as TorchRec's collection does.
        """
        features = self._remap(_as_keyed_jagged(features))
        result = self._pool(features)
        inverse = features.inverse_indices_or_none() if isinstance(features, KeyedJagged) else None
        return result if inverse is None else _expand_rows(result, inverse, type(self).__name__)

    def _pool(self, features: KeyedJagged) -> PooledEmbeddings:
        fast = self._compiled_forward(features)
        if fast is not None:
            return fast
        batch = features.stride() if isinstance(features, KeyedJagged) else 0
        strides = _strides(features)
        pooled: dict[str, Tensor] = {}
        buckets = zip(self.plan.buckets, self._bucket_consts, self.bucket_inputs(features))
        for bucket, consts, lookup in buckets:
            if consts["per_feature"]:  # ids counted per feature (nn/_freq.py)
                sizes = [batch if strides is None else strides[f] for f in bucket.features]
                out = scaled_lookup(
                    self.grouped_weights[bucket.group], lookup.ids, lookup.offsets,
                    lookup.per_sample_weights, bucket.pooling.value, lookup.padding_idx, sizes,
                )
            else:
                out = functional.embedding_bag(
                    lookup.ids,
                    self.grouped_weights[bucket.group],
                    lookup.offsets,
                    mode=bucket.pooling.value,
                    per_sample_weights=lookup.per_sample_weights,
                    include_last_offset=True,
                    padding_idx=lookup.padding_idx,
                    scale_grad_by_freq=bucket.scale_grad_by_freq,
                )
            if strides is None:
                # unbind (not slicing) so that backward stacks the features' gradients in one copy
                per_feature = out.view(len(bucket.features), batch, out.shape[1]).unbind(0)
            else:  # a batch size per feature
                per_feature = out.split([strides[f] for f in bucket.features])
            pooled.update(zip(bucket.features, per_feature))
        return PooledEmbeddings(self.feature_names, [pooled[f] for f in self.feature_names])

    def _compiled_forward(self, features: KeyedJagged) -> PooledEmbeddings | None:
        """:meth:`forward` on the compiled kernels, or ``None`` where they do not apply.

        Per bucket, ``embtable::bucket_ids`` checks and shifts the ids and builds the bag
        offsets in one pass, and ``embtable::pool_bags_grouped`` pools straight into the
        ``[B, sum(D)]`` layout (without autograd, ``embtable::pool_bucket`` does both in one
        pass over the ids), so a collection whose features form one bucket returns its
        :meth:`~PooledEmbeddings.values` without a concatenation.  Sum/mean buckets of float32
        CPU tables with at most one padding row and no ``scale_grad_by_freq``; anything else, and
        any invalid batch (whose precise error :meth:`bucket_inputs` raises), takes the general
        path.
        """
        if not (isinstance(features, KeyedJagged) and ops.extension_available()):
            return None
        if ops.batched(features.values(), features.lengths(), features.weights()):
            return None  # inside vmap: bucket_ids has no batching rule
        if features.variable_stride_per_key():
            return None
        if self._is_weighted and features.weights() is None:
            return None  # bucket_inputs raises
        weights = self.grouped_weights
        for bucket in self.plan.buckets:
            weight = weights[bucket.group]
            if (
                bucket.pooling not in (PoolingMode.SUM, PoolingMode.MEAN)
                or bucket.scale_grad_by_freq  # (the general path passes the flag)
                or len(bucket.padding_rows) > 1
                or weight.dtype != torch.float32
                or weight.device.type != "cpu"
                or not weight.is_contiguous()
                or features.device != weight.device
            ):
                return None
        weighted = self._is_weighted and features.weights() is not None
        if weighted and any(b.pooling != PoolingMode.SUM for b in self.plan.buckets):
            return None
        index_of = {key: i for i, key in enumerate(features.keys())}
        if any(f not in index_of for f in self.feature_names):
            return None
        batch = features.stride()
        pooled: dict[str, Tensor] = {}
        outs = []
        for bucket, consts in zip(self.plan.buckets, self._bucket_consts):
            weight = weights[bucket.group]
            values, lengths, per_value = _bucket_values(
                features, index_of, bucket, batch, weighted, weight.dtype
            )
            pad = bucket.padding_rows[0] if bucket.padding_rows else -1
            num = len(bucket.features)
            code = _POOL_CODES[bucket.pooling]
            try:
                if _function_for(_GroupedBagFunction, _GroupedBagFunctionJvp, weight, per_value) is None:
                    # no autograd: check, shift and pool the ids in one pass (no shifted copy)
                    out = ops._compiled.pool_bucket(
                        weight, values, lengths, consts["feature_rows"], per_value, code, pad, batch
                    )
                else:
                    ids, offsets = ops.bucket_ids(values, lengths, consts["feature_rows"], batch)
                    out = functional.pool_features(weight, ids, offsets, per_value, code, pad, num)
            except RuntimeError as error:
                if not any(f"embtable::{op}" in str(error) for op in ("bucket_ids", "pool_bucket")):
                    raise
                return None  # an id outside its table: bucket_inputs names it
            outs.append(out)
            pooled.update(zip(bucket.features, out.view(batch, num, weight.shape[1]).unbind(1)))
        in_order = len(outs) == 1 and self.plan.buckets[0].features == tuple(self.feature_names)
        tensors = [pooled[f] for f in self.feature_names]
        return PooledEmbeddings(self.feature_names, tensors, values=outs[0] if in_order else None)

    def extra_repr(self) -> str:
        return _tables_repr(self.tables, with_pooling=True)


class EmbeddingCollection(_GroupedTables):
    r"""Several embedding tables looked up together, without pooling: one row per id.

    The non-pooled twin of :class:`EmbeddingBagCollection` (TorchRec's
    ``EmbeddingCollection``): for each feature, the rows of all its ids (as
    ``torch.nn.Embedding`` per table would give), plus the per-example lengths that split
    them.  Tables of equal ``(embedding_dim, dtype)`` are stored and gathered together in one
    call per group.  Rows of a ``padding_idx`` are returned as stored (zeros unless changed)
    and get no gradient, as in ``torch.nn.Embedding``.

    Args:
        tables: the table configs; ``pooling`` must be ``"none"`` or the default ``"sum"``
            (which is ignored here).
        device: where to allocate the tables.

    Attributes:
        Those of :class:`EmbeddingBagCollection`.

    Shape:
        - Input: a :class:`~embtable.KeyedJagged` with every feature of the collection
          (others are ignored); per-value weights are not used.
        - Output: :class:`~embtable.nn.outputs.JaggedEmbeddings`; ``result[feature].values``
          is ``(N_feature, D_feature)``, ``result[feature].lengths`` is ``(B,)``.

    Raises:
        ValueError: duplicate table names, a feature in two tables, ``pooling`` ``"mean"``
            or ``"max"`` (use :class:`EmbeddingBagCollection`).

    Example:
        >>> import torch
        >>> from embtable import EmbeddingCollection, KeyedJagged, TableConfig
        >>> collection = EmbeddingCollection([
        ...     TableConfig(name="words", num_embeddings=1000, embedding_dim=8, padding_idx=0,
        ...                 feature_names=["query", "title"], pooling="none"),
        ... ])
        >>> batch = KeyedJagged.from_dict({"query": [[4, 9], [7]], "title": [[1, 2, 3], []]})
        >>> result = collection(batch)
        >>> result["query"].values.shape, result["query"].lengths
        (torch.Size([3, 8]), tensor([2, 1]))
        >>> result["title"].to_padded().shape
        torch.Size([2, 3, 8])
        >>> list(collection.state_dict())
        ['embeddings.words.weight']
    """

    _state_key = "embeddings"
    _pooled = False

    @classmethod
    def from_torchrec(
        cls, module: Any, *, device: torch.device | str | None = None
    ) -> EmbeddingCollection:
        """The collection equal to TorchRec's ``EmbeddingCollection`` ``module``.

        Same tables (names, sizes, features, dtype) and a copy of its weights; a TorchRec
        ``KeyedJaggedTensor`` may be passed to the result directly.  See
        :meth:`EmbeddingBagCollection.from_torchrec` (tested in
        ``tests/nn/test_collection_torchrec.py``).

        Raises:
            TypeError: ``module`` is not a TorchRec ``EmbeddingCollection``.
            ValueError: a table with an integer data type.
        """
        api = "EmbeddingCollection.from_torchrec"
        tables = tables_from_torchrec(module, "embedding_configs", False, api)
        device = module_device(module) if device is None else device
        collection = cls(tables, device=device)
        collection.load_state_dict(module.state_dict())
        return collection

    def to_torchrec(self) -> Any:
        """TorchRec's ``EmbeddingCollection`` with these tables and weights.

        Raises:
            ImportError: torchrec is not installed.
            ValueError: a table TorchRec cannot hold (a ``padding_idx``,
                ``scale_grad_by_freq``, float64).
        """
        return collection_to_torchrec(self, False, "EmbeddingCollection.to_torchrec")

    def embedding_configs(self) -> list[TableConfig]:
        """The table configs, in order (TorchRec's ``embedding_configs()``)."""
        return list(self.tables)

    def _check_pooling(self, config: TableConfig, api: str) -> None:
        if config.pooling in (PoolingMode.MEAN, PoolingMode.MAX):
            raise ValueError(
                f"{api}: table {config.name!r} has pooling={config.pooling.value!r}, but an "
                f"EmbeddingCollection does not pool; use pooling='none', or put the table in "
                f"an EmbeddingBagCollection"
            )

    def forward(self, features: KeyedJagged) -> JaggedEmbeddings:
        """Look up every id of every feature; see the class docstring for shapes."""
        features = self._remap(_as_keyed_jagged(features))
        batch = features.stride() if isinstance(features, KeyedJagged) else 0
        found: dict[str, JaggedRows] = {}
        for bucket, consts, lookup in zip(
            self.plan.buckets, self._bucket_consts, self.bucket_inputs(features)
        ):
            weight = self.grouped_weights[bucket.group]
            if consts["per_feature"]:  # ids counted per feature (nn/_freq.py)
                rows = scaled_lookup(
                    weight, lookup.ids, lookup.offsets, None, "none", None, lookup.counts,
                    bucket.padding_rows,
                )
            else:
                rows = functional.embedding(
                    lookup.ids, weight, padding_idx=lookup.padding_idx,
                    scale_grad_by_freq=bucket.scale_grad_by_freq,
                )
            if len(bucket.padding_rows) > 1:
                padding = _is_any(lookup.ids, consts["padding_rows"])
                rows = torch.where(padding.unsqueeze(1), rows.detach(), rows)
            lengths = torch.diff(lookup.offsets)
            per_feature = _strides(features)
            sizes = [batch if per_feature is None else per_feature[f] for f in bucket.features]
            parts = zip(bucket.features, rows.split(lookup.counts), lengths.split(sizes))
            for feature, part, feature_lengths in parts:
                found[feature] = JaggedRows(part, feature_lengths)
        return JaggedEmbeddings(self.feature_names, [found[f] for f in self.feature_names])

    def extra_repr(self) -> str:
        return _tables_repr(self.tables, with_pooling=False)


# ---------------------------------------------------------------------- helpers


def _tables_repr(tables: Sequence[TableConfig], with_pooling: bool) -> str:
    lines = []
    for config in tables:
        text = f"({config.name}): {config.num_embeddings} x {config.embedding_dim}"
        if with_pooling:
            text += f", pooling={config.pooling.value}"
        if config.padding_idx is not None:
            text += f", padding_idx={config.padding_idx}"
        if config.scale_grad_by_freq:
            text += ", scale_grad_by_freq=True"
        if config.dtype != torch.float32:
            text += f", dtype={config.dtype}"
        if config.feature_names != (config.name,):
            text += f", features={list(config.feature_names)}"
        lines.append(text)
    return "\n".join(lines)


def _strides(features: Any) -> dict[str, int] | None:
    """``{feature: its batch size}`` for a batch with a batch size per feature, else ``None``."""
    if not isinstance(features, KeyedJagged) or not features.variable_stride_per_key():
        return None
    return dict(zip(features.keys(), features.stride_per_key()))


def _bucket_values(
    features: KeyedJagged,
    index_of: dict[str, int],
    bucket: LookupBucket,
    batch: int,
    weighted: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A bucket's raw ids and lengths (its features in bucket order, feature-major), and its
    per-value weights in ``dtype`` when ``weighted`` (else ``None``): the inputs of
    :func:`~embtable.ops.bucket_ids` and ``pool_bucket`` (``index_of``: feature -> position
    in ``features``; shared by :meth:`EmbeddingBagCollection._compiled_forward` and the
    sharded column shards)."""
    positions = [index_of[f] for f in bucket.features]
    values, lengths, per_value = _bucket_slices(features, positions, batch)
    if not weighted or per_value is None:
        return values, lengths, None
    return values, lengths, per_value.to(dtype)


def _bucket_slices(
    features: KeyedJagged, positions: list[int], batch: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ids, lengths and weights of the features at ``positions``, concatenated in that order.

    Slices of the batch (no copy) when the positions are consecutive.  ``batch`` is the
    batch size; a batch with a batch size per feature is cut by its ``lengths_offset_per_key``.
    """
    starts = features.offset_per_key()
    values, lengths, weights = features.values(), features.lengths(), features.weights()
    if features.variable_stride_per_key():
        cells = features.lengths_offset_per_key()
    else:
        cells = [batch * f for f in range(len(starts))]
    first = positions[0]
    if positions == list(range(first, first + len(positions))):
        last = first + len(positions)
        lo, hi = starts[first], starts[last]
        return (
            values[lo:hi],
            lengths[cells[first] : cells[last]],
            None if weights is None else weights[lo:hi],
        )
    ids = torch.cat([values[starts[p] : starts[p + 1]] for p in positions])
    lens = torch.cat([lengths[cells[p] : cells[p + 1]] for p in positions])
    per_value = None
    if weights is not None:
        per_value = torch.cat([weights[starts[p] : starts[p + 1]] for p in positions])
    return ids, lens, per_value


def _shift_ids(
    ids: Tensor, counts: list[int], names: Sequence[str], consts: dict[str, Any], api: str
) -> Tensor:
    """``ids`` (int64) with each feature's block checked against its table and shifted by its row offset.

    One min/max per feature (a single synchronization), then one in-place add per feature
    whose table does not start at row 0.
    """
    row_offsets, num_rows = consts["row_offsets"], consts["num_rows"]
    bounds, pieces, start = [], [], 0
    checked = ops.plain(ids)  # inside vmap: every example's ids, [*batch, N]
    for count in counts:
        if count:
            low, high = torch.aminmax(checked[..., start : start + count])
            bounds += [low, high]
        pieces.append((start, start + count))
        start += count
    if bounds:
        found = torch.stack(bounds).tolist()
        k = 0
        for j, count in enumerate(counts):
            if not count:
                continue
            low, high = found[k], found[k + 1]
            k += 2
            if torch.compiler.is_compiling():  # a graph has no data-dependent branch: checks run in it
                torch._check(low >= 0, lambda j=j: f"{api}: feature {names[j]!r} holds a negative id")
                torch._check(high < num_rows[j], lambda j=j: f"{api}: feature {names[j]!r} holds an id past its table")
                continue
            if low < 0 or high >= num_rows[j]:
                bad = low if low < 0 else high
                raise IndexError(
                    f"{api}: feature {names[j]!r} holds id {bad}, outside table "
                    f"{consts['tables'][j]!r} of {num_rows[j]} rows (valid ids are "
                    f"0..{num_rows[j] - 1})"
                )
    shifted = ids.to(torch.int64, copy=True) if any(row_offsets) else ids.to(torch.int64)
    for (lo, hi), offset in zip(pieces, row_offsets):
        if offset and hi > lo:
            shifted[lo:hi] += offset
    return shifted


def _is_any(ids: Tensor, rows: Tensor) -> Tensor:
    """``torch.isin(ids, rows)``; inside vmap (which has no batching rule for ``isin``) as a
    comparison with each of the few ``rows``."""
    rows = rows.to(ids.device)
    if not ops.batched(ids):
        return torch.isin(ids, rows)
    return (ids.unsqueeze(-1) == rows).any(-1)


def _drop_rows(
    ids: Tensor, lengths: Tensor, weights: Tensor | None, rows: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Remove the ids equal to any of ``rows`` (and their weights); recount each bag."""
    keep = ~torch.isin(ids, rows.to(ids.device))
    num_bags = lengths.numel()
    bag = torch.repeat_interleave(torch.arange(num_bags, device=ids.device), lengths.to(torch.int64))
    new_lengths = torch.bincount(bag[keep], minlength=num_bags)
    return ids[keep], new_lengths, None if weights is None else weights[keep]
