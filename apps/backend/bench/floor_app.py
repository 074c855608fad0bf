"""The floor of an HTTP read on this machine, for bench/throughput.py: what a FastAPI
route costs with nothing of ours in it.

Served by uvicorn as `careteam serve` is (one worker, httptools, uvloop), it has two
routes, with no middleware, no key, no session and no validation beyond the path:

- GET /floor/{org}/{patient}: the path parsed, an empty JSON object answered;
- GET /floor/{org}/{patient}/team: the same, plus the care-team statement the service
  sends (careteam_care_team) on a connection of a plain asyncpg pool, as the
  application role; its row count is the answer.

The second is the most a FastAPI route that reads a care team can do here: the ratio
of the real GET .../care-team to it shows what the API's own layers cost.
FLOOR_DATABASE_URL: the application role's libpq URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request, Response

from src.services.care_team_service import SELECT_TEAM


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Nothing to reset (the routes change no session state): no round trip on release."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(
        os.environ["FLOOR_DATABASE_URL"], min_size=8, max_size=8, reset=_no_reset
    )
    app.state.pool = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.get("/floor/{org}/{patient}")
async def empty(org: uuid.UUID, patient: uuid.UUID) -> Response:
    return Response(b"{}", media_type="application/json")


@app.get("/floor/{org}/{patient}/team")
async def team(org: uuid.UUID, patient: uuid.UUID, request: Request) -> Response:
    async with request.app.state.pool.acquire() as driver:
        rows = await SELECT_TEAM.fetch(driver, {"org": org, "patient": patient, "key": None})
    return Response(str(len(rows)).encode(), media_type="application/json")
