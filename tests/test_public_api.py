"""The public surface: what `import trio_persist` offers, and nothing private."""

from __future__ import annotations

import trio

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
        "cluster_frame",
        "fencing_token",
        "watch_cluster",
    }
    for name in redis.__all__:
        assert hasattr(redis, name), name


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
