"""The scope each route needs: the one table (SMART v2 scopes, src/scopes.py).

Every /v1 and /fhir/R4 route of the app has its row here (a test fails otherwise), keyed
by method and route template, in the app's own matching order (a FHIR read before the
FHIR router's catch-all). Authentication (src/api/auth.py) checks the row right after
the key, before anything else answers: a key without the scope gets 403
`insufficient_scope`. The OpenAPI document states each operation's scope from the same
table (src/api/openapi.py).

The permissions are SMART's: `r` reads one record (FHIR read, vread, its history), `s`
searches or lists (a search, a type's history, a feed), `c` creates, `u` changes, `d`
deletes. A patient's care team is one resource (FHIR CareTeam, one per patient): adding
or removing a member, a new primary, a panel transfer all change care teams (`u`);
nothing deletes one. Managing the organization's API keys and SMART clients
(/v1/api-keys, /v1/clients) needs the administrative scope, careteam/admin, which no
default key has. A row whose scope is None needs none: the CapabilityStatement and
the SMART configuration under the FHIR base (no credential at all), and the FHIR
router's catch-alls, which only answer 404 or 405.

SMART Backend Services' own routes (src/api/routers/smart.py) are outside /v1 and
/fhir/R4 and need no credential, so no scope: `GET /.well-known/smart-configuration`,
and `POST /auth/token`, where a client authenticates with its signed assertion to get a
token (its scopes are what it was registered with: src/scopes.py, intersect).

The access log (/v1/access-log, FHIR AuditEvent) needs the administrative scope too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import compile_path

from src.scopes import ADMIN

CARE_TEAM_READ, CARE_TEAM_SEARCH = "system/CareTeam.r", "system/CareTeam.s"
CARE_TEAM_UPDATE = "system/CareTeam.u"
PATIENT_READ, PATIENT_SEARCH = "system/Patient.r", "system/Patient.s"
PATIENT_CREATE, PATIENT_UPDATE = "system/Patient.c", "system/Patient.u"
PRACTITIONER_READ, PRACTITIONER_SEARCH = "system/Practitioner.r", "system/Practitioner.s"
PRACTITIONER_CREATE, PRACTITIONER_UPDATE = "system/Practitioner.c", "system/Practitioner.u"
ORGANIZATION_READ = "system/Organization.r"
GROUP_READ, GROUP_SEARCH = "system/Group.r", "system/Group.s"

_CARE_TEAM = "/v1/patients/{patient_id}/care-team"
_FHIR = "/fhir/R4"

# (method, route template) -> the scope it needs. HEAD needs what its GET does.
ROUTE_SCOPES: dict[tuple[str, str], str | None] = {
    # /v1: care teams
    ("GET", _CARE_TEAM): CARE_TEAM_READ,
    ("PUT", f"{_CARE_TEAM}/primary"): CARE_TEAM_UPDATE,
    ("POST", f"{_CARE_TEAM}/members"): CARE_TEAM_UPDATE,
    ("DELETE", f"{_CARE_TEAM}/members/{{provider_id}}"): CARE_TEAM_UPDATE,
    ("GET", f"{_CARE_TEAM}/history"): CARE_TEAM_READ,
    ("GET", f"{_CARE_TEAM}/periods"): CARE_TEAM_READ,
    ("GET", "/v1/providers/{provider_id}/patients"): CARE_TEAM_SEARCH,
    ("POST", "/v1/providers/{provider_id}/panel/transfer"): CARE_TEAM_UPDATE,
    ("GET", "/v1/reports/panels"): CARE_TEAM_SEARCH,
    ("GET", "/v1/care-team-events"): CARE_TEAM_SEARCH,
    # /v1: patients
    ("POST", "/v1/patients"): PATIENT_CREATE,
    ("GET", "/v1/patients"): PATIENT_SEARCH,
    ("GET", "/v1/patients/{patient_id}"): PATIENT_READ,
    ("PATCH", "/v1/patients/{patient_id}"): PATIENT_UPDATE,
    ("GET", "/v1/patients/{patient_id}/changes"): PATIENT_READ,
    # /v1: providers (FHIR's Practitioner)
    ("POST", "/v1/providers"): PRACTITIONER_CREATE,
    ("GET", "/v1/providers"): PRACTITIONER_SEARCH,
    ("GET", "/v1/providers/{provider_id}"): PRACTITIONER_READ,
    ("PATCH", "/v1/providers/{provider_id}"): PRACTITIONER_UPDATE,
    ("GET", "/v1/providers/{provider_id}/changes"): PRACTITIONER_READ,
    # /v1: the organization's keys and SMART clients, managed by its administrator
    ("POST", "/v1/api-keys"): ADMIN,
    ("GET", "/v1/api-keys"): ADMIN,
    ("DELETE", "/v1/api-keys/{key_id}"): ADMIN,
    ("POST", "/v1/clients"): ADMIN,
    ("GET", "/v1/clients"): ADMIN,
    ("DELETE", "/v1/clients/{client_id}"): ADMIN,
    # /v1: the access log (administrative)
    ("GET", "/v1/access-log"): ADMIN,
    # FHIR R4 (read-only)
    ("GET", f"{_FHIR}/metadata"): None,
    ("GET", f"{_FHIR}/CareTeam"): CARE_TEAM_SEARCH,
    ("GET", f"{_FHIR}/Patient"): PATIENT_SEARCH,
    ("GET", f"{_FHIR}/Practitioner"): PRACTITIONER_SEARCH,
    ("POST", f"{_FHIR}/CareTeam/_search"): CARE_TEAM_SEARCH,
    ("POST", f"{_FHIR}/Patient/_search"): PATIENT_SEARCH,
    ("POST", f"{_FHIR}/Practitioner/_search"): PRACTITIONER_SEARCH,
    # Bulk Data export (src/api/routers/bulk_data.py): before the reads (`Patient/$export`
    # is not a Patient's id). A kick-off needs the read scope of every type the export
    # holds, which its handler checks (the types are its parameters); its status and files
    # are its requester's alone (the same credential).
    ("GET", f"{_FHIR}/$export"): None,
    ("GET", f"{_FHIR}/Patient/$export"): None,
    ("GET", f"{_FHIR}/Group/{{ident}}/$export"): None,
    ("GET", f"{_FHIR}/$export-status/{{ident}}"): None,
    ("DELETE", f"{_FHIR}/$export-status/{{ident}}"): None,
    ("GET", f"{_FHIR}/$export-file/{{ident}}/{{name}}"): None,
    ("GET", f"{_FHIR}/CareTeam/{{ident}}"): CARE_TEAM_READ,
    ("GET", f"{_FHIR}/Patient/{{ident}}"): PATIENT_READ,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}"): PRACTITIONER_READ,
    ("GET", f"{_FHIR}/CareTeam/{{ident}}/_history/{{version}}"): CARE_TEAM_READ,
    ("GET", f"{_FHIR}/Patient/{{ident}}/_history/{{version}}"): PATIENT_READ,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}/_history/{{version}}"): PRACTITIONER_READ,
    ("GET", f"{_FHIR}/CareTeam/{{ident}}/_history"): CARE_TEAM_READ,
    ("GET", f"{_FHIR}/Patient/{{ident}}/_history"): PATIENT_READ,
    ("GET", f"{_FHIR}/Practitioner/{{ident}}/_history"): PRACTITIONER_READ,
    ("GET", f"{_FHIR}/Organization/{{ident}}"): ORGANIZATION_READ,
    # FHIR Group: a provider's attributed panel. Its members are Patient references (ids
    # only): the Group's own scope suffices, and the access log records the patients.
    ("GET", f"{_FHIR}/Group"): GROUP_SEARCH,
    ("POST", f"{_FHIR}/Group/_search"): GROUP_SEARCH,
    ("GET", f"{_FHIR}/Group/{{ident}}"): GROUP_READ,
    # SMART discovery (src/api/routers/smart.py): no credential.
    ("GET", f"{_FHIR}/.well-known/smart-configuration"): None,
    # FHIR AuditEvent: the access log (administrative)
    ("GET", f"{_FHIR}/AuditEvent"): ADMIN,
    ("POST", f"{_FHIR}/AuditEvent/_search"): ADMIN,
    ("GET", f"{_FHIR}/AuditEvent/{{ident}}"): ADMIN,
    # The catch-alls: 405 (read-only) and 404 (not served), whatever the key may do.
    **{
        (method, path): None
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET")
        for path in (_FHIR, f"{_FHIR}/{{anything:path}}")
    },
}

# Every scope a route may need, the administrative one last (the OpenAPI document's list).
KNOWN_SCOPES = (*sorted({s for s in ROUTE_SCOPES.values() if s not in (None, ADMIN)}), ADMIN)


@dataclass(frozen=True)
class _Row:
    method: str
    pattern: re.Pattern[str]
    scope: str | None


_ROWS = tuple(
    _Row(method, compile_path(path)[0], scope) for (method, path), scope in ROUTE_SCOPES.items()
)


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs: that of the first row of its method whose template
    matches its path (the route the app will run), None when no row does (an unknown
    path or method: the answer is 404 or 405) or the row needs none."""
    method = "GET" if method == "HEAD" else method
    for row in _ROWS:
        if row.method == method and row.pattern.match(path):
            return row.scope
    return None
