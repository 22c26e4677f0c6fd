"""URLs as messages, logs and ``/health`` show them: without their secrets (pure).

The one redaction of the package. A signed URL carries its secret in the query string
(``?X-Amz-Signature=...``, ``?token=...``) and a URL may carry ``user:pass@``; neither
is ever shown. What is left names the place: scheme, host (an IPv6 host keeps its
brackets), port and path, with control characters escaped so a URL cannot forge a log
line.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

UNPARSEABLE = "<unparseable URL>"

_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_ABSOLUTE = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")
_RELATIVE = re.compile(r"""(\burl: |\b(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) )"""
                       r"""(/[^\s'"<>?#]*)[?#][^\s'"<>)]*""")
"""urllib3's ``... with url: /path?query (Caused by ...)`` and request lines
(``"GET /path?query HTTP/1.1"``)."""


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", text)


def redact_url(url: str) -> str:
    """``url`` without its query, fragment and credentials: ``scheme://host[:port]/path``."""
    if not isinstance(url, str):
        return UNPARSEABLE
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return UNPARSEABLE
    if not parts.scheme or not parts.netloc:
        return UNPARSEABLE
    host = parts.netloc.rpartition("@")[2]  # as written: [v6] brackets and the port kept
    return _escape(f"{parts.scheme.lower()}://{host}{parts.path}")


def redact_text(text: str) -> str:
    """``text`` (an exception's message, a library's error) with every URL in it
    redacted, absolute (``https://h/p?sig=x``) or urllib3's relative ``url: /p?sig=x``."""
    text = _ABSOLUTE.sub(lambda m: redact_url(m.group()), text)
    return _RELATIVE.sub(lambda m: m.group(1) + m.group(2), text)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every URL in every record, whoever logs it (HTTP
    libraries log request lines with their query strings at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
