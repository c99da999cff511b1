"""The third-party internals the package reaches into, checked where an upgrade would change
them: here, loudly, rather than in a proxy that restores wrong numbers.

- prometheus_client has no public way to seed a histogram, so ``ProxyMetrics.restore``
  continues a restarted process's histograms through a child's ``_sum`` and ``_buckets``
  (one value per bucket of ``DURATION_BUCKETS``, then ``+Inf``). pyproject.toml bounds
  prometheus-client below its next minor version: raise the bound when this file passes
  with the new one.

- The hot path counts through the same value objects (a counter child's ``_value``, a
  histogram child's ``_sum`` and ``_buckets``) instead of the public ``inc()`` and
  ``observe()``, which check the metric's type and their argument on every call: 2.5-3 µs of
  the full stack's ~57 in process (``python -m benchmarks layers``, interleaved), with the
  proxy's CPU per request at 1.47-1.53x the aiohttp floor's against a goal of 1.5x.

- The aiohttp transport's request class sets aiohttp's ``_skip_auto_headers`` itself instead
  of passing ``skip_auto_headers``, which builds two header dicts per request (~4 µs per
  upstream request in isolation). ``test_aiohttp_adds_no_headers_of_its_own`` in
  tests/test_transports.py fails if aiohttp stops honouring it; aiohttp is bounded below its
  next minor version.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from llm_proxy_mw.history import DURATION_BUCKETS
from llm_proxy_mw.metrics import ProxyMetrics


def test_a_histogram_child_keeps_its_sum_and_one_value_per_bucket() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["l"], buckets=DURATION_BUCKETS, registry=registry)
    child = histogram.labels("x")
    assert len(child._buckets) == len(DURATION_BUCKETS) + 1

    child._buckets[2].inc(5)
    child._sum.inc(1.5)
    child._buckets[-1].inc(1)

    sample = registry.get_sample_value
    below = floatToGoString(DURATION_BUCKETS[1])
    at = floatToGoString(DURATION_BUCKETS[2])
    assert sample("h_bucket", {"l": "x", "le": below}) == 0
    assert sample("h_bucket", {"l": "x", "le": at}) == 5  # cumulative from here on
    assert sample("h_bucket", {"l": "x", "le": "+Inf"}) == 6
    assert sample("h_count", {"l": "x"}) == 6
    assert sample("h_sum", {"l": "x"}) == 1.5


def test_restored_histogram_totals_are_exposed() -> None:
    metrics = ProxyMetrics(CollectorRegistry(), models=["m"])
    totals = {
        json.dumps(["duration", "p", "m", 3]): 4.0,
        json.dumps(["duration_sum", "p", "m"]): 2.5,
        json.dumps(["ttfb", "p", "m", len(DURATION_BUCKETS)]): 1.0,  # the +Inf slot
        json.dumps(["ttfb_sum", "p", "m"]): 99.0,
    }
    assert metrics.restore(totals) == 4

    sample = metrics.registry.get_sample_value
    duration = "llm_proxy_request_duration_seconds"
    labels = {"provider": "p", "model": "m"}
    assert sample(f"{duration}_count", labels) == 4
    assert sample(f"{duration}_sum", labels) == 2.5
    le = floatToGoString(DURATION_BUCKETS[3])
    assert sample(f"{duration}_bucket", {**labels, "le": le}) == 4
    ttfb = "llm_proxy_time_to_first_byte_seconds"
    assert sample(f"{ttfb}_bucket", {**labels, "le": floatToGoString(DURATION_BUCKETS[-1])}) == 0
    assert sample(f"{ttfb}_bucket", {**labels, "le": "+Inf"}) == 1
    assert sample(f"{ttfb}_sum", labels) == 99.0


def test_a_counter_child_counts_through_its_value_object() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["l"], registry=registry)
    gauge = Gauge("g", "g", registry=registry)
    counter.labels("x")._value.inc(2)
    gauge._value.inc(3)
    gauge._value.inc(-1)
    assert registry.get_sample_value("c_total", {"l": "x"}) == 2
    assert registry.get_sample_value("g") == 2
