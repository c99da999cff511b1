"""Where plain ``http://`` may fetch keys or carry secrets: this machine only.

A JWKS, OIDC metadata or a token endpoint fetched in clear can be swapped or read by anyone on
the path, so such URLs must be ``https://``; ``http://`` is left for a provider on loopback
(a sidecar, a test). Host names other than ``localhost`` are not resolved: a name that
resolves to 127.0.0.1 today may not tomorrow.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_RULE", "https_or_loopback", "is_loopback_host"]

#: Why a URL was refused, for error messages and log lines.
LOOPBACK_RULE = (
    "must be https:// (plain http:// only to a loopback host: 127.0.0.0/8, ::1, localhost)"
)

_IPV4_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


def is_loopback_host(host: str) -> bool:
    """``localhost``, an address in 127.0.0.0/8, or ``::1`` (IPv4-mapped forms are not)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address in _IPV4_LOOPBACK
    return address == _IPV6_LOOPBACK


def https_or_loopback(url: str) -> bool:
    """``True`` for an ``https://`` URL, or an ``http://`` one to a loopback host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unbalanced IPv6 bracket
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host))
