"""A patient's administrative gender through /v1 and FHIR: optional on create (unknown
when not given), changed by PATCH and named in the record's changes, checked; the FHIR
Patient's meta (versionId, lastUpdated) follows the record's versions."""

from __future__ import annotations

import datetime

import httpx
import pytest

from tests.helpers import Tenant, post_patient


async def read(client: httpx.AsyncClient, tenant: Tenant, patient: str) -> dict[str, object]:
    response = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


class TestGender:
    async def test_unknown_unless_given_then_changed_by_patch(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        plain = await post_patient(client, tenant)
        given = await post_patient(client, tenant, gender="female")
        assert (await read(client, tenant, plain))["gender"] == "unknown"
        assert (await read(client, tenant, given))["gender"] == "female"

        r = await client.patch(
            f"/v1/patients/{plain}", json={"gender": "other"}, headers=tenant.headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["gender"] == "other"
        assert (await read(client, tenant, plain))["gender"] == "other"
        listed = await client.get("/v1/patients", headers=tenant.headers)
        assert {p["id"]: p["gender"] for p in listed.json()["items"]} == {
            plain: "other",
            given: "female",
        }

        changes = (
            await client.get(f"/v1/patients/{plain}/changes", headers=tenant.headers)
        ).json()["items"]
        assert [(c["action"], c["fields"]) for c in changes] == [
            ("updated", ["gender"]),
            ("created", ["first_name", "last_name", "dob"]),
        ]
        created = (
            await client.get(f"/v1/patients/{given}/changes", headers=tenant.headers)
        ).json()["items"]
        assert created[0]["fields"] == ["first_name", "last_name", "dob", "gender"]

    async def test_the_fhir_patient_carries_it(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant, gender="male")
        r = await client.get(f"/fhir/R4/Patient/{patient}", headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["gender"] == "male"
        assert r.json()["meta"]["versionId"] == "1.0"  # record version 1, no care team event
        created = datetime.datetime.fromisoformat(r.json()["meta"]["lastUpdated"])
        await client.patch(
            f"/v1/patients/{patient}", json={"gender": "unknown"}, headers=tenant.headers
        )
        r = await client.get(f"/fhir/R4/Patient/{patient}", headers=tenant.headers)
        assert r.json()["gender"] == "unknown"
        assert r.json()["meta"]["versionId"] == "2.0"
        assert datetime.datetime.fromisoformat(r.json()["meta"]["lastUpdated"]) > created

    @pytest.mark.parametrize("value", ["Male", "f", "", None, 1, "unknown "])
    async def test_anything_else_is_422_on_create_and_patch_and_nothing_is_written(
        self, client: httpx.AsyncClient, tenant: Tenant, value: object
    ):
        body = {"first_name": "A", "last_name": "B", "dob": "1984-02-29", "gender": value}
        r = await client.post("/v1/patients", json=body, headers=tenant.headers)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["gender"]
        listed = await client.get("/v1/patients", headers=tenant.headers)
        assert listed.json()["items"] == []

        patient = await post_patient(client, tenant, gender="female")
        r = await client.patch(
            f"/v1/patients/{patient}", json={"gender": value}, headers=tenant.headers
        )
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["gender"]
        assert (await read(client, tenant, patient))["gender"] == "female"

    async def test_the_openapi_document_states_the_values(self, client: httpx.AsyncClient):
        document = (await client.get("/openapi.json")).json()
        schemas = document["components"]["schemas"]
        for name in ("PatientCreate", "PatientUpdate", "PatientOut"):
            assert "gender" in schemas[name]["properties"], name
        assert schemas["Gender"]["enum"] == ["male", "female", "other", "unknown"]
        assert "gender" in schemas["PatientOut"]["required"]
