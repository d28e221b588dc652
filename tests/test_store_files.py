"""Stores on disk under faults and attacks: crashes mid-save, bad files, bad directories.

`FileStore` keeps one file per group, replaced atomically, so a process killed
at any moment of a save leaves the old state or the new one; a file that is
not a state this store sealed for its group is refused, never loaded; a
directory that cannot hold states fails when the store is opened. `SqliteStore`
keeps a table in one database in write-ahead mode. Crashes and limits here are
real: subprocesses killed with SIGKILL, a real file size limit, a real
unprivileged user.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Any

import pytest
import trio

import trio_persist
from trio_persist import stores
from trio_persist._grouping import group_digest

KEY = b"k" * 32
WRITER = pathlib.Path(__file__).with_name("store_writer.py")
GROUP = ("cart", "alice")
DIGEST = group_digest(GROUP)


def state_file(directory: pathlib.Path, group: Any = GROUP) -> pathlib.Path:
    return directory / f"{group_digest(group)}.state"


# -- files: named by digest, private, replaced whole -------------------------------------


async def test_each_group_is_one_private_file_named_by_its_digest(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "deep" / "states"
    store = stores.FileStore(directory)
    await store.save(GROUP, {"items": ["book"]})
    assert os.listdir(directory) == [f"{DIGEST}.state"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(state_file(directory).stat().st_mode) == 0o600
    assert b"alice" not in state_file(directory).read_bytes().split(b"\n")[0]


async def test_a_file_moved_to_another_groups_name_is_refused(tmp_path: pathlib.Path) -> None:
    for key in (None, KEY):
        directory = tmp_path / str(key is None)
        store = stores.FileStore(directory, signing_key=key)
        await store.save("alice", {"balance": 10})
        await store.save("mallory", {"balance": 0})
        shutil.copy(state_file(directory, "alice"), state_file(directory, "mallory"))
        with pytest.raises(trio_persist.CorruptResult, match=r"holds the state of group \w+, not"):
            await store.load("mallory")
        assert store.statistics().corrupt == 1


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "is not a trio-persist state"),
        (lambda data: b"garbage\n" * 3, "is not a trio-persist state"),
        (lambda data: data[:50], "has no complete header"),
        (lambda data: data[:-1], "bytes of state where its header says"),
        (lambda data: data + b"x", "bytes of state where its header says"),
        (lambda data: data[:-2] + b"X" + data[-1:], "does not match its checksum"),
        (lambda data: data.replace(b'"token":null', b'"token":9999'), "does not match its seal"),
        (lambda data: data[:5] + bytes([data[5] ^ 1]) + data[6:], "does not match its seal"),
    ],
)
async def test_a_damaged_or_forged_file_is_refused(
    tmp_path: pathlib.Path, key: bytes | None, damage: Any, message: str
) -> None:
    store = stores.FileStore(tmp_path, signing_key=key)
    await store.save(GROUP, {"items": ["book"], "note": "x" * 100})
    path = state_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(trio_persist.CorruptResult, match=message) as refused:
        await store.load(GROUP)
    assert DIGEST in str(refused.value)
    assert "Delete it to start the group afresh" in str(refused.value)


async def test_a_forger_without_the_key_cannot_make_a_file_load(tmp_path: pathlib.Path) -> None:
    honest = stores.FileStore(tmp_path, signing_key=KEY)
    forger = stores.FileStore(tmp_path, signing_key=b"f" * 32)
    unsigned = stores.FileStore(tmp_path)
    await forger.save(GROUP, {"admin": True})
    with pytest.raises(trio_persist.CorruptResult, match="written by a store with another"):
        await honest.load(GROUP)
    await unsigned.save(GROUP, {"admin": True})
    with pytest.raises(trio_persist.CorruptResult, match="unsigned or damaged"):
        await honest.load(GROUP)
    await honest.save(GROUP, {"admin": False})
    with pytest.raises(trio_persist.CorruptResult, match="signed, damaged"):
        await unsigned.load(GROUP)  # a pickle is never loaded without the key


async def test_states_of_another_namespace_are_refused(tmp_path: pathlib.Path) -> None:
    await stores.FileStore(tmp_path, namespace="shop").save(GROUP, 1)
    with pytest.raises(trio_persist.CorruptResult, match="another signing key or namespace"):
        await stores.FileStore(tmp_path, namespace="bank").load(GROUP)


async def test_a_huge_file_is_refused_without_being_read(tmp_path: pathlib.Path) -> None:
    store = stores.FileStore(tmp_path, max_bytes=1 << 20)
    with state_file(tmp_path).open("wb") as sparse:
        sparse.truncate(1 << 40)  # a terabyte, on no disk at all
    with pytest.raises(trio_persist.CorruptResult, match="more than this store's max_bytes"):
        await store.load(GROUP)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
async def test_something_other_than_a_file_under_a_states_name_is_refused(
    tmp_path: pathlib.Path, kind: str
) -> None:
    store = stores.FileStore(tmp_path)
    await store.save("other", {"secret": 1})
    path = state_file(tmp_path)
    if kind == "symlink":
        path.symlink_to(state_file(tmp_path, "other"))
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer for ever
    else:
        path.mkdir()
    with pytest.raises(trio_persist.CorruptResult, match=r"symbolic link|not a regular file"):
        await store.load(GROUP)


async def test_the_next_save_replaces_a_corrupt_file(tmp_path: pathlib.Path) -> None:
    store = stores.FileStore(tmp_path)
    state_file(tmp_path).write_bytes(b"TPS1 garbage")
    await store.save_record(GROUP, stores.StateRecord({"n": 1}, token=3))
    assert await store.load(GROUP) == {"n": 1}


# -- directories that cannot hold states ------------------------------------------------


async def test_a_directory_path_that_is_a_file_fails_at_open_save_and_load(
    tmp_path: pathlib.Path,
) -> None:
    taken = tmp_path / "states"
    taken.write_text("not a directory")
    store = stores.FileStore(taken)
    with pytest.raises(FileExistsError, match="a file already has the directory's name"):
        await store.__aenter__()
    with pytest.raises(NotADirectoryError, match=f"{DIGEST} could not be saved .*is a file"):
        await store.save(GROUP, 1)
    with pytest.raises(NotADirectoryError, match="could not be read"):
        await store.load(GROUP)
    assert taken.read_text() == "not a directory"


def _without_root_powers() -> list[str]:
    """A command prefix that takes from root the power to write anywhere."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root may write anywhere, and setpriv is not here to stop it")
    return [setpriv, "--bounding-set=-dac_override,-fowner", "--"]


async def test_a_read_only_directory_fails_at_open_and_at_save_and_loads_what_is_there(
    tmp_path: pathlib.Path,
) -> None:
    await stores.FileStore(tmp_path).save(GROUP, {"n": 1})
    await trio.Path(tmp_path).chmod(0o555)
    try:
        result = await _run([*_without_root_powers(), *_writer(tmp_path, "readonly")])
    finally:
        await trio.Path(tmp_path).chmod(0o700)
    assert result["open"].startswith("PermissionError: ")
    assert "cannot keep states here" in result["open"]
    assert "may not write there: check the directory's owner and mode" in result["save"]
    assert "the previous state is intact" in result["save"]
    assert result["loaded"] == {"n": 1}


async def test_a_save_over_the_file_size_limit_fails_and_leaves_the_old_state_and_no_litter(
    tmp_path: pathlib.Path,
) -> None:
    result = await _run(_writer(tmp_path, "limited", str(1 << 20)))
    assert result["error"]["type"] == "OSError"
    assert "could not be saved" in result["error"]["message"]
    assert "larger than this process may write" in result["error"]["message"]
    assert DIGEST in result["error"]["message"]
    assert result["loaded"] == {"n": 0}
    assert result["files"] == [f"{DIGEST}.state"]


async def test_a_save_to_a_full_disk_fails_and_leaves_the_old_state_and_no_litter(
    tmp_path: pathlib.Path,
) -> None:
    # A real full disk: a 1 MiB file system, mounted in a mount namespace of the
    # writer's own (nothing outside it sees the mount).
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("mounting a small file system needs root and unshare")
    mount = 'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"'
    command = [unshare, "--mount", "sh", "-c", mount, str(tmp_path), *_writer(tmp_path, "full")]
    try:
        result = await _run(command)
    except subprocess.CalledProcessError as failed:
        pytest.skip(f"cannot mount a file system here: {failed.stderr!r}")
    assert result["error"]["type"] == "OSError"
    assert result["error"]["errno"] == errno.ENOSPC
    assert "the disk is full: free some space; the previous state is intact" in str(result)
    assert result["loaded"] == {"n": 0}
    assert result["files"] == [f"{DIGEST}.state"]


def _writer(directory: pathlib.Path, *args: str) -> list[str]:
    return [sys.executable, str(WRITER), str(directory), *args]


async def _run(command: list[str]) -> Any:
    """Run *command* (a store_writer.py), and return the JSON line it printed last."""
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return json.loads(done.stdout.decode().splitlines()[-1])


# -- crashes mid-save: the old state or the new one, never a torn one ----------------------


async def _start_writer(directory: pathlib.Path, *args: str) -> tuple[trio.Process, Any]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WRITER), str(directory), *args], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    return process, process.stdout


async def _read_until(stdout: Any, marker: bytes, seen: bytearray) -> None:
    with trio.fail_after(60):
        while marker not in seen:
            chunk = await stdout.receive_some()
            assert chunk, f"the writer ended before {marker!r}: {bytes(seen)!r}"
            seen += chunk


async def _kill(process: trio.Process) -> None:
    process.send_signal(signal.SIGKILL)
    with trio.fail_after(30):
        await process.wait()
    assert process.returncode == -signal.SIGKILL


def _is_whole(state: Any) -> bool:
    return state["blob"] == str(state["n"] % 10) * len(state["blob"]) and len(state["blob"]) > 0


@pytest.mark.parametrize(
    ("stage", "expected"), [("write", 1), ("fsync", 1), ("replace", 1), ("renamed", 2)]
)
async def test_a_save_killed_at_each_step_leaves_the_old_state_or_the_new_one(
    tmp_path: pathlib.Path, stage: str, expected: int
) -> None:
    process, stdout = await _start_writer(tmp_path, "stage", stage)
    seen = bytearray()
    await _read_until(stdout, f"{stage}\n".encode(), seen)
    await _kill(process)
    store = stores.FileStore(tmp_path)
    state = await store.load(GROUP)
    assert state["n"] == expected
    assert _is_whole(state)
    # The killed save's temporary file (if any) is left for the sweep; the next save works.
    await store.save(GROUP, {"n": 3})
    assert await store.load(GROUP) == {"n": 3}


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.07, 0.13, 0.21, 0.34])
async def test_a_process_killed_at_any_moment_of_big_saves_leaves_a_whole_state(
    tmp_path: pathlib.Path, delay: float
) -> None:
    process, stdout = await _start_writer(tmp_path, "loop")
    seen = bytearray()
    await _read_until(stdout, b"saved 1\n", seen)
    await trio.sleep(delay)
    await _kill(process)
    state = await stores.FileStore(tmp_path).load(GROUP)
    assert state["n"] >= 1
    assert _is_whole(state)


async def test_temporary_files_of_crashed_saves_are_removed_on_open_once_stale(
    tmp_path: pathlib.Path,
) -> None:
    old = tmp_path / f".{DIGEST}.0123456789ab.tmp"
    recent = tmp_path / f".{DIGEST}.ba9876543210.tmp"
    for litter in (old, recent):
        litter.write_bytes(b"TPS1 half a sta")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    async with stores.FileStore(tmp_path):
        pass
    assert not old.exists()
    assert recent.exists()  # may be a save in progress in another process


# -- several stores on one directory ------------------------------------------------------


async def test_two_stores_on_one_directory_share_states_and_fencing(
    tmp_path: pathlib.Path,
) -> None:
    first, second = stores.FileStore(tmp_path), stores.FileStore(tmp_path)
    await first.save_record(GROUP, stores.StateRecord({"n": 1}, token=8))
    assert await second.load(GROUP) == {"n": 1}
    with pytest.raises(trio_persist.StaleOwner):
        await second.save_record(GROUP, stores.StateRecord({"n": 2}, token=7))
    async with trio.open_nursery() as nursery:
        for n in range(10):
            store = (first, second)[n % 2]
            nursery.start_soon(store.save, GROUP, {"n": n, "blob": "y" * 100_000})
    assert (await first.load(GROUP))["blob"] == "y" * 100_000  # one of them, whole
    assert sorted(os.listdir(tmp_path)) == [".lock", f"{DIGEST}.state"]


# -- SQLite ---------------------------------------------------------------------------------


async def test_sqlite_keeps_one_private_database_in_write_ahead_mode(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "states.db"
    async with stores.SqliteStore(path) as store:
        await store.save(GROUP, {"n": 1})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            rows = other.execute("SELECT namespace, digest FROM trio_persist_states").fetchall()
        other.close()
    assert rows == [("trio-persist", DIGEST)]


async def test_sqlite_opens_its_connection_for_its_users_and_closes_after_the_last(
    tmp_path: pathlib.Path,
) -> None:
    store = stores.SqliteStore(tmp_path / "states.db")
    async with store:
        async with store:
            assert repr(store).endswith(" open>")
        assert repr(store).endswith(" open>")
    assert repr(store).endswith(" closed>")
    await store.save(GROUP, 1)  # used again: opened again
    assert repr(store).endswith(" open>")
    await store.aclose()
    assert repr(store).endswith(" closed>")


async def test_sqlite_refuses_a_file_that_is_not_a_database_when_it_opens(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("dear diary, " * 100)
    with pytest.raises(trio_persist.CorruptResult, match="is not a healthy SQLite database"):
        async with stores.SqliteStore(path):
            pass
    assert path.read_text() == "dear diary, " * 100


@pytest.mark.parametrize("where", ["directory", "missing/states.db"])
async def test_sqlite_fails_at_open_on_a_path_it_cannot_use(
    tmp_path: pathlib.Path, where: str
) -> None:
    (tmp_path / "directory").mkdir()
    with pytest.raises(OSError, match="could not be opened"):
        async with stores.SqliteStore(tmp_path / where):
            pass


def test_sqlite_wants_a_database_file() -> None:
    with pytest.raises(ValueError, match=r"use trio_persist\.stores\.MemoryStore"):
        stores.SqliteStore(":memory:")


async def test_two_sqlite_stores_on_one_database_share_states_and_fencing(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "states.db"
    async with stores.SqliteStore(path) as first, stores.SqliteStore(path) as second:
        await first.save_record(GROUP, stores.StateRecord({"n": 1}, token=8))
        assert await second.load(GROUP) == {"n": 1}
        with pytest.raises(trio_persist.StaleOwner):
            await second.save_record(GROUP, stores.StateRecord({"n": 2}, token=7))
        async with stores.SqliteStore(path, namespace="bank") as bank:
            assert await bank.load(GROUP) is None  # namespaces share a database apart


async def test_sqlite_refuses_a_row_over_max_bytes_without_reading_it(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "states.db"
    async with stores.SqliteStore(path) as roomy, stores.SqliteStore(path, max_bytes=4096) as tight:
        await roomy.save(GROUP, "x" * 10_000)
        with pytest.raises(trio_persist.CorruptResult, match="more than this store's max_bytes"):
            await tight.load(GROUP)
