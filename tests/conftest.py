from pathlib import Path

import pytest

from pz_testing import SHARED_DATA, build_tiny_model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real plankton data beside the checkout (read-only)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One random-weight model directory of each kind (pz_testing.LINEAGES), built once."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build_tiny_model(root / kind, kind) for kind in ("supervised", "clip")}
