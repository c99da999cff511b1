"""The translation benchmark's fake provider: the same answer in each API, over loopback.

``POST /v1/chat/completions``, ``/v1/messages`` and ``/v1/responses`` get ``ANSWERS`` of
their API: the JSON answer, or the stream (chunked, one write per event, as a provider
writes them) when the body has ``"stream":true``. A raw asyncio protocol, like
``fake_provider.py``, so that it costs far less per request than the proxy in front of it.

Run: ``python -m benchmarks._translation_provider [--port 0]``; it prints the bound port.
"""

from __future__ import annotations

import argparse

from benchmarks._raw_http import RequestProtocol, chunk, head, run, serve
from benchmarks._translation_answers import ANSWERS
from llm_proxy_mw.apis import API_PATHS

__all__ = ["main"]

_KEEP = ("Connection", "keep-alive")
_SSE_HEAD = head(
    "200 OK",
    [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"), _KEEP],
    server="fake-provider",
)


def _json(body: bytes) -> bytes:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), _KEEP]
    return head("200 OK", headers, server="fake-provider") + body


#: Per path: the JSON answer whole, and the stream's writes.
_PARTS = {
    path.encode(): (
        [_json(ANSWERS[api][0])],
        [_SSE_HEAD, *map(chunk, ANSWERS[api][1]), b"0\r\n\r\n"],
    )
    for path, api in API_PATHS.items()
}
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


class _Provider(RequestProtocol):
    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        answers = _PARTS.get(self._url.partition(b"?")[0])
        if answers is None:
            self._write([_NOT_FOUND], keep_alive)
            return
        json_parts, stream_parts = answers
        stream = b'"stream":true' in b"".join(self._body)
        self._write(stream_parts if stream else json_parts, keep_alive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    run(serve(_Provider, parser.parse_args().port))


if __name__ == "__main__":
    main()
