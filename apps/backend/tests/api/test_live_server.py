"""What only a real `careteam serve` process shows: its HTTP server's limits, and which
database logins it holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import asyncpg
import pytest

from src.config import BACKEND_DIR, Settings
from tests.helpers import FreshDatabase, LiveApi, http_json, start_serve


def raw_request(base_url: str, head: bytes, chunk: int = 64 * 1024) -> bytes:
    """Send a request head of any size; the answer's first bytes (the server may close the
    connection before the whole head is sent)."""
    address = urllib.parse.urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as s:
        try:
            for start in range(0, len(head), chunk):
                s.sendall(head[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-way: the answer is waiting
        answer = b""
        try:
            while len(answer) < 2000 and (data := s.recv(4096)):
                answer += data
        except ConnectionResetError:
            pass
        return answer


class TestRequestHeads:
    def test_a_10_mb_header_is_refused_with_431_without_reading_it_all(self, live_api: LiveApi):
        head = (
            b"GET /v1/patients HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + b"A" * 10_000_000
            + b"\r\n\r\n"
        )
        started = time.monotonic()
        answer = raw_request(live_api.base_url, head)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"application/problem+json" in answer
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "headers_too_large" and body["status"] == 431
        assert time.monotonic() - started < 10
        assert http_json("GET", live_api.base_url + "/healthz")[0] == 200  # still serving

    @pytest.mark.parametrize("size", [17_000, 50_000, 100_000])
    def test_a_large_head_arriving_at_once_is_refused_too(self, live_api: LiveApi, size: int):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * size + b"\r\n\r\n"
        answer = raw_request(live_api.base_url, head, chunk=len(head))
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]

    def test_a_request_that_is_not_http_is_a_problem_too(self, live_api: LiveApi):
        answer = raw_request(live_api.base_url, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"application/problem+json" in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"

    def test_ordinary_heads_are_served(self, live_api: LiveApi):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 8000 + b"\r\n\r\n"
        assert raw_request(live_api.base_url, head).startswith(b"HTTP/1.1 200 ")


class TestDatabaseLogins:
    async def test_the_api_process_holds_no_owner_connection(
        self, fresh_database: FreshDatabase, settings: Settings, tmp_path: Path
    ):
        env = {"DATABASE_URL": fresh_database.url}
        api = start_serve(env, tmp_path / "serve.log", "--migrate", "--log-level", "warning")
        try:
            created = subprocess.run(
                [sys.executable, "-m", "src.cli", "org", "create", "Logins", "--json"],
                cwd=BACKEND_DIR,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            key = json.loads(created.stdout)["api_key"]
            status, _ = http_json(
                "POST",
                api.base_url + "/v1/patients",
                {"first_name": "A", "last_name": "B", "dob": "1990-01-01"},
                key=key,
            )
            assert status == 201
            assert http_json("GET", api.base_url + "/readyz")[0] == 200
            probe = await asyncpg.connect(fresh_database.url)
            try:
                logins = await probe.fetch(
                    "SELECT usename, application_name FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await probe.close()
        finally:
            api.stop()
        assert logins, "the API holds no connection at all"
        assert {row["usename"] for row in logins} == {settings.app_db_role}
