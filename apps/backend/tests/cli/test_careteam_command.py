"""The `careteam` command, run as operators run it (subprocesses, real databases)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from src.config import BACKEND_DIR
from tests.conftest import FreshDatabase
from tests.helpers import free_port as _free_port


def careteam(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "src.cli", *args],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def get(url: str, key: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class TestOrganizationsAndKeys:
    def test_org_create_key_create_and_revoke(self, database_url: str, database: object):
        created = careteam("org", "create", "Northside Clinic", "--json")
        assert created.returncode == 0, created.stderr
        org = json.loads(created.stdout)
        assert set(org) == {"organization_id", "api_key_id", "api_key"}
        assert org["api_key"].startswith("ctk_")

        second = careteam("key", "create", org["organization_id"], "--json")
        assert second.returncode == 0, second.stderr
        key = json.loads(second.stdout)
        assert key["organization_id"] == org["organization_id"]

        revoked = careteam("key", "revoke", key["api_key_id"])
        assert revoked.returncode == 0
        assert key["api_key_id"] in revoked.stdout
        # Revoking again is not an error: the key stays revoked, nothing changes.
        again = careteam("key", "revoke", key["api_key_id"])
        assert again.returncode == 0, again.stderr
        assert "was already revoked" in again.stdout and "nothing changed" in again.stdout
        unknown = careteam("key", "revoke", "00000000-0000-4000-8000-000000000000")
        assert unknown.returncode == 2
        assert "not found" in unknown.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("key", "create", "not-a-uuid"), "ORG_ID must be a UUID"),
            (("key", "create", "00000000-0000-4000-8000-000000000000"), "organization"),
            (("key", "revoke", "nope"), "KEY_ID must be a UUID"),
            (("org", "create", "   "), "NAME must be 1 to 200 characters"),
            (("migrate", "--to", "nope"), "unknown revision"),
        ],
    )
    def test_errors_are_one_line_and_exit_2(
        self, database_url: str, database: object, args: tuple[str, ...], message: str
    ):
        result = careteam(*args)
        assert result.returncode == 2
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_unreachable_database_is_one_line(self):
        result = careteam("status", env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/none"})
        assert result.returncode == 2
        assert result.stderr.startswith("❌ ERROR: database error")
        assert len(result.stderr.strip().splitlines()) == 1


class TestDatabaseCommands:
    def test_migrate_check_and_db_url(self, fresh_database: FreshDatabase):
        env = {"DATABASE_URL": fresh_database.url}
        migrated = careteam("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert "Upgrading (empty) -> " in migrated.stdout
        assert "at head" in migrated.stdout
        assert "✅ SUCCESS: No violations found" in migrated.stdout

        again = careteam("migrate", env=env)
        assert again.returncode == 0, again.stderr
        assert "Already at head" in again.stdout and "nothing to do" in again.stdout
        assert "Upgrading" not in again.stdout

        down = careteam("migrate", "--to", "20260114_rls_coverage", env=env)
        assert down.returncode == 0 and "Downgrading" in down.stdout
        assert "Index idx_unique_primary_provider_per_patient: missing" in down.stdout

        check = careteam("check", env=env)
        assert check.returncode == 0
        assert careteam("db-url", env=env).stdout.strip() == fresh_database.url


class TestServeOnTheEmbeddedServer:
    def test_demo_key_works_and_ctrl_c_stops_everything(self, tmp_path: Path):
        port = _free_port()
        env = {**os.environ, "CARETEAM_DATA_DIR": str(tmp_path)}
        env.pop("DATABASE_URL", None)
        out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
        with out_path.open("w") as out_file, err_path.open("w") as err_file:
            server = subprocess.Popen(
                [sys.executable, "-m", "src.cli", "serve", "--port", str(port)],
                cwd=BACKEND_DIR,
                env=env,
                stdout=out_file,
                stderr=err_file,
                text=True,
            )
            try:
                deadline = time.monotonic() + 90
                while True:
                    try:
                        if get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                            break
                    except OSError:
                        pass
                    assert server.poll() is None, err_path.read_text()
                    assert time.monotonic() < deadline, "serve did not start"
                    time.sleep(0.25)
                printed = out_path.read_text()
                example = re.search(
                    r"curl -H 'Authorization: Bearer (ctk_[A-Za-z0-9_-]{43})' "
                    r"(http://\S+/care-team)",
                    printed,
                )
                assert example is not None, printed
                status, team = get(example.group(2), key=example.group(1))
                assert status == 200
                assert isinstance(team, dict) and team["primary_provider_id"] is not None
                assert len(team["members"]) == 2
                assert get(example.group(2))[0] == 401
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(timeout=30)
        assert server.returncode == 0, err_path.read_text()
        assert "Traceback" not in err_path.read_text()
        assert "Stopped." in out_path.read_text()
        assert not (tmp_path / "postgres" / "postmaster.pid").exists(), (
            "embedded server left running"
        )
