from __future__ import annotations

import sys

from flowspec.cli import entry

sys.exit(entry())
