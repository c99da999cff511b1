"""Where browsers reach the proxy: the origin of the OAuth redirect URIs, of the session
cookie's ``Secure`` flag and of the same-origin (CSRF) check, all from one source.

Configuration names it: ``public_url``, and each provider's ``redirect_uri``. Without
``public_url``, the request's ``Host`` (``x-forwarded-host`` with ``trust_proxy_headers``)
counts only when it is one of ``allowed_hosts``; without those, the origin is the address the
server listens on (ASGI's ``scope["server"]``), which no client chooses. Never a header alone:
``Host: evil.example`` must neither become a redirect URI nor make ``Origin:
http://evil.example`` look like this site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import Scope

from llm_proxy_mw.config import HOST_PATTERN, AuthConfig

__all__ = ["PublicOrigin"]

_HOST = re.compile(HOST_PATTERN)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), if any."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated proxy header (the client-facing hop)."""
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


def _normalised(origin: str | None) -> tuple[str, str, int] | None:
    if not origin:
        return None
    try:
        parts = urlsplit(origin)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True, slots=True)
class PublicOrigin:
    """This site's origin as browsers see it (see the module's docstring for the sources)."""

    #: The mount's public URL, no trailing slash.
    public_url: str | None = None
    #: Lower-case ``host`` or ``host:port`` values a request may name.
    allowed_hosts: frozenset[str] = frozenset()
    trust_proxy_headers: bool = False
    #: Further origins of this site named by configuration: those of the redirect URIs.
    configured: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: AuthConfig) -> PublicOrigin:
        redirects = (idp.redirect_uri for idp in config.oauth.values())
        return cls(
            public_url=config.public_url,
            allowed_hosts=frozenset(config.allowed_hosts),
            trust_proxy_headers=config.trust_proxy_headers,
            configured=frozenset(_origin_of(uri) for uri in redirects if uri),
        )

    def is_https(self, scope: Scope) -> bool:
        """Whether browsers reach us over https: ``public_url`` says, else the request does
        (``x-forwarded-proto`` only if trusted)."""
        if self.public_url is not None:
            return self.public_url.startswith("https:")
        if self.trust_proxy_headers:
            forwarded = _first(_header(scope, b"x-forwarded-proto"))
            if forwarded is not None:
                return forwarded.lower() == "https"
        return scope.get("scheme") in ("https", "wss")

    def of(self, scope: Scope) -> str | None:
        """``scheme://host[:port]`` of this site for this request; ``None`` when the request
        names a host that is not allowed, or the server's address is unknown."""
        if self.public_url is not None:
            return _origin_of(self.public_url)
        if not self.allowed_hosts:
            return self._listening(scope)
        forwarded = b"x-forwarded-host" if self.trust_proxy_headers else None
        host = _first(_header(scope, forwarded)) if forwarded else None
        host = host or _header(scope, b"host")
        if host is None or not _HOST.match(host) or host.lower() not in self.allowed_hosts:
            return None
        return f"{'https' if self.is_https(scope) else 'http'}://{host.lower()}"

    def base_url(self, scope: Scope) -> str | None:
        """Where browsers reach the mount: ``public_url``, else this origin and the root path."""
        if self.public_url is not None:
            return self.public_url
        origin = self.of(scope)
        return None if origin is None else f"{origin}{scope.get('root_path', '')}"

    def same_origin(self, scope: Scope) -> bool:
        """Whether ``Origin`` (or else ``Referer``) names this site."""
        claimed = _normalised(_header(scope, b"origin") or _header(scope, b"referer"))
        if claimed is None:
            return False
        return any(claimed == _normalised(o) for o in (self.of(scope), *self.configured))

    @staticmethod
    def _listening(scope: Scope) -> str | None:
        # The socket's own address (ASGI: "the listening address for this server"); plain
        # http unless the server itself speaks TLS, whatever a proxy in front may say.
        server = scope.get("server")
        if not server:
            return None
        host, port = str(server[0]), server[1]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        if port is not None and port != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{port}"
        # A unix socket's path (ASGI gives it with no port) is no address a browser could use.
        return f"{scheme}://{host}" if _HOST.match(host) else None
