"""The ``trio-persist`` command (placeholder replaced by the observation issue)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    return 0
