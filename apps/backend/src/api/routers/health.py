"""Liveness, readiness and metrics: for load balancers and Prometheus (no API key)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from src import primary_index
from src.api.deps import database_of
from src.api.errors import ProblemKind, problem_response, problem_responses
from src.api.schemas import Health
from src.migration_runner import head_revision
from src.primary_index import UNIQUE_PRIMARY_INDEX
from src.services.errors import CareTeamError
from src.services.health_service import HealthService

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 3.0
HEAD = head_revision()


@router.get("/healthz", response_model=Health, responses=problem_responses(authenticated=False))
async def healthz() -> Health:
    """Liveness: 200 while the process is up (does not touch the database)."""
    return Health(status="ok")


NOT_READY = ProblemKind("not_ready", 503, "Not ready")
NOT_READY_RETRY_S = 5


@router.get(
    "/readyz",
    response_model=Health,
    responses=problem_responses(NOT_READY, authenticated=False),
)
async def readyz(request: Request) -> Response:
    """Readiness: 200 only when the database answers, the schema is at head and the
    one-primary index exists and is valid; otherwise 503 with the reason."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with database_of(request).sessionmaker() as db:
                ready = await HealthService.readiness(db=db)
    except (CareTeamError, TimeoutError) as err:  # any failure to answer is "not ready"
        return _not_ready(f"database does not answer ({type(err).__name__})")
    if ready.revision is None:
        return _not_ready("the application role cannot read the schema: run the migrations")
    if ready.revision != HEAD:
        return _not_ready(f"schema at {ready.revision}, head is {HEAD}: run the migrations")
    state = primary_index.index_state(ready.index_valid)
    if state == "missing":
        return _not_ready(f"index {UNIQUE_PRIMARY_INDEX} is missing")
    if state == "invalid":
        return _not_ready(f"index {UNIQUE_PRIMARY_INDEX} is INVALID: re-run the migration")
    return JSONResponse({"status": "ready"})


def _not_ready(reason: str) -> Response:
    return problem_response(
        NOT_READY.status,
        NOT_READY.code,
        NOT_READY.title,
        reason,
        headers={"Retry-After": str(NOT_READY_RETRY_S)},
    )


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics (text format)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
