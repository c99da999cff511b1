"""The endpoints an OpenID provider's metadata names, checked when the metadata is loaded:
a plain ``http://`` endpoint on another host (keys, codes and tokens in clear on the
network) refuses the login with a log line saying which; loopback ``http://`` still works.

The provider is ``FakeOidc`` of the login tests, its metadata edited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import KeySet

from tests.test_auth_login import (
    CLIENT_SECRET,
    SSO_KEY,
    FakeOidc,
    logged,
    sso_proxy,
    sso_sign_in,
)

pytestmark = pytest.mark.anyio


@dataclass
class EditedOidc(FakeOidc):
    """``FakeOidc`` whose metadata names other endpoints."""

    endpoints: dict[str, str] = field(default_factory=dict)

    def _metadata(self, request: httpx.Request) -> httpx.Response:
        metadata = super()._metadata(request).json() | self.endpoints
        return httpx.Response(self.metadata_status, json=metadata)


ENDPOINTS = ["jwks_uri", "token_endpoint", "authorization_endpoint", "userinfo_endpoint"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_discovered_plain_http_endpoint_on_another_host_refuses_the_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    url = f"http://sso.example/{endpoint}"
    fake = EditedOidc(endpoints={endpoint: url})
    in_clear = fake.router.route(scheme="http").mock(return_value=httpx.Response(500))
    async with sso_proxy(tmp_path, fake) as client:
        for _ in range(2):  # the metadata is cached: refused every time, not just the first
            refused = await client.get("/llm/auth/login/sso")
            assert refused.status_code == 502, refused.text
            assert "location" not in refused.headers
            assert CLIENT_SECRET not in refused.text
    assert in_clear.call_count == 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "llm_proxy_mw" and r.levelno == logging.WARNING and endpoint in r.getMessage()
    ]
    assert len(warnings) == 2 and url in warnings[0], logged(caplog)


async def test_discovered_plain_http_endpoints_on_loopback_are_used(tmp_path: Path) -> None:
    fake = EditedOidc(
        endpoints={
            "jwks_uri": "http://127.0.0.1:8443/jwks",
            "token_endpoint": "http://localhost:8443/token",
        }
    )
    fake.router.get("http://127.0.0.1:8443/jwks").mock(
        return_value=httpx.Response(200, json=KeySet([SSO_KEY]).as_dict(private=False))
    )
    token = fake.router.post("http://localhost:8443/token").mock(side_effect=fake._token)
    async with sso_proxy(tmp_path, fake) as client:
        signed_in = await sso_sign_in(client, fake)
        assert signed_in.status_code == 303, signed_in.text
        assert (await client.get("/llm/auth/me")).json()["subject"] == "sso:u-42"
    assert token.call_count == 1
