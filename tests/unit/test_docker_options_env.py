"""The docker environment's settings read `${{ env.NAME }}` where the run starts, never passing
the reference on to the engine as text."""
from __future__ import annotations

import pytest

from flowspec.environments.docker_options import resolved
from flowspec.errors import FlowspecError


def test_settings_and_volume_sources_are_resolved():
    options = {"network_mode": "${{ env.NET || 'bridge' }}", "volumes": {"${{ env.DATA }}/in": "/data:ro"},
               "mem_limit": "${{ env.MEM }}", "cpus": 1}
    assert resolved(options, {"DATA": "/srv", "MEM": "512m"}) == {
        "network_mode": "bridge", "volumes": {"/srv/in": "/data:ro"}, "mem_limit": "512m", "cpus": 1}


def test_an_unset_variable_is_an_error_naming_it():
    with pytest.raises(FlowspecError, match="environment variable NET is not set"):
        resolved({"network_mode": "${{ env.NET }}"}, {})
