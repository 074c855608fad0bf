"""The access log, on the HTTP side: which routes touch patient data (the one table,
ACCESS_LOG), and the middleware that records each of their requests before its answer
leaves.

Every route of src/api/route_scopes.py has a row here (a test fails otherwise): None
when it reads or changes no patient's data, else what it is (the FHIR interaction, the
AuditEvent action) and where its patients come from:

- PATH: the patient its path names (`{patient_id}`, or a FHIR Patient's or CareTeam's
  id, which is its patient's): recorded as asked, whatever the answer, so a 404 for
  another organization's id is recorded with that id (it tells the caller nothing);
- NOTED: the patients its answer names (a search's, a list's, a feed's, a created
  patient's), which the route notes with `note_patients` as it builds the answer.

The guarantee. AccessLog sits right outside Authentication. When the route's answer
starts (its status known), it hands the entry to the app's AccessLogWriter
(src/services/access_log_writer.py: concurrent requests' entries are written together,
one statement and one commit per batch) and awaits its commit; only then does the
answer go out. If the entry cannot be written, the client gets 503
`access_log_unavailable` (an OperationOutcome under /fhir/R4) instead: no answer
carrying patient data leaves without its entry. A write (a care team change, a patient
created or changed) has committed by then: its 503 means "done, but not acknowledged"
(the change is in care_team_events or record_changes with its actor; a retry with the
same Idempotency-Key is answered from the stored result, and logged). Refusals are
recorded with their status (403 from Authentication, 404, 409, 412, 422, ...). A
request without a live credential (401) has no one to record and no row.

Entries hold ids, the route template, the names of the query parameters (known ones
only: a name this API does not declare is recorded as "?", so that a value smuggled in
as a name never lands in the log) and counts, never a value a client sent.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.api.auth import needs_key
from src.api.errors import CREDENTIAL_STATE, FHIR_PREFIX, operation_outcome, problem_response
from src.api.route_scopes import ROUTE_SCOPES
from src.services.access_log_service import AccessEntry
from src.services.access_log_writer import AccessLogWriter
from src.services.credentials import Credential
from src.services.errors import AccessLogUnavailable

logger = logging.getLogger(__name__)

PATH = "path"
NOTED = "noted"


@dataclass(frozen=True)
class Access:
    """A route that touches patient data: its FHIR restful interaction, AuditEvent's
    action (C create, R read, U update, D delete, E execute), where its patients come
    from (PATH or NOTED), and whether it is recorded only when it names a patient
    (`naming_only`: a Practitioner search names patients only through _revinclude)."""

    interaction: str
    action: str
    patients: str
    naming_only: bool = False


READ = Access("read", "R", PATH)
VREAD = Access("vread", "R", PATH)
HISTORY = Access("history-instance", "R", PATH)
SEARCH = Access("search-type", "R", NOTED)
CREATE = Access("create", "C", NOTED)
UPDATE = Access("update", "U", PATH)
EXPORT = Access("operation", "E", NOTED)

_CARE_TEAM = "/v1/patients/{patient_id}/care-team"
_FHIR = "/fhir/R4"

# (method, route template) -> what it is, or None: no patient's data. HEAD is its GET.
ACCESS_LOG: dict[tuple[str, str], Access | None] = {
    # /v1: care teams (a care team is its patient's data; changing it is an update)
    ("GET", _CARE_TEAM): READ,
    ("PUT", f"{_CARE_TEAM}/primary"): UPDATE,
    ("POST", f"{_CARE_TEAM}/members"): UPDATE,
    ("DELETE", f"{_CARE_TEAM}/members/{{provider_id}}"): UPDATE,
    ("GET", f"{_CARE_TEAM}/history"): HISTORY,
    ("GET", f"{_CARE_TEAM}/periods"): HISTORY,
    # A provider's panel lists patients: the ones on the page.
    ("GET", "/v1/providers/{provider_id}/patients"): SEARCH,
    # A transfer changes many patients' care teams; its answer names none (counts), and
    # the patients it moved are in care_team_events with its actor: recorded, no ids.
    ("POST", "/v1/providers/{provider_id}/panel/transfer"): Access("update", "U", NOTED),
    # Counts per provider: no patient is named.
    ("GET", "/v1/reports/panels"): None,
    # The change feed names patients: those of the page's events.
    ("GET", "/v1/care-team-events"): SEARCH,
    # /v1: patients
    ("POST", "/v1/patients"): CREATE,
    ("GET", "/v1/patients"): SEARCH,
    ("GET", "/v1/patients/{patient_id}"): READ,
    ("PATCH", "/v1/patients/{patient_id}"): UPDATE,
    ("GET", "/v1/patients/{patient_id}/changes"): HISTORY,
    # /v1: providers: no patient's data (a panel's size is a count)
    ("POST", "/v1/providers"): None,
    ("GET", "/v1/providers"): None,
    ("GET", "/v1/providers/{provider_id}"): None,
    ("PATCH", "/v1/providers/{provider_id}"): None,
    ("GET", "/v1/providers/{provider_id}/changes"): None,
    # The log itself: reading it is not recorded in it (it would grow with every look;
    # it needs careteam/admin, and names patients by id only).
    ("GET", "/v1/access-log"): None,
    # The organization's keys and SMART clients: credentials, no patient's data.
    ("POST", "/v1/api-keys"): None,
    ("GET", "/v1/api-keys"): None,
    ("DELETE", "/v1/api-keys/{key_id}"): None,
    ("POST", "/v1/clients"): None,
    ("GET", "/v1/clients"): None,
    ("DELETE", "/v1/clients/{client_id}"): None,
    # FHIR R4
    ("GET", f"{_FHIR}/metadata"): None,
    ("GET", f"{_FHIR}/.well-known/smart-configuration"): None,
    ("GET", f"{_FHIR}/CareTeam"): SEARCH,
    ("GET", f"{_FHIR}/Patient"): SEARCH,
    ("GET", f"{_FHIR}/Practitioner"): Access("search-type", "R", NOTED, naming_only=True),
    ("POST", f"{_FHIR}/CareTeam/_search"): SEARCH,
    ("POST", f"{_FHIR}/Patient/_search"): SEARCH,
    ("POST", f"{_FHIR}/Practitioner/_search"): Access("search-type", "R", NOTED, naming_only=True),
    # Bulk Data export: the kick-off is recorded (the export asked for); the runner then
    # records each page of patients the export holds, as the requester, under the
    # kick-off's route (src/api/bulk_export.py). A file handed out is recorded too (the
    # patients it holds are on the export's own entries).
    ("GET", f"{_FHIR}/$export"): EXPORT,
    ("GET", f"{_FHIR}/Patient/$export"): EXPORT,
    ("GET", f"{_FHIR}/Group/{{ident}}/$export"): EXPORT,
    ("GET", f"{_FHIR}/$export-status/{{ident}}"): None,
    ("DELETE", f"{_FHIR}/$export-status/{{ident}}"): None,
    ("GET", f"{_FHIR}/$export-file/{{ident}}/{{name}}"): Access("read", "R", NOTED),
    ("GET", f"{_FHIR}/CareTeam/{{ident}}"): READ,
    ("GET", f"{_FHIR}/Patient/{{ident}}"): READ,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}"): None,
    ("GET", f"{_FHIR}/CareTeam/{{ident}}/_history/{{version}}"): VREAD,
    ("GET", f"{_FHIR}/Patient/{{ident}}/_history/{{version}}"): VREAD,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}/_history/{{version}}"): None,
    ("GET", f"{_FHIR}/CareTeam/{{ident}}/_history"): HISTORY,
    ("GET", f"{_FHIR}/Patient/{{ident}}/_history"): HISTORY,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}/_history"): None,
    ("GET", f"{_FHIR}/Organization/{{ident}}"): None,
    # A Group (a provider's panel) names its members: the patients the answer shows.
    ("GET", f"{_FHIR}/Group"): SEARCH,
    ("POST", f"{_FHIR}/Group/_search"): SEARCH,
    ("GET", f"{_FHIR}/Group/{{ident}}"): Access("read", "R", NOTED),
    ("GET", f"{_FHIR}/AuditEvent"): None,
    ("POST", f"{_FHIR}/AuditEvent/_search"): None,
    ("GET", f"{_FHIR}/AuditEvent/{{ident}}"): None,
    # The catch-alls answer 404, 405 or 400 "not supported": they serve no data.
    **{
        (method, path): None
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET")
        for path in (_FHIR, f"{_FHIR}/{{anything:path}}")
    },
}


@dataclass(frozen=True)
class _Row:
    method: str
    template: str
    pattern: re.Pattern[str]
    access: Access | None


# In route_scopes' order, which is the app's matching order.
_ROWS = tuple(
    _Row(method, path, compile_path(path)[0], ACCESS_LOG.get((method, path)))
    for method, path in ROUTE_SCOPES
)


def route_of(method: str, path: str) -> tuple[str, re.Match[str], Access | None] | None:
    """The route template a request runs, its match (path parameters) and its row."""
    for row in _ROWS:
        if row.method == method:
            match = row.pattern.match(path)
            if match is not None:
                return row.template, match, row.access
    return None


# --- what a route notes ------------------------------------------------------------------

_PATIENTS = "access_patients"
_COUNT = "access_count"
_PARAMETERS = "access_parameters"


def note_patients(
    scope: Scope, patients: Iterable[uuid.UUID | str], *, count: int | None = None
) -> None:
    """What a route's answer names: these patients (each once, in order), and for a
    search or list the number of results it returns (`count`)."""
    state = scope["state"]
    noted: dict[uuid.UUID, None] = state.setdefault(_PATIENTS, {})
    for patient in patients:
        noted[patient if isinstance(patient, uuid.UUID) else uuid.UUID(str(patient))] = None
    if count is not None:
        state[_COUNT] = count


def note_parameters(scope: Scope, names: Iterable[str]) -> None:
    """The parameters a route read from elsewhere than the query string (a FHIR POST
    search's form body): their names only."""
    state = scope["state"]
    state[_PARAMETERS] = [*state.get(_PARAMETERS, []), *names]


# The parameter names the API declares (v1 query parameters, FHIR search and result
# parameters), and FHIR's modifiers: a name outside them is recorded as "?".
_KNOWN_NAMES: set[str] = set()
_KNOWN_MODIFIERS = {
    "missing", "exact", "contains", "text", "not", "in", "not-in", "above", "below",
    "of-type", "identifier", "Patient", "Practitioner", "Group", "Organization", "Device",
    "PractitionerRole", "RelatedPerson", "CareTeam",
}  # fmt: skip
UNKNOWN_NAME = "?"


def know_parameter_names(names: Iterable[str]) -> None:
    """Add to the names recorded as they are (the app adds its routes' at start)."""
    _KNOWN_NAMES.update(names)


def _recorded_name(name: str) -> str:
    code, colon, modifier = name.partition(":")
    if code not in _KNOWN_NAMES:
        return UNKNOWN_NAME
    if not colon:
        return code
    return f"{code}:{modifier}" if modifier in _KNOWN_MODIFIERS else f"{code}:{UNKNOWN_NAME}"


def parameter_names(query_string: bytes, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names of the parameters given, as recorded (each once, sorted), never a
    value."""
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        pairs = []
    names = {_recorded_name(name) for name, _ in pairs} | {_recorded_name(n) for n in extra}
    return tuple(sorted(names))


# --- the middleware ------------------------------------------------------------------------


def _path_patient(match: re.Match[str]) -> list[uuid.UUID]:
    """The patient a path names, as asked (any case of a UUID); none when it is not a
    UUID (the request is refused and names no one)."""
    groups = match.groupdict()
    value = groups.get("patient_id") or groups.get("ident")
    if value is None:
        return []
    try:
        return [uuid.UUID(value)]
    except ValueError:
        return []


def unavailable(path: str) -> Response:
    """503: the entry could not be written, so the answer is not sent."""
    error = AccessLogUnavailable()
    headers = {"Retry-After": str(error.retry_after_s)}
    if path.startswith(FHIR_PREFIX):
        return operation_outcome(503, "transient", error.message, headers)
    return problem_response(503, error.code, error.title, error.message, headers=headers)


class AccessLog:
    """See the module docstring. The app's access log writer
    (`app.state.access_log_writer`, on its database) writes the entries."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        found = route_of(scope["method"], scope["path"])
        access = None if found is None else found[2]
        if found is None or access is None:
            await self.app(scope, receive, send)
            return
        template, match, _ = found
        scope.setdefault("state", {})
        replaced = started = False

        async def recording_send(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return  # the route's answer, replaced by the 503
            if message["type"] == "http.response.start":
                started = True
                if not await self._record(scope, template, match, access, message["status"]):
                    replaced = True
                    await unavailable(scope["path"])(scope, _nothing, send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception:
            if not started:  # a bug: answered 500 further out; recorded as such if we can
                await self._record(scope, template, match, access, 500)
            raise

    async def _record(
        self, scope: Scope, template: str, match: re.Match[str], access: Access, status: int
    ) -> bool:
        """Write the request's entry; False if it could not be written."""
        state = scope["state"]
        credential: Credential | None = state.get(CREDENTIAL_STATE)
        if credential is None or status == 401:
            return True  # no live credential: no one to record
        noted: dict[uuid.UUID, None] = state.get(_PATIENTS, {})
        patients = list(noted) if access.patients == NOTED else _path_patient(match)
        if access.naming_only and not patients:
            return True
        entry = AccessEntry(
            organization_id=credential.organization_id,
            api_key_id=credential.api_key_id,
            client_id=credential.client_id,
            route=f"{scope['method']} {template}",
            interaction=access.interaction,
            action=access.action,
            status=status,
            parameters=parameter_names(scope["query_string"], state.get(_PARAMETERS, ())),
            result_count=state.get(_COUNT),
            patient_ids=tuple(patients),
        )
        try:
            writer: AccessLogWriter = scope["app"].state.access_log_writer
            await writer.write(entry)
        except Exception as err:
            logger.error(
                "access log entry not written (%s): the answer is withheld (503)",
                type(err.__cause__ or err).__name__,
                extra={
                    "event": "access_log_unavailable",
                    "organization_id": str(credential.organization_id),
                    "route": entry.route,
                    "status": status,
                },
            )
            return False
        return True


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def app_parameter_names(routes: Iterable[Any]) -> set[str]:
    """The query parameters the app's routes declare (FastAPI's dependants), those of
    included routers too (FastAPI keeps an included router as one entry of the app's
    routes, its own routes under `original_router`)."""
    names: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            names |= app_parameter_names(included.routes)
            continue
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            continue
        stack = [dependant]
        while stack:
            current = stack.pop()
            names.update(p.alias for p in current.query_params)
            stack.extend(current.dependencies)
    return names
