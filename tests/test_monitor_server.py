"""The monitor socket, with real clients: frames, cadence, permissions, junk, slow readers."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist._cli._tui import read_frames


async def device(base: Any, request: Any) -> Any:
    await trio.sleep(10)
    return request


async def test_a_client_gets_a_frame_at_once_then_one_every_interval(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        assert await nursery.start(persist.serve_monitor, path) == path
        nursery.start_soon(persist.resolve, "b", "r")
        await trio.testing.wait_all_tasks_blocked()
        times, frames = [], []
        async with await trio.open_unix_socket(path) as stream:
            async for frame in read_frames(stream):
                times.append(trio.current_time())
                frames.append(frame)
                if len(frames) == 3:
                    break
        nursery.cancel_scope.cancel()
    assert times == [0, 1, 2]
    assert [f["time"] for f in frames] == [0, 1, 2]
    first = frames[0]
    assert set(first) >= {"version", "statistics", "snapshot"}
    assert first["version"] == 1
    assert first["statistics"]["in_flight"] == 1
    [group] = first["snapshot"]
    assert (group["kind"], group["listeners"], group["busy"]) == ("flight", 1, True)
    assert first["groups_total"] == 1
    assert not await trio.Path(path).exists()  # removed when the server ends


async def test_the_socket_is_private_to_its_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        nursery.cancel_scope.cancel()


async def test_a_taken_path_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(FileExistsError, match=r"path is taken: .* is already a file"):
            await persist.serve_monitor(str(taken))
        with pytest.raises(FileNotFoundError, match="no directory"):
            await persist.serve_monitor(str(tmp_path / "missing" / "m.sock"))
        with pytest.raises(ValueError, match="interval must be > 0"):
            await persist.serve_monitor(str(tmp_path / "m.sock"), interval=0)


async def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        with pytest.raises(FileExistsError, match="another monitor running"):
            await persist.serve_monitor(path)
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
async def test_an_unwritable_directory_is_refused_with_a_clear_error(
    tmp_path: Path,
) -> None:  # pragma: no cover - CI runs as root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(PermissionError, match="is not writable"):
            await persist.serve_monitor(str(locked / "m.sock"))


async def test_junk_from_a_client_changes_nothing(autojump_clock: object, tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        async with await trio.open_unix_socket(path) as stream:
            await stream.send_all(b'{"command": "stop"}\n' + bytes(range(256)) * 100)
            await stream.send_eof()  # and it stops talking; it still reads
            count = 0
            async for _ in read_frames(stream):
                count += 1
                if count == 3:
                    break
        assert persist.statistics() == persist.statistics()
        assert not persist.closed
        nursery.cancel_scope.cancel()


async def test_many_clients_each_get_frames(autojump_clock: object, tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    got: list[int] = []
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)

        async def client() -> None:
            async with await trio.open_unix_socket(path) as stream:
                frames = 0
                async for _ in read_frames(stream):
                    frames += 1
                    if frames == 2:
                        break
                got.append(frames)

        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(client)
        nursery.cancel_scope.cancel()
    assert got == [2] * 20


async def test_a_client_that_never_reads_is_dropped_without_slowing_the_others(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")

    class Many:
        def group(self, base: Any, request: Any) -> Any:
            return f"group-{request:05d}-" + "x" * 200  # big frames fill buffers fast

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep_forever()

    async with trio_persist.open_persist(Many()) as persist, trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(persist.resolve, None, i)
        await nursery.start(persist.serve_monitor, path)
        sleeper = await trio.open_unix_socket(path)  # connects, never reads
        reader_times = []
        async with await trio.open_unix_socket(path) as reader:
            async for frame in read_frames(reader):
                reader_times.append(frame["time"])
                if frame["time"] >= 200:
                    break
        assert reader_times == [float(t) for t in range(201)]
        # The sleeper was dropped: draining it ends in end-of-stream.
        with trio.fail_after(1):
            while await sleeper.receive_some(1 << 20):
                pass
        await sleeper.aclose()
        nursery.cancel_scope.cancel()


async def test_frames_are_json_lines_that_any_client_can_read(tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        async with await trio.open_unix_socket(path) as stream:
            data = b""
            while b"\n" not in data:
                data += await stream.receive_some(65536)
        frame = json.loads(data.split(b"\n")[0])
        assert frame["device"] == "device"
        nursery.cancel_scope.cancel()


# -- the monitor never slows the persist, whoever connects --------------------------


class CountingObserved:
    """An `Observed` that counts how often the monitor reads it (frames built)."""

    name = "counted"

    def __init__(self, persist: trio_persist.Persist) -> None:
        self.persist = persist
        self.snapshots: list[float] = []

    def statistics(self) -> trio_persist.PersistStatistics:
        return self.persist.statistics()

    def snapshot(self) -> tuple[trio_persist.GroupSnapshot, ...]:
        self.snapshots.append(trio.current_time())
        return self.persist.snapshot()


async def test_one_frame_is_built_per_interval_whatever_the_number_of_clients(
    autojump_clock: object, tmp_path: Path
) -> None:
    from trio_persist._monitor import serve_monitor

    path = str(tmp_path / "monitor.sock")
    received: list[bytes] = []
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        observed = CountingObserved(persist)
        await nursery.start(partial(serve_monitor, observed, path))

        async def client() -> None:
            async with await trio.open_unix_socket(path) as stream:
                frames = 0
                async for frame in read_frames(stream):
                    received.append(json.dumps(frame).encode())
                    frames += 1
                    if frames == 3:
                        break

        with trio.fail_after(10):
            async with trio.open_nursery() as clients:
                for _ in range(10):
                    clients.start_soon(client)
        nursery.cancel_scope.cancel()
    assert observed.snapshots == [0, 1, 2]  # not 30: one frame, sent to all ten
    assert len(received) == 30
    assert len(set(received)) == 3  # the same bytes for everyone


async def test_a_client_over_the_cap_gets_a_one_line_refusal(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(partial(persist.serve_monitor, path, max_clients=2))
        first = await trio.open_unix_socket(path)
        second = await trio.open_unix_socket(path)
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_unix_socket(path) as third:
            data = b""
            with trio.fail_after(5):
                while chunk := await third.receive_some(4096):
                    data += chunk
        assert json.loads(data) == {"refused": "this monitor serves at most 2 clients"}
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_unix_socket(path) as fourth:  # room again
            frames = read_frames(fourth)
            assert (await frames.__anext__())["version"] == 1
        await second.aclose()
        nursery.cancel_scope.cancel()


async def test_clients_that_never_read_are_dropped_and_leave_their_slots_to_new_ones(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(partial(persist.serve_monitor, path, max_clients=3))
        idle = [await trio.open_unix_socket(path) for _ in range(3)]  # they never read
        await trio.sleep(6)  # their first frame has waited five intervals unread
        async with await trio.open_unix_socket(path) as newcomer:
            frame = await read_frames(newcomer).__anext__()
        assert frame["version"] == 1  # served, not refused
        for stream in idle:  # each was dropped after its first few frames
            with trio.fail_after(1):
                assert len(b"".join([chunk async for chunk in stream])) < 10_000
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_sending_junk_is_read_at_most_4_kib_an_interval(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        async with await trio.open_unix_socket(path) as stream:
            sent = 0

            async def flood() -> None:
                nonlocal sent
                while sent < 8 << 20:  # bounded: a server reading it all ends it fast
                    await stream.send_all(b"x" * 4096)
                    sent += 4096

            async def read() -> None:  # it reads its frames, so it is not dropped
                async for _ in read_frames(stream):
                    pass

            async with trio.open_nursery() as flooding:
                flooding.start_soon(flood)
                flooding.start_soon(read)
                await trio.sleep(10)
                sent_at_10 = sent
                await trio.sleep(10)
                flooding.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    # Once the socket buffers are full, the flood advances only as fast as the
    # server reads: 4 KiB a second (a server reading everything took all 8 MiB).
    assert 0 < sent_at_10 <= sent < 2 << 20


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"interval": float("nan")}, ValueError, "interval must be > 0 seconds and finite"),
        ({"interval": float("inf")}, ValueError, "interval must be > 0 seconds and finite"),
        ({"interval": "1"}, TypeError, "interval must be a number of seconds"),
        ({"max_groups": 0}, ValueError, "max_groups must be >= 1"),
        ({"max_clients": 1.5}, TypeError, "max_clients must be a positive int"),
    ],
)
async def test_monitor_options_are_checked_before_anything_is_bound(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    path = tmp_path / "m.sock"
    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(error, match=match):
            await persist.serve_monitor(str(path), **options)
    assert not path.exists()


# -- the socket file survives restarts and belongs to its server ----------------------


def test_a_socket_left_by_a_killed_process_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "monitor.sock"
    script = (
        "import socket, os, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.bind({str(path)!r}); s.listen(1)\n"
        "print('bound', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGKILL
    assert stat.S_ISSOCK(path.stat().st_mode)  # left behind, nobody listening

    async def main() -> None:
        async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
            await nursery.start(persist.serve_monitor, str(path))
            async with await trio.open_unix_socket(str(path)) as stream:
                assert (await read_frames(stream).__anext__())["version"] == 1
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not path.exists()


async def test_a_server_removes_its_socket_only_if_it_is_still_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        os.unlink(path)  # the path is taken over by another program...
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(path)
            nursery.cancel_scope.cancel()  # ...and the server stops
            await trio.testing.wait_all_tasks_blocked()
        assert stat.S_ISSOCK(os.stat(path).st_mode)  # the other program's socket stays
    assert not await trio.Path(path + ".lock").exists()  # the server's lock file is gone


async def test_two_servers_claiming_one_stale_path_at_once_never_lose_a_live_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: server A finds a socket left by a killed process and, while A
    # decides it is dead, server B replaces it with its live one; A must not
    # then remove B's socket. The probe is where A decides, so B starts there.
    from trio_persist import _monitor

    path = str(tmp_path / "monitor.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # left behind: nobody accepts on it
    outcomes: dict[str, str] = {}
    probe = _monitor._is_alive
    b_done = threading.Event()
    b_stop = threading.Event()

    def run_b() -> None:
        async def serve_b() -> None:
            async with trio_persist.open_persist(device) as b, trio.open_nursery() as nursery:
                try:
                    await nursery.start(b.serve_monitor, path)
                except FileExistsError:
                    outcomes["b"] = "refused"
                    return
                finally:
                    b_done.set()
                outcomes["b"] = "serving"
                await trio.to_thread.run_sync(b_stop.wait)
                nursery.cancel_scope.cancel()

        trio.run(serve_b)

    thread = threading.Thread(target=run_b)

    def probe_while_b_starts(probed: str) -> bool:
        if not thread.is_alive() and not b_done.is_set():
            alive = probe(probed)  # A's verdict: dead...
            thread.start()  # ...and B claims the path before A acts on it
            assert b_done.wait(30)
            return alive
        return probe(probed)

    monkeypatch.setattr(_monitor, "_is_alive", probe_while_b_starts)
    try:
        async with trio_persist.open_persist(device) as a, trio.open_nursery() as nursery:
            await nursery.start(a.serve_monitor, path)
            outcomes["a"] = "serving"
            async with await trio.open_unix_socket(path) as stream:
                frame = await read_frames(stream).__anext__()
            nursery.cancel_scope.cancel()
    finally:
        b_stop.set()
        await trio.to_thread.run_sync(thread.join, 30)
    assert outcomes == {"a": "serving", "b": "refused"}  # one server, never two
    assert frame["version"] == 1  # and the path leads to it


async def test_by_default_sixty_four_clients_are_served_and_one_more_refused(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "monitor.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        served = [await trio.open_unix_socket(path) for _ in range(64)]
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_unix_socket(path) as extra:
            data = b""
            with trio.fail_after(5):
                while chunk := await extra.receive_some(4096):
                    data += chunk
        assert json.loads(data) == {"refused": "this monitor serves at most 64 clients"}
        for stream in served:
            await stream.aclose()
        nursery.cancel_scope.cancel()
