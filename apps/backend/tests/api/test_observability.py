"""What operators watch: JSON logs, /metrics, /readyz, and the optional Sentry setup."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from src import primary_dedupe
from src.api.app import create_app, refresh_violation_metrics, scrub_event
from src.config import BACKEND_DIR, Settings
from src.db import Database, open_database
from src.log_config import JsonFormatter
from src.migration_runner import downgrade, upgrade
from tests.helpers import FreshDatabase, Tenant, post_patient, post_provider


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestJsonLogs:
    def test_a_record_with_extras_is_one_json_line(self):
        record = logging.LogRecord(
            "src.services.transaction",
            logging.WARNING,
            __file__,
            1,
            "primary provider write refused by %s (IntegrityError)",
            ("idx_unique_primary_provider_per_patient",),
            None,
        )
        record.request_id = "req-1"
        record.event = "primary_provider_conflict"
        record.organization_id = "org-1"
        line = JsonFormatter().format(record)
        entry = json.loads(line)
        assert entry["level"] == "WARNING" and entry["request_id"] == "req-1"
        assert entry["event"] == "primary_provider_conflict"
        assert entry["organization_id"] == "org-1"
        assert re.search(r"primary.*provider|IntegrityError", line, re.IGNORECASE)

    async def test_request_lines_as_json_carry_ids_not_names(
        self, client: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.INFO)
        r = await client.post(
            "/v1/patients",
            json={"first_name": "Ximena", "last_name": "Oddlyname", "dob": "1966-06-06"},
            headers={**tenant.headers, "X-Request-ID": "req-json-1"},
        )
        assert r.status_code == 201
        lines = [JsonFormatter().format(rec) for rec in caplog.records]
        mine = [json.loads(line) for line in lines if '"req-json-1"' in line]
        assert any(e.get("message", "").startswith("patient created") for e in mine)
        assert all("Ximena" not in line and "1966-06-06" not in line for line in lines)
        access = next(e for e in mine if e.get("event") == "http_request")
        assert access["method"] == "POST" and access["route"] == "/v1/patients"
        assert access["status"] == 201 and isinstance(access["duration_ms"], float)
        assert access["organization_id"] == str(tenant.organization_id)
        assert {"ts", "level", "logger", "message", "request_id", "pid"} <= set(access)

    def test_uvicorns_coloured_message_stays_out_of_json(self):
        record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started", (), None)
        record.color_message = "\x1b[32mStarted\x1b[0m"  # what uvicorn adds to its records
        record.request_id = "-"
        entry = json.loads(JsonFormatter().format(record))
        assert entry["message"] == "Started"
        assert "color_message" not in entry and "\x1b" not in json.dumps(entry)


class TestMetrics:
    async def test_counters_move(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        route = "/v1/patients/{patient_id}/care-team/primary"
        before = {
            "changed": sample("careteam_primary_assignments_total", outcome="changed"),
            "unchanged": sample("careteam_primary_assignments_total", outcome="unchanged"),
            "requests": sample(
                "careteam_http_requests_total", method="PUT", route=route, status="200"
            ),
            "locks": sample("careteam_patient_lock_wait_seconds_count"),
        }
        for _ in range(2):
            r = await client.put(
                f"/v1/patients/{patient}/care-team/primary",
                json={"provider_id": provider},
                headers=tenant.headers,
            )
            assert r.status_code == 200
        assert (
            sample("careteam_primary_assignments_total", outcome="changed") == before["changed"] + 1
        )
        assert (
            sample("careteam_primary_assignments_total", outcome="unchanged")
            == before["unchanged"] + 1
        )
        assert (
            sample("careteam_http_requests_total", method="PUT", route=route, status="200")
            == before["requests"] + 2
        )
        assert sample("careteam_patient_lock_wait_seconds_count") == before["locks"] + 2

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "careteam_db_pool_connections" in metrics.text
        assert "careteam_http_request_duration_seconds_bucket" in metrics.text
        assert provider not in metrics.text and patient not in metrics.text

    async def test_refused_domain_outcomes_are_counted_by_code(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        before = sample("careteam_primary_assignments_total", outcome="provider_not_found")
        r = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": "00000000-0000-4000-8000-000000000000"},
            headers=tenant.headers,
        )
        assert r.status_code == 422
        after = sample("careteam_primary_assignments_total", outcome="provider_not_found")
        assert after == before + 1

    async def test_violation_check_result(self, database: Database):
        await refresh_violation_metrics(database, 0)
        assert sample("careteam_primary_index_valid") == 1
        assert sample("careteam_violation_check_patients", kind="several_primaries") == 0
        assert sample("careteam_violation_check_timestamp_seconds") > 0


class TestOneRuleCheckPerDatabase:
    """However many API processes ask, the database counts once per period."""

    STATUS = text("SELECT checked_at FROM careteam_rule_status(:max_age_s)")

    async def asked(self, database: Database, max_age_s: float) -> object:
        async with database.app_engine.begin() as conn:
            return (await conn.execute(self.STATUS, {"max_age_s": max_age_s})).scalar_one()

    async def test_a_fresh_count_is_shared_and_a_count_under_way_is_not_repeated(
        self, database: Database
    ):
        counted = await self.asked(database, 0)  # counts now
        answers = await asyncio.gather(*(self.asked(database, 300) for _ in range(6)))
        assert set(answers) == {counted}  # six processes, no new scan
        async with database.app_engine.begin() as recounting:
            # Another process is counting (it holds the check's advisory lock): one that
            # wants a fresh count gets the stored one instead of scanning too.
            await recounting.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": int.from_bytes(b"careteam", "big")},
            )
            assert await self.asked(database, 0) == counted
        assert await self.asked(database, 0) != counted  # the lock is free again: it counts


class TestReadiness:
    async def test_ready_at_head_with_a_valid_index(self, client: httpx.AsyncClient):
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}

    async def test_not_ready_when_the_index_is_missing_invalid_or_schema_behind(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        database = open_database(settings, fresh_database.url)
        app = create_app(database)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await upgrade(fresh_database.engine)
                assert (await client.get("/readyz")).status_code == 200

                await fresh_database.execute(f"DROP INDEX {primary_dedupe.UNIQUE_PRIMARY_INDEX}")
                r = await client.get("/readyz")
                assert r.status_code == 503 and "is missing" in r.json()["detail"]

                # A duplicate makes a concurrent build fail and leave the index INVALID.
                await fresh_database.execute("""
                    WITH o AS (INSERT INTO organizations (name) VALUES ('x') RETURNING id),
                         p AS (INSERT INTO patients (organization_id) SELECT id FROM o
                               RETURNING id, organization_id),
                         v AS (INSERT INTO providers (organization_id)
                               SELECT organization_id FROM p, generate_series(1, 2)
                               RETURNING id, organization_id)
                    INSERT INTO care_team_assignments
                        (organization_id, patient_id, provider_id, is_primary_provider)
                    SELECT v.organization_id, p.id, v.id, true FROM v JOIN p USING (organization_id)
                """)
                async with fresh_database.engine.connect() as connection:
                    conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    with pytest.raises(DBAPIError):
                        await conn.exec_driver_sql(primary_dedupe.CREATE_INDEX)
                r = await client.get("/readyz")
                assert r.status_code == 503 and "INVALID" in r.json()["detail"]

                async with fresh_database.engine.connect() as connection:
                    conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.exec_driver_sql(primary_dedupe.DROP_INDEX)
                await downgrade(fresh_database.engine, "20260114_rls_coverage")
                r = await client.get("/readyz")
                assert r.status_code == 503 and "head is" in r.json()["detail"]
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await database.dispose()


def create_app_and_print(code: str, env: dict[str, str]) -> str:
    """What `code` prints after create_app() in a fresh interpreter (Sentry is set up, or
    not, once per process)."""
    return subprocess.run(
        [sys.executable, "-c", f"from src.api.app import create_app; create_app(); {code}"],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


class TestSentry:
    def test_nothing_is_loaded_without_a_dsn(self):
        env = {k: v for k, v in os.environ.items() if k != "SENTRY_DSN"}
        out = create_app_and_print("import sys; print('sentry_sdk' in sys.modules)", env)
        assert out == "False"

    def test_with_a_dsn_it_is_set_up_and_scrubs(self):
        env = {**os.environ, "SENTRY_DSN": "http://public@127.0.0.1:9/1"}
        out = create_app_and_print(
            "import sentry_sdk; print(sentry_sdk.get_client().is_active())", env
        )
        assert out == "True"

    def test_scrub_removes_bodies_auth_users_and_locals(self):
        event = {
            "request": {
                "data": '{"first_name": "Ana"}',
                "query_string": "q=1",
                "cookies": {"s": "1"},
                "headers": {"Authorization": "Bearer ctk_secret", "Accept": "*/*"},
            },
            "user": {"email": "a@b.c"},
            "exception": {"values": [{"stacktrace": {"frames": [{"vars": {"dob": "1990"}}]}}]},
        }
        scrubbed = scrub_event(event, {})
        assert scrubbed is not None
        text = json.dumps(scrubbed)
        for secret in ("Ana", "ctk_secret", "a@b.c", "1990", "q=1"):
            assert secret not in text
        assert scrubbed["request"]["headers"]["Accept"] == "*/*"
