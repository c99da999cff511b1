"""Browser sessions: the signed cookie and its attributes, expiry, capacity, and the
same-origin rule that keeps a cookie from authenticating another site's unsafe requests."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy_mw.auth import Principal
from llm_proxy_mw.auth._origin import PublicOrigin
from llm_proxy_mw.auth._sessions import (
    PENDING_TTL,
    Session,
    SessionAuthenticator,
    SessionManager,
    client_address,
)

SECRET = "session-secret-0123456789abcdef-0123456789"
ALICE = Principal(name="alice", kind="session", subject="gh:1")
#: The site of ``scope()``: browsers reach it as app.example (the server listens on 10.0.0.1).
APP = PublicOrigin(allowed_hosts=frozenset({"app.example"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def manager(clock: Clock | None = None, **kwargs: Any) -> SessionManager:
    kwargs.setdefault("origin", APP)
    return SessionManager(secret=SECRET, ttl_seconds=3600, clock=clock or Clock(), **kwargs)


def scope(
    method: str = "GET",
    *,
    cookie: str | None = None,
    scheme: str = "http",
    root_path: str = "/llm",
    **headers: str,
) -> dict[str, Any]:
    raw = [(b"host", b"app.example")]
    if cookie is not None:
        raw.append((b"cookie", cookie.encode()))
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "method": method,
        "scheme": scheme,
        "root_path": root_path,
        "path": root_path + "/v1/models",
        "headers": raw,
        "server": ("10.0.0.1", 8000),
    }


def cookie_of(sessions: SessionManager, session: Session, **kwargs: Any) -> str:
    _, value = sessions.set_cookie(scope(**kwargs), session)
    return value.decode().split(";", 1)[0]


def test_cookie_attributes_on_http() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    name, value = sessions.set_cookie(scope(), session)
    assert name == b"set-cookie"
    attributes = value.decode().split("; ")
    assert attributes[0].startswith("llm_proxy_session=")
    assert set(attributes[1:]) == {"Path=/llm", "Max-Age=3600", "HttpOnly", "SameSite=Lax"}


def test_cookie_is_secure_on_https_and_behind_a_trusted_proxy_only() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    assert b"; Secure" in sessions.set_cookie(scope(scheme="https"), session)[1]
    forwarded = scope(x_forwarded_proto="https")
    assert b"Secure" not in sessions.set_cookie(forwarded, session)[1]
    trusting = manager(origin=PublicOrigin(trust_proxy_headers=True))
    assert b"; Secure" in trusting.set_cookie(forwarded, session)[1]
    public = manager(origin=PublicOrigin(public_url="https://app.example/llm"))
    assert b"; Secure" in public.set_cookie(scope(), session)[1]  # TLS ends in front of us


def test_cookie_path_is_the_mount_root() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    assert b"Path=/;" in sessions.set_cookie(scope(root_path=""), session)[1]
    assert b"Path=/;" in sessions.set_cookie(scope(root_path="/a;b"), session)[1]


def test_clear_cookie_expires_it() -> None:
    _, value = manager().clear_cookie(scope())
    assert value.startswith(b"llm_proxy_session=;") and b"Max-Age=0" in value


def test_cookie_holds_only_a_signed_random_id() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE, token={"access_token": "gho_secret"})
    cookie = cookie_of(sessions, session)
    assert "gho_secret" not in cookie and "alice" not in cookie
    assert sessions.load(scope(cookie=cookie)) is session


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),
        lambda c: c.split(".")[0],
        lambda c: "llm_proxy_session=" + "x" * 43 + "." + c.split(".")[1],
        lambda c: "llm_proxy_session=",
    ],
)
def test_tampered_cookies_are_refused(tamper: Any) -> None:
    sessions = manager()
    cookie = cookie_of(sessions, sessions.create(principal=ALICE))
    assert sessions.load(scope(cookie=tamper(cookie))) is None


def test_a_cookie_signed_with_another_secret_is_refused() -> None:
    other = SessionManager(secret="another-secret-0123456789abcdef-xyz", ttl_seconds=60)
    sessions = manager()
    session = sessions.create(principal=ALICE)
    forged = cookie_of(other, session)  # the right id, signed with the wrong key
    assert sessions.load(scope(cookie=forged)) is None


def test_the_right_cookie_is_found_among_others() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    cookie = cookie_of(sessions, session)
    jar = f"theme=dark; llm_proxy_session=junk; {cookie}; other=1"
    assert sessions.load(scope(cookie=jar)) is session


def test_sessions_expire() -> None:
    clock = Clock()
    sessions = manager(clock)
    live = sessions.create(principal=ALICE)
    pending = sessions.create()
    live_cookie, pending_cookie = cookie_of(sessions, live), cookie_of(sessions, pending)
    clock.now += PENDING_TTL
    assert sessions.load(scope(cookie=pending_cookie)) is None
    assert sessions.load(scope(cookie=live_cookie)) is live
    assert b"Max-Age=3000" in sessions.set_cookie(scope(), live)[1]
    clock.now += 3600
    assert sessions.load(scope(cookie=live_cookie)) is None
    assert len(sessions) == 0


def test_a_login_flood_does_not_push_out_signed_in_users() -> None:
    sessions = manager(max_sessions=3, max_pending=5)
    users = [sessions.create(principal=ALICE) for _ in range(3)]
    for _ in range(100):
        sessions.create()
    assert len(sessions) == 3 + 5
    assert all(sessions.load(scope(cookie=cookie_of(sessions, u))) is u for u in users)
    newest = sessions.create(principal=ALICE)
    assert len(sessions) == 3 + 5  # the oldest signed-in session made room
    assert sessions.load(scope(cookie=cookie_of(sessions, users[0]))) is None
    assert sessions.load(scope(cookie=cookie_of(sessions, newest))) is newest


def test_a_login_flood_from_one_address_evicts_only_its_own_oldest() -> None:
    sessions = manager(max_pending=30)
    victim = sessions.create(client="203.0.113.5")
    flood = [sessions.create(client="198.51.100.7") for _ in range(100)]
    assert sessions.load(scope(cookie=cookie_of(sessions, victim))) is victim
    held = sessions.sessions()
    assert [s for s in flood if s in held] == flood[-10:]
    sessions.delete(flood[-1])
    assert len(sessions) == 1 + 9


def from_client(address: str, **headers: str) -> dict[str, Any]:
    request = scope(**headers)
    request["client"] = (address, 50000)
    return request


def test_ipv6_clients_are_counted_by_their_64_bit_prefix() -> None:
    # One host gets a whole /64: counting single IPv6 addresses would not slow it down.
    sessions = manager(max_pending=30)
    victim = sessions.create_pending(from_client("2001:db8:1::5"))
    flood = [sessions.create_pending(from_client(f"2001:db8:2::{i:x}")) for i in range(100)]
    assert sessions.load(scope(cookie=cookie_of(sessions, victim))) is victim
    assert [s for s in flood if s in sessions.sessions()] == flood[-10:]


def test_client_address() -> None:
    forged = from_client("10.0.0.9", x_forwarded_for="203.0.113.5, 198.51.100.7")
    assert client_address(forged, trust_proxy_headers=False) == "10.0.0.9"
    assert client_address(forged, trust_proxy_headers=True) == "198.51.100.7"
    assert client_address(from_client("10.0.0.9"), trust_proxy_headers=True) == "10.0.0.9"
    ipv6 = from_client("2001:db8::1:2:3:4")
    assert client_address(ipv6, trust_proxy_headers=False) == "2001:db8::/64"
    assert client_address(scope(), trust_proxy_headers=False) is None  # no client: no cap
    assert client_address(from_client("testclient"), trust_proxy_headers=False) == "testclient"


def test_delete_ends_a_session() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    cookie = cookie_of(sessions, session)
    sessions.delete(session)
    sessions.delete(session)  # idempotent
    assert sessions.load(scope(cookie=cookie)) is None


# ---- origins and CSRF ----------------------------------------------------------------------


def test_without_configuration_the_origin_is_the_listening_address() -> None:
    # Never the Host header, nor x-forwarded-host, trusted or not.
    forged = scope(host="evil.example", x_forwarded_host="evil.example", x_forwarded_proto="https")
    for origin in (PublicOrigin(), PublicOrigin(trust_proxy_headers=True)):
        assert origin.of(forged) == "http://10.0.0.1:8000"
        assert origin.base_url(forged) == "http://10.0.0.1:8000/llm"
    https = scope(scheme="https")
    https["server"] = ("10.0.0.1", 443)
    assert PublicOrigin().of(https) == "https://10.0.0.1"
    ipv6 = scope()
    ipv6["server"] = ("::1", 8000)
    assert PublicOrigin().of(ipv6) == "http://[::1]:8000"
    unix = scope()
    unix["server"] = ("/run/llm.sock", None)
    assert PublicOrigin().of(unix) is None
    assert PublicOrigin().base_url(unix) is None
    del unix["server"]
    assert PublicOrigin().of(unix) is None


def test_allowed_hosts_and_trusted_proxy_headers() -> None:
    assert APP.of(scope()) == "http://app.example"
    assert APP.of(scope(scheme="https")) == "https://app.example"
    forwarded = scope(x_forwarded_host="public.example, inner", x_forwarded_proto="https")
    assert APP.of(forwarded) == "http://app.example"  # proxy headers not trusted: Host
    behind = PublicOrigin(allowed_hosts=frozenset({"public.example"}), trust_proxy_headers=True)
    assert behind.of(forwarded) == "https://public.example"
    assert behind.of(scope(x_forwarded_host="evil.example")) is None
    assert behind.of(scope()) is None  # app.example is not allowed
    bad = scope()
    bad["headers"] = [(b"host", b"app.example/path")]
    assert APP.of(bad) is None


def test_public_url_wins_over_every_header() -> None:
    public = PublicOrigin(public_url="https://llm.example.com/base", trust_proxy_headers=True)
    forged = scope(host="evil.example", x_forwarded_host="evil.example")
    assert public.of(forged) == "https://llm.example.com"
    assert public.base_url(forged) == "https://llm.example.com/base"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"origin": "http://app.example"}, True),
        ({"origin": "http://APP.example:80"}, True),
        ({"origin": "https://app.example"}, False),
        ({"origin": "http://app.example:8080"}, False),
        ({"origin": "http://app.example.evil.example"}, False),
        ({"origin": "null"}, False),
        ({"referer": "http://app.example/page?x=1"}, True),
        ({"referer": "https://evil.example/app.example"}, False),
        ({"origin": "https://evil.example", "referer": "http://app.example/"}, False),
        ({}, False),
    ],
)
def test_same_origin(headers: dict[str, str], expected: bool) -> None:
    assert APP.same_origin(scope("POST", **headers)) is expected


def test_a_forged_host_does_not_make_its_origin_same_origin() -> None:
    forged = scope("POST", host="evil.example", origin="http://evil.example")
    forged["headers"] = [h for h in forged["headers"] if h != (b"host", b"app.example")]
    assert not APP.same_origin(forged)
    assert not PublicOrigin().same_origin(forged)
    assert PublicOrigin().same_origin(scope("POST", origin="http://10.0.0.1:8000"))


def test_the_origins_of_configured_redirect_uris_are_same_origin() -> None:
    redirect = PublicOrigin(configured=frozenset({"https://llm.example.com"}))
    assert redirect.same_origin(scope("POST", origin="https://llm.example.com"))
    assert not redirect.same_origin(scope("POST", origin="http://llm.example.com"))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "method",
    ["POST", "PUT", "PATCH", "DELETE", "PROPFIND", "QUERY", "PURGE", "MKCOL", "TRACE", "get"],
)
async def test_every_method_but_get_head_options_needs_a_same_origin_request(method: str) -> None:
    sessions = manager()
    authenticator = SessionAuthenticator(sessions)
    cookie = cookie_of(sessions, sessions.create(principal=ALICE))
    own = scope(method, cookie=cookie, origin="http://app.example")
    assert await authenticator.authenticate(own, None) is ALICE
    foreign = scope(method, cookie=cookie, origin="https://evil.example")
    assert await authenticator.authenticate(foreign, None) is None
    assert await authenticator.authenticate(scope(method, cookie=cookie), None) is None


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_safe_methods_need_no_origin(method: str) -> None:
    sessions = manager()
    cookie = cookie_of(sessions, sessions.create(principal=ALICE))
    request = scope(method, cookie=cookie, origin="https://evil.example")
    assert await SessionAuthenticator(sessions).authenticate(request, None) is ALICE


@pytest.mark.anyio
async def test_pending_logins_authenticate_no_one() -> None:
    sessions = manager()
    cookie = cookie_of(sessions, sessions.create())
    assert await SessionAuthenticator(sessions).authenticate(scope(cookie=cookie), None) is None


@pytest.mark.anyio
async def test_a_refused_refresh_ends_the_session() -> None:
    sessions = manager()
    session = sessions.create(principal=ALICE)
    cookie = cookie_of(sessions, session)
    verdicts = [True, False]

    async def refresher(seen: Session) -> bool:
        assert seen is session
        return verdicts.pop(0)

    authenticator = SessionAuthenticator(sessions, refresher=refresher)
    assert await authenticator.authenticate(scope(cookie=cookie), None) is ALICE
    assert await authenticator.authenticate(scope(cookie=cookie), None) is None
    assert sessions.load(scope(cookie=cookie)) is None
