"""scripts/check_primary_provider_violations.py, run as operators run it (a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy.exc import DBAPIError

from src import primary_dedupe
from src.config import BACKEND_DIR, Settings
from src.diagnostics import Finding, FindingParser
from src.migration_runner import upgrade
from tests.helpers import PRIMARIES, RLS, FreshDatabase, careteam, seed_duplicates

SCRIPT = BACKEND_DIR / "scripts" / "check_primary_provider_violations.py"


def run_check(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=BACKEND_DIR,
        timeout=60,
    )


class TestBeforeTheMigration:
    async def test_lists_violations_and_exits_1(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        seeded = await seed_duplicates(fresh_database)
        result = run_check(fresh_database.url)
        assert result.returncode == 1, result.stderr
        out = result.stdout
        assert "Index idx_unique_primary_provider_per_patient: missing" in out
        assert "❌ FAILED: 2 patient(s) with more than one primary provider" in out
        for patient, kept in seeded.expected_primaries.items():
            if any(p == patient for p, _ in seeded.demoted):
                assert f"patient {patient}: " in out
                kept_line = next(line for line in out.splitlines() if f"provider {kept}" in line)
                assert kept_line.endswith("-> migration would keep")
        for _, demoted in seeded.demoted:
            line = next(line for line in out.splitlines() if f"provider {demoted}" in line)
            assert line.endswith("-> migration would demote to secondary")
            assert "assigned_at 2025-" in line
        assert "care team of 1, no primary provider" in out
        assert "⚠️  1 patient(s) without a primary provider" in out
        assert "Periods: not checked" in out


class TestAfterTheMigration:
    async def test_clean_database_exits_0(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        await seed_duplicates(fresh_database)
        await upgrade(fresh_database.engine)
        result = run_check(fresh_database.url)
        assert result.returncode == 0, result.stderr
        assert "Index idx_unique_primary_provider_per_patient: valid" in result.stdout
        assert "✅ SUCCESS: No violations found" in result.stdout


class TestPeriodsAndPanels:
    """From revision 20261128_care_team_periods on: the open periods must say what the
    care teams say, and a primary whose provider is inactive is reported."""

    @staticmethod
    async def member(db: FreshDatabase) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        """(organization, patient, provider), written as the owner."""
        org = await db.execute("INSERT INTO organizations (name) VALUES ('p') RETURNING id")
        org_id = org[0][0]
        ids = [
            (
                await db.execute(
                    f"INSERT INTO {table} (organization_id) VALUES (:org) RETURNING id",
                    org=org_id,
                )
            )[0][0]
            for table in ("patients", "providers")
        ]
        return org_id, ids[0], ids[1]

    async def test_a_membership_out_of_step_is_a_violation(self, fresh_database: FreshDatabase):
        db = fresh_database
        await upgrade(db.engine)
        org, patient, provider = await self.member(db)
        # Written behind the trigger's back: an assignment without its period...
        await db.execute("ALTER TABLE care_team_assignments DISABLE TRIGGER careteam_keep_periods")
        await db.execute(
            "INSERT INTO care_team_assignments (organization_id, patient_id, provider_id, "
            "is_primary_provider) VALUES (:org, :patient, :provider, true)",
            org=org,
            patient=patient,
            provider=provider,
        )
        await db.execute("ALTER TABLE care_team_assignments ENABLE TRIGGER careteam_keep_periods")
        # ... and an open period without its assignment.
        _, _, stray = await self.member(db)
        stray_org = await db.execute("SELECT organization_id FROM providers WHERE id = :v", v=stray)
        other_patient = await db.execute(
            "INSERT INTO patients (organization_id) VALUES (:org) RETURNING id", org=stray_org[0][0]
        )
        await db.execute(
            "INSERT INTO care_team_periods (organization_id, patient_id, provider_id, role, "
            "valid, started_by, start_reason) VALUES (:org, :patient, :provider, 'secondary', "
            "tstzrange(now(), NULL), 'test', 'other')",
            org=stray_org[0][0],
            patient=other_patient[0][0],
            provider=stray,
        )
        report = run_check(db.url, "--json")
        assert report.returncode == 1, report.stdout + report.stderr
        body = json.loads(report.stdout)
        assert body["periods_checked"] is True
        assert body["periods_out_of_step_total"] == 2 and body["status"] == "violations"
        found = {
            (f["provider_id"], f["assigned_role"], f["open_period_role"])
            for f in body["findings"]
            if f["kind"] == "period_out_of_step"
        }
        assert found == {(str(provider), "primary", None), (str(stray), None, "secondary")}
        out = run_check(db.url).stdout
        assert f"provider {provider}: assigned as primary, open period none" in out
        assert "❌ FAILED: 2 membership(s) whose open period does not match" in out

    @pytest.mark.parametrize(
        ("role", "total", "other_total", "summary"),
        [
            # Deactivated by hand: the service refuses it (provider_has_patients).
            (
                "primary",
                "inactive_primary_total",
                "periods_out_of_step_total",
                "⚠️  1 patient(s) whose primary provider is inactive",
            ),
            # Left by the release before, which did not end memberships at deactivation:
            # reported, not left silent.
            (
                "secondary",
                "inactive_secondary_total",
                "inactive_primary_total",
                "⚠️  1 care team membership(s) of an inactive provider",
            ),
        ],
    )
    async def test_an_inactive_member_is_a_warning(
        self,
        fresh_database: FreshDatabase,
        *,
        role: str,
        total: str,
        other_total: str,
        summary: str,
    ):
        db = fresh_database
        await upgrade(db.engine)
        org, patient, provider = await self.member(db)
        await db.execute(
            "INSERT INTO care_team_assignments (organization_id, patient_id, provider_id, "
            "is_primary_provider) VALUES (:org, :patient, :provider, :primary)",
            org=org,
            patient=patient,
            provider=provider,
            primary=role == "primary",
        )
        await db.execute("UPDATE providers SET active = false WHERE id = :v", v=provider)
        result = run_check(db.url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"patient {patient}: {role} provider {provider} is inactive" in result.stdout
        assert summary in result.stdout
        body = json.loads(run_check(db.url, "--json").stdout)
        assert body[total] == 1
        assert body[other_total] == 0

    async def test_fix_at_head_keeps_the_periods_in_step(self, fresh_database: FreshDatabase):
        """Duplicates at head (the index dropped by hand): the trigger lets only one
        primary period stay open, so they are out of step too; the fix demotes them,
        with data_correction events and periods, and all is in step again."""
        db = fresh_database
        await upgrade(db.engine)
        await db.execute("DROP INDEX idx_unique_primary_provider_per_patient")
        seeded = await seed_duplicates(db)
        before = json.loads(run_check(db.url, "--json").stdout)
        assert before["violations_total"] == 2 and before["periods_out_of_step_total"] == 3

        fixed = run_check(db.url, "--fix", "--execute", "--json")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert json.loads(fixed.stdout)["periods_out_of_step_total"] == 0
        events = await db.execute(
            "SELECT DISTINCT reason FROM care_team_events WHERE event_type = 'migration_dedupe'"
        )
        assert events == [("data_correction",)]
        for patient, demoted in seeded.demoted:
            opened = await db.execute(
                "SELECT role, start_reason, started_by FROM care_team_periods "
                "WHERE patient_id = :p AND provider_id = :v AND upper_inf(valid)",
                p=patient,
                v=demoted,
            )
            assert opened == [("secondary", "data_correction", "careteam check --fix")]
        open_primaries = await db.execute(
            "SELECT patient_id, provider_id FROM care_team_periods "
            "WHERE role = 'primary' AND upper_inf(valid)"
        )
        assert dict(open_primaries) == seeded.expected_primaries
        await db.execute(
            "CREATE UNIQUE INDEX idx_unique_primary_provider_per_patient ON "
            "care_team_assignments (organization_id, patient_id) "
            "WHERE is_primary_provider = true"
        )
        assert run_check(db.url).returncode == 0


class TestCannotRun:
    def test_unreachable_server_is_one_line_and_exit_2(self):
        result = run_check("postgresql://nobody@127.0.0.1:1/none")
        assert result.returncode == 2
        assert result.stderr.startswith("❌ ERROR: cannot query the database")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_not_a_postgres_url_is_exit_2(self):
        result = run_check("mysql://root@localhost/db")
        assert result.returncode == 2
        assert "DATABASE_URL must start with postgresql://" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    async def test_unmigrated_database_is_exit_2(self, fresh_database: FreshDatabase):
        result = run_check(fresh_database.url)
        assert result.returncode == 2
        assert "run the migrations first" in result.stderr

    async def test_role_that_cannot_see_all_tenants_is_exit_2(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        """A false 'all clear' is worse than no answer: RLS would hide every row."""
        await upgrade(fresh_database.engine)
        # asyncpg passes unknown URL parameters as server settings: log in as the owner,
        # run as the application role, which RLS applies to.
        separator = "&" if "?" in fresh_database.url else "?"
        url = f"{fresh_database.url}{separator}role={settings.app_db_role}"
        result = run_check(url)
        assert result.returncode == 2
        assert "BYPASSRLS" in result.stderr


class TestOptions:
    async def test_json_report(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        seeded = await seed_duplicates(fresh_database)
        result = run_check(fresh_database.url, "--json")
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report["index_state"] == "missing"
        assert report["status"] == "violations"
        assert report["violations_total"] == 2 and report["demotions_needed"] == 3
        assert report["without_primary_total"] == 1
        assert report["fix"] is None
        violations = [f for f in report["findings"] if f["kind"] == "several_primaries"]
        assert len(violations) == 2
        assert [f["kind"] for f in report["findings"]].count("no_primary") == 1
        kept = {
            v["patient_id"]: [p["provider_id"] for p in v["primaries"] if p["action"] == "keep"]
            for v in violations
        }
        for patient, providers in kept.items():
            assert providers == [str(seeded.expected_primaries[uuid.UUID(patient)])]

    async def test_limit_lists_fewer_but_counts_all(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        await seed_duplicates(fresh_database)
        report = json.loads(run_check(fresh_database.url, "--json", "--limit", "1").stdout)
        kinds = [f["kind"] for f in report["findings"]]
        assert kinds.count("several_primaries") == 1 and report["violations_total"] == 2
        text_out = run_check(fresh_database.url, "--limit", "1").stdout
        assert "(1 more patient(s) with several primaries not listed" in text_out

    async def test_one_organization(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        await seed_duplicates(fresh_database)
        other = await fresh_database.execute(
            "INSERT INTO organizations (name) VALUES ('clean') RETURNING id"
        )
        clean = run_check(fresh_database.url, "--organization", str(other[0][0]))
        assert clean.returncode == 0, clean.stdout
        assert "✅ SUCCESS" in clean.stdout

    async def test_fix_is_a_dry_run_until_execute(self, fresh_database: FreshDatabase):
        db = fresh_database
        await upgrade(db.engine, RLS)
        seeded = await seed_duplicates(db)
        dry = run_check(db.url, "--fix")
        assert dry.returncode == 1
        assert "DRY RUN: --fix would demote 3 assignment(s) of 2 patient(s)" in dry.stdout
        assert await db.execute("SELECT count(*) FROM care_team_events") == [(0,)]

        fixed = run_check(db.url, "--fix", "--execute")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert "FIXED: demoted 3 duplicate primary assignment(s)" in fixed.stdout
        primaries = dict(await db.execute(PRIMARIES))
        assert primaries == seeded.expected_primaries
        events = await db.execute(
            "SELECT actor FROM care_team_events WHERE event_type = 'migration_dedupe'"
        )
        assert [e.actor for e in events] == ["careteam check --fix"] * 3
        assert run_check(db.url).returncode == 0

    async def test_invalid_index_is_reported(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        await seed_duplicates(fresh_database)
        async with fresh_database.engine.connect() as connection:
            conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(DBAPIError):
                await conn.exec_driver_sql(primary_dedupe.CREATE_INDEX)
        result = run_check(fresh_database.url)
        assert "Index idx_unique_primary_provider_per_patient: invalid" in result.stdout
        assert "the index is INVALID" in result.stdout

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--execute",), "--execute only goes with --fix"),
            (("--organization", "nope"), "not a UUID"),
            (("--limit", "0"), "at least 1"),
        ],
    )
    def test_bad_arguments_exit_2(self, args: tuple[str, ...], message: str):
        result = run_check("postgresql://unused@127.0.0.1:1/none", *args)
        assert result.returncode == 2
        assert message in result.stderr


class TestStreamingParser:
    """COPY delivers chunks cut anywhere; the findings must not depend on where."""

    ROWS = (
        b"o1,p1,2,4,a1,v1,2025-06-03 00:00:00+00\n"
        b"o1,p1,2,4,a2,v2,2025-06-01 10:11:12.5+00\n"
        b"o1,p2,0,3,,,\n"
        b"o2,p3,3,3,a3,v3,2025-06-03 00:00:00+00\n"
        b"o2,p3,3,3,a4,v4,2025-06-02 00:00:00+00\n"
        b"o2,p3,3,3,a5,v5,2025-06-01 00:00:00+00\n"
    )

    @staticmethod
    def parse(chunks: list[bytes]) -> list[tuple[str, int, list[str]]]:
        found: list[Finding] = []
        parser = FindingParser(found.append)

        async def feed() -> None:
            for chunk in chunks:
                await parser.feed(chunk)

        asyncio.run(feed())
        parser.close()
        return [(f.patient_id, f.members, [p.provider_id for p in f.primaries]) for f in found]

    def test_same_findings_whatever_the_chunking(self):
        whole = self.parse([self.ROWS])
        assert whole == [("p1", 4, ["v1", "v2"]), ("p2", 3, []), ("p3", 3, ["v3", "v4", "v5"])]
        for size in (1, 2, 7, 33):
            chunks = [self.ROWS[i : i + size] for i in range(0, len(self.ROWS), size)]
            assert self.parse(chunks) == whole

    def test_quoted_fields_are_read_as_csv(self):
        """PostgreSQL quotes a field with a comma, a quote or a newline; a split on
        commas would read such a row as the wrong number of columns."""
        rows = (
            b'o1,"p,1",2,2,a1,v1,2025-06-03 00:00:00+00\n'
            + b'o1,"p,1",2,2,a2,"v""2\nx",2025-06-01 00:00:00+00\n'
        )
        assert self.parse([rows]) == [("p,1", 2, ["v1", 'v"2\nx'])]
        for size in (1, 5):
            chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
            assert self.parse(chunks) == [("p,1", 2, ["v1", 'v"2\nx'])]


class TestOneParser:
    @pytest.mark.parametrize(
        "args",
        [("--execute",), ("--organization", "nope"), ("--limit", "0"), ("--colour",)],
    )
    def test_careteam_check_and_the_script_answer_bad_arguments_alike(self, args: tuple[str, ...]):
        unused = "postgresql://unused@127.0.0.1:1/none"
        script = run_check(unused, *args)
        command = careteam("check", *args, env={"DATABASE_URL": unused})
        assert script.returncode == command.returncode == 2
        last = script.stderr.strip().splitlines()[-1].split(": error: ", 1)[1]
        assert last == command.stderr.strip().splitlines()[-1].split(": error: ", 1)[1]


class TestIdentifiersWrittenBeforeTheRule:
    async def test_are_normalized_online_and_what_is_left_is_reported(
        self, fresh_database: FreshDatabase
    ):
        """ "MRN-x" and "MRN-x " (and NFC and NFD spellings) named two patients: the
        revision rewrites each identifier into its normal form where that is free, with
        a record change; the rest (a collision, a control character) `careteam check`
        reports, by patient, never by value."""
        db = fresh_database
        await upgrade(db.engine, "20261207_one_transfer_at_a_time")
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('i') RETURNING id"))[0][0]
        values = {
            "trailing": "MRN-x ",
            "nfd": "Jose\u0301",
            "taken": "MRN-y ",
            "holder": "MRN-y",
            "control": "A\u0085B",
        }
        patients = {}
        for name, value in values.items():
            patient = (
                await db.execute(
                    "INSERT INTO patients (organization_id, first_name, last_name) "
                    "VALUES (:org, 'A', 'B') RETURNING id",
                    org=org,
                )
            )[0][0]
            await db.execute(
                "INSERT INTO patient_identifiers (organization_id, patient_id, system, value) "
                "VALUES (:org, :patient, 'urn:mrn', :value)",
                org=org,
                patient=patient,
                value=value,
            )
            patients[name] = patient
        await upgrade(db.engine)
        rows = await db.execute(
            "SELECT patient_id, value FROM patient_identifiers WHERE organization_id = :org",
            org=org,
        )
        stored = {row.patient_id: row.value for row in rows}
        assert stored[patients["trailing"]] == "MRN-x"
        assert stored[patients["nfd"]] == "Jos\u00e9"
        assert stored[patients["taken"]] == "MRN-y "  # its normal form is taken: left
        assert stored[patients["control"]] == "A\u0085B"
        changes = await db.execute(
            "SELECT record_id, fields, actor FROM record_changes WHERE organization_id = :org",
            org=org,
        )
        assert {(c.record_id, tuple(c.fields), c.actor) for c in changes} == {
            (patients[p], ("identifiers",), "migration:20261207_normalized_identifiers")
            for p in ("trailing", "nfd")
        }
        result = run_check(db.url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "MRN" not in result.stdout and "A\u0085B" not in result.stdout
        assert f"patient {patients['control']}: an identifier has a control character" in (
            result.stdout
        )
        body = json.loads(run_check(db.url, "--json").stdout)
        assert body["identifier_not_normal_total"] == 2  # "MRN-y " and the control one
        assert body["identifier_collision_total"] == 2  # "MRN-y " and "MRN-y"
        found = {
            (f["kind"], f["patient_id"])
            for f in body["findings"]
            if f["kind"].startswith("identifier")
        }
        assert ("identifier_collision", str(patients["holder"])) in found
