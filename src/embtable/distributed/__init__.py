"""Sharded tables on ``torch.distributed`` (DESIGN.md, "Storage": sharding sits above nn,
optim and storage; nothing in those layers imports this package)."""

from __future__ import annotations

__all__: list[str] = []
