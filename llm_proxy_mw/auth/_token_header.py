"""The JOSE header of a proxy access token: its type, the only parameters it may carry, and
how it is read (untrusted) before any key is involved.

Shared by the verifier (``_jwt_auth``) and the key (``_signing_key``), so that neither
imports the other: the verifier never loads joserfc, the key never loads the verifier.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

__all__ = ["ACCESS_TOKEN_TYPE", "HEADER_PARAMETERS", "token_header"]

ACCESS_TOKEN_TYPE = "at+jwt"

#: The only header parameters our tokens carry; a token with any other one is refused.
HEADER_PARAMETERS = frozenset({"alg", "kid", "typ"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def token_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, or ``None`` when the token is not shaped like one.
    Nothing in it is trusted yet."""
    header_segment = token.partition(".")[0]
    if token.count(".") != 2 or not _B64URL.fullmatch(header_segment):
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(header_segment + "=" * 3))
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None
