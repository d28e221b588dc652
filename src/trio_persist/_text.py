"""Text that came from outside, made safe to show and to log.

Groups, requests, labels, error messages and node names are written by users,
by remote processes or by attackers. Whatever ends up on an operator's
terminal or in a frame passes through here: a ``repr`` or ``str`` that raises
becomes a placeholder (it never kills the caller), control characters (escape
sequences, carriage returns, newlines) are replaced, and long text is cut.
Rendering then shows it literally, never as markup.
"""

from __future__ import annotations

import re

__all__ = ["cut", "describe", "literal", "safe_repr", "safe_str"]

# C0 and C1 controls and DEL: the bytes that drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _placeholder(value: object, what: str) -> str:
    return f"<{type(value).__name__} with a failing {what}>"


def safe_repr(value: object, limit: int = 200) -> str:
    """``repr(value)``, or a placeholder if it raises; cut to *limit* characters."""
    try:
        text = repr(value)
    except Exception:
        text = _placeholder(value, "__repr__")
    if not isinstance(text, str):  # a __repr__ returning something else
        text = _placeholder(value, "__repr__")
    return cut(text, limit)


def safe_str(value: object, limit: int = 500) -> str:
    """``str(value)``, or a placeholder if it raises; cut to *limit* characters."""
    try:
        text = str(value)
    except Exception:
        text = _placeholder(value, "__str__")
    if not isinstance(text, str):
        text = _placeholder(value, "__str__")
    return cut(text, limit)


def cut(text: str, limit: int) -> str:
    """*text*, with its middle replaced by an ellipsis if longer than *limit*."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return text[:limit]
    head = (limit - 1) // 2 + (limit - 1) % 2
    tail = limit - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def literal(text: object, limit: int = 200) -> str:
    """Text safe for a terminal: a string, no control characters, at most *limit* long."""
    if not isinstance(text, str):
        text = safe_str(text, limit)
    return cut(_CONTROL.sub("�", text), limit)


def describe(error: BaseException) -> str:
    """``"Type: message"`` for an error (just ``"Type"`` without a message), even
    one whose ``__str__`` raises."""
    message = safe_str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
