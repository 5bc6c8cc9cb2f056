"""Helpers for the settings module of a Celery (or Django) project."""

from __future__ import annotations

import re

__all__ = ["split_urls"]

#: Where a ``redlock_masters`` string is cut: at commas or spaces followed by a scheme.
_BETWEEN_URLS = re.compile(r"[\s,]+(?=(?:redis|rediss|unix)://)", re.IGNORECASE)


def split_urls(text: str) -> list[str]:
    """The URLs of a comma- or space-separated ``redlock_masters`` string.

    Cut only where a comma or space is followed by ``redis://``, ``rediss://`` or
    ``unix://``, so a comma inside a password never breaks a URL in two (a password
    holding ``,redis://`` itself must be percent-encoded); separators around the whole
    string are dropped.
    """
    parts = (part.strip(" \t\r\n,") for part in _BETWEEN_URLS.split(text))
    return [part for part in parts if part]
