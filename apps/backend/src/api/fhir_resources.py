"""The FHIR R4 view's JSON: resources built from our records, search Bundles, the
CapabilityStatement and OperationOutcome errors.

Resources are written as plain dicts (the tests validate every one with the
`fhir.resources` R4B models; the server does not pay for that validation per request).
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from fastapi import Response

from src.api.errors import FHIR_JSON, operation_outcome
from src.services.access_log_service import AccessRecord
from src.services.care_team_service import CareTeamPeriodRecord
from src.services.fhir_search import (
    PARAMETERS,
    GroupMember,
    GroupRecord,
    OrganizationRecord,
    PatientView,
    PractitionerView,
    TeamRecord,
    VersionEntry,
)

FHIR_VERSION = "4.0.1"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
SNOMED = "http://snomed.info/sct"
# A primary period's role: SNOMED CT "Primary care provider"; a secondary's: SNOMED CT
# "Medical practitioner" (US Core's CareTeam participant roles are SNOMED CT codes).
PRIMARY_ROLE = {"system": SNOMED, "code": "453231000124104", "display": "Primary care provider"}
SECONDARY_ROLE = {"system": SNOMED, "code": "158965000", "display": "Medical practitioner"}
MAX_COUNT = 100
DEFAULT_COUNT = 20


class FhirError(Exception):
    """Answered as an OperationOutcome with `status`."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code  # the issue type: not-found, invalid, login, ...
        self.diagnostics = diagnostics


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, media_type=FHIR_JSON, headers=headers)


def outcome(error: FhirError) -> Response:
    """The FHIR layer's own refusals (a malformed search, an unknown path) as an
    OperationOutcome; service errors reach it through src/api/errors.py's ANSWERS."""
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status == 405:
        headers["Allow"] = "GET, HEAD"
    return operation_outcome(error.status, error.code, error.diagnostics, headers)


def _instant(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _meta(record: Any, profile: str | None) -> dict[str, Any]:
    """The version the resource shows (vread's id) and when it was written."""
    meta: dict[str, Any] = {"versionId": str(record.version)}
    if record.updated_at is not None:
        meta["lastUpdated"] = _instant(record.updated_at)
    if profile is not None:
        meta["profile"] = [profile]
    return meta


def _name(first: str | None, last: str | None) -> list[dict[str, Any]]:
    name: dict[str, Any] = {"use": "official"}
    if last:
        name["family"] = last
    if first:
        name["given"] = [first]
    return [name] if len(name) > 1 else []


def _reference(kind: str, ident: uuid.UUID) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def patient_resource(view: PatientView, organization_id: uuid.UUID) -> dict[str, Any]:
    """A Patient; it claims US Core Patient when it meets it (an identifier and a name:
    docs/FHIR.md, "US Core")."""
    record = view.record
    name = _name(record.first_name, record.last_name)
    profile = US_CORE_PATIENT if record.identifiers and name else None
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(record.id),
        "meta": _meta(view, profile),
    }
    if record.identifiers:
        resource["identifier"] = [
            {"system": i.system, "value": i.value} for i in record.identifiers
        ]
    if name:
        resource["name"] = name
    resource["gender"] = record.gender
    if record.dob is not None:
        resource["birthDate"] = record.dob.isoformat()
    if view.primary is not None:
        resource["generalPractitioner"] = [_reference("Practitioner", view.primary)]
    resource["managingOrganization"] = _reference("Organization", organization_id)
    return resource


def practitioner_resource(view: PractitionerView) -> dict[str, Any]:
    """A Practitioner (docs/FHIR.md, "US Core", says what of US Core's it meets)."""
    record = view.record
    name = _name(record.first_name, record.last_name)
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": str(record.id),
        "meta": _meta(view, None),
    }
    if record.npi:
        resource["identifier"] = [{"system": NPI_SYSTEM, "value": record.npi}]
    resource["active"] = record.active
    if name:
        resource["name"] = name
    return resource


def _participant(period: CareTeamPeriodRecord) -> dict[str, Any]:
    window = {"start": _instant(period.valid_from)}
    if period.valid_to is not None:
        window["end"] = _instant(period.valid_to)
    role = PRIMARY_ROLE if period.role == "primary" else SECONDARY_ROLE
    return {
        "role": [{"coding": [role], "text": role["display"]}],
        "member": _reference("Practitioner", period.provider_id),
        "period": window,
    }


def care_team_resource(team: TeamRecord, organization_id: uuid.UUID) -> dict[str, Any]:
    """One longitudinal CareTeam per patient, its id the patient's: a participant per
    period, `active` while any period is open, `period` the span of them all."""
    period = {"start": _instant(team.start)}
    if team.end is not None:
        period["end"] = _instant(team.end)
    return {
        "resourceType": "CareTeam",
        "id": str(team.patient_id),
        "meta": _meta(team, None),
        "status": "active" if team.active else "inactive",
        "name": "Care team",
        "subject": _reference("Patient", team.patient_id),
        "period": period,
        "participant": [_participant(p) for p in team.periods],
        "managingOrganization": [_reference("Organization", organization_id)],
    }


def group_resource(group: GroupRecord) -> dict[str, Any]:
    """A provider's attributed panel (Da Vinci ATR's Member Attribution List, without its
    coverage and contract elements: docs/FHIR.md, "Group"): a Group of type person, its
    id the provider's, managed by the Practitioner, `quantity` the patients attributed
    now, a member per primary period (inactive once it ended)."""
    resource: dict[str, Any] = {
        "resourceType": "Group",
        "id": str(group.id),
        "meta": _meta(group, None),
    }
    if group.npi:
        resource["identifier"] = [{"system": NPI_SYSTEM, "value": group.npi}]
    resource |= {
        "active": True,
        "type": "person",
        "actual": True,
        "name": group.name,
        "quantity": group.quantity,
        "managingEntity": _reference("Practitioner", group.id),
    }
    if group.members:
        resource["member"] = [_member(m) for m in group.members]
    return resource


def _member(member: GroupMember) -> dict[str, Any]:
    period = {"start": _instant(member.start)}
    if member.end is not None:
        period["end"] = _instant(member.end)
    return {
        "entity": _reference("Patient", member.patient_id),
        "period": period,
        "inactive": member.inactive,
    }


def organization_resource(record: OrganizationRecord) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": str(record.id),
        "meta": _meta(record, None),
        "active": True,
        "name": record.name,
    }


AUDIT_EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ROUTE_SYSTEM = "urn:careteam:route"  # our route template, as the log records it
API_KEY_SYSTEM = "urn:careteam:api-key"
CLIENT_SYSTEM = "urn:careteam:smart-client"
OPERATOR_SYSTEM = "urn:careteam:operator"  # user@host of an operator's command
APPLICATION_SERVER = {
    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
    "code": "4",
    "display": "Application Server",
}
PATIENT_ENTITY = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
    "code": "1",
    "display": "Person",
}
PATIENT_ROLE = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "1",
    "display": "Patient",
}
QUERY_ENTITY = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
    "code": "2",
    "display": "System Object",
}
QUERY_ROLE = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "24",
    "display": "Query",
}


def audit_outcome(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused, 4xx), 8 serious (5xx)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def _agent(system: str, ident: uuid.UUID, what: str, *, requestor: bool) -> dict[str, Any]:
    """A credential as an AuditEvent agent: named by identifier (this server serves no
    Device resource to refer to)."""
    return {
        "who": {
            "type": "Device",
            "identifier": {"system": system, "value": str(ident)},
            "display": what,
        },
        "requestor": requestor,
    }


def audit_event_resource(entry: AccessRecord, organization_id: uuid.UUID) -> dict[str, Any]:
    """An access log entry as an AuditEvent (FHIR R4): a RESTful operation (type rest,
    subtype the FHIR interaction and our route template), its action, when it was
    recorded, its outcome from the status, who asked (the SMART client, else the API
    key, else the operator who ran a command: requestor), the organization's server as
    the observer, and an entity per patient it named (plus, for a search or list, the
    query: its parameters' names and its result count; never a value)."""
    agents = []
    if entry.client_id is not None:
        agents.append(_agent(CLIENT_SYSTEM, entry.client_id, "SMART client", requestor=True))
    if entry.api_key_id is not None:
        agents.append(
            _agent(API_KEY_SYSTEM, entry.api_key_id, "API key", requestor=entry.client_id is None)
        )
    if entry.operator is not None:  # an operator's command: a person, by their login
        agents.append(
            {
                "who": {
                    "identifier": {"system": OPERATOR_SYSTEM, "value": entry.operator},
                    "display": "operator (careteam command)",
                },
                "requestor": True,
            }
        )
    entities: list[dict[str, Any]] = [
        {"what": _reference("Patient", patient), "type": PATIENT_ENTITY, "role": PATIENT_ROLE}
        for patient in entry.patient_ids
    ]
    details = []
    if entry.parameters:
        details.append({"type": "parameters", "valueString": ",".join(entry.parameters)})
    if entry.result_count is not None:
        details.append({"type": "result-count", "valueString": str(entry.result_count)})
    if details:
        entities.append({"type": QUERY_ENTITY, "role": QUERY_ROLE, "detail": details})
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.id),
        "meta": _meta(entry, None),
        "type": AUDIT_EVENT_TYPE,
        "subtype": [
            {"system": RESTFUL_INTERACTION, "code": entry.interaction},
            {"system": ROUTE_SYSTEM, "code": entry.route},
        ],
        "action": entry.action,
        "recorded": _instant(entry.recorded_at),
        "outcome": audit_outcome(entry.status),
        "outcomeDesc": f"HTTP {entry.status}",
        "agent": agents,
        "source": {
            "site": "careteam",
            "observer": _reference("Organization", organization_id),
            "type": [APPLICATION_SERVER],
        },
    }
    if entities:
        resource["entity"] = entities
    return resource


def resource_of(found: Any, organization_id: uuid.UUID) -> dict[str, Any]:
    """The resource of what a search or a version read found."""
    if isinstance(found, AccessRecord):
        return audit_event_resource(found, organization_id)
    if isinstance(found, PatientView):
        return patient_resource(found, organization_id)
    if isinstance(found, PractitionerView):
        return practitioner_resource(found)
    if isinstance(found, GroupRecord):
        return group_resource(found)
    return care_team_resource(found, organization_id)


def patients_named(resource: dict[str, Any]) -> list[str]:
    """The patients a resource names, by id, for the access log: a Patient or a CareTeam
    (its id is its patient's) its own, a Group its members' (as shown: none once
    `_summary` or `_elements` left `member` out)."""
    kind = resource["resourceType"]
    if kind in ("Patient", "CareTeam"):
        return [resource["id"]]
    if kind == "Group":
        return [
            m["entity"]["reference"].removeprefix("Patient/") for m in resource.get("member", [])
        ]
    return []


def version_tag(record: Any) -> str:
    """A resource's ETag (FHIR R4 http.html: W/"versionId")."""
    return f'W/"{record.version}"'


# The elements _summary=true keeps (FHIR R4's isSummary elements of each resource).
SUMMARY = {
    "Organization": {"identifier", "active", "type", "name", "partOf"},
    "Patient": {"identifier", "active", "name", "telecom", "gender", "birthDate", "deceased",
                "address", "managingOrganization", "link"},
    "Practitioner": {"identifier", "active", "name", "telecom", "address", "gender",
                     "birthDate"},
    "CareTeam": {"identifier", "status", "category", "name", "subject", "encounter",
                 "period", "participant", "managingOrganization"},
    "AuditEvent": {"type", "subtype", "action", "period", "recorded", "outcome", "agent",
                   "source", "entity"},
    "Group": {"identifier", "active", "type", "actual", "code", "name", "quantity",
              "managingEntity"},
}  # fmt: skip
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED"}  # fmt: skip
# The elements R4 requires (1..1 or 1..*) of the types that have any: kept whatever
# `_elements` names (search.html: servers SHOULD return mandatory elements), so that a
# subset is still a valid resource.
MANDATORY = {
    "AuditEvent": {"type", "recorded", "agent", "source"},
    "Group": {"type", "actual"},
}


def shaped(
    resource: dict[str, Any], summary: str, elements: frozenset[str] | None
) -> dict[str, Any]:
    """The resource as _summary or _elements ask: only the elements kept (and id, meta;
    under _elements its mandatory ones too), marked SUBSETTED in meta.tag when any was
    left out."""
    kind = resource["resourceType"]
    if summary == "true":
        keep = SUMMARY[kind]
    elif elements is not None:
        keep = set(elements) | MANDATORY.get(kind, set())
    else:
        return resource  # false, data (no narrative is sent), or neither
    shown = {k: v for k, v in resource.items() if k in keep or k in ("resourceType", "id", "meta")}
    if len(shown) < len(resource):
        # Incomplete: marked SUBSETTED, and no longer claiming a profile it may not meet.
        meta = {k: v for k, v in resource["meta"].items() if k != "profile"}
        shown["meta"] = {**meta, "tag": [SUBSETTED]}
    return shown


def searchset(
    base: str,
    *,
    matches: list[dict[str, Any]],
    includes: list[dict[str, Any]],
    self_url: str,
    next_url: str | None,
    total: int | None = None,
) -> dict[str, Any]:
    """A searchset Bundle: the matches, then the included resources, with absolute
    fullUrls, the self (and next) links, and the total when it was counted. FHIR JSON has
    no empty arrays: without entries, no `entry`."""

    def entry(resource: dict[str, Any], mode: str) -> dict[str, Any]:
        return {
            "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": mode},
        }

    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    entries = [entry(r, "match") for r in matches] + [entry(r, "include") for r in includes]
    if entries:
        bundle["entry"] = entries
    return bundle


def history_bundle(
    base: str, kind: str, ident: uuid.UUID, versions: list[VersionEntry], organization_id: uuid.UUID
) -> dict[str, Any]:
    """An instance's history Bundle, newest first: each version's request and response,
    and its content where it is kept. A version whose content is not kept has no
    `resource`: its request (a PUT, not a DELETE) says it was a version, not a deletion
    (FHIR R4 http.html 3.1.0.11; docs/FHIR.md, "Versions")."""
    entries = []
    url = f"{kind}/{ident}"
    for n, v in enumerate(reversed(versions)):
        item: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
        if v.record is not None:
            item["resource"] = resource_of(v.record, organization_id)
        item["request"] = {"method": "POST" if n == 0 else "PUT", "url": kind if n == 0 else url}
        item["response"] = {
            "status": "201 Created" if n == 0 else "200 OK",
            "etag": f'W/"{v.version}"',
            "lastModified": _instant(v.at),
        }
        entries.append(item)
    entries.reverse()
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{base}/{url}/_history"}],
    }
    if entries:
        bundle["entry"] = entries
    return bundle


US_CORE = "http://hl7.org/fhir/us/core"
US_CORE_VERSION = "5.0.1"
US_CORE_PATIENT = f"{US_CORE}/StructureDefinition/us-core-patient"
US_CORE_PRACTITIONER = f"{US_CORE}/StructureDefinition/us-core-practitioner"
US_CORE_CARE_TEAM = f"{US_CORE}/StructureDefinition/us-core-careteam"
PROFILES = {
    "Patient": US_CORE_PATIENT,
    "Practitioner": US_CORE_PRACTITIONER,
    "CareTeam": US_CORE_CARE_TEAM,
}


RESTFUL_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


# FHIR Bulk Data Access (src/api/routers/bulk_data.py): the IG and its operations.
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
BULK_DATA_VERSION = "2.0.0"
BULK_EXPORT = f"{BULK_DATA}/OperationDefinition/export|{BULK_DATA_VERSION}"
BULK_PATIENT_EXPORT = f"{BULK_DATA}/OperationDefinition/patient-export|{BULK_DATA_VERSION}"
BULK_GROUP_EXPORT = f"{BULK_DATA}/OperationDefinition/group-export|{BULK_DATA_VERSION}"


def capability_statement(base: str, includes: dict[str, dict[str, str]],
                         revincludes: dict[str, dict[str, str]], *,
                         token_url: str) -> dict[str, Any]:  # fmt: skip
    """What this server serves, from the tables that serve it: the search parameters
    (src/services/fhir_search.py) and the includes (src/api/fhir_query.py); its security
    is SMART on FHIR (Backend Services), with the token endpoint at `token_url`."""
    resources = []
    for kind, params in PARAMETERS.items():
        if kind in ("AuditEvent", "Group"):
            resources.append(_read_and_search_capability(kind, params))
            if kind == "Group":
                resources[-1]["operation"] = [{"name": "export", "definition": BULK_GROUP_EXPORT}]
            continue
        resource: dict[str, Any] = {
            "type": kind,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{kind}",
            "supportedProfile": [f"{PROFILES[kind]}|{US_CORE_VERSION}"],
            "interaction": [
                {"code": "read"},
                {"code": "vread"},
                {"code": "history-instance"},
                {"code": "search-type"},
            ],
            "versioning": "versioned",
            "readHistory": True,
            "conditionalRead": "not-match",
            "searchParam": [
                {
                    "name": p.name,
                    "definition": p.definition,
                    "type": p.type,
                    "documentation": p.documentation,
                }
                for p in params.values()
            ],
        }
        if kind == "Patient":
            resource["operation"] = [{"name": "export", "definition": BULK_PATIENT_EXPORT}]
        if includes[kind]:
            resource["searchInclude"] = sorted(includes[kind])
        if revincludes[kind]:
            resource["searchRevInclude"] = sorted(revincludes[kind])
        resources.append(resource)
    resources.append(
        {
            "type": "Organization",
            "profile": "http://hl7.org/fhir/StructureDefinition/Organization",
            "interaction": [{"code": "read"}],
            "versioning": "no-version",
            "documentation": "The API key's own organization, read only",
        }
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-07",
        "kind": "instance",
        "instantiates": [
            f"{US_CORE}/CapabilityStatement/us-core-server|{US_CORE_VERSION}",
            f"{BULK_DATA}/CapabilityStatement/bulk-data|{BULK_DATA_VERSION}",
        ],
        "software": {"name": "Care team backend"},
        "implementation": {"description": "Care teams, read-only", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": RESTFUL_SECURITY_SERVICE,
                                    "code": "SMART-on-FHIR",
                                    "display": "SMART-on-FHIR",
                                }
                            ],
                            "text": "SMART Backend Services (client_credentials, private_key_jwt)",
                        }
                    ],
                    "description": "A bearer token: an API key (ctk_...) or a SMART Backend "
                    "Services access token (ctt_..., from the token endpoint; discovery at "
                    ".well-known/smart-configuration). It decides the organization; each "
                    "interaction needs its SMART v2 scope.",
                },
                "resource": resources,
                "operation": [{"name": "export", "definition": BULK_EXPORT}],
                "searchParam": [
                    {"name": n, "type": t, "documentation": d} for n, t, d in RESULT_PARAMETERS
                ],
            }
        ],
    }


# The types served by read and search only (no vread, no history), and what each is.
READ_AND_SEARCH = {
    "AuditEvent": "The access log: every request that read or changed a patient's data "
    "(needs the careteam/admin scope)",
    "Group": "A provider's attributed panel (Da Vinci ATR Member Attribution List, without "
    "coverage or contract data): one per active provider, its id the provider's, a member "
    "per primary period; _summary=true leaves the members out",
}


def _read_and_search_capability(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """AuditEvent (the access log, with the administrative scope) and Group: read and
    search, with versions (an AuditEvent never changes: every one is version 1) but
    neither vread nor history."""
    return {
        "type": kind,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{kind}",
        "documentation": READ_AND_SEARCH[kind],
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": False,
        "conditionalRead": "not-match",
        "searchParam": [
            {
                "name": p.name,
                "definition": p.definition,
                "type": p.type,
                "documentation": p.documentation,
            }
            for p in params.values()
        ],
    }


# The result parameters every search takes (src/api/fhir_query.py reads them).
RESULT_PARAMETERS = [
    ("_count", "number", f"Page size, 0 to {MAX_COUNT} (0: the total only)"),
    ("_summary", "token", "true, false, data or count"),
    ("_total", "token", "none, estimate or accurate (both count exactly)"),
    ("_elements", "string", "Top-level elements to return (marked SUBSETTED)"),
    ("_sort", "string", "Parameters to sort by, - for descending, then by id"),
    ("_include", "special", "See searchInclude"),
    ("_revinclude", "special", "See searchRevInclude"),
]
