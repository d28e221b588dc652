"""The ``trio_persist`` logger: what an operator must see.

The library installs no handler (configure it like any stdlib logger; see
docs/monitor.md). It logs hook failures and worker crashes at ERROR with the
traceback, and never logs an ordinary request error, which its callers
receive, above DEBUG.
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("trio_persist")
