"""``retry_after_seconds``: every header providers use to say how long to wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from llm_proxy_mw._retry_after import retry_after_seconds

NOW = 1_700_000_000.0


def headers(**named: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in named.items()]


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, tz=UTC), usegmt=True)


def rfc3339(offset: float, *, z: bool = True) -> str:
    moment = datetime.fromtimestamp(NOW, tz=UTC) + timedelta(seconds=offset)
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if z else text


def test_no_header_says_nothing() -> None:
    assert retry_after_seconds(429, [], NOW) is None
    assert retry_after_seconds(503, headers(content_type="application/json"), NOW) is None


# -- retry-after / retry-after-ms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1.0), ("0", 0.0), ("2.5", 2.5), (" 7 ", 7.0), ("-3", 0.0), ("120", 120.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert retry_after_seconds(429, headers(retry_after=value), NOW) == expected


def test_retry_after_applies_to_any_status() -> None:
    assert retry_after_seconds(503, headers(retry_after="4"), NOW) == 4.0
    assert retry_after_seconds(500, headers(retry_after_ms="40"), NOW) == pytest.approx(0.04)


def test_retry_after_http_date() -> None:
    assert retry_after_seconds(429, headers(retry_after=http_date(7)), NOW) == pytest.approx(7)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert retry_after_seconds(429, headers(retry_after=http_date(-30)), NOW) == 0.0


def test_retry_after_garbage_is_ignored() -> None:
    assert retry_after_seconds(429, headers(retry_after="soon"), NOW) is None
    assert retry_after_seconds(503, headers(retry_after=""), NOW) is None


def test_header_names_are_case_insensitive() -> None:
    assert retry_after_seconds(429, [(b"Retry-After", b"3")], NOW) == 3.0


@pytest.mark.parametrize(
    ("value", "expected"), [("250", 0.25), ("1500.5", 1.5005), ("0", 0.0), ("-20", 0.0)]
)
def test_retry_after_ms(value: str, expected: float) -> None:
    assert retry_after_seconds(429, headers(retry_after_ms=value), NOW) == pytest.approx(expected)


def test_retry_after_ms_wins_over_retry_after() -> None:
    both = headers(retry_after="5", retry_after_ms="120")
    assert retry_after_seconds(429, both, NOW) == pytest.approx(0.12)


def test_garbage_retry_after_ms_falls_back_to_retry_after() -> None:
    both = headers(retry_after_ms="later", retry_after="5")
    assert retry_after_seconds(429, both, NOW) == 5.0


def test_retry_after_wins_over_reset_headers() -> None:
    both = headers(
        retry_after="2", x_ratelimit_reset_requests="30s", x_ratelimit_remaining_requests="0"
    )
    assert retry_after_seconds(429, both, NOW) == 2.0


# -- OpenAI reset durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1s500ms", 1.5),
        ("0.5s", 0.5),
        ("17", 17.0),
        ("1.25", 1.25),
        ("-4", 0.0),
    ],
)
def test_openai_reset_durations(value: str, expected: float) -> None:
    found = headers(x_ratelimit_reset_requests=value, x_ratelimit_remaining_requests="0")
    assert retry_after_seconds(429, found, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["garbage", "", "1x", "s", "ms", "5 minutes", "1m1h"])
def test_unparseable_reset_durations_are_ignored(value: str) -> None:
    found = headers(x_ratelimit_reset_requests=value, x_ratelimit_remaining_requests="0")
    assert retry_after_seconds(429, found, NOW) is None


def test_the_exhausted_limit_picks_the_wait() -> None:
    requests_hit = headers(
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="2s",
        x_ratelimit_remaining_tokens="5000",
        x_ratelimit_reset_tokens="1m0s",
    )
    assert retry_after_seconds(429, requests_hit, NOW) == 2.0
    tokens_hit = headers(
        x_ratelimit_remaining_requests="10",
        x_ratelimit_reset_requests="2s",
        x_ratelimit_remaining_tokens="0",
        x_ratelimit_reset_tokens="1m0s",
    )
    assert retry_after_seconds(429, tokens_hit, NOW) == 60.0


def test_both_limits_hit_waits_for_the_later_reset() -> None:
    both_hit = headers(
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="2s",
        x_ratelimit_remaining_tokens="0",
        x_ratelimit_reset_tokens="6m0s",
    )
    assert retry_after_seconds(429, both_hit, NOW) == 360.0


def test_without_remaining_the_earliest_reset_is_used() -> None:
    found = headers(x_ratelimit_reset_requests="9s", x_ratelimit_reset_tokens="3s")
    assert retry_after_seconds(429, found, NOW) == 3.0


def test_reset_headers_count_only_on_429() -> None:
    found = headers(x_ratelimit_reset_requests="9s", x_ratelimit_remaining_requests="0")
    assert retry_after_seconds(503, found, NOW) is None
    assert retry_after_seconds(529, found, NOW) is None


def test_only_remaining_headers_say_nothing() -> None:
    assert retry_after_seconds(429, headers(x_ratelimit_remaining_requests="0"), NOW) is None


# -- Anthropic RFC 3339 reset times ----------------------------------------------------------


def test_anthropic_reset_rfc3339_with_z() -> None:
    found = headers(
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset=rfc3339(12),
    )
    assert retry_after_seconds(429, found, NOW) == pytest.approx(12)


def test_anthropic_reset_rfc3339_with_offset_and_fraction() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime.fromtimestamp(NOW + 4.5, tz=UTC).astimezone(plus_two)
    assert moment.isoformat().endswith("+02:00")
    found = headers(
        anthropic_ratelimit_tokens_remaining="0",
        anthropic_ratelimit_tokens_reset=moment.isoformat(),
    )
    assert retry_after_seconds(429, found, NOW) == pytest.approx(4.5)


def test_anthropic_reset_in_the_past_is_zero() -> None:
    found = headers(
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset=rfc3339(-60),
    )
    assert retry_after_seconds(429, found, NOW) == 0.0


def test_anthropic_reset_without_timezone_is_ignored() -> None:
    naive = datetime.fromtimestamp(NOW + 5, tz=UTC).replace(tzinfo=None).isoformat()
    found = headers(
        anthropic_ratelimit_requests_remaining="0", anthropic_ratelimit_requests_reset=naive
    )
    assert retry_after_seconds(429, found, NOW) is None


@pytest.mark.parametrize(
    "limit", ["requests", "tokens", "input_tokens", "output_tokens"], ids=lambda s: s
)
def test_anthropic_exhausted_limit_picks_the_wait(limit: str) -> None:
    named = {
        "anthropic_ratelimit_requests_remaining": "50",
        "anthropic_ratelimit_requests_reset": rfc3339(1),
        "anthropic_ratelimit_tokens_remaining": "50",
        "anthropic_ratelimit_tokens_reset": rfc3339(2),
        "anthropic_ratelimit_input_tokens_remaining": "50",
        "anthropic_ratelimit_input_tokens_reset": rfc3339(3),
        "anthropic_ratelimit_output_tokens_remaining": "50",
        "anthropic_ratelimit_output_tokens_reset": rfc3339(4),
    }
    named[f"anthropic_ratelimit_{limit}_remaining"] = "0"
    expected = {"requests": 1, "tokens": 2, "input_tokens": 3, "output_tokens": 4}[limit]
    assert retry_after_seconds(429, headers(**named), NOW) == pytest.approx(expected)


def test_anthropic_garbage_reset_is_ignored() -> None:
    found = headers(
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset="tomorrow-ish",
        anthropic_ratelimit_tokens_reset=rfc3339(8),
    )
    assert retry_after_seconds(429, found, NOW) == pytest.approx(8)
