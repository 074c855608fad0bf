"""Helpers the test modules share (test modules never import each other)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.config import BACKEND_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(
    method: str, url: str, body: object = None, key: str | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON body or None) of one request; never raises on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


@dataclass
class LiveApi:
    """A `careteam serve` subprocess and an API key of one of its organizations."""

    process: subprocess.Popen[str]
    base_url: str
    log: Path  # what the server printed (a file: a pipe nobody reads would fill and block it)
    key: str = ""

    def get_json(self, path: str) -> Any:
        status, body = http_json("GET", self.base_url + path, key=self.key)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict[str, object]) -> Any:
        status, answer = http_json("POST", self.base_url + path, body, key=self.key)
        assert status in (200, 201), (path, status, answer)
        return answer

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Stop it with `sig` (SIGINT: as Ctrl-C); everything it printed."""
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.log.read_text()


def start_serve(env: dict[str, str], log: Path, *args: str, timeout_s: float = 90) -> LiveApi:
    """Start `careteam serve` on a free port with `env` over this process's environment,
    its output in the file `log`, and wait until it answers /healthz."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.cli", "serve", "--port", str(port), *args],
            cwd=BACKEND_DIR,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1):
                return LiveApi(process, base_url, log)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(f"careteam serve did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
