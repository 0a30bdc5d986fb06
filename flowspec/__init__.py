"""flowspec: declarative workflows described in flow.yaml."""
from __future__ import annotations

__version__ = "0.1.0"
