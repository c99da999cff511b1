"""``AuthenticatorChain``: the one place a caller's credentials are checked, for the pipeline
(``AuthMiddleware``), the admin gate and the token API alike."""

from __future__ import annotations

import pytest
from starlette.types import Scope

from llm_proxy_mw.auth import AuthenticatorChain, Principal
from llm_proxy_mw.auth._middleware import MAX_CREDENTIAL_BYTES
from llm_proxy_mw.auth._setup import AuthSetup
from llm_proxy_mw.errors import AuthenticationError
from tests.asgi_helpers import http_scope

pytestmark = pytest.mark.anyio


class Knows:
    """Knows one secret; notes every secret it is asked about."""

    def __init__(self, secret: str, name: str) -> None:
        self.secret = secret
        self.principal = Principal(name=name, kind="api_key")
        self.asked: list[str | None] = []

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        self.asked.append(secret)
        return self.principal if secret == self.secret else None


def bearer(secret: str) -> Scope:
    return http_scope(headers=[("authorization", f"Bearer {secret}")])


async def test_the_first_authenticator_that_knows_the_secret_wins() -> None:
    first, second, third = Knows("a", "first"), Knows("b", "second"), Knows("b", "third")
    chain = AuthenticatorChain([first, second, third])
    assert await chain.authenticate(bearer("b")) == second.principal
    assert (first.asked, second.asked, third.asked) == (["b"], ["b"], [])


async def test_no_one_knows_the_caller_401_with_a_challenge_or_none() -> None:
    chain = AuthenticatorChain([Knows("a", "first")], realm="here")
    with pytest.raises(AuthenticationError) as raised:
        await chain.authenticate(bearer("unknown"))
    assert raised.value.headers == {"www-authenticate": 'Bearer realm="here"'}
    assert await chain.resolve(bearer("unknown")) is None
    assert await chain.resolve(bearer("a")) is not None


async def test_a_credential_past_the_bound_is_shown_to_no_authenticator() -> None:
    huge = "a" * (MAX_CREDENTIAL_BYTES + 1)
    knows = Knows(huge, "huge")
    chain = AuthenticatorChain([knows])
    assert await chain.resolve(bearer(huge)) is None
    assert knows.asked == []


async def test_an_auth_setup_resolves_through_every_authenticator_added_to_it() -> None:
    setup = AuthSetup()
    resolve = setup.chain.resolve  # as the token API holds it, before the list is complete
    setup.authenticators.append(Knows("late", "late"))
    caller = await resolve(bearer("late"))
    assert caller is not None and caller.name == "late"
