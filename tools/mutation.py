"""Mutation testing: how much of the library's behaviour the tests pin down.

    .venv/bin/python tools/mutation.py --sample 240 --seed 14   # the sampled run (docs/testing.md)
    .venv/bin/python tools/mutation.py --all --modules _core/_registry _core/_job   # every mutant of some

Mutants are cosmic-ray's (``cosmic-ray init``: operators, comparisons, booleans,
numbers, break/continue, loops, exceptions, decorators), less those inside type
annotations, which are never evaluated (``from __future__ import annotations``):
equivalent by construction. A fixed-seed sample is drawn over all selected
modules in proportion to their mutants. Each mutant is applied, one at a time,
in a fresh clone of the committed tree, and the tests of its module (``TESTS``)
run against it, stopping at the first failure:

* **killed**: a test failed;
* **hung**: the run passed its time limit (killed, but it means some test waits
  without a bound: the goal is none);
* **survived**: every test passed. Survivors listed in
  ``tools/mutation_equivalents.toml`` (each with its reason) are equivalent and
  left out of the score; the others are gaps in the tests.

The score of a module is killed / (killed + survived, equivalents left out).
Results go to ``<workdir>/results.jsonl``; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The tests that exercise each module. In-process modules share the quick
# in-process suite (the invariants with fewer Hypothesis examples), then the
# two quick Redis files: the core's path through a backend is theirs.
IN_PROCESS = [
    "tests/test_dedup.py", "tests/test_cancellation.py", "tests/test_failures.py",
    "tests/test_recursion.py", "tests/test_serve_loops.py", "tests/test_checkpoints.py",
    "tests/test_bounded.py", "tests/test_statistics.py", "tests/test_names.py",
    "tests/test_writes.py", "tests/test_workers.py",
    "tests/test_front.py", "tests/test_registry.py", "tests/test_grouping.py", "tests/test_encoding.py",
    "tests/test_bad_values.py", "tests/test_hostile_names.py", "tests/test_options.py",
    "tests/test_events.py", "tests/test_labels.py", "tests/test_durations.py",
    "tests/test_logging.py", "tests/test_testing_helpers.py", "tests/test_invariants.py",
    "tests/test_worker_invariants.py", "tests/test_monitor_server.py",
    "tests/test_opentelemetry.py", "tests/test_redis.py", "tests/test_redis_safety.py",
    "tests/test_virtual_workers.py", "tests/test_virtual_lifecycle.py",
    "tests/test_virtual_invariants.py",
]  # fmt: skip
REDIS = [  # quickest first: with -x, most mutants die early
    "tests/test_codec.py", "tests/test_redis_link.py", "tests/test_redis_safety.py",
    "tests/test_redis.py", "tests/test_front.py", "tests/test_statistics.py",
    "tests/test_redis_faults.py", "tests/test_redis_cluster.py", "tests/test_redis_sentinel.py",
]  # fmt: skip
# Modules by their path under src/trio_persist, without ".py".
IN_PROCESS_MODULES = [
    "_core/_state", "_core/_flight", "_grouping", "_encoding", "_plain_json", "_records", "_core/_job", "_core/_persist",
    "_core/_routing", "_core/_wrapping", "_core/_registry", "_core/_runner", "_core/_supervisor", "_core/_worker", "_core/_serving",
    "_core/_saving", "_core/_handle",
    "_core/_linger", "_core/_labels", "_core/_histogram", "_core/_ask", "_core/_activation",
]  # fmt: skip
REDIS_MODULES = [
    "redis/_backend", "redis/_lease", "redis/_renewal", "redis/_cluster", "redis/_link",
    "redis/_client", "redis/_subscriber", "redis/_rounds", "redis/_scripts", "_codec",
]  # fmt: skip
TESTS = {
    **dict.fromkeys(IN_PROCESS_MODULES, IN_PROCESS),
    **dict.fromkeys(REDIS_MODULES, REDIS),
}


def test_command(module: str) -> list[str]:
    """pytest on *module*'s tests, stopping at the first failure. Each test gets 30 s:
    a mutant that loops without a checkpoint (where Trio's deadlines cannot reach)
    fails there, instead of running into the whole run's limit."""
    return [PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout=30",
            *TESTS[module]]  # fmt: skip


def annotation_lines(source: str) -> set[tuple[int, int]]:
    """(line, column) positions covered by type annotations."""
    covered: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
            every = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [a.annotation for a in every]
            found += [a.annotation for a in (node.args.vararg, node.args.kwarg) if a]
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for annotation in found:
            if annotation is None or annotation.end_lineno is None:
                continue
            for line in range(annotation.lineno, annotation.end_lineno + 1):
                first = annotation.col_offset if line == annotation.lineno else 0
                last = annotation.end_col_offset if line == annotation.end_lineno else 10_000
                covered.update((line, col) for col in range(first, (last or 0) + 1))
    return covered


def prepare(workdir: Path) -> None:
    if workdir.exists():
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(workdir)], check=True)
    (workdir / ".mutation").mkdir()


def candidates(workdir: Path, module: str, timeout: float) -> tuple[Path, list[Any]]:
    """The work items of *module*'s cosmic-ray session, annotations left out."""
    from cosmic_ray.work_db import WorkDB, use_db

    config = workdir / ".mutation" / f"{module.replace('/', '.')}.toml"
    command = " ".join(test_command(module))
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "src/trio_persist/{module}.py"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    db = workdir / ".mutation" / f"{module.replace('/', '.')}.sqlite"
    subprocess.run(
        [str(Path(PY).with_name("cosmic-ray")), "init", str(config), str(db)],
        cwd=workdir,
        check=True,
    )
    source = (workdir / "src" / "trio_persist" / f"{module}.py").read_text()
    skip = annotation_lines(source)
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        items = [
            item for item in work_db.work_items if tuple(item.mutations[0].start_pos) not in skip
        ]
    return db, items


def enclosing(source: str, line: int) -> str:
    """The name of the innermost function (or class) around *line*, or "<module>"."""
    best, depth = "<module>", -1
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            end = node.end_lineno or node.lineno
            if node.lineno <= line <= end and node.col_offset > depth:
                best, depth = node.name, node.col_offset
    return best


def describe(workdir: Path, item: Any) -> dict[str, Any]:
    mutation = item.mutations[0]
    line = mutation.start_pos[0]
    source = (workdir / mutation.module_path).read_text()
    return {
        "module": Path(mutation.module_path)
        .relative_to("src/trio_persist")
        .with_suffix("")
        .as_posix(),
        "function": enclosing(source, line),
        "operator": mutation.operator_name.removeprefix("core/"),
        "occurrence": mutation.occurrence,
        "line": line,
        "source": source.splitlines()[line - 1].strip(),
    }


def run(args: argparse.Namespace) -> int:
    from cosmic_ray.mutating import mutate_and_test

    workdir = Path(args.workdir).resolve()
    prepare(workdir)
    os.chdir(workdir)
    os.environ["PYTHONPATH"] = str(workdir / "src")  # the clone, not the editable install
    os.environ["TRIO_PERSIST_EXAMPLES"] = "300"
    modules = args.modules or list(TESTS)
    pool: list[tuple[str, Any]] = []
    for module in modules:
        _, items = candidates(workdir, module, limit(args, module))
        pool += [(module, item) for item in items]
    rng = random.Random(args.seed)
    chosen = pool if args.all else rng.sample(pool, min(args.sample, len(pool)))
    chosen.sort(key=lambda pair: (pair[0], pair[1].mutations[0].start_pos))
    if args.reverse:  # a second runner from the other end (merge with --merge)
        chosen.reverse()
    print(f"{len(chosen)} mutants of {len(pool)} (seed {args.seed})", flush=True)
    equivalents = load_equivalents()
    results = []
    with (workdir / "results.jsonl").open("w") as out:
        for n, (module, item) in enumerate(chosen, 1):
            command = " ".join(test_command(module))
            start = time.monotonic()
            result = mutate_and_test(item.mutations, command, limit(args, module))
            record = describe(workdir, item)
            outcome = str(result.test_outcome.value if result.test_outcome else "error")
            if outcome == "killed" and (result.output or "").strip() == "timeout":
                outcome = "hung"
            reason = equivalents.get(equivalence_key(record))
            if outcome == "survived" and reason:
                outcome = "equivalent"
            record.update(
                outcome=outcome,
                reason=reason,
                seconds=round(time.monotonic() - start, 1),
                diff=result.diff,
            )
            results.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(
                f"[{n}/{len(chosen)}] {outcome:10} {module}:{record['line']} "
                f"{record['operator']}  {record['source'][:60]}",
                flush=True,
            )
    report(results)
    return 0


def limit(args: argparse.Namespace, module: str) -> float:
    """Seconds a mutant's tests may take: about four times an unmutated run."""
    if args.timeout is not None:
        return float(args.timeout)
    return 150.0 if module in REDIS_MODULES else 60.0


def equivalence_key(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (record["module"], record["function"], record["operator"], record["source"])


def load_equivalents() -> dict[tuple[str, str, str, str], str]:
    """Known equivalent mutants, by module, function, operator and source line."""
    path = ROOT / "tools" / "mutation_equivalents.toml"
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {equivalence_key(e): e["reason"] for e in data["equivalent"]}


def report(results: list[dict[str, Any]]) -> None:
    print(f"\n{'module':16} {'mutants':>7} {'killed':>6} {'hung':>4} {'equiv':>5} "
          f"{'survived':>8} {'score':>6}")  # fmt: skip
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        groups.setdefault(record["module"], []).append(record)
    totals = {"in-process": [0, 0], "redis": [0, 0]}
    for module, records in sorted(groups.items()):
        count = {k: sum(r["outcome"] == k for r in records) for k in
                 ("killed", "hung", "equivalent", "survived", "incompetent", "error")}  # fmt: skip
        killed = count["killed"] + count["hung"]
        scored = killed + count["survived"]
        score = killed / scored if scored else 1.0
        side = "redis" if module in REDIS_MODULES else "in-process"
        totals[side][0] += killed
        totals[side][1] += scored
        print(f"{module:16} {len(records):>7} {count['killed']:>6} {count['hung']:>4} "
              f"{count['equivalent']:>5} {count['survived']:>8} {score:>6.1%}")  # fmt: skip
    for side, (killed, scored) in totals.items():
        if scored:
            print(f"{side:16} score {killed}/{scored} = {killed / scored:.1%}")
    survivors = [r for r in results if r["outcome"] == "survived"]
    if survivors:
        print("\nsurvivors (gaps, or equivalents to list with a reason):")
        for r in survivors:
            print(f"  {r['module']}:{r['line']} ({r['function']}) {r['operator']}  {r['source']}")


def merge(paths: list[str]) -> int:
    """Report the results of runners that shared one draw (each mutant once)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            key = (record["module"], record["line"], record["operator"], record["occurrence"])
            seen.setdefault(key, record)
    equivalents = load_equivalents()
    for record in seen.values():
        record.setdefault("function", "")
        reason = equivalents.get(equivalence_key(record))
        if record["outcome"] == "survived" and reason:
            record.update(outcome="equivalent", reason=reason)
    report(list(seen.values()))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reverse", action="store_true", help="run the draw from its end")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS", help="report results files")
    parser.add_argument("--sample", type=int, default=240, help="mutants to draw")
    parser.add_argument("--seed", type=int, default=14, help="seed of the draw")
    parser.add_argument("--all", action="store_true", help="every mutant, no sampling")
    parser.add_argument("--modules", nargs="*", help=f"some of: {', '.join(TESTS)}")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per mutant (60 in-process, 150 Redis)"
    )
    parser.add_argument("--workdir", default="/tmp/trio-persist-mutation")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
