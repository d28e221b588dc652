"""The Redis backend's connections: the client, its errors, and one shared subscriber.

Every command the backend sends runs under its own deadline (the backend's
``timeout``) on a client built without retries: a command either answers in
time or its caller gets `~trio_persist.BackendUnavailable`. coredis multiplexes
commands over its pooled connections, so no command holds a connection while
it waits for another.

Every followed key is served by *one* subscriber connection per backend, a
pattern subscription to all of the namespace's channels: following a key costs
no subscribe or unsubscribe round trip, and publications are dispatched in
process to the flights that wait for them (`Subscriber.watch`).
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._exceptions import BackendUnavailable, CorruptResult
from .._logging import logger
from ._admission import Admission
from ._direct import Direct, Pings, listen, settings_of
from ._resp import no_script_class, pack_head, pack_more
from ._scripts import key_of_channel, pattern_of

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    import coredis

    from ._connection import Sent, Settings

__all__ = [
    "Counters",
    "Link",
    "Prepared",
    "Subscriber",
    "Watch",
    "check_url",
    "classify",
    "open_client",
    "place_of",
    "redact",
    "refuse_a_cluster_node",
]


def check_url(url: str) -> None:
    """Refuse a URL whose credentials hold an unencoded ``/``, ``#`` or ``?``.

    Such a URL is parsed with part of the password as the host or the path:
    it cannot work, and its password would show in messages. The error says
    how to encode it and shows nothing of the URL.
    """
    if _ambiguous(url):
        raise ValueError(
            "the Redis URL's user name or password holds an unencoded '/', '#' or '?' "
            "(or '@'): percent-encode it, for example with urllib.parse.quote(password, "
            "safe='')"
        )


def _ambiguous(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return True
    rest = parts.path + parts.query + parts.fragment
    return "@" in rest and parts.scheme in ("redis", "rediss")


def redact(url: str) -> str:
    """*url* with its password (in the authority or the query) replaced by ``***``."""
    if _ambiguous(url):
        return "<a Redis URL whose credentials are not percent-encoded>"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # pragma: no cover - _ambiguous said so already
        return "<an unparsable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _ = credentials.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    shown = [(k, "***" if k.lower() == "password" else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(shown, safe="*"), "")
    )


def place_of(url: object, argument: str) -> str:
    """How messages name the server of *url* (a URL or a client), without secrets.

    Raises:
        ValueError: *url* is a string but not a Redis URL, or its credentials
            are not percent-encoded.
        TypeError: *url* is neither a string nor a coredis client. *argument*
            names the parameter in both messages.
    """
    if isinstance(url, str):
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{argument} must be a redis://, rediss:// or unix:// URL, or a coredis "
                f"client; got {redact(url)!r}"
            )
        check_url(url)
        return redact(url)
    if callable(getattr(url, "evalsha", None)):
        return describe(url)
    raise TypeError(f"{argument} must be a Redis URL or a coredis client, got {type(url).__name__}")


def describe(client: Any) -> str:
    """A client's address for messages, without credentials."""
    pool = getattr(client, "connection_pool", None)
    location = getattr(pool, "location", None)
    if location is not None:
        host, port = getattr(location, "host", None), getattr(location, "port", None)
        if host is not None:
            return f"redis://{host}:{port}"
        path = getattr(location, "path", None)
        if path is not None:
            return f"unix://{path}"
    return f"a {type(client).__name__} client"


def secure_url(url: str) -> str:
    """A ``rediss://`` URL with certificate and hostname checks on, unless it says otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("ssl_cert_reqs", "required")
    if query["ssl_cert_reqs"].lower() != "required":
        # An explicit choice, respected (a hostname cannot be checked without a
        # certificate), and said: anyone on the path can then read and forge.
        logger.warning(
            "rediss:// with ssl_cert_reqs=%s: the server's certificate is not checked",
            query["ssl_cert_reqs"],
        )
        query.setdefault("ssl_check_hostname", "false")
    query.setdefault("ssl_check_hostname", "true")
    scheme, netloc, path, _, fragment = parts
    return urllib.parse.urlunsplit((scheme, netloc, path, urllib.parse.urlencode(query), fragment))


def open_client(url: str, timeout: float) -> coredis.Redis[bytes]:
    """A client for *url* that never retries: the backend's deadlines are the bound."""
    import coredis
    from coredis.retry import NoRetryPolicy

    return coredis.Redis.from_url(
        secure_url(url),
        connect_timeout=timeout,
        stream_timeout=timeout,
        retry_policy=NoRetryPolicy(),
        # Commands are multiplexed; a full pool only queues them (under our deadlines).
        max_connections=16,
    )


async def refuse_a_cluster_node(client: Any, where: str, seconds: float) -> None:
    """Refuse a plain client on one node of a Redis Cluster, saying what to pass.

    Such a client half works (the other masters' keys answer MOVED). A
    server that does not answer in time is let through: the calls
    will say so. Waits at most *seconds*.
    """
    if _is_cluster(client):
        return
    info: Any = None
    with trio.move_on_after(seconds), contextlib.suppress(Exception):
        info = await client.info("cluster")
    if isinstance(info, dict) and str(info.get("cluster_enabled")) == "1":
        raise ValueError(
            f"{where} is a node of a Redis Cluster: pass a coredis.RedisCluster client "
            "instead (see the Redis page of the docs)"
        )


def _is_cluster(client: Any) -> bool:
    from coredis import RedisCluster

    return isinstance(client, RedisCluster)


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _certificate_error(error: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def classify(error: BaseException, where: str) -> Exception | None:
    """The error a caller gets for a failed Redis step, or None if *error* is not Redis's.

    Unreachable, slow or failing servers become `BackendUnavailable`
    (certificate failures say so); a key of the wrong type in the namespace is
    `CorruptResult`. Cancellation and anything not from Redis return None.
    """
    from coredis.exceptions import ResponseError, WrongTypeError

    leaves = list(_leaves(error))
    if not leaves or any(not isinstance(leaf, Exception) for leaf in leaves):
        return None
    first = leaves[0]
    for leaf in leaves:
        if isinstance(leaf, WrongTypeError) or (
            isinstance(leaf, ResponseError) and "WRONGTYPE" in str(leaf)
        ):
            return CorruptResult(
                f"{where}: a key in the namespace holds a foreign value ({leaf}); "
                "delete it or choose another namespace"
            )
    certificate = _certificate_error(first)
    if certificate is not None:
        return BackendUnavailable(f"{where}: TLS certificate verification failed: {certificate}")
    if isinstance(first, trio.TooSlowError):
        return BackendUnavailable(f"{where} did not answer in time")
    from coredis.exceptions import ConnectionError as RedisConnectionError

    if isinstance(first, (RedisConnectionError, OSError)):
        return BackendUnavailable(f"{where} is unreachable: {first}")
    if isinstance(first, _connection_errors()):
        return BackendUnavailable(f"{where} failed: {first}")
    return None


def _drops() -> tuple[type[Exception], ...]:
    """Errors of a connection that broke (as opposed to one that is slow)."""
    import anyio
    from coredis.exceptions import ConnectionError as RedisConnectionError

    return (
        RedisConnectionError,
        OSError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        anyio.EndOfStream,
    )


def _connection_errors() -> tuple[type[BaseException], ...]:
    import anyio
    from coredis.exceptions import RedisError

    return (
        RedisError,
        OSError,
        TimeoutError,
        trio.TooSlowError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        anyio.EndOfStream,
    )


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
            except _drops() as exc:
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
            leaves = list(_leaves(error))
            if not leaves or not all(isinstance(leaf, Exception) for leaf in leaves):
                return None
            translated = BackendUnavailable(f"{where} failed: {leaves[0]!r}")
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
        if self._pipelining or _is_cluster(self.client):
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


@attrs.define(eq=False)
class Watch:
    """What one following flight hears about its key: payloads, and pokes to look again."""

    key: str
    inbox: list[bytes] = attrs.Factory(list)
    poked: bool = False
    _event: trio.Event = attrs.Factory(trio.Event)

    def deliver(self, data: bytes) -> None:
        self.inbox.append(data)
        self._event.set()

    def poke(self) -> None:
        """Ask the follower to check the key now (a reconnect may have lost messages)."""
        self.poked = True
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Wait until something arrives or *seconds* pass; checkpoints."""
        if not self.inbox and not self.poked:
            with trio.move_on_after(seconds):
                await self._event.wait()
        else:
            await trio.lowlevel.checkpoint()
        self._event = trio.Event()
        self.poked = False


@attrs.define(eq=False)
class Subscriber:
    """One pattern subscription per backend, dispatching publications to `Watch` es."""

    namespace: str
    timeout: float
    watches: dict[str, set[Watch]] = attrs.Factory(dict)
    up: bool = False
    pings: Pings = attrs.Factory(Pings)
    _pause: float = 0.05

    async def caught_up(self) -> None:
        """Return once the subscription has read (and handed on) everything the
        server published to it before this call: what a follower waits for
        before it concludes from a look that its leader vanished, since the
        leader's outcome may have been sent first, and be still unread.

        Costs a round trip on the subscription's connection (at most the
        timeout); returns at once on a client whose subscription is coredis's
        (a Cluster, a Sentinel), or while none is up.
        """
        await self.pings.catch_up(self.timeout)

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        """Hear about *key* inside the block (registered before anything is sent)."""
        watch = Watch(key)
        watchers = self.watches.setdefault(key, set())
        watchers.add(watch)
        try:
            yield watch
        finally:
            watchers.discard(watch)
            if not watchers:
                del self.watches[key]

    def _on_message(self, message: Any) -> None:
        self._dispatch(message.get("channel"), message.get("data"))

    def _dispatch(self, channel: Any, data: Any) -> bool:
        # Runs inside the subscription's reader: must never raise. The pattern only
        # matches this namespace's channels, so every message names a key; what
        # it carries is checked by the follower that reads it (and counted there).
        # Returns whether a follower here waits for it (it was woken).
        key = key_of_channel(self.namespace, channel)
        if isinstance(data, str):
            data = data.encode()
        watches = self.watches.get(key, ()) if key is not None else ()
        if watches and isinstance(data, bytes):
            for watch in watches:
                watch.deliver(data)
            return True
        return False

    def _poke_all(self) -> None:
        for watchers in self.watches.values():
            for watch in watchers:
                watch.poke()

    def _now_up(self, connecting: trio.CancelScope) -> None:
        connecting.deadline = float("inf")
        self.up = True
        self._pause = 0.05
        self._poke_all()  # what was published while we were away

    async def _hold(
        self, client: Any, settings: Settings | None, pattern: str, up: Callable[[], None]
    ) -> None:
        """Subscribe, call *up* once subscribed, then dispatch publications until
        the connection drops (raises) or this is cancelled."""
        if settings is not None:
            idle = max(self.timeout, 1.0)
            await listen(settings, pattern, self._dispatch, idle, self.timeout, up, self.pings)
            return  # pragma: no cover - listen returns only by raising
        async with client.pubsub(
            pattern_handlers={pattern: self._on_message},
            ignore_subscribe_messages=True,
            retry_policy=None,
            subscription_timeout=self.timeout,
            max_idle_seconds=max(self.timeout, 1.0),
        ):
            up()
            await trio.sleep_forever()

    async def run(
        self, client: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the subscription up, reconnecting, until cancelled.

        Reports started once subscribed, or after ``timeout`` if Redis is away
        (followers then poll until it is back). On a plain client, the
        subscription is a lean connection of the backend's own (`listen`),
        made from the client's settings as `Direct` makes its own.
        """
        pattern = pattern_of(self.namespace)
        settings = settings_of(client)
        started = False
        self._pause = 0.05
        while True:
            failure: BaseException | None = None
            try:
                with trio.fail_after(self.timeout) as connecting:

                    def up(connecting: trio.CancelScope = connecting) -> None:
                        nonlocal started
                        self._now_up(connecting)
                        if not started:
                            started = True
                            task_status.started()

                    await self._hold(client, settings, pattern, up)
            except BaseException as exc:
                # A dropped connection, or coredis tearing down under cancellation
                # (then the checkpoint below raises our own Cancelled).
                # Whatever the client raises is a drop: only an exit of the
                # program (KeyboardInterrupt, SystemExit) goes through.
                allowed = (trio.Cancelled, Exception)
                if not all(isinstance(leaf, allowed) for leaf in _leaves(exc)):
                    raise
                failure = exc
            self.up = False
            self._poke_all()
            logger.debug("the Redis subscription dropped: %r", failure)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self._pause)
            self._pause = min(self._pause * 2, 1.0)
