"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def movielens():
    """MovieLens-100K (fetched into the cache on first use); skips where it cannot be had."""
    pytest.importorskip("safetensors")
    from embtable.data.movielens import MovieLensError, load_movielens

    try:
        return load_movielens()
    except MovieLensError as err:
        pytest.skip(f"MovieLens-100K unavailable: {err}")
