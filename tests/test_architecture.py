"""The shape of the code: layers and private names (docs/architecture.md).

The layers themselves are import-linter's contract in pyproject.toml, run by
`.ci/run` (`lint-imports`). What import-linter cannot see is a module reaching
into another's private state through an object it was handed: that is checked
here, by reading the source.
"""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import trio_persist

PACKAGE = pathlib.Path(trio_persist.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.Module) -> set[str]:
    """Every private name a module defines: functions, classes, fields, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if _private(name)}


def _foreign_private_uses(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_here(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found += [
                f"{path.name}:{node.lineno} imports {alias.name}"
                for alias in node.names
                if _private(alias.name)
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                continue
            if node.attr not in own:
                found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [use for path in sorted(PACKAGE.rglob("*.py")) for use in _foreign_private_uses(path)]
    # Trio's and the standard library's own low-level names are not ours to rename.
    allowed = {"os._exit", "sys._getframe"}
    assert [use for use in found if not any(name in use for name in allowed)] == []


def test_the_checker_sees_a_reach_into_another_modules_private_state(
    tmp_path: pathlib.Path,
) -> None:
    source = tmp_path / "_example.py"
    source.write_text(
        "from ._core import _hidden\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def f(self, other):\n"
        "        return self._mine + other._mine + other._theirs\n"
    )
    assert _foreign_private_uses(source) == [
        "_example.py:1 imports _hidden",
        "_example.py:6 uses ._theirs",
    ]


ROOT = PACKAGE.parent.parent
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        # wide, so that no contract's name is wrapped onto two lines
        env={**os.environ, "PYTHONPATH": str(root / "src"), "COLUMNS": "500"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is in the dev extra")
def test_the_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# (module, an import it must not have, the contract that says so)
WRONG_IMPORTS = [
    ("redis/_backend.py", "from .._core import _flight", "sees the engine only through"),
    ("redis/_link.py", "from .._core import _state", "sees the engine only through"),
    ("_core/_state.py", "from ..redis import _link", "engine never imports a backend"),
    ("_core/_flight.py", "from .._cli import _render", "engine never imports a backend"),
    ("_cli/_render.py", "from .._core import _job", "Observation reads records"),
    ("prometheus.py", "from ._core import _supervisor", "Observation reads records"),
    ("_core/_flight.py", "from . import _persist", "The engine: the facade routes"),
    ("_core/_job.py", "from . import _registry", "The engine: the facade routes"),
    ("_grouping.py", "from . import _monitor", "features side by side"),
    ("_store.py", "from . import _state_codec", "features side by side"),
    ("stores/_base.py", "from . import _file", "The stores: each store over"),
    ("stores/_memory.py", "from .._core import _state", "The stores see neither"),
    ("stores/_file.py", "from ..redis import _link", "The stores see neither"),
    ("stores/_base.py", "from .. import testing", "features side by side"),
    ("_core/_state.py", "from ..stores import _base", "engine never imports a backend, a store"),
]


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is in the dev extra")
@pytest.mark.parametrize(("module", "line", "contract"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: pathlib.Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(PACKAGE, tmp_path / "src" / "trio_persist")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "src" / "trio_persist" / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout


# -- size and complexity -----------------------------------------------------------

MAX_LINES = 60
MAX_COMPLEXITY = 15


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out."""
    body = node.body
    if (
        len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return (node.end_lineno or node.lineno) - body[0].lineno + 1


def _too_big(path: pathlib.Path) -> list[str]:
    from radon.complexity import cc_visit

    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = _body_lines(node)
            if lines > MAX_LINES:
                found.append(
                    f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines} lines"
                )
    for block in cc_visit(source):
        blocks = [block, *getattr(block, "methods", ())]
        found += [
            f"{path.relative_to(PACKAGE)}:{each.lineno} {each.name}: complexity {each.complexity}"
            for each in blocks
            if each.complexity > MAX_COMPLEXITY and not getattr(each, "methods", None)
        ]
    return found


def test_no_function_is_longer_than_60_lines_or_more_complex_than_15() -> None:
    pytest.importorskip("radon")
    found = [problem for path in sorted(PACKAGE.rglob("*.py")) for problem in _too_big(path)]
    assert found == []


# -- owners hold their own state ------------------------------------------------------

_MUTATORS = {"append", "appendleft", "extend", "insert", "pop", "popleft", "remove", "clear"}


def _owner_fields() -> set[str]:
    """Fields only a flight or a worker has (not a job's, an activation's or the
    shared context's)."""
    import attrs

    from trio_persist._core import _activation, _flight, _job, _state, _supervisor, _worker

    def names(cls: type) -> set[str]:
        return {field.name for field in attrs.fields(cls)}

    owners = names(_flight.Flight) | names(_worker.WorkerTask)
    others = names(_job.Job) | names(_state.Core) | names(_supervisor.Supervisor)
    others |= names(_activation.Activation)
    return owners - others


# A worker's class is split by topic: its serving loop and its saves are
# functions over the task (named ``task``), in modules of its own.
_WORKER_MODULES = {"_serving.py", "_saving.py"}


def _writes_into_owners(path: pathlib.Path, fields: set[str]) -> list[str]:
    found = []
    own = {"self", "task"} if path.name in _WORKER_MODULES else {"self"}
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MUTATORS
        ):
            targets = [node.func.value]
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value
            if (
                isinstance(target, ast.Attribute)
                and target.attr in fields
                and not (isinstance(target.value, ast.Name) and target.value.id in own)
            ):
                found.append(f"{path.name}:{node.lineno} writes .{target.attr}")
    return found


def test_no_owner_state_is_written_from_outside_its_class() -> None:
    fields = _owner_fields()
    found = [
        write
        for path in sorted((PACKAGE / "_core").glob("*.py"))
        for write in _writes_into_owners(path, fields)
    ]
    assert found == []
