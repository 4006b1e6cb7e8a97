"""Convergence of fused optimizers with compressed optimizer state (bf16 / fp16 / int8 moments).

A synthetic matrix-factorization task: ``rating = <u_true, i_true> + noise`` with 4,000 users,
2,000 items, rank 8, 360,000 training ratings (skewed ids); the model is two
``embtable.Embedding`` tables of dim 16 trained with fused optimizers, moments stored as
float32 (baseline), bfloat16, float16 or int8_rowwise (8-bit codes and a float32 scale per
row).  Prints the held-out MSE after each epoch and the optimizer-state memory.

Usage:
    python benchmarks/state_compression.py [--epochs 4] [--optimizers adam sgd ...]
"""

from __future__ import annotations

import argparse

import torch

import embtable

USERS, ITEMS, RANK, DIM, RATINGS, BATCH = 4_000, 2_000, 8, 16, 400_000, 1024

# (label, optimizer, lr, options, state dtypes); adam refuses float16 (v underflows, diverges),
# rowwise_adagrad int8_rowwise (its state is already a float per row).
CONFIGS = (
    ("adam", "adam", 0.003, {}, ("float32", "bfloat16", "int8_rowwise")),
    ("adagrad", "adagrad", 0.05, {}, ("float32", "bfloat16", "float16", "int8_rowwise")),
    ("rowwise_adagrad", "rowwise_adagrad", 0.05, {}, ("float32", "bfloat16", "float16")),
    ("sgd momentum 0.9", "sgd", 3.0, {"momentum": 0.9}, ("float32", "bfloat16", "int8_rowwise")),
)


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u_true = torch.randn(USERS, RANK, generator=g) / RANK**0.25
    i_true = torch.randn(ITEMS, RANK, generator=g) / RANK**0.25
    users = (USERS * torch.rand(RATINGS, generator=g) ** 2).long()
    items = (ITEMS * torch.rand(RATINGS, generator=g) ** 2).long()
    ratings = (u_true[users] * i_true[items]).sum(1) + 0.3 * torch.randn(RATINGS, generator=g)
    split = int(0.9 * RATINGS)
    return (users[:split], items[:split], ratings[:split]), (users[split:], items[split:], ratings[split:])


class MF(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = embtable.Embedding(USERS, DIM)
        self.item = embtable.Embedding(ITEMS, DIM)
        with torch.no_grad():
            self.user.weight.mul_(0.1)
            self.item.weight.mul_(0.1)

    def forward(self, users, items):
        return (self.user(users) * self.item(items)).sum(1)


def run(optimizer: str, state_dtype: str, epochs: int, lr: float, **options) -> tuple[list[float], int]:
    torch.manual_seed(0)
    train, test = make_data()
    model = MF()
    opt = embtable.optim.fuse(model, optimizer, lr=lr, state_dtype=state_dtype, **options)
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(train[0]), generator=g)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            loss = ((model(train[0][idx], train[1][idx]) - train[2][idx]) ** 2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            history.append(((model(test[0], test[1]) - test[2]) ** 2).mean().item())
    state_bytes = sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return history, state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--optimizers", nargs="+", default=[c[1] for c in CONFIGS],
                        help="run only these optimizers")
    args = parser.parse_args()
    print(f"| optimizer | state dtype | state MiB | held-out MSE by epoch (1..{args.epochs}) |")
    print("|-----------|-------------|-----------|------------------------------|")
    for label, optimizer, lr, options, state_dtypes in CONFIGS:
        if optimizer not in args.optimizers:
            continue
        for state_dtype in state_dtypes:
            history, state = run(optimizer, state_dtype, args.epochs, lr, **options)
            mse = " / ".join(f"{x:.4f}" for x in history)
            print(f"| {label} | {state_dtype} | {state / 2**20:.3f} | {mse} |", flush=True)


if __name__ == "__main__":
    main()
