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
from src.services.care_team_service import CareTeamPeriodRecord
from src.services.directory_service import PatientRecord, ProviderRecord
from src.services.fhir_service import TeamRecord

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


def fhir_response(body: dict[str, Any], status: int = 200) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, media_type=FHIR_JSON)


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


def _name(first: str | None, last: str | None) -> list[dict[str, Any]]:
    name: dict[str, Any] = {"use": "official"}
    if last:
        name["family"] = last
    if first:
        name["given"] = [first]
    return [name] if len(name) > 1 else []


def _reference(kind: str, ident: uuid.UUID) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def _meta(version: int, updated_at: datetime.datetime | None) -> dict[str, str]:
    """The version the resource shows (vread's id) and when it was written."""
    meta = {"versionId": str(version)}
    if updated_at is not None:
        meta["lastUpdated"] = _instant(updated_at)
    return meta


def patient_resource(
    record: PatientRecord, organization_id: uuid.UUID, primary: uuid.UUID | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(record.id),
        "meta": _meta(record.version, record.updated_at),
    }
    if record.identifiers:
        resource["identifier"] = [
            {"system": i.system, "value": i.value} for i in record.identifiers
        ]
    if name := _name(record.first_name, record.last_name):
        resource["name"] = name
    resource["gender"] = record.gender
    if record.dob is not None:
        resource["birthDate"] = record.dob.isoformat()
    if primary is not None:
        resource["generalPractitioner"] = [_reference("Practitioner", primary)]
    resource["managingOrganization"] = _reference("Organization", organization_id)
    return resource


def practitioner_resource(record: ProviderRecord) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": str(record.id),
        "meta": _meta(record.version, record.updated_at),
    }
    if record.npi:
        resource["identifier"] = [{"system": NPI_SYSTEM, "value": record.npi}]
    resource["active"] = record.active
    if name := _name(record.first_name, record.last_name):
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
    period, `active` while any period is open."""
    return {
        "resourceType": "CareTeam",
        "id": str(team.patient_id),
        "status": "active" if team.active else "inactive",
        "name": "Care team",
        "subject": _reference("Patient", team.patient_id),
        "participant": [_participant(p) for p in team.periods],
        "managingOrganization": [_reference("Organization", organization_id)],
    }


def searchset(
    base: str,
    *,
    matches: list[dict[str, Any]],
    includes: list[dict[str, Any]],
    self_url: str,
    next_url: str | None,
) -> dict[str, Any]:
    """A searchset Bundle: the matches, then the included resources, with absolute
    fullUrls and the self (and next) links."""

    def entry(resource: dict[str, Any], mode: str) -> dict[str, Any]:
        return {
            "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": mode},
        }

    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [entry(r, "match") for r in matches] + [entry(r, "include") for r in includes],
    }


# What this server claims: each resource, its interactions and search parameters.
SEARCH_PARAMETERS: dict[str, list[tuple[str, str, str]]] = {
    "CareTeam": [
        ("_id", "token", "The CareTeam's id (the patient's id)"),
        ("patient", "reference", "The patient (an id, or Patient/{id})"),
        ("subject", "reference", "Patient/{id}"),
        ("status", "token", "active or inactive; a comma means OR"),
        ("participant", "reference", "Practitioner/{id}: teams it is or was on"),
        ("date", "date", "YYYY, YYYY-MM or YYYY-MM-DD (eq): a participant active then"),
    ],
    "Patient": [
        ("_id", "token", "The patient's id"),
        ("identifier", "token", "system|value"),
        ("name", "string", "The start of the first or last name, any case"),
        ("birthdate", "date", "YYYY-MM-DD (eq)"),
    ],
    "Practitioner": [
        ("_id", "token", "The practitioner's id"),
        ("identifier", "token", f"{NPI_SYSTEM}|NPI, or the NPI alone"),
        ("name", "string", "The start of the first or last name, any case"),
        ("active", "token", "true or false"),
    ],
}


def capability_statement(base: str) -> dict[str, Any]:
    resources = []
    for kind, params in SEARCH_PARAMETERS.items():
        resource: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": name, "type": kind_, "documentation": doc} for name, kind_, doc in params
            ]
            + [{"name": "_count", "type": "number", "documentation": f"At most {MAX_COUNT}"}],
        }
        if kind == "CareTeam":
            resource["searchInclude"] = ["CareTeam:participant"]
        resources.append(resource)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-06",
        "kind": "instance",
        "software": {"name": "Care team backend"},
        "implementation": {"description": "Care teams, read-only", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "An API key as a bearer token (Authorization: Bearer "
                    "ctk_...); the key decides the organization."
                },
                "resource": resources,
            }
        ],
    }
