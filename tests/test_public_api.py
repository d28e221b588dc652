"""The public surface: what `import trio_persist` offers, and nothing private."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_persist


def test_all_names_are_exported_exactly_once_from_the_package() -> None:
    public = {name for name in dir(trio_persist) if not name.startswith("_")}
    assert set(trio_persist.__all__) == public - {
        "redis",
        "stores",
        "testing",
        "prometheus",
        "opentelemetry",
    }
    assert len(set(trio_persist.__all__)) == len(trio_persist.__all__)  # sorted by ruff (RUF022)


def test_public_classes_and_functions_claim_the_package_as_their_module() -> None:
    for name in trio_persist.__all__:
        obj = getattr(trio_persist, name)
        if callable(obj):
            assert obj.__module__ == "trio_persist", name
    assert trio_persist.MAX_DEPTH == 1000  # the one constant: the grouper's depth


def test_every_error_is_a_persist_error_and_what_users_already_catch() -> None:
    assert issubclass(trio_persist.LeaderDied, trio_persist.PersistError)
    assert issubclass(trio_persist.InfiniteRecursion, trio_persist.PersistError)
    assert issubclass(trio_persist.InfiniteRecursion, RecursionError)
    assert issubclass(trio_persist.PersistClosed, trio_persist.PersistError)
    assert issubclass(trio_persist.PersistClosed, trio.ClosedResourceError)
    assert issubclass(trio_persist.RemoteError, trio_persist.PersistError)
    assert issubclass(trio_persist.ActivationFailed, trio_persist.PersistError)
    assert issubclass(trio_persist.NoWorker, trio_persist.PersistError)
    assert issubclass(trio_persist.NoWorker, LookupError)
    assert issubclass(trio_persist.SaveFailed, trio_persist.PersistError)
    assert issubclass(trio_persist.PersistError, Exception)


def test_remote_error_text_holds_the_original_type_and_message() -> None:
    error = trio_persist.RemoteError("ValueError", "bad input")
    assert str(error) == "ValueError: bad input"
    assert (error.type_name, error.message) == ("ValueError", "bad input")
    assert str(trio_persist.RemoteError("KeyError", "")) == "KeyError"


def test_the_package_ships_its_type_marker() -> None:
    from importlib.resources import files

    assert files("trio_persist").joinpath("py.typed").is_file()


def test_the_redis_module_exports_its_backend_and_records() -> None:
    import trio_persist.redis as redis

    assert set(redis.__all__) == {
        "NodeSnapshot",
        "RedisBackend",
        "RedisBackendStatistics",
        "RedisStore",
        "cluster_frame",
        "fencing_token",
        "watch_cluster",
    }
    for name in redis.__all__:
        assert hasattr(redis, name), name


PUBLIC_MODULES = (
    "trio_persist",
    "trio_persist.redis",
    "trio_persist.testing",
    "trio_persist.prometheus",
    "trio_persist.opentelemetry",
    "trio_persist.stores",
)


def defining_module(name: str, value: object) -> ModuleType:
    """The module whose source defines *value* as *name* (public classes claim the
    package as their module, so ``__module__`` does not say)."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if module.__name__.startswith("trio_persist") and path and vars(module).get(name) is value:
            source = Path(path).read_text()
            if re.search(rf"^(class {name}\b|{name}\b.*=)", source, re.MULTILINE):
                return module
    raise AssertionError(f"no module defines {name}")  # pragma: no cover


def attribute_docs(module: ModuleType) -> dict[tuple[str, str], list[str]]:
    """The docstrings written under assignments in *module*'s source."""
    from sphinx.pycode import ModuleAnalyzer

    return ModuleAnalyzer.for_file(str(module.__file__), module.__name__).find_attr_docs()


def own_doc(value: object) -> str:
    function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
    return (getattr(function, "__doc__", None) or "").strip()


def undocumented_members(name: str, cls: type) -> list[str]:
    missing = []
    for member, value in vars(cls).items():
        method = callable(value) or isinstance(value, property)
        if method and not member.startswith("_") and not own_doc(value):
            missing.append(f"{name}.{member}")
    if attrs.has(cls):
        docs = attribute_docs(defining_module(name, cls))
        # A field is documented by the string under it, or in the class's "Args:".
        sections = re.split(r"^\s*(?:Args|Attributes):$", cls.__doc__ or "", flags=re.M)[1:]
        for field in attrs.fields(cls):
            listed = any(re.search(rf"^\s+{field.name}\b[^:\n]*:", s, re.M) for s in sections)
            documented = listed or (cls.__qualname__, field.name) in docs
            if not field.name.startswith("_") and not documented:
                missing.append(f"{name}.{field.name}")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [] if (module.__doc__ or "").strip() else [module_name]
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value):
            if not (value.__doc__ or "").strip():
                missing.append(name)
            missing += undocumented_members(name, value)
        elif callable(value):
            if not own_doc(value):
                missing.append(name)
        elif ("", name) not in attribute_docs(defining_module(name, value)):
            missing.append(name)  # a constant: its docstring is the string under it
    assert missing == []


async def test_a_device_subclassing_the_protocol_gets_only_the_hooks_it_defines() -> None:
    class Labelled(trio_persist.Device[Any, Any, Any]):
        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep_forever()

        def label(self, base: Any, request: Any) -> str:
            return f"user {request}"

    async with trio_persist.open_persist(Labelled()) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "db", "ann")
        await trio.testing.wait_all_tasks_blocked()
        [record] = persist.snapshot()
        assert record.label == "user ann"  # its own hook
        assert record.group == trio_persist.default_group("db", "ann")  # no group hook: the stub
        await persist.get_worker("g", default=dict)  # no restore hook: a fresh worker
        nursery.cancel_scope.cancel()
    assert persist.statistics().hook_failures == 0


def test_the_stores_module_exports_its_stores_and_their_protocol() -> None:
    import trio_persist.stores as stores

    assert set(stores.__all__) == {
        "DEFAULT_MAX_BYTES",
        "MAX_APPLIED",
        "MAX_REQUEST_ID",
        "FileStore",
        "MemoryStore",
        "RecordStore",
        "SqliteStore",
        "StateRecord",
        "Store",
        "StoreStatistics",
        "check_store",
    }
    for name in ("FileStore", "MemoryStore", "SqliteStore", "StateRecord", "check_store"):
        assert getattr(stores, name).__module__ == "trio_persist.stores", name
    assert issubclass(trio_persist.StaleOwner, trio_persist.PersistError)


def test_the_door_check_is_public_on_the_persist_and_the_redis_backend() -> None:
    from trio_persist.redis import RedisBackend

    for cls in (trio_persist.Persist, RedisBackend):
        assert inspect.signature(cls.overloaded).parameters.keys() == {"self"}
        assert not inspect.iscoroutinefunction(cls.overloaded)  # synchronous: never a checkpoint
