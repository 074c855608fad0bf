"""The HTTP/1.1 protocol `careteam serve` runs: uvicorn's httptools protocol with a limit
on the size of a request's head (request line and headers).

uvicorn reads a head of any size into memory before the application sees it (a 10 MB
`Authorization` header was read in full); this protocol answers 431 (problem details)
and closes the connection as soon as a head grows past MAX_HEAD_BYTES.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from src.api.errors import HEADERS_TOO_LARGE, PROBLEM_JSON, TYPE_PREFIX

MAX_HEAD_BYTES = 16 * 1024


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over MAX_HEAD_BYTES with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the start of a request and the end of its headers
        self._head_bytes = 0
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps(
            {
                "type": TYPE_PREFIX + HEADERS_TOO_LARGE.code,
                "title": HEADERS_TOO_LARGE.title,
                "status": HEADERS_TOO_LARGE.status,
                "detail": f"request line and headers over {MAX_HEAD_BYTES} bytes",
                "instance": "",
                "error": HEADERS_TOO_LARGE.code,
                "request_id": uuid.uuid4().hex,
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            + f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n".encode()
            + b"cache-control: no-store\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
