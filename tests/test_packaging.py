"""The package installs alone: a clean environment with only its declared dependencies.

Version gates (``if sys.version_info < (3, 11)``) import backports that only
older interpreters get: a wrong gate would import one that a clean install
lacks. The development environment has every extra, so it cannot notice.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).parent.parent
# Every module of the engine and the public surface without extras (the Redis
# backend needs the redis extra, the exporters theirs).
MODULES = [
    "trio_persist",
    "trio_persist.testing",
    "trio_persist._core._persist",
    "trio_persist._core._open",
]


@pytest.mark.timeout(600)
def test_the_package_installs_and_imports_with_only_its_declared_dependencies(
    tmp_path: pathlib.Path,
) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    script = "import importlib, sys\n" + "".join(
        f"importlib.import_module({module!r})\n" for module in MODULES
    )
    found = subprocess.run(
        [python, "-c", script + "print(sorted(m for m in sys.modules if 'exceptiongroup' in m))"],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    expected = "[]" if sys.version_info >= (3, 11) else "['exceptiongroup']"
    assert found.stdout.strip() == expected
