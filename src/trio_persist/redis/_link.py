"""The Redis backend's link to its server: the bounded step every command runs in.

Every command the backend sends runs under its own deadline (the backend's
``timeout``) on a client built without retries (`_client.open_client`): a
command either answers in time or its caller gets
`~trio_persist.BackendUnavailable`. coredis multiplexes commands over its
pooled connections, so no command holds a connection while it waits for
another; scripts go on a connection of the backend's own while it is up
(`Direct`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._exceptions import BackendUnavailable
from .._logging import logger
from ._admission import Admission
from ._client import classify, drop_errors, exception_leaves, is_cluster
from ._direct import Direct
from ._resp import no_script_class, pack_head, pack_more

if TYPE_CHECKING:
    from ._connection import Sent

__all__ = ["Counters", "Link", "Prepared"]


@attrs.define
class Counters:
    """What one backend counts (`RedisBackend.statistics` copies them)."""

    led: int = 0
    followed: int = 0
    takeovers: int = 0
    fenced: int = 0
    lost: int = 0
    unavailable: int = 0
    corrupt: int = 0
    round_trips: int = 0
    leading: int = 0
    following: int = 0
    routed_out: int = 0
    routed_in: int = 0
    moved: int = 0
    worker_failovers: int = 0
    owned: int = 0


@attrs.define(eq=False)
class Link:
    """One backend's way to Redis: its client, its scripts, and the bounded step.

    The client is used inside `attached` (and `Direct` keeps a connection of
    the backend's own to its server meanwhile, for scripts); a step taken
    outside is `BackendUnavailable`. New calls are admitted by `admission`.
    """

    where: str
    timeout: float
    counters: Counters
    client: Any = None
    scripts: dict[str, Any] = attrs.Factory(dict)
    max_pending: int = 128
    pending: int = 0
    """Steps in progress now."""
    admission: Admission = attrs.field(init=False)
    direct: Direct = attrs.Factory(Direct)
    retried: int = 0
    """Attempts of steps that a broken connection failed and that were tried again."""
    _down: bool = False
    _pipelining: bool = False

    def __attrs_post_init__(self) -> None:
        self.admission = Admission(self.max_pending, self.timeout / 2, self.where)

    def attach(self, client: Any, sources: dict[str, str]) -> None:
        """Use *client* from now on, with the Lua scripts *sources* (name: source)."""
        from coredis.commands.script import Script

        self.scripts = {name: Script(script=source) for name, source in sources.items()}
        self.client = client

    @contextlib.asynccontextmanager
    async def attached(self, client: Any, sources: dict[str, str]) -> AsyncIterator[None]:
        """Use *client* (with the Lua scripts *sources*) inside the block, with a
        connection of the backend's own to its server (`Direct`) meanwhile."""
        self.attach(client, sources)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.direct.keep, client)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.client = None

    async def step(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, shield: bool = False
    ) -> Any:
        """Run one Redis step under the deadline; failures become clear errors.

        A connection that breaks (a server restarting, a pooled connection that
        died) is tried again within the same deadline, at once and then every
        few milliseconds, unless Redis is known to be down (then once): every
        script is idempotent, so a repeat never acts twice. With *shield*, the
        step goes on whoever cancels its caller (the deadline still holds).
        """
        if self.client is None:
            raise BackendUnavailable(f"{self.where}: the backend is not running")
        self.counters.round_trips += 1
        self.pending += 1
        deadline = trio.current_time() + self.timeout
        try:
            with trio.CancelScope(deadline=deadline, shield=shield):
                return self._answered(await self._attempt(fn, args, deadline))
            raise trio.TooSlowError  # the deadline passed
        except BaseException as exc:
            translated = self._failed(exc, what)
            if translated is None:
                raise
            raise translated from None
        finally:
            self.pending -= 1

    def _answered(self, answer: Any) -> Any:
        if self._down:
            self._down = False
            logger.warning("%s answers again", self.where)
        return answer

    async def _attempt(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], deadline: float
    ) -> Any:
        pause = 0.0
        while True:
            try:
                return await fn(*args)
            except drop_errors() as exc:
                if (self._down and pause) or trio.current_time() + pause >= deadline:
                    raise exc from None
                self.retried += 1
            await trio.sleep(pause)
            pause = min(max(2 * pause, 0.005), 0.1)

    def _failed(self, error: BaseException, what: str) -> Exception | None:
        """The error to raise for a failed step (counted; an outage logged once), or
        None if *error* is a cancellation or the program exiting.

        Only client code runs inside a step, so any other error is the
        backend's failure, whatever its type (a client may raise a TypeError
        of its own when a Cluster node dies): it never reaches the persist.
        """
        where = f"{self.where} ({what})"
        translated = classify(error, where)
        if translated is None:
            found = list(exception_leaves(error))
            if not found or not all(isinstance(leaf, Exception) for leaf in found):
                return None
            translated = BackendUnavailable(f"{where} failed: {found[0]!r}")
        if isinstance(translated, BackendUnavailable):
            self.counters.unavailable += 1
            if not self._down:
                self._down = True
                logger.warning("%s", translated)
        else:
            self.counters.corrupt += 1
        return translated

    async def call(self, command: str, *args: Any) -> Any:
        """Run one plain command (*command* is the client's method name, *args*
        in the order Redis takes them), unbounded and uncounted (callers bound
        it): on the backend's own connection while it is up, else through the
        client. Its own connection is always warm and carries the scripts sent
        before in order; the client's pool may have to open (and greet) a
        connection first, several round trips on a slow link.
        """
        connection = self.direct.usable()
        if connection is not None:
            return await connection.request(command.upper(), *args)
        return await getattr(self.client, command)(*args)

    async def script(
        self, name: str, keys: list[str], args: list[Any], *, shield: bool = False
    ) -> Any:
        """Run the script *name* as one bounded step (see `step`)."""
        return await self.step(name, self.run_script, name, keys, args, shield=shield)

    async def script_each(
        self, name: str, requests: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Run the script *name* once per ``(keys, args)``: the answers, in order, each
        the script's reply or the exception it met. Not bounded (callers bound it).

        On the backend's own connection (`Direct`), all sent at once (one
        write: one pipeline on the wire). Else, on one server, one
        pipeline, unless one is on its way already (a pipeline holds a pooled
        connection of its own: a second one would open another, which costs
        round trips). On a Cluster, and meanwhile, each request on its own,
        multiplexed with the other commands: a Cluster pipeline fails whole
        when one master is down, and registering scripts on one would ask
        every master first.
        """
        from coredis.exceptions import NoScriptError

        script = self.scripts[name]
        connection = self.direct.usable()
        if connection is not None:
            commands = [_evalsha(script.sha, keys, args) for keys, args in requests]
            answers = await connection.request_each(commands)
            if any(isinstance(answer, NoScriptError) for answer in answers):
                await connection.request(b"SCRIPT", b"LOAD", script.script)
                answers = await connection.request_each(commands)
            return answers
        if self._pipelining or is_cluster(self.client):
            each: list[Any] = [None] * len(requests)

            async def one(index: int, keys: list[str], args: list[Any]) -> None:
                try:
                    each[index] = await self.run_script(name, keys, args)
                except Exception as exc:
                    each[index] = exc

            async with trio.open_nursery() as nursery:
                for index, (keys, args) in enumerate(requests):
                    nursery.start_soon(one, index, keys, args)
            return each
        self._pipelining = True
        try:
            try:
                return await self._pipeline(script.sha, requests)
            except NoScriptError:  # a server that forgot the script (restarted): load it
                await self.client.script_load(script.script)
                return await self._pipeline(script.sha, requests)
        finally:
            self._pipelining = False

    async def _pipeline(self, sha: str, requests: list[tuple[list[str], list[Any]]]) -> list[Any]:
        from coredis.exceptions import NoScriptError

        async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
            pending = [pipe.evalsha(sha, keys=keys, args=args) for keys, args in requests]
        answers = [await request for request in pending]
        for answer in answers:
            if isinstance(answer, NoScriptError):
                raise answer
        return answers

    def prepare(self, name: str, keys: list[str], args: list[Any], more: int) -> Prepared:
        """The call of the script *name* with its first arguments *args*,
        packed now for the backend's own connection: `script_prepared` adds
        the *more* others and sends it (what is known early costs nothing
        when the call is due)."""
        command = _evalsha(self.scripts[name].sha, keys, args)
        return Prepared(name, keys, args, pack_head(command, more))

    async def script_prepared(self, prepared: Prepared, more: list[Any], *, shield: bool) -> Any:
        """Run a `prepare` d script with its last arguments *more*, as one bounded
        step (see `step`). On the backend's own connection its bytes leave
        first, then the step begins and waits for the answer."""
        command = prepared.head + pack_more(more)
        connection = self.direct.usable() if self.client is not None else None
        sent = [connection.send_at_once(command) if connection is not None else None]
        return await self.step(
            prepared.name, self._run_prepared, prepared, more, command, sent, shield=shield
        )

    async def _run_prepared(
        self, prepared: Prepared, more: list[Any], command: bytes, sent: list[Sent | None]
    ) -> Any:
        first, sent[0] = sent[0], None  # sent already: its answer (a retry sends again)
        connection = self.direct.usable() if first is None else first.connection
        if connection is None:
            return await self.run_script(prepared.name, prepared.keys, [*prepared.args, *more])
        try:
            if first is not None:
                return await first.reply()
            return await connection.request_packed(command)
        except no_script_class():  # (evaluated only when something was raised)
            await connection.request(b"SCRIPT", b"LOAD", self.scripts[prepared.name].script)
            return await connection.request_packed(command)

    async def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run the script *name* once, unbounded and uncounted (callers bound it).

        On the backend's own connection while it is up (`Direct`), else through
        the client. EVALSHA directly (coredis's Script wrapper costs ~30 us a
        call); a server that forgot the script (restarted) gets it loaded (on
        the same connection), then it runs again.
        """
        from coredis.exceptions import NoScriptError

        script = self.scripts[name]
        connection = self.direct.usable()
        if connection is None:
            try:
                return await self.client.evalsha(script.sha, keys=keys, args=args)
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self.client.evalsha(script.sha, keys=keys, args=args)
        command = _evalsha(script.sha, keys, args)
        try:
            return await connection.request(*command)
        except NoScriptError:
            await connection.request(b"SCRIPT", b"LOAD", script.script)
            return await connection.request(*command)


def _evalsha(sha: str, keys: list[str], args: list[Any]) -> list[Any]:
    return [b"EVALSHA", sha, len(keys), *keys, *args]


@attrs.frozen
class Prepared:
    """A script's call whose first arguments are known (`Link.prepare`)."""

    name: str
    keys: list[str]
    args: list[Any]
    head: bytes
    """The call packed up to those arguments, counting the ones to come."""
