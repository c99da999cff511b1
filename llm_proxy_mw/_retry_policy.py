"""``RetryPolicy``: a provider's retry policy, and the one place its defaults are written.

A module of its own that imports nothing of the package: the config builds policies from
TOML without importing the retry layer (which imports the config through routing).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One provider's retry policy; its defaults are the only ones (``RetryConfig``'s too).

    ``max_attempts`` counts the first attempt. ``backoff_base`` and ``backoff_max`` (seconds)
    shape the exponential backoff with full jitter; a wait the provider asks for above
    ``max_retry_after`` is not slept. ``retry_read_timeouts``: whether read timeouts, resets
    and protocol errors before the response started are retried.
    """

    #: Four attempts, one more than the SDKs' default: with 25% transient failures, three
    #: attempts cannot do better than 98.4% success; four give 99.6%.
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_retry_after: float = 60.0
    retry_read_timeouts: bool = True
