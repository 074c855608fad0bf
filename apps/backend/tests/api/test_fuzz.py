"""Property-based fuzzing of the real server against its own OpenAPI schema.

`careteam serve` runs in a subprocess on the test database; schemathesis generates
requests from /openapi.json (valid and invalid) and checks that no response is a 5xx,
and that every status code, content type and body conforms to the schema. The number
of examples per operation is bounded (FUZZ_EXAMPLES, default 30) so it fits in CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import BACKEND_DIR, Settings
from src.db import create_engine
from src.embedded import run_blocking
from src.services.organization_service import OrganizationService

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))


@dataclass
class LiveApi:
    base_url: str
    key: str
    patient_id: str = ""
    provider_ids: tuple[str, ...] = ()

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, object] = json.loads(response.read())
            return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _issue_key(url: str, settings: Settings) -> str:
    engine = create_engine(url, settings)
    try:
        async with AsyncSession(engine) as owner:
            issued = await OrganizationService.create_organization(db=owner, name="Fuzz Clinic")
        return issued.key
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def live_api(database_url: str, settings: Settings) -> Iterator[LiveApi]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "src.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=BACKEND_DIR,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"careteam serve did not start:\n{server.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.2)
    keys: list[str] = []
    run_blocking(_collect(keys, _issue_key(database_url, settings)))
    api = LiveApi(base_url, keys[0])
    # Real ids for the fuzzer to use half of the time, so it reaches past the 404s.
    api.patient_id = str(
        api.post("/v1/patients", {"first_name": "F", "last_name": "Z", "dob": "1980-01-01"})["id"]
    )
    api.provider_ids = tuple(
        str(api.post("/v1/providers", {"first_name": "P", "last_name": f"P{i}"})["id"])
        for i in range(3)
    )
    yield api
    server.send_signal(signal.SIGINT)
    try:
        output, _ = server.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        raise
    assert "Traceback" not in output, output


async def _collect(into: list[str], coro: object) -> None:
    into.append(await coro)  # type: ignore[misc]


OPERATIONS = [
    "POST /v1/patients",
    "GET /v1/patients/{patient_id}",
    "POST /v1/providers",
    "GET /v1/providers/{provider_id}",
    "PATCH /v1/providers/{provider_id}",
    "GET /v1/patients/{patient_id}/care-team",
    "PUT /v1/patients/{patient_id}/care-team/primary",
    "POST /v1/patients/{patient_id}/care-team/members",
    "DELETE /v1/patients/{patient_id}/care-team/members/{provider_id}",
    "GET /v1/patients/{patient_id}/care-team/history",
    "GET /healthz",
    "GET /readyz",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema):
    """The list below is the whole API: a new route must be added to the fuzz run."""
    found = sorted(op.ok().label for op in api_schema.get_all_operations())
    assert found == sorted(OPERATIONS)


# /healthz and /readyz have no parameters or body that could be made invalid.
CASES = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (label in ("GET /healthz", "GET /readyz") and mode is GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_no_5xx_and_responses_match_the_schema(
    api_schema: schemathesis.BaseSchema, live_api: LiveApi, label: str, mode: GenerationMode
):
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {live_api.key}"}

    @given(
        case=operation.as_strategy(generation_mode=mode),
        use_real_ids=st.booleans(),
        provider=st.sampled_from(live_api.provider_ids),
    )
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def fuzz(case: schemathesis.Case, use_real_ids: bool, provider: str) -> None:
        # Real ids only in positive mode: in negative mode they would repair the very
        # values the case was made invalid with.
        if use_real_ids and mode is GenerationMode.POSITIVE:
            params = case.path_parameters or {}
            if "patient_id" in params:
                params["patient_id"] = live_api.patient_id
            if "provider_id" in params:
                params["provider_id"] = provider
            if isinstance(case.body, dict) and "provider_id" in case.body:
                case.body["provider_id"] = provider
        case.call_and_validate(base_url=live_api.base_url, headers=headers, checks=CHECKS)

    fuzz()
