"""Fused training: the optimizer update of embedding tables runs inside backward.

:func:`fuse` switches every embtable table of a model to fused training and returns a
:class:`FusedOptimizer`, a ``torch.optim.Optimizer`` with one param group per table (so
per-table learning rates, LR schedulers and ``state_dict`` work as usual).  Its
``step()`` does nothing: each table is updated when backward reaches its lookup.  Dense
layers keep their own optimizer (:func:`dense_parameters` lists their parameters).

Example:
    >>> import torch
    >>> import embtable
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(embtable.Embedding(1000, 8), torch.nn.Linear(8, 1))
    >>> sparse_opt = embtable.optim.fuse(model, "adam", lr=1e-2)
    >>> dense_opt = torch.optim.SGD(embtable.optim.dense_parameters(model), lr=0.1)
    >>> loss = model(torch.tensor([3, 7, 3])).pow(2).mean()
    >>> loss.backward()              # the table's rows 3 and 7 are updated here
    >>> dense_opt.step(); sparse_opt.step()
    >>> model[0].weight.grad is None
    True
    >>> sparse_opt
    FusedOptimizer(adam, 1 table: 0)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter
from torch.optim import optimizer as _torch_optimizer

from embtable import ops
from embtable.functional import FUSED_ATTR
from embtable.optim._load import checked_load
from embtable.optim._lookup import fused_lookup
from embtable.optim._rule import FusedRule
from embtable.optim.adagrad import AdagradRule
from embtable.optim.adam import AdamRule, AdamWRule
from embtable.optim.modules import table_parameters
from embtable.optim.rowwise_adagrad import RowWiseAdagradRule
from embtable.optim.sgd import SGDRule

__all__ = ["RULES", "FusedOptimizer", "dense_parameters", "fuse", "unfuse"]

_NO_OFFSETS = torch.empty(0, dtype=torch.int64)

#: Optimizer names accepted by :func:`fuse` and :class:`FusedOptimizer`.
RULES: dict[str, type[FusedRule]] = {
    rule.name: rule for rule in (SGDRule, AdagradRule, RowWiseAdagradRule, AdamRule, AdamWRule)
}


def _rule(optimizer: str | FusedRule, api: str) -> FusedRule:
    if isinstance(optimizer, FusedRule):
        return optimizer
    if not isinstance(optimizer, str) or optimizer.lower() not in RULES:
        raise ValueError(f"{api}: optimizer must be one of {sorted(RULES)}, got {optimizer!r}")
    return RULES[optimizer.lower()]()


class FusedOptimizer(torch.optim.Optimizer):
    """Row-sparse optimizer applied during backward; one param group per table.

    Args:
        params: the tables' weights, or param-group dicts (``{"params": [w], "lr": ...,
            "name": ...}``) for per-table options.
        optimizer: ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"``, ``"adam"`` or ``"adamw"``.
        **defaults: hyperparameters of that rule (see :mod:`embtable.optim.sgd` and
            siblings), plus ``state_dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``,
            ``"int8_rowwise"``) to store the moments compressed (docs/training.md).

    ``step()`` and ``zero_grad()`` exist for the usual training loop but do nothing
    useful: the update of a table happens when backward reaches its lookup (each lookup
    of a fused table in a forward pass is one optimizer step for its rows).  Changes to
    ``param_groups[i]["lr"]`` (by hand or by an LR scheduler) apply from the next backward.

    Raises:
        ValueError: unknown optimizer or hyperparameter value, a weight that is not 2-D.
        TypeError: an unknown hyperparameter name.
    """

    def __init__(self, params: Iterable[Any], optimizer: str | FusedRule, **defaults: Any) -> None:
        api = "FusedOptimizer"
        self.rule = _rule(optimizer, api)
        unknown = set(defaults) - set(self.rule.defaults)
        if unknown:
            raise TypeError(
                f"{api}: unknown option(s) {sorted(unknown)} for {self.rule.name!r}; "
                f"expected some of {sorted(self.rule.defaults)}"
            )
        groups = []
        for index, item in enumerate(params):
            group = dict(item) if isinstance(item, Mapping) else {"params": [item]}
            group.setdefault("name", str(index))
            groups.append(group)
        super().__init__(groups, {**self.rule.defaults, **defaults})
        for group in self.param_groups:
            extra = set(group) - set(self.rule.defaults) - {"params", "name"}
            if extra:
                raise TypeError(f"{api}: unknown option(s) {sorted(extra)} in table {group['name']!r}")
            for weight in group["params"]:
                if weight.dim() != 2:
                    raise ValueError(
                        f"{api}: table {group['name']!r} has a weight of shape {tuple(weight.shape)}; "
                        "expected a 2-D (num_embeddings, embedding_dim) tensor"
                    )
            self.rule.validate(group)
        self._group_of = {id(w): g for g in self.param_groups for w in g["params"]}

    def __repr__(self) -> str:
        names = ", ".join(g["name"] for g in self.param_groups)
        count = len(self.param_groups)
        return f"FusedOptimizer({self.rule.name}, {count} table{'s' if count != 1 else ''}: {names})"

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param groups) plus the rule; locks are made on demand."""
        return {**super().__getstate__(), "rule": self.rule}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's, plus the weight -> group map (a copied or unpickled optimizer works)."""
        super().__setstate__(state)
        self._group_of = {id(w): g for g in self.param_groups for w in g["params"]}

    def _check_group(self, weight: Tensor, group: dict[str, Any]) -> None:
        """Validate ``group`` unless its options are those last validated for ``weight``."""
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in group.items() if k != "params"}
        validated = self.__dict__.setdefault("_validated", {})
        if validated.get(id(weight)) == options:
            return
        try:
            self.rule.validate(group)
        except (ValueError, TypeError) as error:
            raise ValueError(f"FusedOptimizer: table {group['name']!r}: {error}") from None
        validated[id(weight)] = options

    def _lock(self, weight: Tensor) -> threading.Lock:
        """The lock that serializes the fused updates of ``weight`` (one per table)."""
        locks = self.__dict__.setdefault("_locks", {})  # (not pickled: made again on demand)
        return locks.setdefault(id(weight), threading.Lock())

    def lookup(
        self,
        weight: Tensor,
        ids: Tensor,
        offsets: Tensor | None,
        per_sample_weights: Tensor | None,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        out_shape: tuple[int, ...] | None,
        *,
        num_features: int = 1,
    ) -> Tensor:
        """A lookup of ``weight`` whose backward applies this optimizer (validated inputs;
        called by :mod:`embtable.functional` for fused weights).  ``num_features > 1``: the
        bags are feature-major and pool into ``[B, num_features * D]``
        (:func:`embtable.functional.pool_features`)."""
        return fused_lookup(
            weight,
            ids,
            _NO_OFFSETS if offsets is None else offsets,
            self,
            pooling=pooling,
            per_sample_weights=per_sample_weights,
            padding_idx=None if padding_idx < 0 else padding_idx,
            scale_grad_by_freq=scale_grad_by_freq,
            out_shape=out_shape,
            num_features=num_features,
        )

    @torch.no_grad()
    def apply_update(
        self,
        weight: Tensor,
        ids: Tensor,
        offsets: Tensor,
        grad: Tensor,
        per_sample_weights: Tensor | None,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        *,
        kernel: Callable[..., None] | None = None,
    ) -> None:
        """One fused step of ``weight``'s rows from an output gradient (called by backward).

        All or nothing: the param group (possibly changed by hand or a scheduler since the
        last step) is validated and the hyperparameters computed before the state changes,
        so a bad group raises ``ValueError`` with the step counts and moments untouched.
        Updates of one table from several threads are serialized by a per-table lock.
        ``kernel`` replaces :func:`embtable.ops.fused_update_rows` (same arguments), e.g. by
        an update whose per-row statistics span other processes (column shards of
        :mod:`embtable.distributed`); the state and step bookkeeping stay here.
        """
        group = self._group_of.get(id(weight))
        if group is None:
            raise KeyError(
                "FusedOptimizer: this weight is not one of the optimizer's tables; "
                "create the optimizer with it (or call embtable.optim.fuse on its model)"
            )
        with self._lock(weight):
            self._check_group(weight, group)
            state = self.state.get(weight)
            fresh = not state
            if fresh:
                state = {**self.rule.init_state(weight.detach(), group), "table_step": 0}
            step = state["table_step"] + 1
            hparams = [float(h) for h in self.rule.hparams(group, step)]
            if weight.shape[1] == 0:  # no values to update; the rows' step counts still advance
                if "row_step" in state and ids.numel():
                    touched = ids[ids != padding_idx] if padding_idx >= 0 else ids
                    state["row_step"][torch.unique(touched.long())] += 1
            else:
                (kernel or ops.fused_update_rows)(
                    weight.detach(),
                    self.rule.state_tensors(state, group),
                    ids,
                    offsets,
                    grad,
                    per_sample_weights,
                    pooling,
                    padding_idx,
                    scale_grad_by_freq,
                    self.rule.code,
                    hparams,
                )
            state["table_step"] = step
            if fresh:
                self.state[weight] = state

    def _plain_step(self, closure: Any = None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    #: ``step`` through torch's wrapper: profiler range and step pre/post hooks.
    _hooked_step = torch.optim.Optimizer.profile_hook_step(_plain_step)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Nothing to do (the tables were updated in backward); returns ``closure()`` if given.

        Step pre/post hooks (``register_step_pre_hook`` and the global ones) run as for any
        torch optimizer, and a running profiler records the step; without either, the call
        skips torch's wrapper (tens of microseconds a step).
        """
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _torch_optimizer._global_optimizer_pre_hooks
            or _torch_optimizer._global_optimizer_post_hooks
            or torch.autograd._profiler_enabled()
        ):
            return self._hooked_step(closure)
        return self._plain_step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # (torch's wrapper is applied above, when needed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: all or nothing, each table keeping its ``state_dtype``.

        Everything is validated before the optimizer changes (:mod:`embtable.optim._load`):
        the options of every group as in the constructor, every state tensor's keys, shape,
        dtype and values; a bad state dict raises and leaves the optimizer as it was.  The
        configured ``state_dtype`` of each table is kept (saved moments of another
        ``state_dtype`` are converted); step counts stay exact integers; the tensors are
        copied (later training does not write into ``state_dict``).  torch's load pre/post
        hooks run as usual.

        Raises:
            TypeError: ``state_dict`` is not a dict with ``"state"`` and ``"param_groups"``.
            ValueError: a group or a state that does not fit this optimizer.
        """
        api = "FusedOptimizer.load_state_dict"
        if isinstance(state_dict, dict):
            state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups, state = checked_load(self.rule, self.param_groups, state_dict, api)
        self.__setstate__({"state": state, "param_groups": groups})
        self._group_of = {id(w): g for g in self.param_groups for w in g["params"]}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


def _group_name(param_name: str) -> str:
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def fuse(
    model: Module,
    optimizer: str,
    *,
    table_options: Mapping[str, Mapping[str, Any]] | None = None,
    **defaults: Any,
) -> FusedOptimizer:
    """Switch every embtable table of ``model`` to fused training with ``optimizer``.

    Tables are the weights of ``embtable.Embedding`` / ``embtable.EmbeddingBag`` modules and
    the grouped weights of the collections; each becomes one param group, named after its
    module path (``"user"`` for ``model.user.weight``; a collection's group weights keep
    their parameter names, e.g. ``"sparse.grouped_weight_0"``).  The optimizer is attached
    to each weight, so every lookup of it through :mod:`embtable.functional` updates it in
    backward.  Frozen tables (``requires_grad=False``) are skipped.

    Args:
        model: any module containing embtable tables.
        optimizer: ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"``, ``"adam"`` or ``"adamw"``.
        table_options: per-table overrides keyed by group name, e.g. ``{"user": {"lr": 0.1}}``.
        **defaults: the rule's hyperparameters (``lr``, ``weight_decay``, ...).

    Returns:
        The :class:`FusedOptimizer` holding the tables' optimizer state.

    Raises:
        ValueError: no trainable embtable table in ``model``, a table already fused, an
            unknown name in ``table_options``, or a bad hyperparameter.
    """
    api = "embtable.optim.fuse"
    tables = [(_group_name(n), p) for n, p in table_parameters(model) if p.requires_grad]
    if not tables:
        raise ValueError(
            f"{api}: found no trainable embtable table in {type(model).__name__}; expected "
            "embtable.Embedding / EmbeddingBag / collection modules with requires_grad=True"
        )
    options = dict(table_options or {})
    names = {name or "<model>" for name, _ in tables}
    unknown = set(options) - names
    if unknown:
        raise ValueError(f"{api}: table_options names {sorted(unknown)}, expected some of {sorted(names)}")
    for name, weight in tables:
        if getattr(weight, FUSED_ATTR, None) is not None:
            raise ValueError(f"{api}: table {name or '<model>'!r} is already fused; call unfuse(model) first")
    groups = [
        {"params": [weight], "name": name or "<model>", **options.get(name or "<model>", {})}
        for name, weight in tables
    ]
    handle = FusedOptimizer(groups, optimizer, **defaults)
    for _, weight in tables:
        setattr(weight, FUSED_ATTR, handle)
    return handle


def unfuse(model: Module) -> None:
    """Return ``model``'s fused tables to ordinary training (gradients in ``.grad``).

    The :class:`FusedOptimizer` keeps the optimizer state but no longer receives updates.
    """
    for _, weight in table_parameters(model):
        if hasattr(weight, FUSED_ATTR):
            delattr(weight, FUSED_ATTR)


def dense_parameters(model: Module) -> list[Parameter]:
    """The parameters of ``model`` that are not fused tables (for the dense optimizer)."""
    return [p for p in model.parameters() if getattr(p, FUSED_ATTR, None) is None]


def fused_optimizer_of(weight: Tensor) -> FusedOptimizer:
    """The :class:`FusedOptimizer` a fused table weight belongs to (``KeyError`` if none)."""
    handle = getattr(weight, FUSED_ATTR, None)
    if handle is None:
        raise KeyError("fused_optimizer_of: this weight is not fused; call embtable.optim.fuse first")
    return handle
