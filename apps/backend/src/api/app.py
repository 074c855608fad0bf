"""The FastAPI application: `create_app()` builds it; `careteam serve` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from src.api.errors import install_error_handlers
from src.api.middleware import RequestContextMiddleware
from src.api.routers import care_team, directory, health
from src.config import get_settings
from src.db import Database, open_database
from src.log_config import install_request_id_on_records


def create_app(database: Database | None = None, database_url: str | None = None) -> FastAPI:
    """The app. Without `database`, its lifespan opens one from the settings (on
    `database_url` when given) and disposes of it at shutdown; tests pass their own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database is not None:
            yield
            return
        opened = open_database(get_settings(), database_url)
        app.state.database = opened
        try:
            yield
        finally:
            await opened.dispose()

    app = FastAPI(
        title="Care team API",
        version="1.0.0",
        summary="Patients' care teams: at most one primary provider per patient and organization.",
        lifespan=lifespan,
    )
    if database is not None:
        app.state.database = database
    install_request_id_on_records()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
    app.include_router(directory.router)
    app.include_router(care_team.router)
    return app
