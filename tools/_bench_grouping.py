"""The grouping figures of tools/bench.py: the default grouper beside JSON + BLAKE2b.

The floor is what a web service would write by hand to name a request: sorted
``json.dumps`` of the body, hashed with BLAKE2b-128. It does less than the
default grouper (tuples become lists, ``{1: x}`` and ``{"1": x}`` share a name,
sets and bytes are refused, big ints past 4,300 digits raise), so it is a floor.

``--grouping-against REV`` also measures the encoder of an earlier commit (its
``_grouping.py``, loaded from git) on the same values, in the same run.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from hashlib import blake2b
from pathlib import Path
from types import ModuleType
from typing import Any

from trio_persist import _grouping

ROOT = Path(__file__).resolve().parent.parent
Row = Callable[[str, float, float, str, float], bool]


def flat_request() -> dict[str, Any]:
    """A flat 20-key JSON body: strings, ints, floats, booleans and a null."""
    request: dict[str, Any] = {}
    for i in range(20):
        kind = i % 5
        key = f"field_{i:02d}"
        if kind == 0:
            request[key] = f"value number {i} of the request"
        elif kind == 1:
            request[key] = i * 1_000_003
        elif kind == 2:
            request[key] = i / 7
        elif kind == 3:
            request[key] = i % 2 == 0
        else:
            request[key] = None if i % 3 else "x"
    return request


def deep_request(depth: int = 900, size: int = 9_000_000) -> dict[str, Any]:
    """A JSON body of about *size* bytes whose orders nest *depth* levels deep.

    Each level holds a text (four fifths of its bytes), a page of flat line
    items and its sub-order, as a recursive document (a thread of comments, a
    bill of materials) would.
    """
    per_level = size // depth
    items_per_level = max(1, per_level // 5 // 70)  # a line item is ~70 bytes of JSON
    text = ("lorem ipsum dolor sit amet, " * (per_level // 28 + 1))[: per_level * 4 // 5]
    child: dict[str, Any] | None = None
    for level in range(depth):
        items = [
            {"sku": f"SKU-{level:04d}-{n:04d}", "qty": n, "price": n * 1.25, "gift": n % 2 == 0}
            for n in range(items_per_level)
        ]
        child = {"level": level, "text": text, "items": items, "child": child}
    assert child is not None
    return child


def floor_group(base: Any, request: Any) -> str:
    """The hand-written floor: sorted JSON of base and request, BLAKE2b-128."""
    h = blake2b(json.dumps(base, sort_keys=True).encode(), digest_size=16)
    h.update(b"\n")
    h.update(json.dumps(request, sort_keys=True).encode())
    return h.hexdigest()


def per_call(fn: Callable[[], object], runs: int, budget: float = 0.2) -> float:
    """Seconds per call of *fn*: the median of *runs* timed batches."""
    n = 1
    while True:  # size a batch to about *budget* seconds
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > budget / 4 or n >= 1 << 20:
            break
        n *= 4
    n = max(1, int(n * budget / max(elapsed, 1e-9)))
    samples = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples)


def load_grouping(rev: str) -> ModuleType:
    """The ``_grouping`` module of commit *rev*, loaded from git under another name."""
    for path in ("src/trio_persist/_grouping.py", "trio_persist/_grouping.py"):
        shown = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, check=False
        )
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"no _grouping.py at {rev}")
    folder = Path(tempfile.mkdtemp())
    source = folder / f"grouping_{rev}.py"
    source.write_bytes(shown.stdout)
    spec = importlib.util.spec_from_file_location(f"grouping_{rev}", source)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SMALL: list[tuple[str, Any]] = [
    ("a short string", "GET /users/42"),
    ("a small int", 42),
    ("a small dict (3 keys)", {"user": 42, "path": "/users/42", "fresh": True}),
    ("a flat list of 100 ints", list(range(100))),
]


def grouping_figures(row: Row, *, quick: bool, runs: int, against: list[str]) -> bool:
    """Print the grouping rows; True when every bar holds."""
    olds = [(rev, load_grouping(rev)) for rev in against]
    print("\nThe default grouper (default_group(base, request)), beside sorted JSON + BLAKE2b")
    flat = flat_request()
    ok = row(
        "flat 20-key JSON-like request",
        per_call(lambda: _grouping.default_group("api", flat), runs) * 1e6,
        per_call(lambda: floor_group("api", flat), runs) * 1e6,
        "us",
        2.0,
    )
    for rev, old in olds:
        figure = per_call(lambda old=old: old.default_group("api", flat), runs) * 1e6
        print(f"      same, the encoder of {rev}: {figure:.2f} us")
    for name, value in SMALL:
        ours = per_call(lambda value=value: _grouping.default_group("api", value), runs) * 1e6
        floor = per_call(lambda value=value: floor_group("api", value), runs) * 1e6
        olds_text = "".join(
            f"; {rev}: {per_call(lambda o=o, v=value: o.default_group('api', v), runs) * 1e6:.2f} us"
            for rev, o in olds
        )
        print(f"  {name:<46} {ours:9.2f} us     floor {floor:9.2f} us{olds_text}")
    deep = deep_request(depth=900, size=900_000 if quick else 9_000_000)
    text_size = len(json.dumps(deep))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # the floor's json.dumps recurses once per level
    try:
        floor = per_call(lambda: floor_group("api", deep), min(runs, 3), budget=0.0)
    finally:
        sys.setrecursionlimit(limit)
    ours = per_call(lambda: _grouping.default_group("api", deep), min(runs, 3), budget=0.0)
    mark = "ok" if ours < 0.5 else "OVER BAR"
    print(
        f"  {f'{text_size / 1e6:.1f} MB request nested 900 deep':<46} {ours:9.3f} s      "
        f"floor {floor:9.3f} s      (bar 0.5 s) {mark}"
    )
    for rev, old in olds:
        sys.setrecursionlimit(10_000)  # a recursive encoder would fail at the default
        try:
            figure = per_call(lambda old=old: old.default_group("api", deep), 1, budget=0.0)
        finally:
            sys.setrecursionlimit(limit)
        print(f"      same, the encoder of {rev} (recursion limit 10,000): {figure:.3f} s")
    return ok and ours < 0.5
