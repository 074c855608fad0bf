"""The code that runs inside PostgreSQL: the `.sql` files under apps/backend/sql/, and
what a revision needs to install them (sql/README.md has the rules).

- `sql/functions/<name>/vN.sql`: version N of a function in the public schema. A
  revision installs a version by naming its file; a revision's downgrade puts back the
  version before by naming that one. The highest N is what a database at head runs.
- `sql/temporary/<name>/vN.sql`: a function a migration (or the dedupe) creates in
  pg_temp for its own session.

A file that has landed is never edited (migrations/released.sha256 holds its checksum):
a change is a new version file and a new revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from src.config import BACKEND_DIR

SQL_DIR = BACKEND_DIR / "sql"
FUNCTIONS_DIR = SQL_DIR / "functions"
DOLLAR_QUOTE = "$$"


def sql_text(path: str) -> str:
    """The statement in `sql/<path>` (e.g. "functions/careteam_change_team/v1.sql"), as
    PostgreSQL runs it: the file without its closing semicolon (Alembic's offline SQL
    adds its own terminator)."""
    return (SQL_DIR / path).read_text(encoding="utf-8").rstrip().removesuffix(";")


def run_sql_file(path: str) -> None:
    """In a revision: execute the statement in `sql/<path>`."""
    op.execute(sql_text(path))


def function_body(statement: str) -> str:
    """The text between the statement's two `$$` (what pg_proc.prosrc holds). Every file
    under sql/ quotes its one body with `$$`, and no other `$$` appears in it."""
    parts = statement.split(DOLLAR_QUOTE)
    if len(parts) != 3:
        raise ValueError(f"expected one $$-quoted body, found {len(parts) - 1} $$")
    return parts[1]


def version_number(path: str) -> int:
    """N of a `.../vN.sql` path."""
    return int(path.rsplit("/", 1)[-1].removeprefix("v").removesuffix(".sql"))


def latest_versions() -> dict[str, str]:
    """Each function under sql/functions/ and the path (relative to sql/) of its newest
    version: what a database at head runs."""
    latest = {}
    for directory in sorted(p for p in FUNCTIONS_DIR.iterdir() if p.is_dir()):
        versions = [f"functions/{directory.name}/{f.name}" for f in directory.glob("v*.sql")]
        latest[directory.name] = max(versions, key=version_number)
    return latest


# Read-only: what each of the project's functions runs, as a digest of its body.
FUNCTION_DIGESTS = text(
    "SELECT proname, md5(prosrc) AS digest FROM pg_catalog.pg_proc "
    "WHERE pronamespace = 'public'::regnamespace AND proname = ANY(:names)"
)


@dataclass
class Drift:
    """How the functions a database runs compare with the newest files under sql/."""

    compared: int = 0  # functions compared
    differ: list[str] = field(default_factory=list)  # body is not its newest file's
    missing: list[str] = field(default_factory=list)  # no such function in public

    @property
    def matches(self) -> bool:
        return not self.differ and not self.missing


async def find_drift(conn: AsyncConnection) -> Drift:
    """Compare md5(prosrc) of every function under sql/functions/ with the md5 of its
    newest file's body (reads pg_proc only; meaningful on a database at head)."""
    latest = latest_versions()
    rows = await conn.execute(FUNCTION_DIGESTS, {"names": list(latest)})
    digests: dict[str, set[str]] = {}
    for name, digest in rows:
        digests.setdefault(name, set()).add(digest)
    drift = Drift(compared=len(latest))
    for name, path in latest.items():
        expected = hashlib.md5(function_body(sql_text(path)).encode(), usedforsecurity=False)
        if name not in digests:
            drift.missing.append(name)
        elif digests[name] != {expected.hexdigest()}:
            drift.differ.append(name)
    return drift


def drop_invalid_index(name: str) -> None:
    """For a revision, before it builds `name` CONCURRENTLY (IF NOT EXISTS): a concurrent
    build that failed leaves an INVALID index behind, which IF NOT EXISTS would keep;
    drop it first. Outside a transaction (an autocommit block), like the build."""
    if context.is_offline_mode():
        return
    bind: Connection = op.get_bind()
    invalid = bind.execute(
        text(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND NOT i.indisvalid"
        ),
        {"name": name},
    )
    if invalid.scalar_one():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
