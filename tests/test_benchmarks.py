"""Smoke test of the translation benchmark: the target runs, in process and end to end,
every row is timed and its answer checked (figures are not asserted: they belong to the
machine)."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main
from benchmarks.translation import ROUTES


@pytest.mark.e2e
def test_translation_target_runs_every_route(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translation", "--quick", "--load", "python"]) == 0
    out = capsys.readouterr().out
    assert "check failed" not in out
    assert "**end to end**" not in out
    for route in ROUTES:
        # Its CPU row and, with a figure in every cell, its per-event row.
        assert out.count(f"| {route.label} |") == 2
    for kind in ("JSON", "100-chunk stream"):
        assert f"| {kind} |" in out
    goals = [line for line in out.splitlines() if line.startswith("- ") and "(goal" in line]
    assert len(goals) == 3
    assert all(line.count(" — ") == 2 for line in goals[:2])  # in process and end to end
    assert not any("not measured" in line for line in goals)
