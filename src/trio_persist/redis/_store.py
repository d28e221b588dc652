"""`RedisStore`: workers' states on Redis (a server, a Cluster or Sentinel), fenced by token.

Each group's record is one hash, ``<namespace>:state:{<digest>}`` (the digest
is the Redis Cluster hash tag, so groups spread over the masters and each
script touches one slot), with two fields: ``data``, the sealed record
(state, token, applied request ids, reply: `trio_persist._state_codec`), and
``token``, the fencing token of the owner that saved it, in decimal. One Lua
script compares the tokens and writes both fields: a save is fenced and whole
in one step. Tokens are compared as decimal strings (Lua numbers are doubles).
"""

from __future__ import annotations

import contextlib
from typing import Any, final

import attrs
import trio

from .._exceptions import BackendUnavailable, CorruptResult
from ..stores._base import DEFAULT_MAX_BYTES, StoreBase, stale, too_large
from ._client import classify, open_client, place_of, refuse_a_cluster_node
from ._link import Counters, Link

__all__ = ["DEFAULT_NAMESPACE", "RedisStore"]

DEFAULT_NAMESPACE = "trio-persist"
"""The namespace of a `RedisStore` given none: the other stores' default too."""

# KEYS[1]: the group's hash. ARGV[1]: the sealed record; ARGV[2]: its token in
# decimal, or '' for none. Returns {1} when written, {0, stored} when fenced
# out, {-1} when the stored token is not a token (a foreign write).
SAVE = """
local token = ARGV[2]
local stored = redis.call('HGET', KEYS[1], 'token')
if token ~= '' and stored then
  if not string.match(stored, '^%d+$') or #stored > 19 then return {-1} end
  stored = string.match(stored, '^0*(%d+)$')
  if #stored > #token or (#stored == #token and stored > token) then return {0, stored} end
end
redis.call('HSET', KEYS[1], 'data', ARGV[1])
if token == '' then
  redis.call('HDEL', KEYS[1], 'token')
else
  redis.call('HSET', KEYS[1], 'token', token)
end
return {1}
"""

# KEYS[1]: the group's hash. ARGV[1]: max_bytes. Returns the sealed record,
# nil when there is none, or its size when it is larger than max_bytes.
LOAD = """
local size = redis.call('HSTRLEN', KEYS[1], 'data')
if size == 0 then return false end
if size > tonumber(ARGV[1]) then return size end
return redis.call('HGET', KEYS[1], 'data')
"""


async def _release(closing: trio.Event, ended: trio.Event) -> None:
    """Close the connections a system task holds, and wait until they are closed."""
    closing.set()
    with trio.CancelScope(shield=True):
        await ended.wait()


def _check_timeout(_store: object, _attribute: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(value).__name__}")
    if not 0 < value < 1e6:
        raise ValueError(f"timeout must be more than 0 and less than 1e6 seconds, got {value!r}")


@final
@attrs.define(eq=False, repr=False, init=False)
class RedisStore(StoreBase):
    """States on Redis (or Valkey): one hash per group, every save fenced in one script.

    Enter the store (``async with``; a persist given the store does it while
    it is open) before using it: entering connects and checks the server, so a
    persist whose Redis cannot be reached fails when it opens. Entering is
    counted; the connections close when the last user leaves (whichever task
    it is, for a store made from a URL), and the store can be entered again.

    Every operation takes at most ``timeout`` seconds, then raises
    `~trio_persist.BackendUnavailable` (as does any Redis failure): nothing
    waits for ever on a stalled or vanished server. A save sent to Redis runs
    to its answer or its timeout even if its caller is cancelled meanwhile
    (the cancellation is delivered when it returns), so a cancelled save did
    nothing; a save that timed out may or may not have been applied (the old
    record or the new one is stored, never a torn one).

    A save whose token is lower than the stored record's is refused with
    `~trio_persist.StaleOwner` (counted in ``fenced``), in the same script that
    would have written it: tokens never go backwards while Redis keeps its
    data. What that asks of the deployment (persistence, failover) is in the
    docs' State stores page.

    Args:
        url_or_client: A ``redis://``, ``rediss://`` or ``unix://`` URL, or a
            coredis client (``coredis.Redis``, ``coredis.RedisCluster``, or a
            primary client from ``coredis.sentinel.Sentinel``), as
            `~trio_persist.redis.RedisBackend` takes them. ``rediss://``
            checks the certificate and the hostname unless the URL says
            otherwise. The store enters the client's connection pool itself.
        namespace: Prefix of the store's keys, and the name states are sealed
            to. None (the default) is ``"trio-persist"``; stores with other
            namespaces share a server without meeting.
        timeout: Seconds one operation may take before it raises
            `~trio_persist.BackendUnavailable`.
        signing_key: Seal states with an HMAC of this key (at least 16 bytes)
            and save them as pickles; without it, states are JSON values that
            read back equal, checked against damage but not forgery.
        max_bytes: The largest sealed record it writes or reads.
    """

    url: Any
    """The URL (or the client) the store was given."""
    timeout: float = attrs.field(default=5.0, kw_only=True, validator=_check_timeout)
    _shown: str = attrs.field(init=False, default="")
    _link: Link = attrs.field(init=False, default=None)
    _users: int = attrs.field(init=False, default=0)
    _exits: contextlib.AsyncExitStack = attrs.field(init=False, factory=contextlib.AsyncExitStack)
    _opening: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    def __init__(
        self,
        url_or_client: Any,
        *,
        namespace: str | None = None,
        timeout: float = 5.0,
        signing_key: bytes | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        place = place_of(url_or_client, "url_or_client")
        self.__attrs_init__(  # pyright: ignore[reportAttributeAccessIssue]
            url_or_client,
            namespace=DEFAULT_NAMESPACE if namespace is None else namespace,
            timeout=timeout,
            signing_key=signing_key,
            max_bytes=max_bytes,
        )
        self._shown = place
        self._link = Link(f"RedisStore({place!r})", self.timeout, Counters())

    def _place(self) -> str:
        return self._shown

    def __repr__(self) -> str:
        state = "open" if self._users else "closed"
        shown = super().__repr__().replace("trio_persist.stores.", "trio_persist.redis.", 1)
        return shown[:-1] + f" {state}>"

    def key_of(self, group: Any) -> str:
        """The Redis key holding *group*'s record (a hash: ``data`` and ``token``)."""
        return self._key(self._name(group))

    def _key(self, digest: str) -> str:
        return f"{self.namespace}:state:{{{digest}}}"

    # -- the life cycle ------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        """Connect (if this is the first user) and check the server answers.

        Raises:
            trio_persist.BackendUnavailable: Redis did not answer within ``timeout``.
            ValueError: *url_or_client* names one node of a Redis Cluster
                (pass a ``coredis.RedisCluster`` client instead).
        """
        async with self._opening:  # a second user waits for the first's connection
            self._users += 1
            try:
                if self._users == 1:
                    await self._connect()
            except BaseException:
                self._users -= 1
                await self._disconnect()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the connections if this was the last user."""
        self._users -= 1
        if not self._users:
            await self._disconnect()

    async def _connect(self) -> None:
        if isinstance(self.url, str):
            client = open_client(self.url, self.timeout)
            await self._hold(client)
        else:
            # A client the application gave: its pool is entered here, counted,
            # so that a client held open around the store (or by a backend)
            # serves it too; the client must then be open in a parent task.
            client = self.url
            await self._exits.enter_async_context(client.connection_pool)
        self._link.attach(client, {"save": SAVE, "load": LOAD})
        await self._link.step("connecting", client.ping)
        await refuse_a_cluster_node(client, self._link.where, self.timeout)

    async def _hold(self, client: Any) -> None:
        """Keep *client*'s connections open in a task of their own (a system task)
        until the store closes: the store's first and last users may be different
        tasks (persists in different tasks sharing the store)."""
        opened, closing, ended = trio.Event(), trio.Event(), trio.Event()
        failures: list[Exception] = []

        async def hold() -> None:
            try:
                async with client:
                    opened.set()
                    await closing.wait()
            except Exception as exc:  # a system task must not raise: the opener does
                failures.append(exc)
            finally:
                opened.set()
                ended.set()

        trio.lowlevel.spawn_system_task(hold, name=f"{self._link.where} connections")
        self._exits.push_async_callback(_release, closing, ended)
        await opened.wait()
        if failures:
            where = f"{self._link.where} (connecting)"
            raise classify(failures[0], where) or BackendUnavailable(
                f"{where} failed: {failures[0]!r}"
            ) from failures[0]

    async def _disconnect(self) -> None:
        self._link.client = None
        exits, self._exits = self._exits, contextlib.AsyncExitStack()
        await exits.aclose()

    # -- primitives ------------------------------------------------------------

    def _require_open(self) -> None:
        if self._link.client is None:
            raise BackendUnavailable(
                f"{self._link.where} is not open: enter it first (async with store), "
                "or give it to a persist, which does"
            )

    async def _read(self, digest: str, where: str) -> bytes | None:
        self._require_open()
        answer = await self._link.step(
            f"loading group {digest}",
            self._link.run_script,
            "load",
            [self._key(digest)],
            [self.max_bytes],
        )
        if answer is None:
            return None
        if isinstance(answer, int):
            too_large(where, answer, self.max_bytes)
        if not isinstance(answer, bytes):
            raise CorruptResult(
                f"{where}: the client decodes responses ({type(answer).__name__}); "
                "give the store a client built with decode_responses=False"
            )
        return answer

    async def _write(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        self._require_open()
        arguments = [data, "" if token is None else str(token)]
        answer: Any = None
        # Shielded: once sent, a save runs to its answer (bounded by the
        # timeout), so that a save whose caller was cancelled did nothing.
        with trio.CancelScope(shield=True):
            answer = await self._link.step(
                f"saving group {digest}",
                self._link.run_script,
                "save",
                [self._key(digest)],
                arguments,
            )
        if not isinstance(answer, list) or not answer:
            raise CorruptResult(f"{where}: Redis answered the save with {answer!r}")
        if answer[0] == 0 and token is not None:
            raise stale(where, token, int(answer[1]))
        if answer[0] != 1:
            raise CorruptResult(
                f"{where}: the stored token is not a number (a foreign write): refusing to "
                f"save over it. Delete the key {self._key(digest)!r} if it is yours"
            )

    async def _remove(self, digest: str, where: str) -> None:
        self._require_open()
        with trio.CancelScope(shield=True):
            await self._link.step(
                f"deleting group {digest}", self._link.client.delete, [self._key(digest)]
            )
