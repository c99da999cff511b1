"""Identity-provider presets of the OAuth login, and who among their users may sign in.

``github`` is plain OAuth2 plus GitHub's user API for the identity; ``google``, ``auth0`` and
any other issuer (``oidc``, through ``server_metadata_url``) are OpenID Connect, whose
identity is the verified ID token. Users are matched on stable, verified facts only: the
provider's subject, a GitHub login, a *verified* email address, a GitHub organisation.
Each ``allowed_users`` / ``admin_users`` entry says which of these it is (``id:583231``,
``login:octocat``, ``email:a@b.example``; ``sub:`` is ``id:`` for OIDC), because GitHub
logins may be all digits: a bare ``583231`` would let the login ``583231`` pass for the user
whose id is 583231.

The public presets (GitHub, Google, Auth0 with its social and sign-up connections) would let
anyone with an account in; they need an allow list. A generic OIDC issuer is taken to be the
organisation's own, whose every user may sign in unless lists say otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_proxy_mw.config import ConfigError, OAuthConfig, OAuthPreset

__all__ = [
    "GITHUB_API_URL",
    "GITHUB_AUTHORIZE_URL",
    "GITHUB_TOKEN_URL",
    "GOOGLE_METADATA_URL",
    "Identity",
    "client_registration",
    "github_identity",
    "is_admin",
    "is_allowed",
    "oidc_identity",
    "preset_of",
]

GITHUB_AUTHORIZE_URL = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL = "https://github.com/login/oauth/access_token"
GITHUB_API_URL = "https://api.github.com/"
GOOGLE_METADATA_URL = "https://accounts.google.com/.well-known/openid-configuration"

_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?$")


def preset_of(name: str, config: OAuthConfig) -> OAuthPreset:
    """The preset: configured, else the section's name when it is one, else ``oidc``."""
    return config.preset_name(name)


def client_registration(name: str, config: OAuthConfig, **client_kwargs: Any) -> dict[str, Any]:
    """Keyword arguments for Authlib's ``OAuth.register``: endpoints, scope, PKCE (S256).

    ``client_kwargs`` go to Authlib's HTTP client (``timeout``, ``transport``).
    Raises ``ConfigError`` for a public provider that would let anyone sign in.
    """
    preset = preset_of(name, config)
    if preset != "oidc" and not _has_allow_list(config):
        raise ConfigError(
            f"auth.oauth.{name}: anyone with a {preset} account could sign in; set "
            "allowed_users, allowed_domains, allowed_orgs or admin_users"
        )
    kwargs: dict[str, Any] = {
        "client_id": config.client_id,
        "client_secret": config.client_secret.get_secret_value(),
    }
    client: dict[str, Any] = {"code_challenge_method": "S256", **client_kwargs}
    if preset == "github":
        scope = "read:user user:email" + (" read:org" if config.allowed_orgs else "")
        client["scope"] = config.scope or scope
        client["token_endpoint_auth_method"] = "client_secret_post"
        kwargs["authorize_url"] = GITHUB_AUTHORIZE_URL
        kwargs["access_token_url"] = GITHUB_TOKEN_URL
        kwargs["api_base_url"] = GITHUB_API_URL
    else:
        scopes = (config.scope or "openid email profile").split()
        # Without ``openid`` there is no ID token and no nonce: refuse to run OIDC without it.
        client["scope"] = " ".join(scopes if "openid" in scopes else ["openid", *scopes])
        metadata_url = config.server_metadata_url or _metadata_url(name, preset, config)
        kwargs["server_metadata_url"] = metadata_url
    kwargs["client_kwargs"] = client
    return kwargs


def _metadata_url(name: str, preset: OAuthPreset, config: OAuthConfig) -> str:
    if preset == "google":
        return GOOGLE_METADATA_URL
    if preset == "auth0" and config.domain is not None:
        if not _DOMAIN.match(config.domain):
            raise ConfigError(f"auth.oauth.{name}.domain: not a host name")
        return f"https://{config.domain}/.well-known/openid-configuration"
    raise ConfigError(f"auth.oauth.{name}: needs server_metadata_url")


def _has_allow_list(config: OAuthConfig) -> bool:
    return bool(
        config.allowed_users or config.allowed_domains or config.allowed_orgs or config.admin_users
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed in, as far as the identity provider vouches for it."""

    subject: str
    login: str | None = None
    #: Verified addresses only, lower-cased.
    emails: tuple[str, ...] = ()
    #: GitHub organisation logins, lower-cased.
    orgs: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.login or (self.emails[0] if self.emails else self.subject)


def oidc_identity(claims: Mapping[str, Any]) -> Identity:
    """The identity of a verified ID token: ``sub``, and ``email`` when ``email_verified``."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ValueError("the ID token has no subject")
    email = claims.get("email")
    if claims.get("email_verified") is True and isinstance(email, str) and "@" in email:
        return Identity(subject=subject, emails=(email.lower(),))
    return Identity(subject=subject)


async def github_identity(client: Any, token: Mapping[str, Any], config: OAuthConfig) -> Identity:
    """The GitHub user behind ``token``, with verified emails and orgs when policy needs them."""
    user = await _get_json(client, "user", token)
    if not isinstance(user, dict) or not isinstance(user.get("login"), str) or "id" not in user:
        raise ValueError("GitHub's user API answered without a login")
    emails: tuple[str, ...] = ()
    named = (*config.allowed_users, *config.admin_users)
    if config.allowed_domains or any(u.startswith("email:") for u in named):
        listing = await _get_json(client, "user/emails", token)
        emails = tuple(
            entry["email"].lower()
            for entry in (listing if isinstance(listing, list) else [])
            if isinstance(entry, dict)
            and entry.get("verified") is True
            and isinstance(entry.get("email"), str)
        )
    orgs: tuple[str, ...] = ()
    if config.allowed_orgs:
        listing = await _get_json(client, "user/orgs", token)
        orgs = tuple(
            entry["login"].lower()
            for entry in (listing if isinstance(listing, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("login"), str)
        )
    return Identity(subject=str(user["id"]), login=user["login"], emails=emails, orgs=orgs)


async def _get_json(client: Any, path: str, token: Mapping[str, Any]) -> Any:
    response = await client.get(
        path,
        token=dict(token),
        params={"per_page": 100},
        headers={"accept": "application/vnd.github+json"},
    )
    response.raise_for_status()
    return response.json()


def _matches(users: list[str], identity: Identity) -> bool:
    """Whether one of the typed entries (``id:``/``sub:``, ``login:``, ``email:``) names
    ``identity``; each is compared with its own kind of fact only."""
    for entry in users:
        kind, _, name = entry.partition(":")
        if _matches_one(kind, name, identity):
            return True
    return False


def _matches_one(kind: str, name: str, identity: Identity) -> bool:
    # Subjects are case-sensitive; logins (GitHub) and email addresses are not.
    if kind in ("id", "sub"):
        return name == identity.subject
    if kind == "login":
        return identity.login is not None and name.lower() == identity.login.lower()
    if kind == "email":
        return name.lower() in identity.emails
    return False


def is_admin(config: OAuthConfig, identity: Identity) -> bool:
    return _matches(config.admin_users, identity)


def is_allowed(config: OAuthConfig, identity: Identity) -> bool:
    """Anyone matching one of the allow lists (admins included); everyone when none is set."""
    if not _has_allow_list(config):
        return True
    domains = {d.lower().lstrip("@") for d in config.allowed_domains}
    orgs = {o.lower() for o in config.allowed_orgs}
    return (
        _matches([*config.allowed_users, *config.admin_users], identity)
        or any(email.rpartition("@")[2] in domains for email in identity.emails)
        or bool(orgs.intersection(identity.orgs))
    )
