"""FHIR Bulk Data export against a live `careteam serve`, as a payer's client runs it: a
SMART Backend Services token, kick-off, polling, the manifest, every file downloaded and
every line parsed with the fhir.resources R4B models (Bulk Data Access IG v2.0.0)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from src.db import Database
from tests.api.test_fhir import MODELS
from tests.helpers import LiveApi, client_assertion, ec_key, jwks_of, register_client, token_form

FHIR = "/fhir/R4"


async def token(
    http: httpx.AsyncClient, database: Database, org: uuid.UUID, scope: str = "system/*.rs"
) -> dict[str, str]:
    """A registered client's access token, by the client credentials dance."""
    key = ec_key()
    client_id = await register_client(database, org, [scope], jwks=jwks_of(key))
    url = str(http.base_url).rstrip("/") + "/auth/token"
    answer = await http.post(url, data=token_form(client_assertion(key, client_id, aud=url), scope))
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


class TestBulkDataOnALiveServer:
    async def test_from_token_to_files(
        self, live_api: LiveApi, live_org: uuid.UUID, database: Database
    ):
        async with httpx.AsyncClient(base_url=live_api.base_url, timeout=30) as http:
            key = {"Authorization": f"Bearer {live_api.key}"}
            doctor = (await http.post("/v1/providers", headers=key, json={
                "first_name": "Grace", "last_name": "Bulk"})).json()["id"]  # fmt: skip
            patients = []
            for n in range(3):
                person = {"first_name": f"Ada{n}", "last_name": "Bulk", "dob": "1980-01-01"}
                patients.append(
                    (await http.post("/v1/patients", headers=key, json=person)).json()["id"]
                )
                put = await http.put(f"/v1/patients/{patients[-1]}/care-team/primary",
                                     headers=key, json={"provider_id": doctor})  # fmt: skip
                assert put.status_code == 200

            bearer = await token(http, database, live_org)
            kick = await http.get(
                f"{FHIR}/Group/{doctor}/$export",
                headers={**bearer, "Prefer": "respond-async", "Accept": "application/fhir+json"},
                params={"_type": "Patient,CareTeam"},
            )
            assert kick.status_code == 202, kick.text
            status_url = kick.headers["content-location"]
            assert status_url.startswith(live_api.base_url)

            # Without a token, and with another client's token: nothing.
            assert (await http.get(status_url)).status_code == 401
            other = await token(http, database, live_org)
            assert (await http.get(status_url, headers=other)).status_code == 404

            manifest: dict[str, Any] = {}
            for _ in range(300):
                polled = await http.get(status_url, headers=bearer)
                if polled.status_code == 200:
                    manifest = polled.json()
                    break
                assert polled.status_code == 202, polled.text
                assert polled.headers["x-progress"] and polled.headers["retry-after"]
                await asyncio.sleep(0.1)
            assert manifest["requiresAccessToken"] is True
            assert {o["type"]: o["count"] for o in manifest["output"]} == {
                "Patient": 3,
                "CareTeam": 3,
            }
            for item in manifest["output"]:
                assert (await http.get(item["url"])).status_code == 401
                assert (await http.get(item["url"], headers=other)).status_code == 404
                got = await http.get(item["url"], headers=bearer)
                assert got.status_code == 200
                assert got.headers["content-type"].startswith("application/fhir+ndjson")
                found = [json.loads(line) for line in got.text.splitlines()]
                for resource in found:
                    MODELS[item["type"]].model_validate(resource)
                assert sorted(r["id"] for r in found) == sorted(patients)

            # The access log holds the export: the kick-off, and the patients it held,
            # as the client (never its token alone).
            async with database.owner_engine.connect() as owner:
                rows = (
                    await owner.execute(
                        text(
                            "SELECT route, client_id, patient_ids FROM access_log "
                            "WHERE organization_id = :org AND route LIKE '%$export%' "
                            "ORDER BY recorded_at"
                        ),
                        {"org": live_org},
                    )
                ).all()
            assert rows and all(r.client_id is not None for r in rows)
            exported = {str(p) for r in rows for p in r.patient_ids}
            assert exported == set(patients)

            deleted = await http.delete(status_url, headers=bearer)
            assert deleted.status_code == 202
            assert (await http.get(status_url, headers=bearer)).status_code == 404
