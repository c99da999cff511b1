"""The ``model`` field of a ``multipart/form-data`` body, found as the body streams past.

Routing needs the model before the first byte goes to a provider, and an upload must never
be held whole, so the form is scanned chunk by chunk, never parsed into parts: the scanner
looks for the part delimiters (``bytes.find``, in C), reads each part's headers, and keeps
the value of the ``model`` part only. It settles when the model was read, a file part
began, or ``LOOKAHEAD`` bytes went by; what was read until then is all Routing waits for.

The provider reads the whole form, so the scanner keeps watching the rest of it: a ``model``
part after it settled (after a file, or a second one, which a provider may read instead of
the first) is refused with a 400 before its bytes are sent, so a provider never serves a
model the proxy did not route. The SDKs and ``curl -F model=... -F file=@...`` send the
model first.
"""

from __future__ import annotations

import re

from llm_proxy_mw.errors import InvalidRequestError

__all__ = ["LOOKAHEAD", "FormScanner", "boundary_of"]

#: Bytes of form read, at most, before the model is given up as absent.
LOOKAHEAD = 1024 * 1024
#: The most bytes of one part's headers, and of the model's value.
_HEADERS_LIMIT = 16 * 1024
_MODEL_LIMIT = 1024

_BOUNDARY = re.compile(rb';\s*boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition:(.*)$", re.IGNORECASE | re.MULTILINE)
_NAME = re.compile(rb';\s*name\s*=\s*(?:"([^"]*)"|([^\s;]+))', re.IGNORECASE)
_FILENAME = re.compile(rb";\s*filename\*?\s*=", re.IGNORECASE)

# Where the scanner is: in a part's content (or the preamble), just past a delimiter (the
# body's end, ``--``, or a part's headers follow), in a part's headers, past the last part.
_CONTENT, _DELIMITED, _HEADERS, _END = range(4)

_MISPLACED = (
    "A multipart body must give its 'model' field once, before any file part "
    "(curl -F model=... -F file=@...)."
)


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type; ``None`` for any other type,
    and for a form without one (no parser, the provider's included, can read its fields)."""
    if content_type.partition(b";")[0].strip().lower() != b"multipart/form-data":
        return None
    match = _BOUNDARY.search(content_type)
    return None if match is None else match.group(1) or match.group(2)


class FormScanner:
    """Feed it each chunk of a form before the chunk goes on; ``model`` once ``settled``."""

    __slots__ = ("_delimiter", "_rest", "_state", "_value", "_seen", "model", "settled")

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The body's first delimiter has no line break before it: lend it one.
        self._rest = b"\r\n"
        self._state = _CONTENT
        self._value: list[bytes] | None = None  # the model part's content, while in it
        self._seen = 0
        self.model: str | None = None
        self.settled = False

    def feed(self, chunk: bytes) -> None:
        """Scan ``chunk``; ``InvalidRequestError`` for a misplaced or malformed model."""
        self._seen += len(chunk)
        data = self._rest + chunk if self._rest else chunk
        at = 0
        while True:
            state = self._state
            if state == _CONTENT:
                found = data.find(self._delimiter, at)
                if found < 0:
                    # The tail could be the start of a delimiter: kept for the next chunk.
                    at = self._content(data, at, max(at, len(data) - len(self._delimiter) + 1))
                    break
                self._content(data, at, found)
                self._end_part()
                at = found + len(self._delimiter)
                self._state = _DELIMITED
            elif state == _DELIMITED:
                if len(data) - at < 2:
                    break
                self._state = _END if data[at : at + 2] == b"--" else _HEADERS
            elif state == _HEADERS:
                end = data.find(b"\r\n\r\n", at)
                if end < 0:
                    if len(data) - at > _HEADERS_LIMIT:
                        raise InvalidRequestError("A multipart part's headers are too long.")
                    break
                self._start_part(data[at:end])
                at = end + 4
                self._state = _CONTENT
            else:
                at = len(data)  # the epilogue: ignored, as by every form parser
                break
        self._rest = data[at:]
        if not self.settled and self._seen > LOOKAHEAD:
            self.settled = True

    def _content(self, data: bytes, start: int, end: int) -> int:
        value = self._value
        if value is not None and end > start:
            value.append(data[start:end])
            if sum(map(len, value)) > _MODEL_LIMIT:
                raise InvalidRequestError("The 'model' field is too long.")
        return end

    def _start_part(self, headers: bytes) -> None:
        disposition = _DISPOSITION.search(headers)
        if disposition is None:
            return
        params = disposition.group(1)
        name = _NAME.search(params)
        is_file = _FILENAME.search(params) is not None
        if name is not None and (name.group(1) or name.group(2)) == b"model" and not is_file:
            if self.settled:
                raise InvalidRequestError(_MISPLACED)
            self._value = []
        elif is_file:
            self.settled = True

    def _end_part(self) -> None:
        value = self._value
        if value is None:
            return
        self._value = None
        try:
            model = b"".join(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("The 'model' field is not valid UTF-8.") from None
        if not model:
            raise InvalidRequestError("The 'model' field must be a non-empty string.")
        self.model = model
        self.settled = True
