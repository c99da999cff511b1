"""The optional extras, and which config sections need them.

The core install serves API keys, metrics and a SQLite store. A section that needs more
names its extra; a config whose extras are not installed is refused when it is loaded, with
the pip command to run, rather than failing with an ``ImportError`` at start-up or on a
request. Presence is checked with ``find_spec``, which imports nothing (for a dotted name, its
parent package: ``opentelemetry`` is a namespace package, which runs no code).
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_proxy_mw.config import ProxyConfig

__all__ = ["EXTRAS", "installed", "missing_extras"]

#: Each extra and the modules it installs (the distributions have the same names, with ``-``
#: for ``_``). ``tokens``: proxy-issued and external JWTs. ``oauth``: the OAuth login, its
#: session cookie, and the tokens minted from a session. ``pricing``: the maintained price
#: table, which no config section requires (without it, only ``[pricing]`` prices requests).
#: ``otel``: spans and GenAI metrics through the host's OpenTelemetry providers (its
#: distribution, ``opentelemetry-api``, installs ``opentelemetry.trace`` and the rest).
#: ``all``, in pyproject.toml, is every one.
EXTRAS: dict[str, tuple[str, ...]] = {
    "tokens": ("joserfc",),
    "oauth": ("authlib", "httpx2", "itsdangerous", "joserfc"),
    "redis": ("redis",),
    "pricing": ("genai_prices",),
    "otel": ("opentelemetry.trace",),
}


def installed(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported."""
    return all(_found(module) for module in EXTRAS[extra])


def _found(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _needed(config: ProxyConfig) -> dict[str, str]:
    """The sections of ``config`` that need an extra, each with the extra's name."""
    needs = {}
    auth = config.auth
    if auth is not None:
        if "tokens" in auth.model_fields_set:
            needs["[auth.tokens]"] = "tokens"
        if auth.jwt_issuers:
            needs["[auth.jwt_issuers]"] = "tokens"
        if auth.oauth:
            needs["[auth.oauth]"] = "oauth"
    if config.otel is not None and config.otel.enabled:
        needs["[otel]"] = "otel"
    if config.store.url.startswith(("redis://", "rediss://")):
        needs["a redis:// [store] url"] = "redis"
    return needs


def missing_extras(config: ProxyConfig) -> str | None:
    """What ``config`` needs that is not installed, with the pip command; ``None`` if all is."""
    missing = {section: extra for section, extra in _needed(config).items() if not installed(extra)}
    if not missing:
        return None
    needs = ", ".join(f"{section} needs the {extra} extra" for section, extra in missing.items())
    extras = ",".join(sorted(set(missing.values())))
    return f"{needs}: pip install 'llm-proxy-mw[{extras}]'"
