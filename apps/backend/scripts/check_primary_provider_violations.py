"""Report patients with more than one primary provider in an organization.

Usage (from apps/backend):

    uv run python scripts/check_primary_provider_violations.py

Uses DATABASE_URL (libpq form, as psql takes it), or the embedded server when unset.
Runs as the owner across all organizations; read-only. Works before and after the
unique-primary migration.

Prints each violating (organization, patient) with its primaries, their assigned_at,
and which one the migration would keep; warns about patients with a care team but no
primary. Exit codes: 0 no violations, 1 violations found, 2 the check could not run.
"""

from __future__ import annotations

import asyncio
import sys

from src.diagnostics import main

if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
