"""Spans recorded straight into the SDK's span processors, without the SDK's span objects.

The SDK's span validates each attribute under a lock and copies itself at its end: the two
spans of a request and their attributes cost about 50 µs, more than the budget for tracing a
request (30 µs). When the host's tracer is the SDK's own and each of its processors is one
whose only hook is ``on_end`` (the SDK's ``BatchSpanProcessor`` and ``SimpleSpanProcessor``,
what ``opentelemetry-instrument`` sets up), ``DirectTracer`` makes the decisions the SDK's
tracer would (its sampler, id generator, limits, resource and scope) and hands each ended
span to the processors as the ``ReadableSpan`` they export, for a few µs a span.

Anything else (another processor, even a subclass; links at the start; a tracer disabled by
its configurator; attribute length limits; the SDK's own span metrics) takes the SDK's path,
decided again whenever the host adds a processor.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AnyValue, Attributes

__all__ = ["DirectSpan", "DirectTracer", "direct_tracer"]

#: Processors whose ``on_start`` and ``_on_ending`` do nothing: they see a span only once it
#: ended, as a ``ReadableSpan``. Exact types: a subclass may add a hook.
_ON_END_ONLY = (BatchSpanProcessor, SimpleSpanProcessor)
#: The attribute value types the conventions allow, alone or as a homogeneous sequence.
_PLAIN = (str, bool, int, float)
_UNSET = Status(StatusCode.UNSET)
_T = TypeVar("_T")
#: A span's events or links: a list, or past its limit the SDK's ``BoundedList``.
_Items = list[_T] | BoundedList[_T]
#: What ``_plain`` returns for any other value.
_NOT_PLAIN = object()
#: Any sampled span of this process, as a parent (what ``_always_on`` looks at).
_LOCAL_SAMPLED = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
#: ``TraceFlags.RANDOM_TRACE_ID`` (W3C Trace Context level 2), 0 on an API without it.
_RANDOM_TRACE_ID: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


def direct_tracer(tracer: trace.Tracer) -> DirectTracer | None:
    """A ``DirectTracer`` over ``tracer`` when it is the SDK's own with nothing that needs the
    SDK's spans, else ``None`` (``tracer`` is then used as it is)."""
    if type(tracer) is not SdkTracer or type(tracer.span_processor) is not (
        SynchronousMultiSpanProcessor
    ):
        return None
    limits = getattr(tracer, "_span_limits", None)
    scope = getattr(tracer, "_instrumentation_scope", None)
    span_metrics = getattr(tracer, "_tracer_metrics", None)
    if (
        limits is None
        or scope is None
        or getattr(limits, "max_attribute_length", 0) is not None
        or getattr(limits, "max_span_attribute_length", 0) is not None
        or (span_metrics is not None and type(span_metrics).__name__ != "NoOpTracerMetrics")
        or not hasattr(tracer.span_processor, "_span_processors")
    ):
        return None
    try:  # an SDK whose ReadableSpan takes other arguments keeps its own spans
        ReadableSpan(
            name="probe",
            resource=tracer.resource,
            attributes={},
            events=[],
            links=[],
            instrumentation_info=tracer.instrumentation_info,
            status=_UNSET,
            start_time=0,
            end_time=0,
            instrumentation_scope=scope,
        )
    except TypeError:
        return None
    return DirectTracer(tracer)


def _limit(value: int | None) -> int:
    """A span limit as a count (``None``: unlimited)."""
    return 2**31 if value is None else value


class DirectTracer(trace.Tracer):
    """Starts ``DirectSpan``s for ``tracer`` while its processors allow, else its own spans."""

    def __init__(self, tracer: SdkTracer) -> None:
        self.sdk = tracer
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = tracer._instrumentation_scope
        self.info = tracer.instrumentation_info
        self.limits = limits = tracer._span_limits
        self.max_attributes = _limit(limits.max_span_attributes)
        self.max_events = _limit(limits.max_events)
        self.max_links = _limit(limits.max_links)
        enabled = getattr(tracer, "_is_enabled", None)
        self._enabled = enabled if callable(enabled) else None
        random_ids = getattr(tracer.id_generator, "is_trace_id_random", None)
        self._random_ids = random_ids if callable(random_ids) else None
        self._checked: object = None
        self._direct = False
        self._sampler: Sampler | None = None
        self._children_on = False

    def _children_always_on(self) -> bool:
        """Whether the sampler's answer for a child of a sampled local span is known
        (``_always_on``): worked out again if the sampler changes."""
        sampler = self.sdk.sampler
        if sampler is not self._sampler:
            self._children_on = _always_on(sampler, _LOCAL_SAMPLED)
            self._sampler = sampler
        return self._children_on

    def _processors_allow(self) -> bool:
        """Whether every processor sees spans only at their end (checked again whenever the
        host adds one: the SDK replaces its tuple)."""
        processors = self.processor._span_processors
        if processors is not self._checked:
            self._direct = all(type(p) in _ON_END_ONLY for p in processors)
            self._checked = processors
        return self._direct

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if links or not self._processors_allow() or (self._enabled and not self._enabled()):
            return self.sdk.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
            )
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        sdk = self.sdk
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = sdk.id_generator.generate_trace_id()
            random_trace_id = self._random_ids is not None and self._random_ids()
        else:
            trace_id = parent.trace_id
            random_trace_id = bool(parent.trace_flags & _RANDOM_TRACE_ID)
        sampler = sdk.sampler
        if _always_on(sampler, parent):  # what it would answer, without asking it
            decision, trace_state = Decision.RECORD_AND_SAMPLE, parent and parent.trace_state
            sampled: Attributes = attributes
        else:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, None)
            decision, trace_state, sampled = result.decision, result.trace_state, result.attributes
        flags = TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= _RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            sdk.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=trace_state,
        )
        if decision is Decision.DROP:
            return NonRecordingSpan(span_context)
        span = DirectSpan(self, name, span_context, parent, kind, start_time)
        if sampled:
            span.set_attributes(sampled)
        return span

    def start_child(
        self,
        parent: Span,
        context: Context,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AnyValue],
    ) -> Span:
        """``start_span(name, context, kind, attributes)`` for a span under ``parent``, the
        span current in ``context``; ``attributes`` are the caller's to give away, plain
        values (the attempt spans'). Under a direct span that the sampler samples, its
        children are decided without asking it (``_always_on``) and their attributes taken
        as they are."""
        # A direct parent was started while this tracer was enabled and its processors
        # allowed: its children go the same way.
        if (
            type(parent) is not DirectSpan
            or parent._end is not None
            or not parent._context.trace_flags.sampled
            or not self._children_always_on()
        ):
            return self.start_span(name, context, kind, attributes)
        above = parent._context
        span_context = SpanContext(
            above.trace_id,
            self.sdk.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=above.trace_flags,  # sampled, and random as the parent's trace id is
            trace_state=above.trace_state,
        )
        span = DirectSpan(self, name, span_context, above, kind, None)
        if len(attributes) > self.max_attributes:
            span.set_attributes(attributes)
        else:
            span._attributes = attributes
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's (the proxy never uses it): a ``Tracer`` must have it."""
        return self.sdk.start_as_current_span(*args, **kwargs)


def _always_on(sampler: Sampler, parent: SpanContext | None) -> bool:
    """Whether ``sampler`` is the SDK's default one (``parentbased_always_on``), or always
    on, and for a span under ``parent`` hands the decision to the SDK's ``ALWAYS_ON``: its
    answer is then known (record and sample, the parent's trace state, the attributes).
    A ``ParentBased`` without the delegates it had in SDK 1.x is asked as any other."""
    if type(sampler) is ParentBased:
        if parent is None:
            name = "_root"
        elif parent.is_remote:
            sampled = parent.trace_flags.sampled
            name = "_remote_parent_sampled" if sampled else "_remote_parent_not_sampled"
        else:
            sampled = parent.trace_flags.sampled
            name = "_local_parent_sampled" if sampled else "_local_parent_not_sampled"
        return getattr(sampler, name, None) is ALWAYS_ON
    return sampler is ALWAYS_ON


def _plain(value: Any) -> Any:
    """``value`` as a span holds it when it is what the proxy sets (a number, a string, a
    list of strings), else ``_NOT_PLAIN``: the SDK's container then cleans it and all after."""
    if isinstance(value, _PLAIN):
        return value
    if type(value) in (list, tuple) and all(type(item) is str for item in value):
        return tuple(value)
    return _NOT_PLAIN


class DirectSpan(Span):
    """A recording span whose end hands a ``ReadableSpan`` to its tracer's processors.

    Its attributes, events and links are plain containers until one reaches its limit, and
    from then on the SDK's own (which drop the oldest and count what they dropped), so that
    the span exports as the SDK's would.
    """

    __slots__ = (
        "_tracer",
        "_name",
        "_context",
        "_parent",
        "_kind",
        "_attributes",
        "_events",
        "_links",
        "_status",
        "_start",
        "_end",
    )

    def __init__(
        self,
        tracer: DirectTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_time: int | None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, Any] | BoundedAttributes = {}
        self._events: _Items[Event] = []
        self._links: _Items[Link] = []
        self._status = _UNSET
        self._start = time_ns() if start_time is None else start_time
        self._end: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end is not None:
            return
        attributes = self._attributes
        if type(attributes) is dict and type(key) is str and key:
            plain = _plain(value)
            if plain is not _NOT_PLAIN:
                if key in attributes:
                    del attributes[key]  # set again, it is the newest, as in the SDK's
                if len(attributes) < self._tracer.max_attributes:
                    attributes[key] = plain
                    return
        if type(attributes) is dict:
            limit = self._tracer.limits.max_span_attributes
            attributes = self._attributes = BoundedAttributes(limit, attributes, immutable=False)
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        # set_attribute inlined for new plain values while no limit is near
        quick = (
            self._end is None
            and len(self._attributes) + len(attributes) <= self._tracer.max_attributes
        )
        for key, value in attributes.items():
            own = self._attributes
            if (
                quick
                and type(own) is dict
                and type(key) is str
                and key
                and key not in own
                and isinstance(value, _PLAIN)
            ):
                own[key] = value
            else:
                self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end is not None:
            return
        if attributes:
            attributes = self._bounded(attributes, self._tracer.limits.max_event_attributes)
        self._events = _appended(
            self._events, Event(name, attributes, timestamp), self._tracer.max_events
        )

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end is not None or not (context.is_valid or attributes or context.trace_state):
            return
        if attributes:
            attributes = self._bounded(attributes, self._tracer.limits.max_link_attributes)
        self._links = _appended(self._links, Link(context, attributes), self._tracer.max_links)

    def _bounded(self, attributes: Attributes, limit: int | None) -> BoundedAttributes:
        """An event's or link's attributes, cleaned and bounded as the SDK's span does."""
        max_value_len = self._tracer.limits.max_attribute_length
        return BoundedAttributes(limit, attributes, max_value_len=max_value_len)

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: UNSET is ignored, and OK is final."""
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """As the SDK: an ``exception`` event with its type, message and stack trace."""
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, AnyValue] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end = time_ns() if end_time is None else end_time
        tracer = self._tracer
        attributes = self._attributes
        if isinstance(attributes, BoundedAttributes):
            attributes._immutable = True  # as the SDK leaves its own
        tracer.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=tracer.resource,
                attributes=attributes,
                events=self._events,
                links=self._links,
                kind=self._kind,
                instrumentation_info=tracer.info,
                status=self._status,
                start_time=self._start,
                end_time=end,
                instrumentation_scope=tracer.scope,
            )
        )


def _appended(items: _Items[_T], item: _T, limit: int) -> _Items[_T]:
    """``items`` with ``item``: past ``limit``, as the SDK's ``BoundedList``."""
    if type(items) is list and len(items) >= limit:
        items = BoundedList.from_seq(limit, items)
    items.append(item)
    return items
