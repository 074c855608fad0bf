"""Report patients with more than one primary provider in an organization.

Usage (from apps/backend):

    uv run python scripts/check_primary_provider_violations.py [--json]
        [--organization ORG_ID] [--limit N] [--fix [--execute]]

Uses DATABASE_URL (libpq form, as psql takes it), or the embedded server when unset.
Runs as the owner across all organizations (or one); read-only unless --fix --execute.
Works before and after the unique-primary migration, on tables of any size: results
are streamed, memory stays flat.

Prints the state of idx_unique_primary_provider_per_patient (valid, invalid, missing),
each violating (organization, patient) with its primaries, their assigned_at and which
one the dedupe keeps, and, as a warning, patients with a care team but no primary.
--fix says what the dedupe would change; --fix --execute applies it, batch by batch,
with the migration's rule, lock and events.

Exit codes: 0 no violations (or all fixed), 1 violations found, 2 the check could not run.
"""

from __future__ import annotations

import sys

from src.diagnostics import main

if __name__ == "__main__":
    sys.exit(main())
