"""Smoke tests of the benchmarks that run in process: each target runs, every row is timed
and its answer checked (figures are not asserted: they belong to the machine)."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main
from benchmarks.translation import ROUTES


def test_translation_target_runs_every_route(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translation", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "check failed" not in out
    for route in ROUTES:
        # Its CPU row and, with a figure in every cell, its per-event row.
        assert out.count(f"| {route.label} |") == 2
    goals = [line for line in out.splitlines() if line.startswith("- ") and "(goal" in line]
    assert len(goals) == 3
    assert not any("not measured" in line for line in goals)
