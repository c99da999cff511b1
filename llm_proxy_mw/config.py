"""Configuration: pydantic v2 models in the shape of DESIGN.md, loaded from TOML.

Only this module and the builder know about TOML, environment variables and pydantic;
middlewares take typed objects. Secrets are ``SecretStr`` so they never show in a repr,
a log record or a validation message. Unknown keys are errors: a typo must not pass silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llm_proxy_mw._extras import missing_extras
from llm_proxy_mw._limits_policy import BudgetPeriod, Limit, LimitsPolicy
from llm_proxy_mw._loopback import LOOPBACK_RULE, https_or_loopback
from llm_proxy_mw._retry_policy import RetryPolicy
from llm_proxy_mw.health import HealthPolicy
from llm_proxy_mw.pricing import ModelPrice
from llm_proxy_mw.transports._limits import PoolLimits, Timeouts

__all__ = [
    "ApiKeyConfig",
    "AuthConfig",
    "ConfigError",
    "HealthConfig",
    "JwtIssuerConfig",
    "LimitConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "OAuthConfig",
    "OtelConfig",
    "PoolConfig",
    "PricingConfig",
    "ProviderConfig",
    "ProviderOAuthConfig",
    "ProxyConfig",
    "RetryConfig",
    "StoreConfig",
    "TimeoutConfig",
    "TokensConfig",
    "load_config",
    "parse_config",
]

ProviderKind = Literal["openai", "anthropic", "echo"]
JwsAlgorithm = Literal["RS256", "PS256", "ES256", "EdDSA"]
OAuthPreset = Literal["github", "google", "auth0", "oidc"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "echo": "http://echo.invalid/v1",
}

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: What an ``allowed_users`` / ``admin_users`` entry can name, as ``<kind>:<value>``.
_USER_KINDS = ("id", "sub", "login", "email")
_USER_FORMS = (
    "'id:<user id>' (GitHub's numeric user id; an OIDC provider's 'sub', also written "
    "'sub:<subject>'), 'login:<GitHub login>' or 'email:<verified address>'"
)
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: ``host`` or ``host:port`` as a ``Host`` header carries it (a name, IPv4 or [IPv6]).
HOST_PATTERN = r"^(?:[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every offending field."""


def _https_or_loopback(url: str) -> str:
    if not https_or_loopback(url):
        raise ValueError(LOOPBACK_RULE)
    return url


#: A URL the proxy fetches keys or metadata from, or sends a client secret to.
_SecureUrl = Annotated[str, AfterValidator(_https_or_loopback)]


class _Model(BaseModel):
    # Empty collections default to ``[]`` and ``{}`` (pydantic copies them per instance), not
    # to ``default_factory=list``: pydantic inspects each factory's signature when it builds
    # the model, and a builtin's means tokenizing its text signature, milliseconds at import.
    # ``defer_build``: validators are built when first used, so loading a config builds
    # ProxyConfig's (which inlines its sections') instead of one per class at import.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


_POOL = PoolLimits()
_TIMEOUTS = Timeouts()


class PoolConfig(_Model):
    """Connection pool of one provider; the defaults and their reasons are ``PoolLimits``'s."""

    max_connections: int = Field(_POOL.max_connections, ge=1)
    max_keepalive_connections: int = Field(_POOL.max_keepalive_connections, ge=0)
    keepalive_expiry: float = Field(_POOL.keepalive_expiry, gt=0)

    def limits(self) -> PoolLimits:
        return PoolLimits(**self.model_dump())


class TimeoutConfig(_Model):
    """Upstream timeouts in seconds. ``read`` bounds the wait for each chunk, not the call."""

    connect: float = Field(_TIMEOUTS.connect, gt=0)
    read: float = Field(_TIMEOUTS.read, gt=0)
    write: float = Field(_TIMEOUTS.write, gt=0)
    pool: float = Field(_TIMEOUTS.pool, gt=0)

    def timeouts(self) -> Timeouts:
        return Timeouts(**self.model_dump())


#: The policies' own defaults: the config's are these, written nowhere else.
_RETRY = RetryPolicy()
_HEALTH = HealthPolicy()


class RetryConfig(_Model):
    """Per-provider retry policy: ``RetryPolicy`` with its bounds, as TOML sets it."""

    max_attempts: int = Field(_RETRY.max_attempts, ge=1, le=10)
    backoff_base: float = Field(_RETRY.backoff_base, ge=0)
    backoff_max: float = Field(_RETRY.backoff_max, ge=0)
    max_retry_after: float = Field(_RETRY.max_retry_after, ge=0)
    retry_read_timeouts: bool = _RETRY.retry_read_timeouts

    def policy(self) -> RetryPolicy:
        """The policy this section sets, for ``RetryMiddleware``."""
        return RetryPolicy(**self.model_dump())


class HealthConfig(_Model):
    """A provider's retry budget and circuit breaker: ``HealthPolicy`` with its bounds; the
    defaults are explained in health.py."""

    budget_max_tokens: float = Field(_HEALTH.budget_max_tokens, gt=0)
    budget_token_ratio: float = Field(_HEALTH.budget_token_ratio, gt=0)
    window_seconds: int = Field(_HEALTH.window_seconds, ge=1, le=3600)
    min_calls: int = Field(_HEALTH.min_calls, ge=1)
    failure_rate: float = Field(_HEALTH.failure_rate, gt=0, le=1)
    cooldown_seconds: float = Field(_HEALTH.cooldown_seconds, gt=0)
    half_open_probes: int = Field(_HEALTH.half_open_probes, ge=1)

    def policy(self) -> HealthPolicy:
        """The policy this section sets, for the provider's ``HealthRegistry`` entry."""
        return HealthPolicy(**self.model_dump())


class ProviderConfig(_Model):
    """One upstream deployment: where it is, what it serves, how to reach it."""

    kind: ProviderKind
    base_url: str | None = None
    api_key: SecretStr | None = None
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    weight: float = Field(1.0, gt=0)
    fallbacks: list[str] = []
    # Extra headers often carry credentials (Azure's ``api-key``): kept out of the repr and
    # of JSON dumps.
    headers: dict[str, str] = Field({}, repr=False)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    oauth: ProviderOAuthConfig | None = None
    #: ``openai`` only: whether it serves ``/v1/responses``; false for Chat-only servers
    #: (vLLM, Ollama, llama.cpp), whose Responses requests are then translated to Chat.
    responses_api: bool = True
    #: Sent as Anthropic's required ``max_tokens`` when a translated request set none.
    default_max_tokens: int = Field(4096, ge=1)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            host = parts.hostname or ""
            if not host.startswith("[") and ":" not in host:
                host.encode("idna")
        except (ValueError, UnicodeError):
            raise ValueError("has an invalid host or port") from None
        if not host or (":" not in host and "" in host.split(".")):
            raise ValueError("has an invalid host")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
                raise ValueError("model names must be non-empty and free of control characters")
        return value

    @field_validator("headers")
    @classmethod
    def _header_values(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not re.fullmatch(r"[A-Za-z0-9\-]+", name) or re.search(r"[\r\n\x00]", header):
                raise ValueError(f"header {name!r} is not a valid HTTP header")
        return value

    @field_serializer("headers", when_used="json")
    def _masked_headers(self, value: dict[str, str]) -> dict[str, str]:
        # As ``SecretStr`` does: a config dumped as JSON (say, to log the effective settings)
        # names the extra headers but never shows their values.
        return dict.fromkeys(value, "**********")

    @property
    def url(self) -> str:
        """The base URL, defaulted by kind; it includes the version segment (``/v1``)."""
        return self.base_url or DEFAULT_BASE_URLS[self.kind]


class ApiKeyConfig(_Model):
    """A client API key: the key itself (from the environment) or its SHA-256."""

    name: str = Field(pattern=_NAME)
    key: SecretStr | None = None
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    admin: bool = False

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError("key must be at least 16 characters long")
        return self


class TokensConfig(_Model):
    """Proxy-issued JWT access tokens and their refresh tokens."""

    issuer: str = Field("llm_proxy_mw", min_length=1)
    audience: str = Field("llm_proxy_mw", min_length=1)
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    access_ttl_seconds: int = Field(900, ge=30, le=86_400)
    refresh_ttl_seconds: int = Field(30 * 86_400, ge=60)
    max_ttl_seconds: int = Field(86_400, ge=60)
    leeway_seconds: int = Field(30, ge=0, le=300)
    #: Live (unrevoked, unexpired) families one principal may hold; minting past it is a 409.
    max_families_per_owner: int = Field(100, ge=1)
    #: A private JWK (JSON) to sign with; without it a key is generated once and kept in
    #: the store, so every replica sharing the store signs and verifies with the same key.
    signing_key: SecretStr | None = None


class JwtIssuerConfig(_Model):
    """An external identity provider whose access tokens the proxy accepts."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_url: _SecureUrl
    algorithms: list[JwsAlgorithm] = Field(
        default_factory=lambda: list[JwsAlgorithm](["RS256", "ES256"]), min_length=1
    )
    name_claim: str = "sub"
    admin_subjects: list[str] = []
    required_scopes: list[str] = []
    #: Take OpenID Connect ID tokens as bearer tokens too. Off by default: an ID token tells
    #: a client who signed in; with our audience as that client's id it would pass as ours.
    accept_id_tokens: bool = False


class OAuthConfig(_Model):
    """A login identity provider: a preset (``github``, ``google``, ``auth0``) or any OIDC
    issuer through ``server_metadata_url``. The preset defaults to the section's name."""

    preset: OAuthPreset | None = None
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    server_metadata_url: _SecureUrl | None = None
    domain: str | None = None
    scope: str | None = None
    redirect_uri: str | None = Field(None, pattern=r"^https?://")
    #: ``id:``, ``sub:``, ``login:`` or ``email:`` entries: one kind each, never guessed.
    allowed_users: list[str] = []
    allowed_domains: list[str] = []
    allowed_orgs: list[str] = []
    admin_users: list[str] = []

    @field_validator("allowed_users", "admin_users")
    @classmethod
    def _typed_users(cls, value: list[str]) -> list[str]:
        # A bare "583231" could be a user id or an all-digit GitHub login: whoever registers
        # that login must not become the user with that id. So each entry names its kind.
        for entry in value:
            kind, colon, name = entry.partition(":")
            if not colon or kind not in _USER_KINDS or not name or name != name.strip():
                raise ValueError(f"{entry!r} must say what it names: {_USER_FORMS}")
        return value

    def preset_name(self, section: str) -> OAuthPreset:
        """The preset: configured, else the section's name when it is one, else ``oidc``."""
        if self.preset is not None:
            return self.preset
        presets: dict[str, OAuthPreset] = {"github": "github", "google": "google", "auth0": "auth0"}
        return presets.get(section, "oidc")


class AuthConfig(_Model):
    """Who may call the proxy. Every section is optional; with none at all, no one can."""

    api_keys: list[ApiKeyConfig] = []
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    jwt_issuers: dict[str, JwtIssuerConfig] = {}
    oauth: dict[str, OAuthConfig] = {}
    #: Signs the browser session cookie of the OAuth login; required with ``oauth``.
    session_secret: SecretStr | None = None
    session_ttl_seconds: int = Field(8 * 3600, ge=60)
    #: Where browsers reach the mount (``https://app.example.com/llm``): the OAuth redirect
    #: URIs and the session's same-origin check use it, never the request's ``Host``.
    public_url: str | None = None
    #: Without ``public_url``: the hosts (``name`` or ``name:port``) a request's ``Host`` (or,
    #: with ``trust_proxy_headers``, ``x-forwarded-host``) may name to count as this site.
    allowed_hosts: list[str] = []
    #: Honour ``x-forwarded-proto``, the last ``x-forwarded-for`` entry (the client address
    #: that pending logins are counted by) and, checked against ``allowed_hosts``,
    #: ``x-forwarded-host``.
    trust_proxy_headers: bool = False

    @field_validator("api_keys")
    @classmethod
    def _unique_names(cls, value: list[ApiKeyConfig]) -> list[ApiKeyConfig]:
        names = [key.name for key in value]
        if len(set(names)) != len(names):
            raise ValueError("api key names must be unique")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#\s@]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError("has an invalid port") from None
        if not re.match(HOST_PATTERN, parts.netloc):
            raise ValueError("has an invalid host or port")
        return value.rstrip("/")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if not re.match(HOST_PATTERN, host):
                raise ValueError(f"{host!r} is not a host name (optionally with :port)")
        return [host.lower() for host in value]

    @model_validator(mode="after")
    def _one_public_origin(self) -> AuthConfig:
        if self.public_url is not None and self.allowed_hosts:
            raise ValueError("give public_url or allowed_hosts, not both")
        return self

    @model_validator(mode="after")
    def _session_secret_for_oauth(self) -> AuthConfig:
        if self.oauth:
            secret = self.session_secret.get_secret_value() if self.session_secret else ""
            if len(secret) < 32:
                raise ValueError("oauth login needs a session_secret of at least 32 characters")
        for name, idp in self.oauth.items():
            preset = idp.preset_name(name)
            if preset == "oidc" and idp.server_metadata_url is None:
                raise ValueError(f"oauth.{name}: an OIDC issuer needs server_metadata_url")
            if preset == "auth0" and idp.domain is None and idp.server_metadata_url is None:
                raise ValueError(f"oauth.{name}: auth0 needs domain (or server_metadata_url)")
        return self

    @model_validator(mode="after")
    def _user_kinds_fit_the_provider(self) -> AuthConfig:
        for name, idp in self.oauth.items():
            github = idp.preset_name(name) == "github"
            for field in ("allowed_users", "admin_users"):
                for entry in getattr(idp, field):
                    problem = _user_entry_problem(entry, github=github)
                    if problem:
                        raise ValueError(f"oauth.{name}.{field}: {entry!r}: {problem}")
        return self


def _user_entry_problem(entry: str, *, github: bool) -> str | None:
    """Why a typed user entry cannot match anyone at this kind of provider, if it cannot."""
    kind, _, name = entry.partition(":")
    if kind == "email" and "@" not in name:
        return "not an email address"
    if github and kind == "sub":
        return f"GitHub users have no 'sub'; write 'id:{name}' for the numeric user id"
    if github and kind == "id" and not re.fullmatch(r"[0-9]+", name):
        return f"GitHub user ids are numeric; for the login write 'login:{name}'"
    if not github and kind == "login":
        return "only GitHub has logins; write 'sub:<subject>' (or 'id:') or 'email:<address>'"
    return None


class ProviderOAuthConfig(_Model):
    """OAuth2 client credentials a provider authenticates with (e.g. Azure OpenAI, Entra ID)."""

    token_url: _SecureUrl
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None


class StoreConfig(_Model):
    url: str = Field("sqlite:///llm-proxy.db", pattern=r"^(sqlite|redis|rediss)://")
    #: Days the proxy remembers which provider created a file, batch, response, ...
    object_ttl_days: float = Field(30.0, gt=0)


class MetricsConfig(_Model):
    retention_days: int = Field(30, ge=1)
    public: bool = False
    flush_interval_seconds: float = Field(5.0, gt=0)


class OtelConfig(_Model):
    """``[otel]``: tracing through the host's OpenTelemetry (the ``otel`` extra)."""

    #: Trace requests when a ``TracerProvider`` is set (false: the layer is left out).
    enabled: bool = True
    #: Record prompts and completions on the spans (off: never any content).
    capture_content: bool = False
    #: The most bytes of prompt, and of completion, one span records.
    max_content_bytes: int = Field(16 * 1024, ge=0, le=1024 * 1024)


class LimitConfig(_Model):
    """One principal's limits (``[limits.default]``, ``[limits.principals."<id>"]``); a key
    left out is not limited."""

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)
    #: USD per ``budget_period``; 0 lets nothing through that costs.
    budget_usd: Decimal | None = Field(None, ge=0, allow_inf_nan=False)
    budget_period: BudgetPeriod = "month"

    def limit(self) -> Limit:
        return Limit(self.rpm, self.tpm, self.concurrency, self.budget_usd, self.budget_period)


class LimitsConfig(_Model):
    """``[limits]``: ``default`` for every principal without its own entry in ``principals``
    (which replaces it); ``on_store_error``: ``allow`` (logged, counted) or ``deny`` (503)."""

    default: LimitConfig | None = None
    principals: dict[str, LimitConfig] = {}
    on_store_error: Literal["allow", "deny"] = "allow"

    def policy(self) -> LimitsPolicy:
        principals = {pid: entry.limit() for pid, entry in self.principals.items()}
        default = self.default.limit() if self.default is not None else None
        return LimitsPolicy(default, principals, self.on_store_error)


def _principal_problem(principal: str, auth: AuthConfig | None) -> str | None:
    """Why no authenticator of ``auth`` could produce ``principal``, or ``None``."""
    kind, _, rest = principal.partition(":")
    if auth is None:
        return None if principal == "anonymous" else "without [auth] every request is 'anonymous'"
    if kind == "api_key":
        if rest in {key.name for key in auth.api_keys}:
            return None
        return f"no [auth] api_keys entry is named {rest!r}"
    issuer, _, subject = rest.partition(":")
    sections: dict[str, tuple[str, Mapping[str, object]]] = {
        "session": ("oauth", auth.oauth),
        "jwt": ("jwt_issuers", auth.jwt_issuers),
    }
    if kind in sections:
        section, names = sections[kind]
        if issuer in names and subject:
            return None
        return f"expected {kind}:<a [auth.{section}] name>:<subject>"
    return "principal ids are api_key:<name>, session:<idp>:<subject> or jwt:<issuer>:<subject>"


class ModelConfig(_Model):
    """Options of one model name (``[models."<name>"]``)."""

    #: Models tried in order when every provider of this one failed or is out.
    fallbacks: list[str] = []


class PricingConfig(_Model):
    """One model's price (``[pricing."<model>"]``), USD per million tokens; it wins over the
    price table. Without a cache price, cached tokens cost as input."""

    input: Decimal = Field(ge=0, allow_inf_nan=False)
    output: Decimal = Field(ge=0, allow_inf_nan=False)
    cache_read: Decimal | None = Field(None, ge=0, allow_inf_nan=False)
    cache_write: Decimal | None = Field(None, ge=0, allow_inf_nan=False)

    def price(self) -> ModelPrice:
        return ModelPrice(self.input, self.output, self.cache_read, self.cache_write)


class ProxyConfig(_Model):
    """The whole proxy: providers by name, plus auth, store and metrics settings."""

    providers: dict[str, ProviderConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = {}
    pricing: dict[str, PricingConfig] = {}
    auth: AuthConfig | None = None
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    limits: LimitsConfig | None = None
    otel: OtelConfig | None = None
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    request_deadline: float = Field(600.0, gt=0)
    #: Seconds for a client to send a whole JSON or form body; past it 408, connection closed.
    request_body_timeout: float = Field(30.0, gt=0)
    #: Bytes of one upload (a form, a file), streamed to the provider; past it 413.
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    #: Bytes per second an upload must average after its first 10 s; slower, 408.
    min_upload_rate: float = Field(64 * 1024, gt=0)

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"provider name {name!r} may use only letters, digits, _ . -")
        return value

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> ProxyConfig:
        for name, provider in self.providers.items():
            for fallback in provider.fallbacks:
                target = self.providers.get(fallback)
                if target is None:
                    raise ValueError(f"providers.{name}.fallbacks: no provider named {fallback!r}")
                if fallback == name:
                    raise ValueError(
                        f"providers.{name}.fallbacks: a provider cannot fall back to itself"
                    )
        return self

    @model_validator(mode="after")
    def _model_fallbacks_are_served(self) -> ProxyConfig:
        served = {m for p in self.providers.values() for m in p.models}
        for name, model in self.models.items():
            if name not in served and "*" not in served:
                raise ValueError(f"models.{name}: no provider serves this model")
            for fallback in model.fallbacks:
                if fallback == name:
                    raise ValueError(f"models.{name}.fallbacks: a model cannot fall back to itself")
                if fallback not in served and "*" not in served:
                    raise ValueError(
                        f"models.{name}.fallbacks: no provider serves {fallback!r} "
                        '(list it in a provider\'s models, or give one models = ["*"])'
                    )
        return self

    @model_validator(mode="after")
    def _limited_principals_exist(self) -> ProxyConfig:
        for principal in self.limits.principals if self.limits is not None else ():
            problem = _principal_problem(principal, self.auth)
            if problem is not None:
                raise ValueError(f"limits.principals.{principal!r}: {problem}")
        return self

    @model_validator(mode="after")
    def _extras_installed(self) -> ProxyConfig:
        problem = missing_extras(self)
        if problem is not None:
            # Shown as it is: a ValueError's message would get a "Value error, " prefix.
            raise PydanticCustomError("missing_extra", "{problem}", {"problem": problem})
        return self


def _expand(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> ProxyConfig:
    """Validate already-expanded data, turning every failure into one readable message."""
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            location = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"  {location}: {error['msg']}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read a TOML file, expand ``${ENV_VAR}`` references in strings, and validate it.

    ``$$`` stands for a literal ``$``. A missing variable is an error naming it and where.
    """
    import tomllib  # here: a config given as a mapping never needs it

    source = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        expanded = _expand(raw, os.environ if env is None else env, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return parse_config(expanded, source=source)
