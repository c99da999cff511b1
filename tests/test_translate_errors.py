"""A provider's error in the client's wire format: each official SDK raises its own typed
exception for it, with the provider's message."""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest

from llm_proxy_mw.translate._errors import translate_error
from llm_proxy_mw.wire import WireFormat

OPENAI = WireFormat.OPENAI
ANTHROPIC = WireFormat.ANTHROPIC


def anthropic_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def openai_body(kind: str, message: str, code: str | None = None) -> bytes:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def answering(status: int, body: bytes) -> httpx2.Client:
    """An HTTP client to which every request is answered with ``status`` and ``body``."""
    return httpx2.Client(
        transport=httpx2.MockTransport(lambda r: httpx2.Response(status, content=body))
    )


def raised_by_openai(status: int, body: bytes) -> openai.APIStatusError:
    client = openai.OpenAI(api_key="k", max_retries=0, http_client=answering(status, body))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return info.value


def raised_by_anthropic(status: int, body: bytes) -> anthropic.APIStatusError:
    client = anthropic.Anthropic(api_key="k", max_retries=0, http_client=answering(status, body))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    return info.value


ANTHROPIC_TO_OPENAI = [
    (400, "invalid_request_error", 400, openai.BadRequestError),
    (401, "authentication_error", 401, openai.AuthenticationError),
    (403, "permission_error", 403, openai.PermissionDeniedError),
    (404, "not_found_error", 404, openai.NotFoundError),
    (413, "request_too_large", 413, openai.APIStatusError),
    (429, "rate_limit_error", 429, openai.RateLimitError),
    (500, "api_error", 500, openai.InternalServerError),
    (529, "overloaded_error", 503, openai.InternalServerError),
]


@pytest.mark.parametrize(("status", "kind", "seen", "raised"), ANTHROPIC_TO_OPENAI)
def test_anthropic_errors_raise_the_openai_sdks_own_exceptions(
    status: int, kind: str, seen: int, raised: type[Exception]
) -> None:
    out_status, body = translate_error(
        status, anthropic_body(kind, "the provider says no"), ANTHROPIC, OPENAI
    )
    assert out_status == seen
    error = raised_by_openai(out_status, body)
    assert type(error) is raised
    assert error.status_code == seen
    assert error.message.endswith(" - the provider says no")
    assert error.code == kind  # the provider's own type, for whoever logs it


OPENAI_TO_ANTHROPIC = [
    (400, "invalid_request_error", anthropic.BadRequestError),
    (401, "authentication_error", anthropic.AuthenticationError),
    (403, "permission_error", anthropic.PermissionDeniedError),
    (404, "not_found_error", anthropic.NotFoundError),
    (429, "rate_limit_error", anthropic.RateLimitError),
    (500, "api_error", anthropic.InternalServerError),
    (503, "overloaded_error", anthropic.ServiceUnavailableError),
]


@pytest.mark.parametrize(("status", "kind", "raised"), OPENAI_TO_ANTHROPIC)
def test_openai_errors_raise_the_anthropic_sdks_own_exceptions(
    status: int, kind: str, raised: type[Exception]
) -> None:
    source = openai_body("whatever_type", "the provider says no", "some_code")
    out_status, body = translate_error(status, source, OPENAI, ANTHROPIC)
    assert out_status == status
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": kind, "message": "the provider says no"},
    }
    error = raised_by_anthropic(out_status, body)
    assert type(error) is raised
    assert "the provider says no" in str(error)


def test_an_openai_error_for_an_openai_client_keeps_its_fields() -> None:
    source = openai_body("invalid_request_error", "bad", "context_length_exceeded")
    status, body = translate_error(400, source, OPENAI, OPENAI)
    assert status == 400
    assert json.loads(body)["error"] == json.loads(source)["error"]


def test_an_anthropic_error_for_an_anthropic_client_passes_unchanged() -> None:
    source = anthropic_body("overloaded_error", "busy")
    assert translate_error(529, source, ANTHROPIC, ANTHROPIC) == (529, source)


ODD_BODIES = {
    "not json": b"<html>502 Bad Gateway</html>",
    "empty": b"",
    "json list": b"[1, 2]",
    "bare string error": b'{"error": "model overloaded"}',
    "detail": b'{"detail": "Not Found"}',
    "error without message": b'{"error": {"type": "x"}}',
    "invalid utf-8": b"\xff\xfe oops",
}


@pytest.mark.parametrize("body", ODD_BODIES.values(), ids=ODD_BODIES.keys())
@pytest.mark.parametrize("status", [400, 404, 429, 502, 529])
def test_an_odd_body_still_gives_a_well_formed_error_of_its_status(
    body: bytes, status: int
) -> None:
    out_status, out = translate_error(status, body, OPENAI, ANTHROPIC)
    assert out_status == status
    parsed = json.loads(out)
    assert parsed["type"] == "error" and parsed["error"]["message"]
    assert raised_by_anthropic(out_status, out).status_code == status
    out_status, out = translate_error(status, body, ANTHROPIC, OPENAI)
    assert out_status == (503 if status == 529 else status)
    assert json.loads(out)["error"]["message"]
    assert raised_by_openai(out_status, out).status_code == out_status


def test_a_provider_message_is_kept_from_bare_shapes() -> None:
    _, out = translate_error(503, b'{"error": "model overloaded"}', OPENAI, ANTHROPIC)
    assert json.loads(out)["error"]["message"] == "model overloaded"
    _, out = translate_error(502, b"<html>bad gateway</html>", ANTHROPIC, OPENAI)
    assert "bad gateway" in json.loads(out)["error"]["message"]


def test_a_long_non_json_body_is_quoted_bounded() -> None:
    _, out = translate_error(500, b"x" * 100_000, OPENAI, ANTHROPIC)
    assert len(out) < 1000
