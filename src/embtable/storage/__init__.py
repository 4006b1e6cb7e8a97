"""Storage: how rows are stored and where they live (DESIGN.md, "Storage").

Three small pieces sit in front of the existing kernels, which always run on dense
slot tensors:

- ``codecs``  - row formats: float32 / bf16 / fp16, row-wise int8 / int4 / int2 codes
  with an fp16 scale and bias per row (FBGEMM's byte layout);
- ``slots``   - ``SlotMap``: ids -> slots of a dense slot tensor (identity for a static
  table; a compiled open-addressing hash map with an eviction policy for dynamic
  vocabularies and for the row cache of disk-backed tables);
- ``disk``    - backing files for tables bigger than memory.

Submodules are imported on first use so that ``import embtable`` stays light.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("codecs", "slots", "disk")
#: Names re-exported from a submodule, imported on first use: ``embtable.storage.Disk``.
_LAZY_NAMES = {"Disk": "disk"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"embtable.storage.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"embtable.storage.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'embtable.storage' has no attribute {name!r}")


__all__ = [*_SUBMODULES, *_LAZY_NAMES]
