"""The Redis backend's connection helpers, alone: redaction, TLS defaults, how
errors are classified, and how a waiting follower is woken."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import ResponseError, WrongTypeError

import trio_persist
from trio_persist.redis._client import classify, redact, secure_url
from trio_persist.redis._subscriber import Watch


def test_redaction_hides_passwords_and_nothing_else() -> None:
    assert redact("redis://user:pw@host:1/0?password=x&db=2") == (
        "redis://user:***@host:1/0?password=***&db=2"
    )
    assert redact("redis://:pw@host:1/0") == "redis://:***@host:1/0"
    assert redact("redis://host:1/0?a=1&b=2") == "redis://host:1/0?a=1&b=2"


def test_only_rediss_urls_get_tls_checks() -> None:
    for url in ("redis://h:1/0", "unix:///tmp/redis.sock", "unix:///tmp/s?db=1"):
        assert secure_url(url) == url


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (WrongTypeError("WRONGTYPE x"), trio_persist.CorruptResult, "holds a foreign value"),
        (ResponseError("ERR script failed"), trio_persist.BackendUnavailable, "failed"),
        (RedisConnectionError("gone"), trio_persist.BackendUnavailable, "is unreachable"),
        (OSError("refused"), trio_persist.BackendUnavailable, "is unreachable"),
        (trio.TooSlowError(), trio_persist.BackendUnavailable, "did not answer in time"),
    ],
)
def test_redis_errors_become_clear_errors(
    error: Exception, kind: type[Exception], message: str
) -> None:
    translated = classify(error, "Redis at x")
    assert isinstance(translated, kind)
    assert message in str(translated)


def test_errors_that_are_not_redis_are_left_alone() -> None:
    assert classify(KeyError("mine"), "Redis at x") is None


async def test_a_poked_follower_looks_once_then_waits_again(autojump_clock: object) -> None:
    watch = Watch("k")
    watch.poke()
    await watch.wait(5)
    assert trio.current_time() == 0  # looked at once
    await watch.wait(5)
    assert trio.current_time() == 5  # and then waited the full time
    watch.deliver(b"news")
    await watch.wait(5)
    assert (trio.current_time(), watch.inbox) == (5, [b"news"])


def test_a_backend_on_a_client_names_its_address_without_credentials() -> None:
    import coredis

    from trio_persist.redis import RedisBackend

    client = coredis.Redis(host="127.0.0.1", port=6390, password="hunter2")
    assert "redis://127.0.0.1:6390" in repr(RedisBackend(client))
    assert "hunter2" not in repr(RedisBackend(client))
