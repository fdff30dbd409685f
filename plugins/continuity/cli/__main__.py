"""`python -m continuity.cli`."""

from __future__ import annotations

import sys

from continuity.cli import main

sys.exit(main())
