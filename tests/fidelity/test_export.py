"""Export and tracing for serving: torch.export, torch.compile(fullgraph=True), torch.fx.

``torch.compile`` runs with the ``aot_eager`` backend: it traces forward and backward
(autograd Functions included) exactly as inductor would see them, and fails on any graph
break under ``fullgraph=True``, without the minutes of C++ code generation.
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import embtable
from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig

TABLES = [
    TableConfig(name="a", num_embeddings=20, embedding_dim=4),
    TableConfig(name="b", num_embeddings=30, embedding_dim=4, pooling="mean", padding_idx=0),
]


class Serving(torch.nn.Module):
    """Embedding + EmbeddingBag + EmbeddingBagCollection fed by a KeyedJagged."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = embtable.Embedding(20, 4, padding_idx=0)
        self.bag = embtable.EmbeddingBag(20, 4, mode="sum")
        self.ebc = EmbeddingBagCollection(TABLES)
        self.head = torch.nn.Linear(4 + 4 + 8, 1)

    def forward(self, ids: torch.Tensor, bag_ids: torch.Tensor, offsets: torch.Tensor, kj: KeyedJagged) -> torch.Tensor:
        parts = [self.emb(ids).mean(1), self.bag(bag_ids, offsets), self.ebc(kj).values()]
        return self.head(torch.cat(parts, dim=1))


def _inputs(extra: int = 0):
    gen = torch.Generator().manual_seed(extra)
    ids = torch.randint(0, 20, (2, 5), generator=gen)
    bag_ids = torch.randint(0, 20, (6 + extra,), generator=gen)
    offsets = torch.tensor([0, 3])
    kj = KeyedJagged.from_dict({"a": [[1, 2], [3] * (1 + extra)], "b": [[4, 0], [5, 6, 7]]})
    return ids, bag_ids, offsets, kj


def test_export_matches_eager_with_dynamic_batch_contents() -> None:
    torch.manual_seed(0)
    model = Serving().eval()
    args = _inputs()
    dynamic = (None, {0: Dim.DYNAMIC}, None, [{0: Dim.DYNAMIC}, None, None])
    program = torch.export.export(model, args, dynamic_shapes=dynamic)
    for extra in (0, 2):  # other id counts than the example's
        inputs = _inputs(extra)
        torch.testing.assert_close(program.module()(*inputs), model(*inputs), rtol=0, atol=0)
    leaves, _ = torch.utils._pytree.tree_flatten(args[3])
    assert [t is None for t in leaves] == [False, False, True]  # values, lengths, weights


def test_keyed_jagged_pytree_round_trip() -> None:
    kj = KeyedJagged.from_dict({"a": [[1, 2], []], "b": [[4], [5, 6]]}, weights={"a": [[0.5, 1.0], []], "b": [[2.0], [1.0, 3.0]]})
    leaves, spec = torch.utils._pytree.tree_flatten(kj)
    back = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert back.keys() == kj.keys() and back.stride() == kj.stride()
    for got, want in zip((back.values(), back.lengths(), back.weights()), (kj.values(), kj.lengths(), kj.weights())):
        assert torch.equal(got, want)


def test_keyed_jagged_pytree_keeps_inverse_indices() -> None:
    inverse = (["a", "b"], torch.tensor([[0, 1], [1, 0]]))
    kj = KeyedJagged(["a", "b"], torch.tensor([1, 2, 3, 4]), torch.tensor([1, 1, 1, 1]), inverse_indices=inverse)
    leaves, spec = torch.utils._pytree.tree_flatten(kj)
    assert len(leaves) == 4
    back = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert back._inverse_indices[0] == ["a", "b"] and torch.equal(back._inverse_indices[1], inverse[1])


@pytest.mark.parametrize("which", ["modules", "collections"])
def test_compile_fullgraph_forward_and_backward(which: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    if which == "modules":
        model = torch.nn.ModuleDict({"emb": embtable.Embedding(20, 4), "bag": embtable.EmbeddingBag(20, 4, mode="max")})
        ids, bag_ids, offsets, _ = _inputs()

        def run(m):
            return m["emb"](ids).sum() + m["bag"](bag_ids, offsets).sum()
    else:
        tables = [TableConfig(name=t.name, num_embeddings=t.num_embeddings, embedding_dim=4, pooling="none") for t in TABLES]
        model = torch.nn.ModuleDict({"ebc": EmbeddingBagCollection(TABLES), "ec": EmbeddingCollection(tables)})
        kj = _inputs()[3]

        def run(m):
            return m["ebc"](kj).values().pow(2).sum() + m["ec"](kj)["b"].values.sum()
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    eager_loss = run(model)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = compiled(model)
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_fx_symbolic_trace_like_torchs_module() -> None:
    torch.manual_seed(0)
    ours = torch.nn.Sequential(embtable.Embedding(10, 3), torch.nn.Flatten())
    theirs = torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.Flatten())
    theirs.load_state_dict(ours.state_dict())
    ids = torch.tensor([[1, 2], [3, 9]])
    for model in (ours, theirs):
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(ids), theirs(ids), rtol=0, atol=0)
    bag = torch.fx.symbolic_trace(torch.nn.Sequential(embtable.EmbeddingBag(10, 3, mode="sum")))
    assert bag(ids).shape == (2, 3)
