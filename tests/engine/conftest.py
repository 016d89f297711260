"""Models the engine tests share: one large and two small checkpoints of other shapes (module-scoped)."""

import pytest

from aegaeon.models.maker import make_model
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    return {
        "big": str(make_model(root / "big", LARGE_SHAPE, seed=1)),
        "small": str(make_model(root / "small", SMALL_SHAPE, seed=2)),
        "small2": str(make_model(root / "small2", SMALL_SHAPE, seed=3)),
    }
