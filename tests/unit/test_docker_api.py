"""Which DOCKER_HOST values a build asks directly, and which go through the docker SDK."""
from __future__ import annotations

import pytest

from flowspec.storage.docker_api import local_address


@pytest.mark.parametrize(("host", "tls", "expected"), [
    (None, False, ("unix", "/var/run/docker.sock")),
    ("", False, ("unix", "/var/run/docker.sock")),
    ("unix:///run/user/1000/docker.sock", False, ("unix", "/run/user/1000/docker.sock")),
    ("tcp://127.0.0.1:2375", False, ("tcp", "127.0.0.1:2375")),
    ("http://127.0.0.1:2375/", False, ("tcp", "127.0.0.1:2375")),
    ("tcp://127.0.0.1:2376", True, None),  # TLS: the SDK reads the certificates
    ("ssh://me@build-host", False, None),
    ("npipe:////./pipe/docker_engine", False, None),
    ("/var/run/docker.sock", False, None),  # no scheme: left to the SDK's own reading
])
def test_local_address(host, tls, expected):
    assert local_address(host, tls) == expected
