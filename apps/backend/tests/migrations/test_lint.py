"""squawk lints the migrations' SQL, and would catch a blocking index build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from src.config import BACKEND_DIR


def test_migrations_lint_clean():
    result = subprocess.run(
        [sys.executable, "scripts/lint_migrations.py"],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found 0 issues" in result.stdout


def test_squawk_refuses_a_blocking_index_build(tmp_path: Path):
    """The linter is live: the index built without CONCURRENTLY is flagged."""
    sql = tmp_path / "blocking.sql"
    sql.write_text(
        "SET lock_timeout = '2s';\nSET statement_timeout = 0;\n"
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_unique_primary_provider_per_patient "
        "ON care_team_assignments (organization_id, patient_id) "
        "WHERE is_primary_provider = true;\n"
    )
    squawk = str(Path(sys.executable).parent / "squawk")
    result = subprocess.run(
        [squawk, str(sql)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout
