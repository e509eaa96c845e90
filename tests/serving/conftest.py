"""A live `facemtl serve` process on a free local port, shared by the serving tests."""

import pytest

from tests.helpers import start_server, stop_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`facemtl serve` with the release model, an API key and a 2 MB body limit."""
    srv = start_server(tmp_path_factory.mktemp("serve"))
    yield srv
    stop_server(srv)
