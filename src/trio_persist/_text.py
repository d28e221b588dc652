"""Text that came from outside, made safe to show and to log.

Groups, requests, labels, error messages and node names are written by users,
by remote processes or by attackers. Whatever ends up on an operator's
terminal or in a frame passes through here: a ``repr`` or ``str`` that raises
becomes a placeholder (it never kills the caller), control characters (escape
sequences, carriage returns, newlines) and invisible ones (bidi overrides,
zero-width characters, U+2028 and U+2029) are replaced, and long text is cut.
Rendering then shows it literally, never as markup.
"""

from __future__ import annotations

import re

__all__ = ["cut", "describe", "literal", "safe_repr", "safe_str"]

# What must never reach a terminal or a log line as it is: C0 and C1 controls
# and DEL (they drive a terminal); every format character (Unicode's Cf: bidi
# overrides and isolates, which reorder what follows, zero-width spaces and
# joiners, which hide text, tags); the line and paragraph separators (a line
# break to many readers); lone surrogates (they cannot even be printed).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


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
    """Text safe for a terminal: a string, at most *limit* long, in which every
    control or format character, line separator and lone surrogate is ``�``."""
    if not isinstance(text, str):
        text = safe_str(text, limit)
    return _UNSAFE.sub("\ufffd", cut(text, limit))


def describe(error: BaseException) -> str:
    """``"Type: message"`` for an error (just ``"Type"`` without a message), even
    one whose ``__str__`` raises."""
    message = safe_str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
