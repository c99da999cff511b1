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
decided again for the spans started after the host adds a processor (a span ends into the
processors of its start).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from random import getrandbits
from time import time_ns
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import _Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, Sampler
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
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import AnyValue, Attributes

from llm_proxy_mw._otel_context import CONTEXT_IS_A_TUPLE, current, span_of

__all__ = ["DirectSpan", "DirectTracer", "direct_tracer"]

#: Processors whose ``on_start`` and ``_on_ending`` do nothing: they see a span only once it
#: ended, as a ``ReadableSpan``. Exact types: a subclass may add a hook.
_ON_END_ONLY = (BatchSpanProcessor, SimpleSpanProcessor)
#: The attribute value types the conventions allow, alone or as a homogeneous sequence.
_PLAIN = (str, bool, int, float)
_PLAIN_TYPES = frozenset(_PLAIN)
_UNSET = Status(StatusCode.UNSET)
_T = TypeVar("_T")
#: A span's events or links: a list, or past its limit the SDK's ``BoundedList``.
#: None yet is the empty tuple (most spans get none: no list to make and free).
_Items = tuple[()] | list[_T] | BoundedList[_T]
#: The decisions and the flag a span's sampling turns on (names bound once: a hot path).
_RECORD_AND_SAMPLE = Decision.RECORD_AND_SAMPLE
_DROP = Decision.DROP
_SAMPLED = int(TraceFlags.SAMPLED)
#: What ``_plain`` returns for any other value.
_NOT_PLAIN = object()
#: ``TraceFlags.RANDOM_TRACE_ID`` (W3C Trace Context level 2), 0 on an API without it.
_RANDOM_TRACE_ID: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
#: Each ``TraceFlags`` a span of this tracer can get, by value (built once).
_FLAGS = {f: TraceFlags(f) for f in (0, 1, _RANDOM_TRACE_ID, 1 | _RANDOM_TRACE_ID)}
#: What the SDK's ``ParentBased`` sampler consults for a root span, and for a remote or local
#: parent, sampled or not (``_known_decision``).
_DELEGATES = {
    None: "_root",
    (True, True): "_remote_parent_sampled",
    (True, False): "_remote_parent_not_sampled",
    (False, True): "_local_parent_sampled",
    (False, False): "_local_parent_not_sampled",
}
#: A span context is a tuple: ``tuple.__new__`` builds one without ``SpanContext.__new__``'s
#: checks, for ids it generated itself (``CONTEXT_IS_A_TUPLE`` checked the layout).
_new_tuple = tuple.__new__
#: Where an ended, sampled span goes: a processor's queue or its ``on_end``.
_Sink = Callable[[ReadableSpan], object]


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
        not CONTEXT_IS_A_TUPLE
        or limits is None
        or scope is None
        or getattr(limits, "max_attribute_length", 0) is not None
        or getattr(limits, "max_span_attribute_length", 0) is not None
        or (span_metrics is not None and type(span_metrics).__name__ != "NoOpTracerMetrics")
        or not hasattr(tracer.span_processor, "_span_processors")
    ):
        return None
    if not _readable_span_fields():
        return None  # an SDK whose ReadableSpan takes other arguments keeps its own spans
    return DirectTracer(tracer)


#: Where ``ReadableSpan`` keeps what its properties return, which a ``DirectSpan`` sets.
_READABLE_FIELDS = (
    "name",
    "context",
    "parent",
    "resource",
    "attributes",
    "events",
    "links",
    "kind",
    "instrumentation_info",
    "status",
    "start_time",
    "end_time",
    "instrumentation_scope",
)


def _readable_span_fields() -> bool:
    """Whether ``ReadableSpan`` keeps each of its arguments, and nothing else, in the field
    of the same name with an underscore (``name`` in ``_name``), as in SDK 1.x: a
    ``DirectSpan`` sets those fields, and is then read as any ``ReadableSpan``."""
    values: dict[str, Any] = {name: object() for name in _READABLE_FIELDS}
    try:
        span = ReadableSpan(**values)
        return vars(span) == {f"_{name}": value for name, value in values.items()}
    except TypeError:
        return False


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
        #: Whether a configurator can disable the tracer (``_tracer_config``, SDK >= 1.39).
        self._configurable = hasattr(tracer, "_tracer_config")
        #: The processors last looked at, and where a sampled span goes with them: ``None``
        #: while one of them needs the SDK's spans (``route``).
        self._checked: object = None
        self._sinks: tuple[_Sink, ...] | None = None
        #: The sampler last looked at, and its decisions known without asking it.
        self._sampler: Sampler | None = None
        self._decisions: dict[object, Decision | None] = {}
        #: This tracer's spans: what they all share is their class's, set once, not on each.
        self.span_type: type[DirectSpan] = type(
            "DirectSpan",
            (DirectSpan,),
            {
                "__slots__": (),
                "_tracer": self,
                "_resource": self.resource,
                "_instrumentation_info": self.info,
                "_instrumentation_scope": self.scope,
            },
        )
        #: The spans a parent mostly is, known to be ``Span``s without ``ABCMeta``'s check.
        self._parent_types = frozenset({self.span_type, SdkSpan, NonRecordingSpan})

    def route(self) -> tuple[_Sink, ...] | None:
        """Where a sampled span goes, worked out again whenever the host adds a
        processor (the SDK replaces its tuple): ``None`` unless every processor sees spans
        only at their end. A ``BatchSpanProcessor``'s is its queue's ``emit``, what its
        ``on_end`` calls for a sampled span."""
        processors = self.processor._span_processors
        if processors is not self._checked:
            sinks = None
            if all(type(p) in _ON_END_ONLY for p in processors):
                sinks = tuple(_sink(p) for p in processors)
            self._sinks, self._checked = sinks, processors
        return self._sinks

    def _known(self, parent: tuple[bool, bool] | None) -> Decision | None:
        """The sampler's decision for a span under ``parent`` (remote, sampled; ``None`` for
        a root) when it hands it to ``ALWAYS_ON`` or ``ALWAYS_OFF``, whose answers are known
        (``_known_decision``); ``None`` when it must be asked."""
        sampler = self.sdk.sampler
        if sampler is not self._sampler:
            self._decisions = {
                key: _known_decision(sampler, name) for key, name in _DELEGATES.items()
            }
            self._sampler = sampler
        return self._decisions[parent]

    def _span_id(self) -> int:
        """A new span id: with the SDK's random ids, drawn here as it draws them."""
        if type(ids := self.sdk.id_generator) is RandomIdGenerator:
            return getrandbits(64) or ids.generate_span_id()  # as it would
        return ids.generate_span_id()

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
        sdk = self.sdk
        if (
            links
            or (sinks := self.route()) is None
            or (self._configurable and not sdk._tracer_config.is_enabled)
        ):
            return sdk.start_span(
                name,
                context,
                kind,
                attributes,
                links,
                start_time,
                record_exception,
                set_status_on_exception,
            )
        parent_span = span_of(current() if context is None else context)
        parent: SpanContext | None = None
        if parent_span is not None and (
            type(parent_span) in self._parent_types or isinstance(parent_span, Span)
        ):
            parent = parent_span.get_span_context()
        ids = sdk.id_generator
        if parent is None or not parent[5]:  # none, or not valid
            parent = None
            if type(ids) is RandomIdGenerator:
                trace_id = getrandbits(128) or ids.generate_trace_id()  # as it would
                random_trace_id = True
            else:
                trace_id = ids.generate_trace_id()
                random_trace_id = ids.is_trace_id_random()
            decision = self._known(None)
        else:
            trace_id, _, remote, parent_flags, _, _ = parent
            random_trace_id = bool(parent_flags & _RANDOM_TRACE_ID)
            decision = self._known((remote, bool(parent_flags & _SAMPLED)))
        if decision is not None:  # what the sampler would answer, without asking it
            trace_state = parent and parent[4]
            sampled: Attributes = attributes
        else:
            result = sdk.sampler.should_sample(context, trace_id, name, kind, attributes, None)
            decision, trace_state, sampled = result.decision, result.trace_state, result.attributes
        flags = _SAMPLED if decision is _RECORD_AND_SAMPLE else 0
        if random_trace_id:
            flags |= _RANDOM_TRACE_ID
        span_context = _new_tuple(
            SpanContext,
            (
                trace_id,
                self._span_id(),
                False,
                _FLAGS[flags],
                DEFAULT_TRACE_STATE if trace_state is None else trace_state,
                True,
            ),
        )
        if decision is _DROP:
            return NonRecordingSpan(span_context)
        span = self.span_type(
            name, span_context, parent, kind, start_time, decision is _RECORD_AND_SAMPLE, sinks
        )
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
        children are decided without asking it (``_known_decision``) and their attributes taken
        as they are."""
        # A direct parent was started while this tracer was enabled and its processors
        # allowed: its children go the same way.
        if (
            type(parent) is not self.span_type
            or parent._end_time is not None
            or not parent._sampled
            or self._known((False, True)) is not _RECORD_AND_SAMPLE
        ):
            return self.start_span(name, context, kind, attributes)
        above: SpanContext = parent._context  # type: ignore[assignment]  # a DirectSpan's
        span_context = _new_tuple(
            SpanContext,
            # sampled, and random as the parent's trace id is
            (above[0], self._span_id(), False, above[3], above[4], True),
        )
        if len(attributes) <= self.max_attributes:  # taken as it is
            return self.span_type(
                name, span_context, above, kind, None, True, parent._sinks, attributes
            )
        span = self.span_type(name, span_context, above, kind, None, True, parent._sinks)
        span.set_attributes(attributes)
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's (the proxy never uses it): a ``Tracer`` must have it."""
        return self.sdk.start_as_current_span(*args, **kwargs)


def _known_decision(sampler: Sampler, delegate: str) -> Decision | None:
    """The decision of ``sampler`` when it is the SDK's ``ALWAYS_ON`` or ``ALWAYS_OFF``, or
    a ``ParentBased`` (the SDK's default is ``parentbased_always_on``) that hands the span to
    one of them through ``delegate`` (for a root, or a parent of one kind): both answer with
    their decision, the parent's trace state and, when on, the span's attributes. A
    ``ParentBased`` without the delegates it had in SDK 1.x is asked as any other."""
    decides: object = sampler
    if type(sampler) is ParentBased:
        decides = getattr(sampler, delegate, None)
    if decides is ALWAYS_ON:
        return _RECORD_AND_SAMPLE
    if decides is ALWAYS_OFF:
        return _DROP
    return None


def _sink(processor: object) -> _Sink:
    """Where ``processor`` takes a sampled span: a ``BatchSpanProcessor``'s queue, when it
    has the one its ``on_end`` feeds, else its ``on_end``."""
    if type(processor) is BatchSpanProcessor:
        emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
        if callable(emit):
            return emit  # type: ignore[no-any-return]
    return processor.on_end  # type: ignore[attr-defined, no-any-return]


def _plain(value: Any) -> Any:
    """``value`` as a span holds it when it is what the proxy sets (a number, a string, a
    list of strings), else ``_NOT_PLAIN``: the SDK's container then cleans it and all after."""
    if isinstance(value, _PLAIN):
        return value
    if type(value) in (list, tuple) and all(type(item) is str for item in value):
        return tuple(value)
    return _NOT_PLAIN


class DirectSpan(Span, ReadableSpan):
    """A recording span that is, once ended, the ``ReadableSpan`` its tracer's processors
    take: it keeps its fields where ``ReadableSpan`` does (``_readable_span_fields``), and
    changes nothing once ended, so the SDK's copy at the end is not needed.

    Its attributes, events and links are plain containers until one reaches its limit, and
    from then on the SDK's own (which drop the oldest and count what they dropped), so that
    the span exports as the SDK's would.
    """

    __slots__ = ("_name", "_context", "_parent", "_kind", "_attributes", "_sampled", "_sinks")

    #: What a span has until it gets some (most get none: no list to make and free).
    _events: _Items[Event] = ()
    _links: _Items[Link] = ()
    _status = _UNSET
    #: Set by each tracer's own subclass (``DirectTracer.span_type``).
    _tracer: DirectTracer
    _resource: Any
    _instrumentation_info: Any
    _instrumentation_scope: Any

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_time: int | None,
        sampled: bool,
        sinks: tuple[_Sink, ...],
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        #: ``attributes`` given away below the limit (``start_child``), else a new dict.
        self._attributes: dict[str, Any] | BoundedAttributes = (
            {} if attributes is None else attributes
        )
        self._start_time = time_ns() if start_time is None else start_time
        self._end_time: int | None = None
        self._sampled = sampled
        #: Where it goes once ended: its tracer's route when it started (a processor the
        #: host adds later sees the spans started after it).
        self._sinks = sinks

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # always one, unlike a ReadableSpan's

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AnyValue) -> None:
        attributes = self._attributes
        if (
            type(value) in _PLAIN_TYPES
            and type(attributes) is dict
            and self._end_time is None
            and type(key) is str
            and key
            and key not in attributes
            and len(attributes) < self._tracer.max_attributes
        ):
            attributes[key] = value  # the common case: a new plain value, below the limit
            return
        if self._end_time is not None:
            return
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
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def adopt_attributes(self, attributes: dict[str, AnyValue]) -> None:
        """``set_attributes``, for attributes the caller gives away: each a plain value (a
        string, bool, int, float, or tuple of strings) under a key the span does not have.
        Taken as they are while the span is below its limit."""
        own = self._attributes
        if (
            self._end_time is None
            and type(own) is dict
            and len(own) + len(attributes) <= self._tracer.max_attributes
        ):
            if not own:
                self._attributes = attributes  # the dict itself: no copy
                return
            if own.keys().isdisjoint(attributes):
                own.update(attributes)
                return
        self.set_attributes(attributes)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        if attributes:
            attributes = self._bounded(attributes, self._tracer.limits.max_event_attributes)
        self._events = _appended(
            self._events, Event(name, attributes, timestamp), self._tracer.max_events
        )

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is not None or not (
            context.is_valid or attributes or context.trace_state
        ):
            return
        if attributes:
            attributes = self._bounded(attributes, self._tracer.limits.max_link_attributes)
        self._links = _appended(self._links, Link(context, attributes), self._tracer.max_links)

    def _bounded(self, attributes: Attributes, limit: int | None) -> BoundedAttributes:
        """An event's or link's attributes, cleaned and bounded as the SDK's span does."""
        max_value_len = self._tracer.limits.max_attribute_length
        return BoundedAttributes(limit, attributes, max_value_len=max_value_len)

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: UNSET is ignored, and OK is final."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
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
        if self._end_time is not None:
            return
        self._end_time = time_ns() if end_time is None else end_time
        if not self._sampled:
            return  # its processors export only sampled spans
        attributes = self._attributes
        if type(attributes) is BoundedAttributes:  # past the limit (not isinstance: an ABC)
            attributes._immutable = True  # as the SDK leaves its own
        for sink in self._sinks:
            sink(self)


def _appended(items: _Items[_T], item: _T, limit: int) -> _Items[_T]:
    """``items`` with ``item``: past ``limit``, as the SDK's ``BoundedList``."""
    listed: list[_T] | BoundedList[_T] = [] if isinstance(items, tuple) else items
    if type(listed) is list and len(listed) >= limit:
        listed = BoundedList.from_seq(limit, listed)
    listed.append(item)
    return listed
