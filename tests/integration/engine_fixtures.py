"""Fixtures: see tests/integration/conftest.py."""
from __future__ import annotations
