"""How long a provider asked us to wait, from any of the headers providers use for it.

``retry-after-ms`` and ``retry-after`` (seconds or an HTTP-date) apply to any status. On a
429, OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` (durations such as ``6m0s``) and
Anthropic's ``anthropic-ratelimit-*-reset`` (RFC 3339 times) say when the limit that was hit
resets; the one whose ``remaining`` is 0 is the limit that was hit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime

__all__ = ["retry_after_seconds"]

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?"
)
_LIMITS = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
    ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"),
    ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"),
    ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining"),
    ("anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining"),
)


def _duration(value: str) -> float | None:
    """An OpenAI reset duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) in seconds."""
    match = _DURATION.fullmatch(value.strip())
    if not value.strip() or match is None:
        return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _reset(value: str, now: float) -> float | None:
    """A reset value: a duration, plain seconds, or an RFC 3339 time."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    duration = _duration(value)
    if duration is not None:
        return duration
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def retry_after_seconds(
    status: int, headers: Sequence[tuple[bytes, bytes]], now: float
) -> float | None:
    """Seconds the provider asked for, or ``None`` when it said nothing usable.

    ``now`` is the wall-clock time (``time.time()``), for HTTP-dates and RFC 3339 times.
    """
    found: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower.startswith((b"retry-after", b"x-ratelimit-", b"anthropic-ratelimit-")):
            found[lower.decode("latin-1")] = value.decode("latin-1")
    if not found:
        return None
    if "retry-after-ms" in found:
        try:
            return max(0.0, float(found["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in found:
        text = found["retry-after"].strip()
        try:
            return max(0.0, float(text))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(text).timestamp() - now)
        except (TypeError, ValueError):
            pass
    if status != 429:
        return None
    hit: list[float] = []
    any_reset: list[float] = []
    for reset_name, remaining_name in _LIMITS:
        if reset_name in found:
            seconds = _reset(found[reset_name], now)
            if seconds is None:
                continue
            any_reset.append(seconds)
            if found.get(remaining_name, "").strip() == "0":
                hit.append(seconds)
    if hit:
        return max(hit)
    return min(any_reset) if any_reset else None
