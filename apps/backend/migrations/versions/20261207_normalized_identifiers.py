"""Patient identifiers compared in one form: Unicode NFC, without surrounding whitespace.

From this release the API refuses an identifier (system or value) with a space at
either end, a control character (C1 ones included) or nothing but spaces, and stores it
in NFC (src/values.py: identifier_part), so that "MRN-x" and "MRN-x ", or the composed
and decomposed spellings of "José", can no longer name two patients. This revision
brings the identifiers written before into that form, online: in batches of
BATCH_SIZE patients (each batch one short transaction that locks its patients, as any
writer of a patient does), each identifier whose normal form differs is rewritten,
with a record change ({identifiers}, actor migration:<revision>) and a new version of
its patient. An identifier whose normal form another one of its organization holds
already is left as it is, and so is one with control characters: `careteam check`
reports both, to be corrected by hand (PATCH the patient's identifiers). Progress is
logged; running it again after a failure is safe (it moves only what is left).

Offline (`--sql`): one batch's statement, for review; the backfill itself runs online.
downgrade() changes nothing: the normalized identifiers are valid for the release
before too.

Revision ID: 20261207_normalized_identifiers
Revises: 20261207_one_transfer_at_a_time
Create Date: 2026-12-07
"""

import itertools
import logging
import time
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from src.database_code import run_sql_file

revision: str = "20261207_normalized_identifiers"
down_revision: str | None = "20261207_one_transfer_at_a_time"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger(f"alembic.{revision}")

BATCH_SIZE = 1000
PROGRESS_EVERY_S = 10
FIRST = "00000000-0000-0000-0000-000000000000"
CALL = (
    "SELECT * FROM pg_temp.careteam_normalize_identifiers("
    "CAST(:org AS uuid), CAST(:patient AS uuid), :batch, :actor)"
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # Never queue for long behind (and so in front of) the site's own queries.
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        run_sql_file("temporary/careteam_normalize_identifiers/v1.sql")
        _backfill(actor=f"migration:{revision}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def _backfill(*, actor: str) -> None:
    if context.is_offline_mode():  # the statement once, for review and squawk
        op.execute(
            "SELECT * FROM pg_temp.careteam_normalize_identifiers("
            f"'{FIRST}', '{FIRST}', {BATCH_SIZE}, '{actor}')"
        )
        return
    connection = op.get_bind()
    started = reported = time.monotonic()
    rewritten = 0
    after = (FIRST, FIRST)
    for _ in itertools.count():
        # One statement, so one transaction (the autocommit block): one batch.
        row = connection.execute(
            text(CALL),
            {"org": after[0], "patient": after[1], "batch": BATCH_SIZE, "actor": actor},
        ).one_or_none()
        if row is None:
            logger.info(
                "identifiers: done, %d rewritten in %.1f s", rewritten, time.monotonic() - started
            )
            return
        rewritten += row.normalized
        after = (str(row.last_org), str(row.last_patient))
        if time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            logger.info("identifiers: %d rewritten so far, %.0f s", rewritten, reported - started)


def downgrade() -> None:
    """Nothing to undo: normalized identifiers are valid for the release before too."""
