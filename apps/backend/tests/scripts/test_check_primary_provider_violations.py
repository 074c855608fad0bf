"""scripts/check_primary_provider_violations.py, run as operators run it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

from src.config import BACKEND_DIR
from src.schema import upgrade
from tests.conftest import FreshDatabase
from tests.migrations.test_migrations import RLS, seed_duplicates

SCRIPT = BACKEND_DIR / "scripts" / "check_primary_provider_violations.py"


def run_check(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
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
        assert "WARNING: 1 patient(s) have a care team but no primary provider" in out


class TestAfterTheMigration:
    async def test_clean_database_exits_0(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        await seed_duplicates(fresh_database)
        await upgrade(fresh_database.engine)
        result = run_check(fresh_database.url)
        assert result.returncode == 0, result.stderr
        assert "Index idx_unique_primary_provider_per_patient: valid" in result.stdout
        assert "✅ SUCCESS: No violations found" in result.stdout


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

    async def test_role_that_cannot_see_all_tenants_is_exit_2(self, fresh_database: FreshDatabase):
        """A false 'all clear' is worse than no answer: RLS would hide every row."""
        await upgrade(fresh_database.engine)
        # asyncpg passes unknown URL parameters as server settings: log in as the owner,
        # run as the application role, which RLS applies to.
        separator = "&" if "?" in fresh_database.url else "?"
        url = f"{fresh_database.url}{separator}role=careteam_app"
        result = run_check(url)
        assert result.returncode == 2
        assert "BYPASSRLS" in result.stderr
