"""Lint the migrations' SQL with squawk (as `alembic upgrade head --sql` renders it).

Usage (from apps/backend):

    uv run python scripts/lint_migrations.py

Exit code: squawk's (0 clean). A rule silenced inside a migration carries a
`-- squawk-ignore RULE: why` comment next to the statement.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command

from src.migration_runner import alembic_config

# Alembic's own bookkeeping table (VARCHAR(32) is its choice, not ours): not linted.
ALEMBIC_VERSION_COLUMN = "    version_num VARCHAR(32) NOT NULL"
IGNORE_ALEMBIC_COLUMN = (
    "    -- Alembic's own version table, not ours:\n    -- squawk-ignore prefer-text-field\n"
)


# squawk-cli's binary, installed next to this interpreter.
SQUAWK = str(Path(sys.executable).parent / "squawk")


def offline_sql() -> str:
    buffer = io.StringIO()
    config = alembic_config()
    config.output_buffer = buffer
    with contextlib.redirect_stdout(buffer):
        command.upgrade(config, "head", sql=True)
    return buffer.getvalue().replace(
        ALEMBIC_VERSION_COLUMN, IGNORE_ALEMBIC_COLUMN + ALEMBIC_VERSION_COLUMN, 1
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "migrations.sql"
        path.write_text(offline_sql())
        return subprocess.run([SQUAWK, str(path)], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
