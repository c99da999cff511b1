"""The error hierarchy: statuses, the closed code set, the docstring tree, and what clients see."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from collections.abc import Callable

import httpx
import pytest

import llm_proxy_mw
from llm_proxy_mw import HttpxTransport, build_proxy, errors
from llm_proxy_mw.errors import OUTCOMES, ProxyError, outcome_for_status

ERROR_CLASSES: list[type[ProxyError]] = [
    obj
    for name in errors.__all__
    if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, ProxyError)
]
#: The exceptions that pass between layers and are never rendered.
SIGNALS = {"ClientDisconnected", "StoreError", "FetchError", "StartupError"}

#: What each class must be: (status, code). Written out, not read back from the classes.
EXPECTED: dict[str, tuple[int, str]] = {
    "ProxyError": (500, "internal_error"),
    "ClientRequestError": (400, "invalid_request"),
    "InvalidRequestError": (400, "invalid_request"),
    "TokenGrantError": (400, "invalid_grant"),
    "UnsupportedGrantTypeError": (400, "unsupported_grant_type"),
    "AuthenticationError": (401, "authentication_error"),
    "PermissionDeniedError": (403, "permission_denied"),
    "NotFoundError": (404, "not_found"),
    "ModelNotFoundError": (404, "model_not_found"),
    "MethodNotAllowedError": (405, "method_not_allowed"),
    "RequestBodyTimeout": (408, "request_timeout"),
    "TooManyTokenFamiliesError": (409, "too_many_token_families"),
    "RequestTooLargeError": (413, "request_too_large"),
    "UnsupportedMediaTypeError": (415, "unsupported_media_type"),
    "UntranslatableError": (400, "unsupported_parameter"),
    "RateLimitError": (429, "rate_limit_exceeded"),
    "BudgetExceededError": (429, "budget_exceeded"),
    "TokenStoreUnavailableError": (503, "store_unavailable"),
    "LimitsStoreUnavailableError": (503, "limits_unavailable"),
    "UpstreamError": (502, "upstream_error"),
    "UpstreamAuthError": (502, "upstream_auth_error"),
    "UpstreamConnectError": (502, "connect_error"),
    "UpstreamProtocolError": (502, "protocol_error"),
    "UpstreamTimeout": (504, "timeout"),
    "UpstreamConnectTimeout": (504, "timeout"),
    "UpstreamReadTimeout": (504, "timeout"),
    "UpstreamWriteTimeout": (504, "timeout"),
    "UpstreamPoolTimeout": (503, "pool_timeout"),
    "ProviderUnavailableError": (503, "provider_unavailable"),
}

#: The outcome labels of upstream HTTP answers; together with the error codes, the closed set.
HTTP_OUTCOMES = {
    "success",
    "rate_limited",
    "timeout",
    "conflict",
    "overloaded",
    "client_error",
    "server_error",
}

#: Error types the Anthropic API documents; its SDK and clients switch on them.
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
}


def test_every_exported_error_class_is_expected() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} == set(EXPECTED)


def test_the_signals_are_exceptions_outside_the_rendered_tree() -> None:
    exported = {name for name in errors.__all__ if inspect.isclass(getattr(errors, name))}
    assert exported - set(EXPECTED) == SIGNALS
    for name in SIGNALS:
        cls = getattr(errors, name)
        assert issubclass(cls, Exception) and not issubclass(cls, ProxyError), name


#: Exceptions defined outside errors.py, each because no proxied request ever meets it.
ELSEWHERE = {
    "llm_proxy_mw.config.ConfigError",  # a config refused at load, before anything serves
    "llm_proxy_mw.client.TokenRefreshError",  # the host's own client code, not the proxy
    "llm_proxy_mw.client.InvalidGrantError",
}


def test_every_exception_of_the_package_is_defined_in_errors_py() -> None:
    ours: set[str] = set()
    for module_info in pkgutil.walk_packages(llm_proxy_mw.__path__, "llm_proxy_mw."):
        module = importlib.import_module(module_info.name)
        ours |= {
            f"{obj.__module__}.{obj.__qualname__}"
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__.startswith("llm_proxy_mw.")
        }
    assert ours - {f"llm_proxy_mw.errors.{name}" for name in errors.__all__} == ELSEWHERE


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("llm_proxy_mw.context", "ClientDisconnected"),
        ("llm_proxy_mw.history", "StoreError"),
        ("llm_proxy_mw.store", "StoreError"),
        ("llm_proxy_mw.auth.token_store", "StoreError"),
    ],
)
def test_the_signals_keep_their_old_import_paths(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_status_and_code(cls: type[ProxyError]) -> None:
    assert (cls.status_code, cls.code) == EXPECTED[cls.__name__]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_class_names_follow_the_naming_rules(cls: type[ProxyError]) -> None:
    assert cls.__name__.endswith(("Error", "Timeout"))
    if issubclass(cls, errors.UpstreamTimeout):
        assert cls.__name__.endswith("Timeout")


def test_client_errors_are_4xx_and_upstream_errors_5xx() -> None:
    for cls in ERROR_CLASSES:
        if issubclass(cls, errors.ClientRequestError):
            assert 400 <= cls.status_code < 500, cls
        elif issubclass(cls, errors.UpstreamError):
            assert 500 <= cls.status_code < 600, cls


def test_codes_are_a_closed_set_of_machine_names() -> None:
    codes = {cls.code for cls in ERROR_CLASSES}
    assert codes == {code for _, code in EXPECTED.values()}
    for code in codes:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code


def test_one_code_means_one_status_and_one_rendering() -> None:
    by_code: dict[str, set[tuple[int, str, str]]] = {}
    for cls in ERROR_CLASSES:
        by_code.setdefault(cls.code, set()).add(
            (cls.status_code, cls.openai_type, cls.anthropic_type)
        )
    assert {code: len(seen) for code, seen in by_code.items() if len(seen) > 1} == {}


def test_only_timeouts_of_the_same_status_share_a_code() -> None:
    """Classes share a code only where a client or a dashboard would not tell them apart."""
    by_code: dict[str, list[type[ProxyError]]] = {}
    for cls in ERROR_CLASSES:
        by_code.setdefault(cls.code, []).append(cls)
    shared = {code: {c.__name__ for c in classes} for code, classes in by_code.items()}
    shared = {code: names for code, names in shared.items() if len(names) > 1}
    assert shared == {
        "timeout": {
            "UpstreamTimeout",
            "UpstreamConnectTimeout",
            "UpstreamReadTimeout",
            "UpstreamWriteTimeout",
        },
        # The abstract base and its one generic child.
        "invalid_request": {"ClientRequestError", "InvalidRequestError"},
    }


def test_pool_timeout_is_told_apart_from_other_timeouts() -> None:
    # Pool exhaustion is local back-pressure (503), not a slow provider (504).
    assert errors.UpstreamPoolTimeout.code != errors.UpstreamConnectTimeout.code
    assert issubclass(errors.UpstreamPoolTimeout, errors.UpstreamTimeout)


def test_http_outcomes_share_only_timeout_with_error_codes() -> None:
    # Deliberate: a provider's 408 is the same outcome as a timeout the proxy hit itself.
    assert HTTP_OUTCOMES & {cls.code for cls in ERROR_CLASSES} == {"timeout"}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_anthropic_types_are_ones_the_api_documents(cls: type[ProxyError]) -> None:
    assert cls.anthropic_type in ANTHROPIC_TYPES


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "success"),
        (201, "success"),
        (204, "success"),
        (304, "success"),
        (400, "client_error"),
        (401, "client_error"),
        (404, "client_error"),
        (407, "client_error"),
        (408, "timeout"),
        (409, "conflict"),
        (410, "client_error"),
        (413, "client_error"),
        (429, "rate_limited"),
        (499, "client_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
        (529, "overloaded"),
        (599, "server_error"),
    ],
)
def test_outcome_for_status(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


def test_outcome_for_status_stays_in_the_closed_set() -> None:
    assert {outcome_for_status(s) for s in range(100, 600)} == HTTP_OUTCOMES


def test_outcomes_are_the_codes_the_answered_statuses_and_other() -> None:
    assert isinstance(OUTCOMES, frozenset)
    assert OUTCOMES == {code for _, code in EXPECTED.values()} | HTTP_OUTCOMES | {"other"}


def test_a_subclass_defined_elsewhere_does_not_widen_the_outcomes() -> None:
    class CustomError(errors.UpstreamError):
        code = "custom_outcome"

    assert CustomError.code not in OUTCOMES


def test_error_carries_message_provider_and_headers() -> None:
    error = errors.ProviderUnavailableError(
        "No provider.", provider="p", headers={"retry-after": "3"}
    )
    assert str(error) == error.message == "No provider."
    assert error.provider == "p"
    assert error.headers == {"retry-after": "3"}
    assert errors.InvalidRequestError("x").headers == {}


def test_every_class_takes_the_same_arguments() -> None:
    for cls in ERROR_CLASSES:
        error = cls("Why.", provider="p", headers={"retry-after": "1"})
        assert (error.message, error.provider, error.headers["retry-after"]) == ("Why.", "p", "1")


def test_a_409_for_too_many_token_families_tells_sdks_not_to_retry() -> None:
    error = errors.TooManyTokenFamiliesError("At most 2.", headers={"retry-after": "1"})
    assert error.headers == {"x-should-retry": "false", "retry-after": "1"}


# -- the docstring tree ----------------------------------------------------------------------

TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)(?:\s+(?P<rest>.*))?$")


def drawn_blocks() -> list[list[str]]:
    """The module docstring's indented paragraphs, unindented: the tree, then the signals."""
    doc = errors.__doc__
    assert doc is not None
    paragraphs = [paragraph.splitlines() for paragraph in doc.split("\n\n")]
    return [
        [line[4:] for line in lines]
        for lines in paragraphs
        if lines and all(line.startswith("    ") for line in lines)
    ]


def parse_tree() -> list[tuple[int, str, str]]:
    """(depth, class name, annotation) for each line of the tree in the module docstring."""
    blocks = drawn_blocks()
    assert len(blocks) == 2, "the errors module docstring draws a tree, then the signals"
    parsed = []
    for line in blocks[0]:
        match = TREE_LINE.match(line)
        assert match, line
        depth, rem = divmod(len(match["indent"]), 4)
        assert rem == 0, line
        parsed.append((depth, match["name"], match["rest"] or ""))
    return parsed


def test_docstring_tree_lists_every_error_class_once() -> None:
    names = [name for _, name, _ in parse_tree()]
    assert sorted(names) == sorted(cls.__name__ for cls in ERROR_CLASSES)


def test_docstring_lists_every_signal_once() -> None:
    names = [line.split()[0] for line in drawn_blocks()[1]]
    assert sorted(names) == sorted(SIGNALS)


def test_docstring_tree_matches_the_class_hierarchy() -> None:
    parents: list[str] = []
    for depth, name, _ in parse_tree():
        cls = getattr(errors, name)
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (getattr(errors, parents[-1]),), name
        else:
            assert cls is ProxyError
        parents.append(name)


def test_docstring_tree_states_the_real_status_and_code() -> None:
    checked = 0
    for _, name, rest in parse_tree():
        match = re.match(r"(\d{3}) ([a-z_]+)", rest)
        if match is None:
            continue
        cls = getattr(errors, name)
        assert (int(match[1]), match[2]) == (cls.status_code, cls.code), name
        checked += 1
    assert checked >= len(ERROR_CLASSES) - 3  # the three abstract roots may omit it


# -- end to end: transport failures become typed errors in the caller's format ---------------


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


TRANSPORT_FAILURES = [
    (httpx.ConnectTimeout("lib-detail https://up.example/v1"), 504, "timeout", "timeout_error"),
    (httpx.ReadTimeout("lib-detail https://up.example/v1"), 504, "timeout", "timeout_error"),
    (httpx.WriteTimeout("lib-detail https://up.example/v1"), 504, "timeout", "timeout_error"),
    (httpx.PoolTimeout("lib-detail https://up.example/v1"), 503, "pool_timeout", "timeout_error"),
    (httpx.ConnectError("lib-detail https://up.example/v1"), 502, "connect_error", "api_error"),
    (
        httpx.RemoteProtocolError("lib-detail https://up.example/v1"),
        502,
        "protocol_error",
        "api_error",
    ),
    (httpx.ReadError("lib-detail https://up.example/v1"), 502, "protocol_error", "api_error"),
    (httpx.UnsupportedProtocol("lib-detail"), 502, "protocol_error", "api_error"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "status", "code", "anthropic_type"),
    TRANSPORT_FAILURES,
    ids=[type(f[0]).__name__ for f in TRANSPORT_FAILURES],
)
async def test_transport_failures_render_in_the_callers_wire_format(
    exc: Exception,
    status: int,
    code: str,
    anthropic_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = raising(exc)
    proxy = build_proxy(
        {
            "providers": {
                "gpt": {"kind": "openai", "models": ["gpt"], "retry": {"max_attempts": 1}},
                "claude": {"kind": "anthropic", "models": ["claude"], "retry": {"max_attempts": 1}},
            }
        },
        transports={
            "gpt": HttpxTransport(httpx.MockTransport(handler)),
            "claude": HttpxTransport(httpx.MockTransport(handler)),
        },
    )
    caplog.set_level(logging.INFO, logger="llm_proxy_mw")
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            openai = await client.post("/v1/chat/completions", json={"model": "gpt"})
            anthropic = await client.post("/v1/messages", json={"model": "claude"})

    assert openai.status_code == status
    assert openai.json()["error"]["code"] == code
    assert anthropic.status_code == status
    assert anthropic.json() == {
        "type": "error",
        "error": {"type": anthropic_type, "message": anthropic.json()["error"]["message"]},
    }
    # The library's own message (which may hold a URL or headers) is not shown.
    assert str(exc) not in openai.text
    assert "x-request-id" in anthropic.headers
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failures, "a 5xx is logged as a warning"
