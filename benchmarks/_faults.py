"""The fake provider's fault modes, for the resilience benchmark: switched over
``POST /control``, shared by all connections, with a count and a log of what was answered.

Modes: ``ok``; ``flaky`` (503 with probability ``rate``, from a seeded generator); ``down``
(503 always); ``rate_limit_once`` (429 ``retry-after: 1`` to the first attempt of each
request tag, the ``user`` field of the body; 200 after).
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from benchmarks.fixtures import CHAT

__all__ = ["SEED", "Faults"]

#: The flaky mode's generator seed, unless ``/control`` gives one.
SEED = 20251126
_TAG = re.compile(rb'"user"\s*:\s*"([^"]+)"')
_LOG_LIMIT = 200_000


def _response(status: str, body: bytes, *headers: tuple[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Server: fake-provider", "Connection: keep-alive"]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _error(message: str, kind: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


_ANSWERS = {
    200: _response("200 OK", CHAT),
    503: _response(
        "503 Service Unavailable",
        _error("The fake provider is overloaded.", "server_error", "fake_down"),
    ),
    429: _response(
        "429 Too Many Requests",
        _error("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
        ("retry-after", "1"),
    ),
}


class Faults:
    """The fault mode and what it has answered; ``answer`` gives a chat call's response.

    Until the first ``/control`` command (``active``), the provider answers without it.
    """

    def __init__(self) -> None:
        self.active = False
        self.mode = "ok"
        self.rate = 0.0
        self.rng = random.Random(SEED)
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.log: list[tuple[str, float, int]] = []
        self.told: set[str] = set()
        self.changed_at = time.monotonic()

    def control(self, body: bytes) -> bytes:
        """Apply a ``/control`` command; the response tells the mode and the counts."""
        self.active = True
        command = json.loads(body) if body else {}
        if command.get("reset"):
            self.requests = 0
            self.statuses = {}
            self.log = []
            self.told = set()
        if "mode" in command:
            self.mode = command["mode"]
            self.rate = float(command.get("rate", 0.0))
            self.rng = random.Random(command.get("seed", SEED))
            self.changed_at = time.monotonic()
        reply: dict[str, Any] = {
            "mode": self.mode,
            "requests": self.requests,
            "statuses": self.statuses,
            "changed_at": self.changed_at,
        }
        if command.get("log"):
            reply["log"] = self.log
        return _response("200 OK", json.dumps(reply).encode())

    def answer(self, body: bytes) -> bytes:
        now = time.monotonic()
        self.requests += 1
        match = _TAG.search(body)
        tag = match.group(1).decode() if match else ""
        status = 200
        if self.mode == "down" or (self.mode == "flaky" and self.rng.random() < self.rate):
            status = 503
        elif self.mode == "rate_limit_once" and tag not in self.told:
            self.told.add(tag)
            status = 429
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if len(self.log) < _LOG_LIMIT:
            self.log.append((tag, now, status))
        return _ANSWERS[status]
