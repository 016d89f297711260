"""Module-scoped fixtures shared by the serve tests: each module that asks gets its own instance."""

import pytest

from tests.serve.api_server import api_server
from tests.serve.node_helpers import make_market


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base url, proxy, config) of a node of "small" and "large" behind the real HTTP API."""
    with api_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def twelve_models(tmp_path_factory):
    """m00..m11: tiny models of two shapes, alternating."""
    return make_market(tmp_path_factory.mktemp("market"), 12)
