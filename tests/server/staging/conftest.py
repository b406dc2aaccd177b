"""The relay's real upstream stand-ins, shared with the staging tests."""

from tests.server.relay.conftest import (  # noqa: F401 (fixtures are found by their names)
    relay_config,
    upstream_grpc,
    upstream_http,
)
