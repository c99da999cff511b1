"""``DirectTracer``: the spans it hands the SDK's processors are the SDK's own spans, field for
field, and it steps aside whenever the host's set-up needs the SDK's span objects."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import (
    ConcurrentMultiSpanProcessor,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from llm_proxy_mw._otel_direct import DirectSpan, DirectTracer, direct_tracer


class CountingIds(IdGenerator):
    """The same ids, in the same order, for both tracers of a comparison (``skip``: a few
    ids on, so that ratio samplers decide otherwise)."""

    def __init__(self, skip: int = 0) -> None:
        self._next = itertools.count(1 + skip)

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        n = next(self._next)  # the low half spread out: ratio samplers decide on it
        return (n << 64) | (n * 0x9E3779B97F4A7C15 % 2**64)


class RecordOnly(Sampler):
    """Records every span, samples none: the processors must not export them."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {"sampler.note": "kept"})

    def get_description(self) -> str:
        return "RecordOnly"


class StartHook(SimpleSpanProcessor):
    """A processor with an ``on_start``: it needs the SDK's span objects."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("hooked", True)


def provider(
    exporter: InMemorySpanExporter,
    *,
    sampler: Sampler | None = None,
    limits: SpanLimits | None = None,
    processor: type[SpanProcessor] = SimpleSpanProcessor,
    skip_ids: int | None = 0,
) -> TracerProvider:
    """``skip_ids``: ``CountingIds``, or with ``None`` the SDK's random ids."""
    ids = RandomIdGenerator() if skip_ids is None else CountingIds(skip_ids)
    tracer_provider = TracerProvider(sampler=sampler, id_generator=ids, span_limits=limits)
    tracer_provider.add_span_processor(processor(exporter))  # type: ignore[call-arg]
    return tracer_provider


def exported(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter reads of a span, without the clock."""

    def attributes(value: Any) -> dict[str, Any]:
        return dict(value or {})

    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "status": (span.status.status_code, span.status.description),
        "attributes": attributes(span.attributes),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, attributes(e.attributes)) for e in span.events],
        "dropped_events": span.dropped_events,
        "links": [(link.context, attributes(link.attributes)) for link in span.links],
        "dropped_links": span.dropped_links,
        "resource": span.resource,
        "scope": span.instrumentation_scope,
    }


def both(**options: Any) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """The SDK's tracer and a ``DirectTracer`` over an identical provider."""
    for direct in (False, True):
        exporter = InMemorySpanExporter()
        tracer = provider(exporter, **options).get_tracer("test", "1.0", "https://schema")
        if direct:
            found = direct_tracer(tracer)
            assert found is not None
            tracer = found
        random.seed(20261204)  # the same random ids, if random they are
        yield tracer, exporter


# -- the same spans as the SDK's -----------------------------------------------------------

VALUES = st.one_of(
    st.text(max_size=5),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.integers(0, 9), max_size=3),
    st.lists(st.one_of(st.integers(0, 9), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), max_size=2),
    st.binary(max_size=3),
)
KEYS = st.sampled_from(["gen_ai.request.model", "a", "b", "c", "d", ""])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set_attribute"), KEYS, VALUES),
        st.tuples(st.just("set_attributes"), st.dictionaries(KEYS, VALUES, max_size=3)),
        st.tuples(
            st.just("add_event"),
            st.sampled_from(["gen_ai.first_chunk", "wait"]),
            st.none() | st.dictionaries(KEYS, VALUES, max_size=3),
        ),
        st.tuples(st.just("add_link"), st.booleans(), st.dictionaries(KEYS, VALUES, max_size=2)),
        st.tuples(st.just("update_name"), st.sampled_from(["chat x", "POST"])),
        st.tuples(
            st.just("set_status"),
            st.sampled_from([StatusCode.ERROR, StatusCode.OK, StatusCode.UNSET]),
            st.booleans(),
        ),
        st.tuples(st.just("record_exception")),
        st.tuples(st.just("end")),
    ),
    max_size=14,
)
LIMITS = st.sampled_from(
    [
        None,
        SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1),
        SpanLimits(max_span_attributes=3, max_events=2, max_links=2, max_link_attributes=1),
    ]
)


def _apply(span: trace.Span, operation: tuple[Any, ...]) -> None:
    match operation:
        case ("set_status", code, as_status):
            if as_status:
                span.set_status(Status(code, "why" if code is StatusCode.ERROR else None))
            else:
                span.set_status(code, "because")
        case ("add_link", valid, attributes):
            context = SpanContext(7, 8, True) if valid else SpanContext(0, 0, False)
            span.add_link(context, attributes)
        case ("record_exception",):
            span.record_exception(ValueError("boom"), {"extra": 1}, escaped=True)
        case (name, *args):
            getattr(span, name)(*args)


SAMPLERS = st.sampled_from(
    [
        None,  # the default, parentbased_always_on
        ALWAYS_ON,
        ALWAYS_OFF,
        ParentBased(ALWAYS_OFF),
        TraceIdRatioBased(0.5),
        ParentBased(TraceIdRatioBased(0.5)),
        ParentBased(ALWAYS_ON, local_parent_sampled=TraceIdRatioBased(0.5)),
        RecordOnly(),
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=OPERATIONS,
    limits=LIMITS,
    kind=st.sampled_from(list(SpanKind)),
    sampler=SAMPLERS,
    skip_ids=st.one_of(st.integers(0, 5), st.none()),
)
def test_any_use_of_a_span_exports_what_the_sdk_exports(
    operations: list[tuple[Any, ...]],
    limits: SpanLimits | None,
    kind: SpanKind,
    sampler: Sampler | None,
    skip_ids: int | None,
) -> None:
    logging.disable(logging.WARNING)  # the SDK warns about the invalid values, as it should
    try:
        results = []
        for tracer, exporter in both(limits=limits, sampler=sampler, skip_ids=skip_ids):
            parent = tracer.start_span("parent", attributes={"p": 1})
            span = tracer.start_span(
                "chat m", set_span_in_context(parent), kind, attributes={"a": "x", "n": 2}
            )
            for operation in operations:
                _apply(span, operation)
            span.end()
            span.set_attribute("after", "end")
            parent.end()
            results.append([exported(s) for s in exporter.get_finished_spans()])
    finally:
        logging.disable(logging.NOTSET)
    sdk, direct = results
    assert direct == sdk


def test_a_direct_span_is_current_and_parents_what_runs_under_it() -> None:
    results = []
    for tracer, exporter in both():
        outer = tracer.start_span("outer", kind=SpanKind.CLIENT)
        with trace.use_span(outer, end_on_exit=True):
            assert trace.get_current_span() is outer
            inner = tracer.start_span("inner")
            inner.end()
        results.append([exported(s) for s in exporter.get_finished_spans()])
    sdk, direct = results
    assert direct == sdk
    inner_span, outer_span = direct
    assert inner_span["parent"] == outer_span["context"]
    assert outer_span["parent"] is None


def test_a_live_direct_span_reads_as_the_sdks_live_span_does() -> None:
    """Host code may read the current span as the SDK's ``Span``, a ``ReadableSpan``."""
    live = []
    for tracer, _ in both():
        span = tracer.start_span("live", attributes={"a": 1})
        assert isinstance(span, ReadableSpan)
        live.append(
            (
                span.name,
                span.resource,
                span.instrumentation_scope,
                span.end_time,
                dict(span.attributes or {}),
                span.events,
            )
        )
        span.end()
    sdk, direct = live
    assert direct == sdk


def test_a_remote_parent_and_its_trace_state_carry_over() -> None:
    remote = SpanContext(
        0xABC << 64,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    context = set_span_in_context(NonRecordingSpan(remote))
    results = []
    for tracer, exporter in both(sampler=ParentBased(TraceIdRatioBased(0.0))):
        tracer.start_span("child", context).end()
        results.append([exported(s) for s in exporter.get_finished_spans()])
    sdk, direct = results
    assert direct == sdk
    (child,) = direct
    assert child["parent"] == remote
    assert child["context"].trace_id == remote.trace_id
    assert child["context"].trace_state == remote.trace_state


def test_a_span_the_sampler_drops_is_a_non_recording_span_with_its_context() -> None:
    (_, _), (direct, exporter) = both(sampler=ALWAYS_OFF)
    span = direct.start_span("chat m")
    assert isinstance(span, NonRecordingSpan)
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert exporter.get_finished_spans() == ()


def test_a_span_recorded_but_not_sampled_is_not_exported() -> None:
    (_, _), (direct, exporter) = both(sampler=RecordOnly())
    span = direct.start_span("chat m", attributes={"a": 1})
    assert isinstance(span, DirectSpan)
    assert span.is_recording()
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert not span.is_recording()
    assert exporter.get_finished_spans() == ()


def test_the_samplers_attributes_are_the_spans_first_ones() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = provider(exporter, sampler=RecordOnly())
    direct = direct_tracer(tracer_provider.get_tracer("test"))
    assert direct is not None
    span = direct.start_span("chat m", attributes={"a": 1})
    assert isinstance(span, DirectSpan)
    assert dict(span._attributes) == {"sampler.note": "kept"}


# -- when the SDK's own spans are needed ---------------------------------------------------


def test_a_batch_or_simple_processor_takes_the_direct_path() -> None:
    for processor in (SimpleSpanProcessor, BatchSpanProcessor):
        tracer_provider = provider(InMemorySpanExporter(), processor=processor)
        direct = direct_tracer(tracer_provider.get_tracer("test"))
        assert direct is not None
        assert isinstance(direct.start_span("x"), DirectSpan)
        tracer_provider.shutdown()


def test_each_of_several_processors_gets_each_ended_span_once() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    tracer_provider = provider(first)
    tracer_provider.add_span_processor(SimpleSpanProcessor(second))
    direct = direct_tracer(tracer_provider.get_tracer("test"))
    assert direct is not None
    for name in ("one", "two"):
        span = direct.start_span(name)
        assert isinstance(span, DirectSpan)
        span.end()
        span.end()  # ending again hands it to no one
    for exporter in (first, second):
        assert [span.name for span in exporter.get_finished_spans()] == ["one", "two"]


def test_a_processor_with_a_start_hook_gets_the_sdks_spans_of_spans_started_after_it() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = provider(exporter)
    direct = direct_tracer(tracer_provider.get_tracer("test"))
    assert direct is not None
    before = direct.start_span("before")
    assert isinstance(before, DirectSpan)
    tracer_provider.add_span_processor(StartHook(exporter))
    span = direct.start_span("after")
    assert isinstance(span, SdkSpan)
    span.end()
    (finished, _) = exporter.get_finished_spans()  # one per processor
    assert finished.attributes == {"hooked": True}
    # A span in flight ends where it started: the processors of its start, not the new one.
    exporter.clear()
    before.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["before"]


def test_links_at_the_start_take_the_sdks_path() -> None:
    (_, _), (direct, _) = both()
    span = direct.start_span("x", links=[Link(SpanContext(1, 2, False))])
    assert isinstance(span, SdkSpan)


@pytest.mark.parametrize(
    "tracer_provider",
    [
        pytest.param(
            TracerProvider(active_span_processor=ConcurrentMultiSpanProcessor()),
            id="concurrent processors",
        ),
        pytest.param(
            TracerProvider(span_limits=SpanLimits(max_attribute_length=10)),
            id="attribute length limit",
        ),
        pytest.param(
            TracerProvider(span_limits=SpanLimits(max_span_attribute_length=10)),
            id="span attribute length limit",
        ),
    ],
)
def test_a_set_up_that_needs_the_sdks_spans_gets_no_direct_tracer(
    tracer_provider: TracerProvider,
) -> None:
    assert direct_tracer(tracer_provider.get_tracer("test")) is None


def test_a_tracer_that_is_not_the_sdks_gets_no_direct_tracer() -> None:
    assert direct_tracer(trace.NoOpTracer()) is None


def test_a_tracer_its_configurator_disabled_records_nothing() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = provider(exporter)
    direct = direct_tracer(tracer_provider.get_tracer("test"))
    assert direct is not None
    direct.sdk._tracer_config.is_enabled = False  # what a rule-based configurator sets
    span = direct.start_span("x")
    assert not span.is_recording()
    span.end()
    assert exporter.get_finished_spans() == ()


def test_start_as_current_span_is_the_sdks() -> None:
    (_, _), (direct, exporter) = both()
    assert isinstance(direct, DirectTracer)
    with direct.start_as_current_span("x") as span:
        assert trace.get_current_span() is span
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "x"


@pytest.mark.parametrize(
    "sampler",
    [
        None,
        ParentBased(ALWAYS_ON, local_parent_sampled=TraceIdRatioBased(0.5)),
        ParentBased(ALWAYS_ON, local_parent_sampled=ALWAYS_OFF),
        RecordOnly(),
    ],
)
@pytest.mark.parametrize("parent_ended", [False, True])
def test_a_child_started_directly_is_the_child_the_sdk_starts(
    sampler: Sampler | None, parent_ended: bool
) -> None:
    results = []
    for tracer, exporter in both(sampler=sampler):
        parent = tracer.start_span("request", kind=SpanKind.CLIENT)
        if parent_ended:
            parent.end()
        context = set_span_in_context(parent)
        attributes: dict[str, Any] = {"http.request.method": "POST", "server.port": 443}
        if isinstance(tracer, DirectTracer):
            child = tracer.start_child(parent, context, "POST", SpanKind.CLIENT, attributes)
        else:
            child = tracer.start_span("POST", context, SpanKind.CLIENT, attributes)
        child.end()
        parent.end()
        results.append([exported(s) for s in exporter.get_finished_spans()])
    sdk, direct = results
    assert direct == sdk


def test_an_sdk_whose_readable_span_takes_other_arguments_keeps_its_own_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llm_proxy_mw._otel_direct as direct

    class Renamed(ReadableSpan):
        def __init__(self, label: str, **_: Any) -> None:  # a future SDK's signature
            super().__init__(label)

    monkeypatch.setattr(direct, "ReadableSpan", Renamed)
    tracer_provider = provider(InMemorySpanExporter())
    assert direct_tracer(tracer_provider.get_tracer("test")) is None


def test_a_parent_based_sampler_without_its_delegates_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sampler = ParentBased(ALWAYS_ON)
    monkeypatch.delattr(sampler, "_root")  # as a later SDK might keep it
    monkeypatch.setattr(sampler, "should_sample", lambda *a, **k: ALWAYS_OFF.should_sample(*a))
    (_, _), (direct, exporter) = both(sampler=sampler)
    span = direct.start_span("x")
    assert not span.is_recording()
