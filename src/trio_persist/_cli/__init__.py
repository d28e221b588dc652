"""The ``trio-persist`` command: the monitor TUI, the cluster view and the demo.

It sits on top of the library and is never imported by it.
"""

from ._main import main

__all__ = ["main"]
