"""Counts in messages: ``counted(1, "video")`` is "1 video", ``counted(2, "video")`` "2 videos"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number that agrees with it (``plural`` for irregular forms: class -> classes)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def agrees(n: int, singular: str, plural: str) -> str:
    """The verb form that agrees with ``n`` things: ``agrees(n, "has", "have")``."""
    return singular if n == 1 else plural
