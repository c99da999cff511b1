"""A clock for tests that inject one: it moves only when told to."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A clock (monotonic or wall: ``start`` says which) that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
