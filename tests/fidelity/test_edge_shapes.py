"""Edge shapes against torch 2.13: embedding_dim=0, 0-length inputs in every mode, meta tensors.

Where torch itself fails (an ``embedding_bag`` with ``embedding_dim=0`` or with rows of
length 0 raises; one with no bags crashes in backward), embtable returns the shapes and
zeros that follow from the definition; these are documented departures checked here
against hand-computed values.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import embtable
from embtable import functional

sys.path.insert(0, os.path.dirname(__file__))
import _torch_samples as ts  # noqa: E402

F = torch.nn.functional
MODES = ("sum", "mean", "max")


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("rows", "dim", "ids"),
    [
        (5, 0, torch.tensor([1, 2, 2])),  # embedding_dim=0
        (5, 0, torch.tensor(3)),  # 0-d ids, embedding_dim=0
        (5, 3, torch.zeros(0, dtype=torch.long)),  # no ids
        (5, 3, torch.zeros(0, 4, dtype=torch.long)),  # no rows of ids
        (5, 3, torch.zeros(2, 0, dtype=torch.long)),  # rows of length 0
        (0, 3, torch.zeros(0, dtype=torch.long)),  # an empty table
        (0, 0, torch.zeros(3, 0, dtype=torch.long)),
    ],
)
def test_embedding_edge_shapes_equal_torch(rows: int, dim: int, ids: torch.Tensor, sparse: bool) -> None:
    weight = torch.randn(rows, dim)
    padded = rows and not (sparse and ids.dim() == 0)  # 0-d sparse with padding: departure, docs/embedding.md
    for kwargs in ({"sparse": sparse}, {"sparse": sparse, "padding_idx": 0} if padded else {"sparse": sparse}):
        theirs = ts.run(F.embedding, ids, weight, kwargs)
        ours = ts.run(functional.embedding, ids, weight, kwargs)
        ts.assert_same_run(theirs, ours, f"embedding {rows}x{dim} ids {tuple(ids.shape)} {kwargs}")
        assert ours.out.shape == (*ids.shape, dim)
        assert ours.grad.shape == (rows, dim)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_bag_empty_inputs_equal_torch(mode: str, sparse: bool) -> None:
    if sparse and mode == "max":
        pytest.skip("torch refuses sparse max (a documented departure, see test_opinfo)")
    weight = torch.randn(5, 3)
    cases = [
        (torch.zeros(0, dtype=torch.long), {"offsets": torch.tensor([0, 0])}),  # 2 empty bags
        (torch.zeros(0, dtype=torch.long), {"offsets": torch.tensor([0, 0]), "include_last_offset": True}),
        (torch.zeros(0, 4, dtype=torch.long), {}),  # no bags of 4
        (torch.tensor([1, 2]), {"offsets": torch.tensor([0, 2, 2])}),  # a trailing empty bag
    ]
    for ids, kwargs in cases:
        kwargs = dict(kwargs, mode=mode, sparse=sparse)
        theirs = ts.run(F.embedding_bag, ids, weight, kwargs)
        ours = ts.run(functional.embedding_bag, ids, weight, kwargs)
        ts.assert_same_run(theirs, ours, f"embedding_bag ids {tuple(ids.shape)} {kwargs}")


@pytest.mark.parametrize("mode", MODES)
def test_bag_shapes_torch_refuses(mode: str) -> None:
    """embedding_dim=0 (sum / mean) and rows of length 0 raise in torch 2.13; embtable gives
    the empty / zero results their definitions imply, with torch's shapes."""
    weight = torch.randn(5, 0, requires_grad=True)
    if mode != "max":
        with pytest.raises(RuntimeError):
            F.embedding_bag(torch.tensor([1, 2]), weight, torch.tensor([0, 1]), mode=mode).sum().backward()
    out = functional.embedding_bag(torch.tensor([1, 2]), weight, torch.tensor([0, 1]), mode=mode)
    out.sum().backward()
    assert out.shape == (2, 0) and weight.grad.shape == (5, 0)
    weight = torch.randn(5, 3, requires_grad=True)
    with pytest.raises(RuntimeError):
        F.embedding_bag(torch.zeros(2, 0, dtype=torch.long), weight, mode=mode)
    out = functional.embedding_bag(torch.zeros(2, 0, dtype=torch.long), weight, mode=mode)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 3)) and torch.equal(weight.grad, torch.zeros(5, 3))
    # no bags at all: torch's backward reads uninitialized memory (or crashes); embtable: zeros
    out = functional.embedding_bag(torch.tensor([1, 2]), weight, torch.tensor([], dtype=torch.long), mode=mode)
    assert out.shape == (0, 3)


def test_meta_tensors_give_torchs_shapes() -> None:
    """Shape-only forwards on the meta device (how TorchRec users trace big models)."""
    meta = torch.device("meta")
    for f in (F, functional):
        weight = torch.empty(10, 4, device=meta, requires_grad=True)
        ids = torch.empty(3, 5, dtype=torch.long, device=meta)
        assert f.embedding(ids, weight).shape == (3, 5, 4)
        for mode in MODES:
            assert f.embedding_bag(ids, weight, mode=mode).shape == (3, 4)
            flat = torch.empty(7, dtype=torch.long, device=meta)
            offsets = torch.empty(3, dtype=torch.long, device=meta)
            assert f.embedding_bag(flat, weight, offsets, mode=mode).shape == (3, 4)
    table = embtable.Embedding(1000, 8, device=meta, padding_idx=0)
    bag = embtable.EmbeddingBag(1000, 8, device=meta, mode="max")
    ids = torch.empty(2, 6, dtype=torch.long, device=meta)
    assert table(ids).device.type == "meta" and table(ids).shape == (2, 6, 8)
    assert bag(ids).shape == (2, 8)


def test_collections_on_meta_give_shapes_from_a_real_batch() -> None:
    """Collections built on the meta device (as TorchRec users do before planning) pool a
    CPU batch into meta outputs of the shapes a CPU collection gives."""
    from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig

    tables = [
        TableConfig(name="a", num_embeddings=20, embedding_dim=4),
        TableConfig(name="b", num_embeddings=30, embedding_dim=8, pooling="max", padding_idx=0),
    ]
    batch = KeyedJagged.from_dict({"a": [[1, 2], [3]], "b": [[4], [5, 6, 7]]})
    for cls, pooling in ((EmbeddingBagCollection, None), (EmbeddingCollection, "none")):
        configs = tables if pooling is None else [
            TableConfig(name=t.name, num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim, pooling="none")
            for t in tables
        ]
        meta, real = cls(configs, device="meta"), cls(configs)
        got, want = meta(batch), real(batch)
        for key in ("a", "b"):
            g = got[key] if pooling is None else got[key].values
            w = want[key] if pooling is None else want[key].values
            assert g.device.type == "meta" and g.shape == w.shape
