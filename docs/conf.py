"""Sphinx configuration: the docs are Markdown (MyST); the reference is autodoc.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (`.ci/run` does).
"""

from __future__ import annotations

import inspect
import sys

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer

import trio_persist

project = "trio-persist"
author = "the trio-persist developers"
release = trio_persist.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "myst_parser",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples"]
html_theme = "furo"
html_title = "trio-persist"

# Every reference must resolve: a broken one fails the build (-W).
nitpicky = True
default_role = "py:obj"
# The build runs offline (no intersphinx): names from other projects and the
# standard library cannot be linked, so they are not checked. Ours all are.
nitpick_ignore_regex = [
    (r"py:.*", r"(trio|attrs|outcome|coredis|rich|collections|typing|contextlib|os|prometheus_client)\..*"),
    (r"py:.*", r"(Any|Hashable|Callable|Awaitable|Iterable|Mapping|AsyncIterator)"),
    (r"py:.*", r"(B|R|T|S|P|V|P\.args|P\.kwargs|S_co|T_co|R_contra|B_contra)"),
    (r"py:.*", r"(int|float|str|bytes|bool|object|None|list|tuple|dict|type|frozenset)"),
    (r"py:(exc|class|obj)", r".*(Error|Exception|Exit|Interrupt|Cancelled|WouldBlock)"),
    (r"py:.*", r"(ExceptionGroup|BaseExceptionGroup|EndOfChannel|ClosedResourceError)"),
    (r"py:.*", r"(TracebackType|TaskStatus|PathLike|Nursery|CancelScope|Event)"),
    # Type variables (they have no page of their own), wherever they are defined.
    # No other private name may appear in a public signature: it fails the build.
    (r"py:.*", r"~?(trio_persist\.[\w.]+\.)?(B|R|T|S|V|P|OwnerT|ShownT|B_contra|R_contra|T_co)"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]  # links between pages are checked by MyST's own


def _docstring_where_defined(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """A constant re-exported by ``trio_persist`` shows the docstring written under
    it where it is defined (autodoc finds none in ``__init__`` and would show its
    type's instead: int's, for ``MAX_DEPTH``)."""
    if what != "data" or not name.startswith("trio_persist."):
        return
    short = name.rpartition(".")[2]
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("trio_persist.") and getattr(module, short, None) is obj:
            found = ModuleAnalyzer.for_module(module_name).find_attr_docs().get(("", short))
            if found:
                lines[:] = list(found)
                return


def _overloads_where_defined(app: Sphinx) -> None:
    """A function re-exported by ``trio_persist`` shows the overloads written where it
    is defined (autodoc looks for them in ``__init__``, whose source has none)."""
    package = ModuleAnalyzer.for_module("trio_persist")
    package.analyze()
    for name in trio_persist.__all__:
        obj = getattr(trio_persist, name)
        if not inspect.isfunction(obj):
            continue
        for defined_in, module in sorted(sys.modules.items()):
            if defined_in.startswith("trio_persist.") and vars(module).get(name) is obj:
                found = ModuleAnalyzer.for_module(defined_in)
                found.analyze()
                if name in found.overloads:
                    package.overloads[name] = found.overloads[name]


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _docstring_where_defined)
    app.connect("builder-inited", _overloads_where_defined)
