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


def per_call(
    fns: dict[str, Callable[[], object]], runs: int, budget: float = 0.02
) -> dict[str, float]:
    """Seconds per call of each of *fns*: the median of *runs* rounds, each round
    timing one batch of every function in turn (so a change of the machine's
    load touches them all alike)."""
    sizes = {}
    for name, fn in fns.items():  # size each batch to about *budget* seconds
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed > budget / 4 or n >= 1 << 20:
                break
            n *= 4
        sizes[name] = max(1, int(n * budget / max(elapsed, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(runs, 1)):
        for name, fn in fns.items():
            n = sizes[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(times) for name, times in samples.items()}


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
    (
        "a nested JSON body (4 containers, 7 leaves)",
        {"a": {"b": [1, 2, {"c": "d"}]}, "e": [1.5, None]},
    ),
    ("a 2-tuple", (42, "GET")),
    ("a dict with 2 int keys", {1: "a", 2: "b"}),
    ("a set of 3 strings", {"read", "write", "admin"}),
]


def _contenders(value: Any, olds: list[tuple[str, ModuleType]]) -> dict[str, Callable[[], object]]:
    fns: dict[str, Callable[[], object]] = {"ours": lambda: _grouping.default_group("api", value)}
    try:
        floor_group("api", value)
    except TypeError:  # sets (and more) are not JSON
        pass
    else:
        fns["floor"] = lambda: floor_group("api", value)
    for rev, old in olds:
        fns[rev] = lambda old=old: old.default_group("api", value)
    return fns


def grouping_figures(row: Row, *, quick: bool, runs: int, against: list[str]) -> bool:
    """Print the grouping rows; True when every bar holds."""
    olds = [(rev, load_grouping(rev)) for rev in against]
    print("\nThe default grouper (default_group(base, request)), beside sorted JSON + BLAKE2b")
    flat = per_call(_contenders(flat_request(), olds), 5 * max(runs, 3))
    ok = row("flat 20-key JSON-like request", flat["ours"] * 1e6, flat["floor"] * 1e6, "us", 2.0)
    for rev, _ in olds:
        print(f"      same, the encoder of {rev}: {flat[rev] * 1e6:.2f} us")
    for name, value in SMALL:
        got = per_call(_contenders(value, olds), 5 * max(runs, 3))
        olds_text = "".join(f"; {rev}: {got[rev] * 1e6:.2f} us" for rev, _ in olds)
        floor = f"floor {got['floor'] * 1e6:9.2f} us" if "floor" in got else "(no JSON floor)"
        print(f"  {name:<46} {got['ours'] * 1e6:9.2f} us     {floor}{olds_text}")
    deep = deep_request(depth=900, size=920_000 if quick else 9_200_000)
    text_size = len(json.dumps(deep))
    limit = sys.getrecursionlimit()
    # The floor's json.dumps (and a recursive encoder of an earlier commit) recurse
    # once per level: they need more room than the default limit gives.
    sys.setrecursionlimit(10_000)
    try:
        got = per_call(_contenders(deep, olds), min(runs, 3), budget=0.0)
    finally:
        sys.setrecursionlimit(limit)
    ours = got["ours"]
    mark = "ok" if ours < 0.5 else "OVER BAR"
    print(
        f"  {f'{text_size / 1e6:.1f} MB request nested 900 deep':<46} {ours:9.3f} s      "
        f"floor {got['floor']:9.3f} s      (bar 0.5 s) {mark}"
    )
    for rev, _ in olds:
        print(f"      same, the encoder of {rev}: {got[rev]:.3f} s")
    return ok and ours < 0.5
