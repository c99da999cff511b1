"""The OpenTelemetry context, read and set the way the API does, in fewer steps.

The API's ``get_current``, ``attach``, ``detach`` and ``set_span_in_context`` each go
through two or three Python calls to reach one ``ContextVar`` or one dict copy; a traced
request makes a dozen of them. With the API's default runtime context (a ``ContextVar``,
unless ``OTEL_PYTHON_CONTEXT`` names another) these are that ``ContextVar``'s own methods;
with any other, the API's functions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from operator import itemgetter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import Span, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = [
    "CONTEXT_IS_A_TUPLE",
    "attach",
    "current",
    "detach",
    "ids_of",
    "span_of",
    "with_span",
]

_runtime = otel_context._RUNTIME_CONTEXT
_var = _runtime._current_context if type(_runtime) is ContextVarsRuntimeContext else None

#: The current context.
current: Callable[[], Context] = otel_context.get_current if _var is None else _var.get
#: Makes a context current; returns the token that ``detach`` takes.
attach: Callable[[Context], Token[Context]] = otel_context.attach if _var is None else _var.set


def detach(token: Token[Context]) -> None:
    """The context before ``attach`` is current again (a token from another context is
    logged, not raised, as the API does)."""
    if _var is None:
        otel_context.detach(token)
        return
    try:
        _var.reset(token)
    except Exception:  # the API's detach never raises either
        otel_context.detach(token)  # fails again, and logs it


def with_span(context: Context, span: Span) -> Context:
    """``context`` with ``span`` as its current span (``set_span_in_context``)."""
    return Context({**context, _SPAN_KEY: span})


def span_of(context: Context) -> Any:
    """The span ``context`` holds as current, or ``None`` (not checked to be a ``Span``)."""
    return context.get(_SPAN_KEY)


#: Whether a ``SpanContext`` is the tuple it has been since API 1.0: ``(trace_id, span_id,
#: is_remote, trace_flags, trace_state, is_valid)``; its properties are then its items.
CONTEXT_IS_A_TUPLE = tuple(SpanContext(3, 5, True, TraceFlags(1), None)) == (
    3,
    5,
    True,
    1,
    DEFAULT_TRACE_STATE,
    True,
)


def _ids_by_property(context: SpanContext) -> tuple[int, int, int, TraceState]:
    return context.trace_id, context.span_id, context.trace_flags, context.trace_state


#: A span context's trace id, span id, trace flags and trace state (a C ``itemgetter``).
ids_of: Callable[[SpanContext], tuple[int, int, int, TraceState]] = (
    itemgetter(0, 1, 3, 4) if CONTEXT_IS_A_TUPLE else _ids_by_property
)
