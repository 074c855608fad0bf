"""FHIR Bulk Data Access (IG v2.0.0) at /fhir/R4: `$export` at system, Patient and Group
level, its status URL (poll, DELETE to cancel) and its files.

Kick-off (Bulk Data "Bulk Data Kick-off Request"): GET with `Prefer: respond-async`;
`_type`, `_since`, `_outputFormat` and `_typeFilter` are read, any other parameter is
400 (an OperationOutcome; nothing is ignored). The credential needs the read scope of
every type the export holds (`system/*.rs` or `system/<Type>.r` each), else 403
insufficient_scope. An organization has at most EXPORT_MAX_JOBS_PER_ORGANIZATION exports
queued or running (429 beyond, with Retry-After). The answer is 202 with
`Content-Location`, the status URL.

Status: 202 with `X-Progress` and `Retry-After` while it runs; 200 with the manifest
once complete; 500 with the job's OperationOutcome if it failed. DELETE: 202, the job
and its files gone. Files: NDJSON (`application/fhir+ndjson`), with the same token. A
job, its status and its files belong to the organization and the credential (the API
key, or the SMART client) that started it: anyone else gets 404.
"""

from __future__ import annotations

import datetime
import json
import uuid
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from src.api.access_log import note_parameters
from src.api.auth import credential_of, insufficient_scope
from src.api.bulk_export import FILTERABLE, LEVEL_TYPES, type_filter_search, type_filters
from src.api.deps import session_of
from src.api.errors import operation_outcome
from src.api.fhir_query import invalid, not_supported
from src.api.fhir_resources import FhirError, fhir_response
from src.api.middleware import HEAD_STATE
from src.api.routers.fhir import _base, _check_format, _organization, _query_items
from src.config import get_settings
from src.services.bulk_export import (
    BulkExportService,
    ExportJobRecord,
    ExportRequest,
    TooManyExports,
)
from src.services.export_storage import FILE_NAME
from src.services.fhir_search import by_ids, run_search
from src.values import parse_instant

router = APIRouter(prefix="/fhir/R4", include_in_schema=False)

STATUS_PATH = "/$export-status"
FILE_PATH = "/$export-file"
PARAMETERS = {"_type", "_since", "_outputFormat", "_typeFilter"}
OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
NDJSON = "application/fhir+ndjson"
RETRY_AFTER_S = 2


def _respond_async(request: Request) -> None:
    """Prefer: respond-async (RFC 7240: in any Prefer header, among others, with or
    without parameters)."""
    preferences = [
        p.split(";", 1)[0].strip().lower()
        for header in request.headers.getlist("prefer")
        for p in header.split(",")
    ]
    if "respond-async" not in preferences:
        raise invalid("$export runs asynchronously: send Prefer: respond-async")


def _instant(text: str) -> datetime.datetime:
    """`_since`: a FHIR instant (RFC 3339, with its offset), not in the future."""
    try:
        at = parse_instant(text)
    except ValueError as err:
        raise invalid(f"_since: {err}") from None
    if at > datetime.datetime.now(datetime.UTC):
        raise invalid("_since is in the future: nothing has changed since")
    return at


def _one(items: list[tuple[str, str]], name: str) -> str | None:
    values = [v for n, v in items if n == name]
    if len(values) > 1:
        raise invalid(f"{name} is given more than once")
    return values[0] if values else None


def _types(items: list[tuple[str, str]], level: str) -> tuple[str, ...]:
    allowed = LEVEL_TYPES[level]
    named = [t.strip() for n, v in items if n == "_type" for t in v.split(",")]
    if not named:
        return allowed
    if any(t not in allowed for t in named):  # described, not echoed (a value may be a name)
        raise not_supported(
            f"_type names a type this export does not hold (a {level}-level export holds "
            f"{', '.join(allowed)})"
        )
    return tuple(t for t in allowed if t in named)


async def _kick_off(request: Request, level: str, group_id: uuid.UUID | None) -> Response:
    if request.scope["state"].get(HEAD_STATE):  # answered as a GET, it would start one
        raise FhirError(405, "not-supported", "$export is started with GET only")
    items = _query_items(request)
    unknown = sorted({n for n, _ in items} - PARAMETERS)
    if unknown:
        raise invalid(
            f"unknown or unsupported $export parameter(s): {', '.join(n[:64] for n in unknown)} "
            f"(this server reads {', '.join(sorted(PARAMETERS))})"
        )
    note_parameters(request.scope, [n for n, _ in items])
    types = _types(items, level)
    credential = credential_of(request.scope)
    for kind in types:
        needed = f"system/{kind}.r"
        if not credential.grants.allows(needed):
            return insufficient_scope(request.url.path, needed, f"an export of {kind}")
    _check_format(request, [])
    _respond_async(request)
    output_format = _one(items, "_outputFormat")
    if output_format is not None and output_format.replace(" ", "+") not in OUTPUT_FORMATS:
        raise not_supported(
            "_outputFormat: only application/fhir+ndjson (or application/ndjson, ndjson) is written"
        )
    since_text = _one(items, "_since")
    since = None if since_text is None else _instant(since_text)
    org = _organization(request)
    filters = type_filters([v for n, v in items if n == "_typeFilter"])
    for text in filters:
        kind = text.partition("?")[0]
        type_filter_search(text, org)
        if kind in FILTERABLE and kind not in types:
            raise invalid(f"_typeFilter names {kind}, which this export does not hold (_type)")
    db = session_of(request)
    if group_id is not None:
        page = await run_search(
            db=db, organization_id=org, search=by_ids("Practitioner", [group_id])
        )
        if not page.found or not page.found[0].record.active:
            raise FhirError(404, "not-found", f"Group/{group_id} not found")
    settings = get_settings()
    asked = ExportRequest(
        requester=credential.actor,
        level=level,
        group_id=group_id,
        types=types,
        since=since,
        type_filters=tuple(filters),
        request=f"{_base(request)}{request.url.path.removeprefix('/fhir/R4')}"
        + (f"?{request.url.query}" if request.url.query else ""),
    )
    try:
        job = await BulkExportService.create(
            db=db,
            organization_id=org,
            asked=asked,
            max_jobs=settings.export_max_jobs_per_organization,
            expires_after_s=settings.export_expires_after_s,
        )
    except TooManyExports:
        return operation_outcome(
            429,
            "throttled",
            f"this organization has {settings.export_max_jobs_per_organization} exports "
            "queued or running already: wait for one to finish, or DELETE one",
            {"Retry-After": "30"},
        )
    runner = getattr(request.app.state, "export_runner", None)
    if runner is not None:
        runner.wake()
    location = f"{_base(request)}{STATUS_PATH}/{job.id}"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"export {job.id} accepted: poll {location}",
            }
        ],
    }
    return fhir_response(outcome, status=202, headers={"Content-Location": location})


@router.get("/$export")
async def export_system(request: Request) -> Response:
    return await _kick_off(request, "system", None)


@router.get("/Patient/$export")
async def export_patients(request: Request) -> Response:
    return await _kick_off(request, "patient", None)


@router.get("/Group/{ident}/$export")
async def export_group(ident: str, request: Request) -> Response:
    try:
        group_id = uuid.UUID(ident)
    except ValueError:
        raise FhirError(404, "not-found", "no such Group") from None
    return await _kick_off(request, "group", group_id)


async def _own_job(request: Request, ident: str) -> ExportJobRecord:
    """The job, if it is the caller's (its organization and its credential); else 404."""
    try:
        job_id = uuid.UUID(ident)
    except ValueError:
        job_id = None
    if job_id is None or str(job_id) != ident:  # only the form this server wrote
        raise FhirError(404, "not-found", "no such export")
    job = await BulkExportService.find(
        db=session_of(request), organization_id=_organization(request), job_id=job_id
    )
    if job is None or job.requester != credential_of(request.scope).actor:
        raise FhirError(404, "not-found", f"export {job_id} not found (or expired)")
    now = datetime.datetime.now(datetime.UTC)
    if job.expires_at is not None and job.expires_at <= now:  # before the sweep removes it
        raise FhirError(404, "not-found", f"export {job_id} not found (or expired)")
    return job


def _manifest(request: Request, job: ExportJobRecord) -> dict[str, Any]:
    """The completed job's manifest (the IG's "Complete Status"); `error` lists the file
    of notices (OperationOutcomes of severity information), if any."""
    base = f"{_base(request)}{FILE_PATH}/{job.id}"
    assert job.transaction_time is not None

    def items(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"type": f["type"], "url": f"{base}/{f['name']}", "count": f["count"]} for f in files
        ]

    at = job.transaction_time.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    return {
        "transactionTime": at,
        "request": job.request,
        "requiresAccessToken": True,
        "output": items(job.output),
        "error": items(job.error),
    }


@router.get("/$export-status/{ident}")
async def export_status(ident: str, request: Request) -> Response:
    if _query_items(request):
        raise invalid("the status URL takes no parameters")
    job = await _own_job(request, ident)
    if job.status in ("queued", "running"):
        progress = "queued" if job.status == "queued" else (job.progress or "running")
        return Response(
            status_code=202,
            headers={"X-Progress": progress[:100], "Retry-After": str(RETRY_AFTER_S)},
        )
    if job.status == "failed":
        outcome = job.error[0] if job.error else None
        if outcome is None:
            raise FhirError(500, "exception", "the export failed: start a new export")
        return fhir_response(outcome, status=500)
    headers = {}
    if job.expires_at is not None:
        headers["Expires"] = format_datetime(job.expires_at.astimezone(datetime.UTC), usegmt=True)
    # The IG: the manifest is application/json (it is not a FHIR resource).
    body = json.dumps(_manifest(request, job), separators=(",", ":")).encode()
    return Response(body, media_type="application/json", headers=headers)


@router.delete("/$export-status/{ident}")
async def export_delete(ident: str, request: Request) -> Response:
    if _query_items(request):
        raise invalid("the status URL takes no parameters")
    job = await _own_job(request, ident)
    await BulkExportService.delete(
        db=session_of(request), organization_id=job.organization_id, job_id=job.id
    )
    request.app.state.export_storage.remove(job.organization_id, job.id)
    return Response(status_code=202)


@router.get("/$export-file/{ident}/{name}")
async def export_file(ident: str, name: str, request: Request) -> Response:
    if _query_items(request):
        raise invalid("a file URL takes no parameters")
    job = await _own_job(request, ident)
    files = {f["name"]: f["type"] for f in (*job.output, *job.error)}
    if job.status != "completed" or not FILE_NAME.fullmatch(name) or name not in files:
        raise FhirError(404, "not-found", "no such file in this export")
    kind = files[name]
    needed = f"system/{kind}.r"
    if kind != "OperationOutcome" and not credential_of(request.scope).grants.allows(needed):
        return insufficient_scope(request.url.path, needed, f"a file of {kind}")
    storage = request.app.state.export_storage
    chunks = storage.chunks(job.organization_id, job.id, name)
    try:
        first = await anext(chunks, b"")
    except FileNotFoundError:
        raise FhirError(404, "not-found", "this export's files have expired") from None

    async def body() -> Any:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type=NDJSON)
