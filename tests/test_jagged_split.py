"""The split of ``embtable/jagged.py`` changed no name: pickles, pytree specs and imports.

Oracles: a pickle and a pytree spec written out by hand (the golden bytes a saved batch or an
exported program holds), and the names ``embtable`` exported before the split.
"""

from __future__ import annotations

import importlib
import pickle

import torch
import torch.utils._pytree as pytree

import embtable


def _jagged():
    """``embtable.jagged`` as ``sys.modules`` holds it now: pytest's doctest collection
    (``--import-mode=importlib``) may have imported the file again, beside ``embtable``'s copy."""
    return importlib.import_module("embtable.jagged")


def _batch():
    return _jagged().KeyedJagged(
        ["user", "item"],
        values=torch.tensor([7, 3, 9, 1, 4, 2, 5, 6]),
        lengths=torch.tensor([1, 1, 1, 2, 0, 3]),
        weights=torch.arange(8, dtype=torch.float32),
    )


def _same(a, b) -> bool:
    return (
        a.keys() == b.keys()
        and a.stride() == b.stride()
        and torch.equal(a.values(), b.values())
        and torch.equal(a.lengths(), b.lengths())
        and torch.equal(a.weights(), b.weights())
    )


def test_public_names_stay_where_they_were() -> None:
    jagged = _jagged()
    assert jagged.__all__ == ["Jagged", "KeyedJagged"]
    assert jagged.Jagged.__module__ == "embtable.jagged"
    for cls in (embtable.KeyedJagged, jagged.KeyedJagged):
        assert (cls.__module__, cls.__qualname__) == ("embtable.jagged", "KeyedJagged")
    KeyedJagged = jagged.KeyedJagged
    for name in ("permute", "split", "concat", "from_dict", "from_padded", "from_torchrec", "to_torchrec"):
        method = getattr(KeyedJagged, name)
        assert method.__qualname__ == f"KeyedJagged.{name}" and method.__doc__


def test_pickle_names_the_class_by_its_old_path() -> None:
    batch = _batch()
    blob = pickle.dumps(batch, protocol=4)
    assert b"embtable.jagged" in blob and b"KeyedJagged" in blob
    again = pickle.loads(blob)
    assert type(again) is type(batch) and _same(again, batch)


def test_pytree_spec_keeps_its_serialized_name() -> None:
    batch = _batch()
    leaves, spec = pytree.tree_flatten(batch)
    text = pytree.treespec_dumps(spec)
    assert '"type": "embtable.KeyedJagged"' in text
    assert '"context": "[[\\"user\\", \\"item\\"], 3, null, null, null]"' in text
    again = pytree.tree_unflatten(leaves, pytree.treespec_loads(text))
    assert _same(again, batch)
    assert [str(path[0]) for path, _ in pytree.tree_flatten_with_path(batch)[0]] == [
        ".values", ".lengths", ".weights"
    ]
