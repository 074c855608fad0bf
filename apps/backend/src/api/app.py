"""The FastAPI application: `create_app()` builds it; `careteam serve` runs it."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from src import console, primary_index
from src.api.access_log import AccessLog, app_parameter_names, know_parameter_names
from src.api.auth import Authentication
from src.api.bulk_export import ExportRunner
from src.api.cors import ProblemCORSMiddleware
from src.api.errors import install_error_handlers
from src.api.fhir_query import RESULT
from src.api.fhir_resources import FhirError, outcome
from src.api.middleware import BodyRules, RequestContextMiddleware
from src.api.openapi import install_openapi, operation_id
from src.api.routers import (
    access_log,
    bulk_data,
    care_team,
    credentials,
    directory,
    feed,
    fhir,
    health,
    panels,
    smart,
)
from src.api.routers.bulk_data import PARAMETERS as BULK_DATA_PARAMETERS
from src.config import Settings, get_settings
from src.db import Database, open_database
from src.log_config import configure_logging
from src.metrics import record_check, track_pool
from src.services.access_log_writer import AccessLogWriter
from src.services.export_storage import DirectoryStorage
from src.services.fhir_search import PARAMETERS
from src.services.health_service import HealthService

logger = logging.getLogger(__name__)

DOCS_STATIC = "/docs/static"


POLL_S = 60.0


async def refresh_violation_metrics(database: Database, max_age_s: float) -> None:
    """Publish the rule's last check (careteam_rule_status(): counts only, on the
    application's own connection). The database recounts only when that check is older
    than `max_age_s`, once for all the API processes that ask."""
    async with database.sessionmaker() as db:
        row = await HealthService.rule_status(db=db, max_age_s=max_age_s)
    record_check(
        row.several_primaries,
        row.without_primary,
        primary_index.index_state(row.index_valid),
        row.checked_at.timestamp(),
    )
    if row.several_primaries:
        logger.warning(
            "violation check: %d patient(s) with several primary providers",
            row.several_primaries,
            extra={"event": "violation_check_failed"},
        )


async def check_periodically(database: Database, interval_s: float) -> None:
    """Every process asks often (at most every minute) and cheaply; the database
    recounts at most once per `interval_s`, whichever process asks."""
    while True:
        try:
            await refresh_violation_metrics(database, interval_s)
        except Exception as err:  # reported, and tried again next time
            logger.warning(
                "violation check could not run: %s",
                type(err).__name__,
                extra={"event": "violation_check_error"},
            )
        await asyncio.sleep(min(interval_s, POLL_S))


def init_sentry(settings: Settings) -> None:
    """Errors to Sentry, only with SENTRY_DSN; nothing is imported otherwise."""
    if settings.sentry_dsn is None:
        return
    import sentry_sdk  # noqa: PLC0415  (optional: loaded only when configured)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        send_default_pii=False,
        before_send=scrub_event,  # type: ignore[arg-type]  # Event is a TypedDict of dicts
        # Expected domain errors are answered 4xx and never reach Sentry; only 5xx do.
        traces_sample_rate=0.0,
    )


SCRUBBED = "[scrubbed]"


def scrub_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Remove what could carry health data or secrets: request bodies, query strings,
    cookies, auth headers, user data, local variables."""
    request = event.get("request") or {}
    for key in ("data", "query_string", "cookies"):
        if key in request:
            request[key] = SCRUBBED
    headers = request.get("headers") or {}
    for name in list(headers):
        if name.lower() in ("authorization", "cookie", "x-api-key"):
            headers[name] = SCRUBBED
    event.pop("user", None)
    for exception in (event.get("exception") or {}).get("values", []):
        for frame in (exception.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    return event


def attach(app: FastAPI, database: Database) -> Database:
    """Make `database` the app's (request sessions, readiness), with the access log's
    writer on it (src/services/access_log_writer.py), and publish its pool."""
    app.state.database = database
    app.state.access_log_writer = AccessLogWriter(database.sessionmaker)
    app.state.export_storage = DirectoryStorage(get_settings().export_directory)
    track_pool(database.app_engine.sync_engine.pool)
    return database


# What browsers may send and read across origins (when CORS_ALLOWED_ORIGINS is set).
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
]
CORS_EXPOSED_HEADERS = ["ETag", "Idempotent-Replayed", "Retry-After", "X-Request-ID", "Allow"]


def create_app(database: Database | None = None, database_url: str | None = None) -> FastAPI:
    """The app. Without `database`, its lifespan opens one from the settings (on
    `database_url` when given) and disposes of it at shutdown; tests pass their own.

    The lifespan also re-runs the violation check every VIOLATION_CHECK_INTERVAL_S for
    /metrics, and Sentry is set up only when SENTRY_DSN is."""
    settings = get_settings()
    init_sentry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = database or attach(app, open_database(settings, database_url))
        if database is not None:  # a writer of this run's own (a closed one stays closed)
            app.state.access_log_writer = AccessLogWriter(database.sessionmaker)
        checker = None
        if settings.violation_check_interval_s > 0:
            checker = asyncio.create_task(
                check_periodically(opened, settings.violation_check_interval_s)
            )
        # Everything made at start-up lives as long as the process: keep it out of the
        # garbage collector's full passes, which otherwise stop every request for tens
        # of milliseconds (the measure is in docs/PERFORMANCE.md).
        # Bulk Data exports run in the background of the server (src/api/bulk_export.py).
        runner = app.state.export_runner = ExportRunner(
            opened.sessionmaker,
            app.state.export_storage,
            workers=settings.export_workers,
            lanes=settings.export_lanes,
            stale_s=settings.export_stale_after_s,
        )
        runner.start()
        gc.freeze()
        try:
            yield
        finally:
            await runner.stop()
            if checker is not None:
                checker.cancel()
            # Entries still waiting get 503 rather than hang (none, after a graceful
            # stop: the server has answered every request by now).
            await app.state.access_log_writer.close()
            if database is None:
                await opened.dispose()

    app = FastAPIOffline(
        title="Care team API",
        version="1.0.0",
        summary="Patients' care teams: at most one primary provider per patient and organization.",
        lifespan=lifespan,
        # No redirects: a trailing slash is a 404 like any unknown path (a redirect would be
        # built from the client's Host header). The console's own `/console/` redirects,
        # to a path (src/console/__init__.py).
        redirect_slashes=False,
        generate_unique_id_function=operation_id,
        # /docs loads its scripts and styles from this server (fastapi-offline); Swagger
        # UI's validator badge would call an outside host. No ReDoc page: its script
        # draws its logo from its vendor's CDN, whatever the page says.
        static_url=DOCS_STATIC,
        swagger_ui_parameters={"validatorUrl": None},
        redoc_url=None,
    )
    if database is not None:
        attach(app, database)
    install_error_handlers(app)
    app.add_exception_handler(FhirError, _fhir_error)  # type: ignore[arg-type]
    install_openapi(app)
    # Stacked from the innermost out (src/api/middleware.py has the order and why).
    app.add_middleware(BodyRules)
    app.add_middleware(Authentication)
    # Right outside authentication: it sees the credential and every answer, 403 included,
    # and writes each patient-data request's entry before its answer leaves.
    app.add_middleware(AccessLog)
    if settings.cors_origin_list:
        # Outside authentication (a preflight carries no key) and inside the request
        # context (host check, request id): the routes' answers, errors included, carry
        # the CORS headers.
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, allowed_hosts=settings.allowed_host_list)
    # Routes are matched in order, one after another (FastAPI's match costs about a
    # fiftieth of a care-team read's CPU per route tried): the care team's, the most
    # requested, first, then the probes (/healthz, three routes), the rest of the API,
    # and the documentation last (no path overlaps).
    app.include_router(care_team.router)
    app.include_router(health.router)
    app.include_router(directory.router)
    app.include_router(panels.router)
    app.include_router(feed.router)
    app.include_router(credentials.router)
    app.include_router(smart.router)  # before FHIR's catch-all: its discovery document
    app.include_router(access_log.router)
    app.include_router(bulk_data.router)  # before FHIR's reads: Patient/$export
    app.include_router(fhir.router)
    app.include_router(console.router)  # /console: matched after every API route
    know_parameter_names(
        app_parameter_names(app.router.routes)
        | {name for params in PARAMETERS.values() for name in params}
        | RESULT
        | {"mode"}
        | BULK_DATA_PARAMETERS
    )
    pages = {"/openapi.json", "/docs", "/docs/oauth2-redirect", DOCS_STATIC}
    documentation = [r for r in app.router.routes if getattr(r, "path", None) in pages]
    app.router.routes[:] = [r for r in app.router.routes if r not in documentation] + documentation
    return app


async def _fhir_error(request: Any, exc: FhirError) -> Any:
    return outcome(exc)


def create_worker_app() -> FastAPI:
    """The app of one of `careteam serve --workers N`'s worker processes: it sets up its
    own logging (a new process) and finds the database in its environment."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app()
