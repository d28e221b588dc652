"""The Redis backend's client: URLs, the client it opens, and what its errors mean.

A URL is checked before it is used (`check_url`) and never shown with its
password (`redact`); the client is built without retries (`open_client`),
since every command runs under the backend's own deadline; an error from it is
translated once, here, into what a caller of the backend can catch
(`classify`: `~trio_persist.BackendUnavailable` or `~trio_persist.CorruptResult`).
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import BackendUnavailable, CorruptResult
from .._logging import logger

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    import coredis

__all__ = [
    "check_url",
    "classify",
    "describe",
    "drop_errors",
    "exception_leaves",
    "is_cluster",
    "open_client",
    "place_of",
    "redact",
    "refuse_a_cluster_node",
    "secure_url",
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
    if is_cluster(client):
        return
    info: Any = None
    with trio.move_on_after(seconds), contextlib.suppress(Exception):
        info = await client.info("cluster")
    if isinstance(info, dict) and str(info.get("cluster_enabled")) == "1":
        raise ValueError(
            f"{where} is a node of a Redis Cluster: pass a coredis.RedisCluster client "
            "instead (see the Redis page of the docs)"
        )


def is_cluster(client: Any) -> bool:
    from coredis import RedisCluster

    return isinstance(client, RedisCluster)


def exception_leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from exception_leaves(inner)
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

    found = list(exception_leaves(error))
    if not found or any(not isinstance(leaf, Exception) for leaf in found):
        return None
    first = found[0]
    for leaf in found:
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


def drop_errors() -> tuple[type[Exception], ...]:
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
