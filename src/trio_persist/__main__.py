"""``python -m trio_persist``: the same as the ``trio-persist`` command."""

from ._cli import main

raise SystemExit(main())
