"""Translation between Chat Completions, Messages and Responses (see ``_codec.py``).

``CODECS`` holds one codec per (client API, provider API) pair; ``codec_for`` picks the one
that serves a client from a provider, preferring the provider's APIs in the order of
``_PREFERRED`` (Chat first: every OpenAI-kind provider speaks it, and its codecs are the
hub the others compose through).
"""

from __future__ import annotations

from llm_proxy_mw.apis import Api
from llm_proxy_mw.translate._codec import Codec
from llm_proxy_mw.translate._codecs import BUILT_IN_CODECS

__all__ = ["CODECS", "codec_for"]

#: The codec serving a client of the first API from a provider of the second.
CODECS: dict[tuple[Api, Api], Codec] = {(c.client, c.provider): c for c in BUILT_IN_CODECS}

_PREFERRED = (Api.CHAT, Api.MESSAGES, Api.RESPONSES)


def codec_for(client: Api, provider: frozenset[Api]) -> Codec | None:
    """The codec that serves a ``client`` request from a provider speaking ``provider``.

    ``None`` when the provider speaks the client's API (native), and also when no
    registered codec reaches it: callers test ``client in provider`` first.
    """
    if client in provider:
        return None
    for api in _PREFERRED:
        if api in provider:
            codec = CODECS.get((client, api))
            if codec is not None:
                return codec
    return None
