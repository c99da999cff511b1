"""``_otel_context``: the API's context functions, in fewer steps, with the same results."""

from __future__ import annotations

import contextvars
import logging

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from llm_proxy_mw._otel_context import attach, current, detach, ids_of, span_of, with_span


def test_a_context_attached_here_is_the_apis_current_one_until_detached() -> None:
    span = NonRecordingSpan(SpanContext(7, 9, is_remote=False))
    before = otel_context.get_current()
    token = attach(with_span(current(), span))
    try:
        assert otel_context.get_current() is current()
        assert trace.get_current_span() is span
        assert span_of(current()) is span
    finally:
        detach(token)
    assert otel_context.get_current() is before
    assert span_of(current()) is None


def test_with_span_is_set_span_in_context() -> None:
    key = otel_context.create_key("other")
    base = otel_context.set_value(key, "kept")
    span = NonRecordingSpan(SpanContext(7, 9, is_remote=False))
    assert with_span(base, span) == trace.set_span_in_context(span, base)
    assert base.get(key) == "kept" and span_of(base) is None  # a new context, base unchanged


def test_a_token_from_another_context_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = contextvars.copy_context().run(attach, current())
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        detach(token)
    assert "Failed to detach context" in caplog.text


def test_ids_of_reads_what_the_properties_say() -> None:
    state = TraceState([("vendor", "x")])
    context = SpanContext(3, 5, False, TraceFlags(TraceFlags.SAMPLED), state)
    assert ids_of(context) == (3, 5, 1, state)
