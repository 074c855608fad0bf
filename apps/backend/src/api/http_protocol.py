"""The HTTP/1.1 protocol `careteam serve` runs: uvicorn's httptools protocol with a limit
on the size of a request's head (request line and headers), and problem details for
what uvicorn itself refuses.

uvicorn reads a head of any size into memory before the application sees it (a 10 MB
`Authorization` header was read in full). This protocol answers 431 (problem details)
and closes the connection as soon as a head is known to be over MAX_HEAD_BYTES: while
it is still arriving (counting the bytes received since it began), or once it is
parsed (counting its request line and headers), whichever comes first. A request
uvicorn cannot parse (a malformed request line, an unknown method) is answered 400 as a
problem too, instead of uvicorn's plain text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from src.api.errors import (
    HEADERS_TOO_LARGE,
    INSTANCE_PREFIX,
    PROBLEM_JSON,
    TYPE_PREFIX,
    ProblemKind,
)

MAX_HEAD_BYTES = 16 * 1024
TOO_LARGE_DETAIL = f"request line and headers over {MAX_HEAD_BYTES} bytes"
BAD_REQUEST = ProblemKind("bad_request", 400, "Malformed HTTP request")
_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    """Raised from the parser's callback to stop parsing a head that is too large."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over MAX_HEAD_BYTES with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the start of a request and the end of its headers
        self._received = 0  # bytes received while in the head (a slow, huge head)
        self._parsed = 0  # bytes of the request line and headers parsed so far
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._received = self._parsed = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._parsed += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._parsed > MAX_HEAD_BYTES:
            raise _HeadTooLarge  # the request never starts: parsing stops here
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._parsed > MAX_HEAD_BYTES and not self._in_head:  # _HeadTooLarge
                self._refuse(HEADERS_TOO_LARGE, TOO_LARGE_DETAIL)
            else:
                self._refuse(BAD_REQUEST, "the request is not valid HTTP/1.1")
            return
        if self._in_head and self.parser is not None:
            self._received += len(data)
            if self._received > MAX_HEAD_BYTES or self._parsed > MAX_HEAD_BYTES:
                self._refuse(HEADERS_TOO_LARGE, TOO_LARGE_DETAIL)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own refusals (for instance of an invalid header value)."""
        self._refuse(BAD_REQUEST, "the request is not valid HTTP/1.1")

    def _refuse(self, kind: ProblemKind, detail: str) -> None:
        self._refused = True
        request_id = uuid.uuid4().hex
        body = json.dumps(
            {
                "type": TYPE_PREFIX + kind.code,
                "title": kind.title,
                "status": kind.status,
                "detail": detail,
                "instance": INSTANCE_PREFIX + request_id,
                "error": kind.code,
                "request_id": request_id,
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (kind.status, _REASONS[kind.status])
            + f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n".encode()
            + f"x-request-id: {request_id}\r\n".encode()
            + b"cache-control: no-store\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
