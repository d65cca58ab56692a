"""Shared test fixtures. Real data lives in ../shared beside the repository; tests that need
it skip with the reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BCCD = SHARED / "datasets" / "bccd"
DFINE_REFERENCE = SHARED / "reference" / "dfine_official_state_dict.json"


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"real-data test: BCCD not found at {BCCD} (../shared beside the repository)")
    return BCCD


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from detforge.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), n_train=48, n_val=16, size=160)
