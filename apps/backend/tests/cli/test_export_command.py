"""`careteam export`: the Bulk Data export from the command line, into a directory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.patient import Patient
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
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
            "--out",
            str(tmp_path),
        )
        assert result.returncode == 0, result.stderr
        assert [p["id"] for p in lines(tmp_path / "Patient.ndjson")] == [str(clinic["patient"])]
        assert not (tmp_path / "Practitioner.ndjson").exists()

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
