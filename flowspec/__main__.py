from __future__ import annotations

import sys

from flowspec.cli import main

sys.exit(main())
