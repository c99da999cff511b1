"""``tuned_gc()``: the collector frozen and slowed for serving, and put back afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from llm_proxy_mw import tuned_gc
from llm_proxy_mw.gc_tuning import SERVING_THRESHOLD


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    """Each test leaves the collector's thresholds and frozen generation as it found them."""
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield
    gc.set_threshold(*thresholds)
    if frozen == 0:
        gc.unfreeze()


def test_it_freezes_what_start_up_built_and_collects_less_often() -> None:
    before = gc.get_threshold()
    built = [object() for _ in range(3)]  # what a start-up leaves alive
    with tuned_gc():
        assert gc.get_freeze_count() >= len(built)
        assert gc.get_threshold() == (SERVING_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_the_threshold_can_be_chosen() -> None:
    with tuned_gc(threshold=20_000):
        assert gc.get_threshold()[0] == 20_000


def test_the_thresholds_come_back_when_the_block_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="serving stopped"), tuned_gc():
        raise RuntimeError("serving stopped")
    assert gc.get_threshold() == before


@pytest.mark.parametrize("threshold", [0, -1])
def test_a_threshold_that_would_stop_collecting_is_refused(threshold: int) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="positive"), tuned_gc(threshold=threshold):
        pass
    assert gc.get_threshold() == before
