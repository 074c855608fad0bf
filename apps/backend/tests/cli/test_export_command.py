"""`careteam export`: the Bulk Data export from the command line, into a directory."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import socket
import uuid
from pathlib import Path

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.patient import Patient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.fhir_resources import OPERATOR_SYSTEM, audit_event_resource
from src.cli import export as export_command
from src.cli.export import operator
from src.db import Database
from src.services.access_log_service import AccessRecord
from src.services.care_team_service import CareTeamService
from tests.helpers import careteam, create_clinic, create_patient


@pytest.fixture
async def clinic(db: AsyncSession, database: Database) -> dict[str, object]:
    """Two patients: one with a primary (the Group's member), one without a team."""
    org, patient, providers = await create_clinic(db, providers=2)
    lone = await create_patient(db, organization_id=org)
    async with database.sessionmaker() as session:
        await CareTeamService.assign_primary_provider(
            db=session, organization_id=org, patient_id=patient, provider_id=providers[0]
        )
    return {"org": org, "patient": patient, "lone": lone, "providers": providers}


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestExportCommand:
    def test_the_whole_organization(self, clinic: dict[str, object], tmp_path: Path):
        out = tmp_path / "export"
        result = careteam("export", "--organization", str(clinic["org"]), "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "exported" in result.stdout and "transactionTime" in result.stdout
        # Not on a terminal: its progress in plain lines on stderr (it was a spinner's
        # glyphs, on stdout).
        assert "  Patient: 2 resources" in result.stderr.splitlines()
        assert result.stdout.count("\n") == 1
        assert not any("\u2800" <= c <= "\u28ff" for c in result.stdout + result.stderr)
        manifest = json.loads((out / "manifest.json").read_text())
        assert [o["type"] for o in manifest["output"]] == [
            "Organization",
            "Practitioner",
            "Patient",
            "CareTeam",
            "Group",
        ]
        patients = lines(out / "Patient.ndjson")
        assert sorted(p["id"] for p in patients) == sorted(
            [str(clinic["patient"]), str(clinic["lone"])]
        )
        for patient in patients:
            Patient.model_validate(patient)
        (team,) = lines(out / "CareTeam.ndjson")
        CareTeam.model_validate(team)
        assert team["id"] == str(clinic["patient"])
        assert len(lines(out / "Practitioner.ndjson")) == 2

    def test_the_access_log_names_the_operator_and_every_patient(
        self, clinic: dict[str, object], tmp_path: Path
    ):
        org = str(clinic["org"])
        result = careteam("export", "--organization", org, "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
        printed = careteam("access-log", "--organization", org, "--json")
        assert printed.returncode == 0, printed.stderr
        entries = json.loads(printed.stdout)["items"]
        assert entries, "the export is in the access log"
        for entry in entries:
            assert entry["operator"] == operator()
            assert entry["api_key_id"] is None and entry["client_id"] is None
            assert entry["route"] == "careteam export" and entry["action"] == "E"
            assert entry["parameters"] == []  # the whole organization, every type
        named = {p for entry in entries for p in entry["patient_ids"]}
        assert named == {str(clinic["patient"]), str(clinic["lone"])}
        table = careteam("access-log", "--organization", org, env={"COLUMNS": "300"})
        assert f"operator {operator()}" in table.stdout

    def test_the_operator_is_the_uids_account_not_what_the_environment_says(
        self, monkeypatch: pytest.MonkeyPatch
    ):
        for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
            monkeypatch.setenv(name, "mallory")
        monkeypatch.delenv("SUDO_USER", raising=False)
        account = pwd.getpwuid(os.getuid()).pw_name
        assert operator() == f"{account}@{socket.gethostname()}"
        monkeypatch.setenv("SUDO_USER", "alice")
        assert operator().endswith("(sudo by alice)")

    def test_an_operators_entry_is_an_audit_event_requested_by_that_login(self):
        org, patient = uuid.uuid4(), uuid.uuid4()
        entry = AccessRecord(
            id=uuid.uuid4(),
            recorded_at=datetime.datetime.now(datetime.UTC),
            api_key_id=None,
            client_id=None,
            operator="ops@host-1",
            route="careteam export",
            interaction="operation",
            action="E",
            parameters=["_type"],
            status=200,
            result_count=1,
            patient_ids=[patient],
        )
        event = audit_event_resource(entry, org)
        AuditEvent.model_validate(event)
        (agent,) = event["agent"]
        assert agent["requestor"] is True
        assert agent["who"]["identifier"] == {"system": OPERATOR_SYSTEM, "value": "ops@host-1"}
        assert event["entity"][0]["what"] == {"reference": f"Patient/{patient}"}

    async def test_an_entry_names_a_credential_or_an_operator_never_both_or_neither(
        self, clinic: dict[str, object], database: Database
    ):
        insert = (
            "INSERT INTO access_log (organization_id, id, api_key_id, operator, route, "
            "interaction, action, status) VALUES (:org, :id, :key, :operator, 'x', "
            "'operation', 'E', 200)"
        )
        for key, who in ((uuid.uuid4(), "someone@host"), (None, None), (None, "")):
            with pytest.raises(IntegrityError, match="ck_access_log_who_or_operator"):
                async with database.owner_engine.begin() as owner:
                    await owner.execute(
                        text(insert),
                        {"org": clinic["org"], "id": uuid.uuid4(), "key": key, "operator": who},
                    )

    def test_one_group(self, clinic: dict[str, object], tmp_path: Path):
        providers = clinic["providers"]
        assert isinstance(providers, list)
        result = careteam(
            "export",
            "--organization",
            str(clinic["org"]),
            "--group",
            str(providers[0]),
            "--type",
            "Patient,CareTeam",
            "--since",
            "2000-01-01T00:00:00Z",
            "--out",
            str(tmp_path),
        )
        assert result.returncode == 0, result.stderr
        assert [p["id"] for p in lines(tmp_path / "Patient.ndjson")] == [str(clinic["patient"])]
        assert not (tmp_path / "Practitioner.ndjson").exists()
        said = [line for line in result.stderr.splitlines() if line.startswith("  ")]
        assert said == ["  Patient: 1 resource", "  CareTeam: 1 resource"]
        # Its entries say what narrowed it (they said `_type` alone).
        printed = careteam("access-log", "--organization", str(clinic["org"]), "--json")
        entries = json.loads(printed.stdout)["items"]
        assert entries
        assert all(e["parameters"] == ["--group", "--since", "--type"] for e in entries)

    def test_a_type_with_no_resource_says_0(self, clinic: dict[str, object], tmp_path: Path):
        """Without a terminal, each type's count once done: a type no page reported (a
        provider with no member: no Patient, no CareTeam) said nothing (found by a
        review)."""
        providers = clinic["providers"]
        assert isinstance(providers, list)
        result = careteam(
            "export", "--organization", str(clinic["org"]), "--group", str(providers[1]),
            "--out", str(tmp_path),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith("  ")]
        assert said == [
            "  Organization: 1 resource",
            "  Practitioner: 0 resources",
            "  Patient: 0 resources",
            "  CareTeam: 0 resources",
            "  Group: 1 resource",
        ]

    def test_a_small_pool_setting_still_gives_it_a_connection_per_lane(
        self, clinic: dict[str, object], tmp_path: Path
    ):
        """`careteam export` sizes its own pool for its lanes: with the server's
        DB_POOL_SIZE of one, its other lanes waited for the connection the first held,
        until they failed (found by a review)."""
        result = careteam(
            "export", "--organization", str(clinic["org"]), "--out", str(tmp_path),
            env={"DB_POOL_SIZE": "1", "EXPORT_WORKERS": "0", "DB_POOL_TIMEOUT_S": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert len(lines(tmp_path / "Patient.ndjson")) == 2

    def test_progress_lines_interleave_then_each_types_count_in_order(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ):
        """The types are read at once: a type's count so far every PROGRESS_EVERY
        resources, whichever type reports, then every type's count in the export's
        order (a type that had not reported yet said nothing before the next one
        started, when they ran one after another)."""
        monkeypatch.setattr(export_command, "PROGRESS_EVERY", 10)
        with export_command._Progress(("Organization", "Patient", "CareTeam")) as progress:
            for kind, count in [("CareTeam", 4), ("Patient", 12), ("CareTeam", 11)]:
                progress.update(kind, count)
            progress.update("Patient", 15)
            progress.done()
        assert capsys.readouterr().err.splitlines() == [
            "  Patient: 12 resources so far",
            "  CareTeam: 11 resources so far",
            "  Organization: 0 resources",
            "  Patient: 15 resources",
            "  CareTeam: 11 resources",
        ]

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["--type", "Observation"], "--type"),
            (["--since", "yesterday"], "--since"),
            (["--group", "not-a-uuid"], "PROVIDER_ID"),
        ],
        ids=["type", "since", "group"],
    )
    def test_usage_errors_are_one_line(
        self, clinic: dict[str, object], tmp_path: Path, args: list[str], says: str
    ):
        result = careteam(
            "export", "--organization", str(clinic["org"]), "--out", str(tmp_path), *args
        )
        assert result.returncode == 2
        assert says in result.stderr and "Traceback" not in result.stderr

    def test_an_unknown_organization_or_group_fails_in_words(
        self, clinic: dict[str, object], tmp_path: Path
    ):
        result = careteam("export", "--organization", str(uuid.uuid4()), "--out", str(tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "organization" in result.stderr
        result = careteam(
            "export",
            "--organization",
            str(clinic["org"]),
            "--group",
            str(uuid.uuid4()),
            "--out",
            str(tmp_path),
        )
        assert result.returncode == 1 and "not an active provider" in result.stderr

    def test_a_failed_run_leaves_no_manifest_that_describes_other_files(
        self, clinic: dict[str, object], tmp_path: Path
    ):
        (tmp_path / "manifest.json").write_text('{"from": "an earlier run"}')
        (tmp_path / "Patient.ndjson").mkdir()  # the file cannot be written
        result = careteam("export", "--organization", str(clinic["org"]), "--out", str(tmp_path))
        assert result.returncode == 1, result.stdout
        assert "could not write the export" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "manifest.json").exists()
