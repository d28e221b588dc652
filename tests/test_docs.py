"""Every code example in the docs runs, so none of them can rot.

Python blocks in ``README.md`` and ``docs/*.md`` and the files in
``docs/examples/`` run as programs, with ``trio.run`` given a virtual clock so
that their sleeps cost nothing.
"""

from __future__ import annotations

import functools
import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[Any]:
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            found.append(pytest.param(match.group(1), id=f"{page.name}-{number}"))
    return found


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = trio.run

    @functools.wraps(real_run)
    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("clock", trio.testing.MockClock(autojump_threshold=0))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(trio, "run", run)


@pytest.mark.parametrize("source", blocks())
def test_a_documented_example_runs(
    source: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "REDIS_URL" in source:
        # A real server, and the real clock: the client's timeouts must not jump.
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
    else:
        request.getfixturevalue("virtual_time")
    exec(compile(source, "<docs>", "exec"), {"__name__": "__main__"})


@pytest.mark.usefixtures("virtual_time")
@pytest.mark.parametrize(
    "path", sorted((ROOT / "docs" / "examples").glob("*.py")), ids=lambda p: p.name
)
def test_an_example_file_runs(path: Path) -> None:
    runpy.run_path(str(path), run_name="__main__")


def test_the_reference_documents_every_public_name() -> None:
    # The reference is generated (autodoc); each public name needs its directive.
    reference = (ROOT / "docs" / "reference.md").read_text()
    missing = [name for name in trio_persist.__all__ if f":: {name}\n" not in reference]
    assert missing == []


def test_the_performance_page_shows_the_figures_ci_checks() -> None:
    """docs/performance.md's short table and tools/bench_bars.toml (what
    ``tools/bench.py --check`` holds the code to) say the same."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    bars = tomllib.loads((ROOT / "tools" / "bench_bars.toml").read_text())
    rows = {}
    for line in (ROOT / "docs" / "performance.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`\w+`", cells[1]):
            rows[cells[1].strip("`")] = (cells[3], cells[4])
    assert rows == {
        name: (f"{figure['ratio']:.2f}", f"{figure['bar']}")
        for name, figure in bars["figures"].items()
    }
    assert bars["slack"] == 0.05  # the page says so


def test_the_speed_check_fails_a_figure_ten_percent_behind_its_table() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from _bench_check import check
    finally:
        sys.path.remove(str(ROOT / "tools"))

    def table(ratio: float) -> dict[str, Any]:
        return {"slack": 0.05, "figures": {"f": {"what": "f", "ratio": ratio, "bar": 2.0}}}

    def sides(ours: float) -> dict[str, Any]:
        return {"f": (lambda: ours, lambda: 10.0)}

    assert check(None, rounds=3, sides=sides(12.0), table=table(1.2))
    assert check(None, rounds=3, sides=sides(12.5), table=table(1.2))  # within its slack
    assert not check(None, rounds=3, sides=sides(13.2), table=table(1.2))  # 10% behind
    assert not check(None, rounds=3, sides=sides(21.0), table=table(2.0))  # over its bar
