"""The database code in sql/: each file's shape, released files frozen, and a database
running exactly the files its revision names (no drift)."""

from __future__ import annotations

import ast
import hashlib
import re

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from src.config import BACKEND_DIR
from src.database_code import (
    SQL_DIR,
    function_body,
    latest_versions,
    sql_text,
    version_number,
)
from src.db import Database
from src.migration_runner import alembic_config, downgrade, upgrade
from tests.helpers import FreshDatabase

RELEASED = BACKEND_DIR / "migrations" / "released.sha256"
DATABASE_CODE = BACKEND_DIR.parent.parent / "docs" / "DATABASE_CODE.md"
VERSIONS_DIR = BACKEND_DIR / "migrations" / "versions"
# What a revision may import from the application: the settings (the role to grant to),
# the loader of sql/, and the dedupe it shares with the live diagnostic.
REVISION_IMPORTS = {"src.config", "src.database_code", "src.primary_dedupe"}
SQL_FILES = sorted(p.relative_to(SQL_DIR).as_posix() for p in SQL_DIR.rglob("*.sql"))

# The functions in public that are the project's: every one not made by an extension
# (btree_gist puts its own there).
PROJECT_FUNCTIONS = """
SELECT p.proname, p.prosrc, p.oid::regprocedure::text AS signature
FROM pg_catalog.pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend AS d
      WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
        AND d.deptype = 'e')
"""


def header(path: str) -> list[str]:
    """The `--` lines a file opens with."""
    lines = (SQL_DIR / path).read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]


def installed_by(path: str) -> str:
    """The revision a functions/ file's header says installs it."""
    line = next(line for line in header(path) if line.startswith("-- Installed by: "))
    match = re.match(r"-- Installed by: revision (\w+)", line)
    assert match, (path, line)
    return match.group(1)


class TestEachFile:
    def test_there_are_files(self):
        assert len(SQL_FILES) >= 20 and all("/" in path for path in SQL_FILES)

    def test_each_opens_with_what_it_does_who_calls_it_and_what_installs_it(self):
        for path in SQL_FILES:
            kind, name, version = path.split("/")
            assert kind in ("functions", "temporary"), path
            lines = header(path)
            qualified = name if kind == "functions" else f"pg_temp.{name}"
            assert lines[0].startswith(f"-- {qualified} {version.removesuffix('.sql')}"), path
            assert any(line.startswith("-- Called by: ") for line in lines), path
            assert any(line.startswith("-- Installed by: ") for line in lines), path

    def test_each_is_one_create_function_with_one_dollar_quoted_body(self):
        for path in SQL_FILES:
            kind, name, _ = path.split("/")
            statement = sql_text(path)
            assert statement.count("$$") == 2 and statement.endswith("$$"), path
            assert (SQL_DIR / path).read_text().endswith("$$;\n"), path
            function_body(statement)  # exactly one body
            created = re.search(r"^CREATE (OR REPLACE )?FUNCTION (\S+?)\(", statement, re.M)
            assert created, path
            schema = "pg_temp." if kind == "temporary" else ""
            assert created.group(2) in (f"{schema}{name}", f"public.{name}"), path

    def test_no_comment_reads_as_a_bind_parameter(self):
        """Alembic runs a file through text(): a `:name` would be taken for a parameter."""
        for path in SQL_FILES:
            assert text(sql_text(path)).compile().params == {}, path

    def test_versions_are_numbered_from_one_without_gaps(self):
        for directory in {path.rsplit("/", 1)[0] for path in SQL_FILES}:
            numbers = sorted(version_number(p) for p in SQL_FILES if p.startswith(directory + "/"))
            assert numbers == list(range(1, len(numbers) + 1)), directory

    def test_each_file_is_named_by_the_code_that_runs_it(self):
        """A version no revision installs (or, for the dedupe, no module runs) is a
        mistake: every path appears in a revision or in src/primary_dedupe.py."""
        sources = [p.read_text() for p in VERSIONS_DIR.glob("*.py")]
        sources.append((BACKEND_DIR / "src" / "primary_dedupe.py").read_text())
        for path in SQL_FILES:
            assert any(f'"{path}"' in source for source in sources), path


class TestReleasedFilesAreFrozen:
    def listed(self) -> dict[str, str]:
        lines = RELEASED.read_text().splitlines()
        entries = [line.split("  ", 1) for line in lines if line and not line.startswith("#")]
        return {path: digest for digest, path in entries}

    def test_every_listed_file_is_unchanged(self):
        for path, digest in self.listed().items():
            actual = hashlib.sha256((BACKEND_DIR / path).read_bytes()).hexdigest()
            assert actual == digest, (
                f"{path} changed after it was released: a change is a new version file "
                "and a new revision (sql/README.md)"
            )

    def test_every_sql_file_and_revision_is_listed(self):
        existing = {f"sql/{path}" for path in SQL_FILES} | {
            f"migrations/versions/{p.name}" for p in VERSIONS_DIR.glob("*.py")
        }
        missing = existing - set(self.listed())
        assert not missing, f"add to {RELEASED.name} (sha256sum, from apps/backend): {missing}"


class TestRevisions:
    def test_they_import_no_application_enum_or_constant(self):
        """A revision carries its own literals: a later change to the application's
        enums must never change what an old revision does."""
        for revision in VERSIONS_DIR.glob("*.py"):
            for node in ast.walk(ast.parse(revision.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = node.module
                    if module == "src":
                        module += "." + ",".join(alias.name for alias in node.names)
                    if module.startswith("src"):
                        assert module in REVISION_IMPORTS, (revision.name, module)


async def project_functions(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text(PROJECT_FUNCTIONS))).all()
    bodies = {row.proname: row.prosrc for row in rows}
    assert len(bodies) == len(rows), "an overloaded name: one file per function no longer holds"
    return bodies


class TestAtHead:
    async def test_every_function_runs_its_newest_file_and_none_is_without_one(
        self, database: Database
    ):
        bodies = await project_functions(database.owner_engine)
        latest = latest_versions()
        assert set(bodies) == set(latest)
        for name, path in latest.items():
            assert bodies[name] == function_body(sql_text(path)), f"{name} is not {path}"

    async def test_running_the_newest_files_again_changes_no_definition(self, database: Database):
        """The whole definition (signature, language, volatility, settings), not only the
        body: each newest file, run again in a transaction rolled back, leaves
        pg_get_functiondef as it was."""
        definitions = text(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_catalog.pg_proc AS p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY(:names)"
        )
        latest = latest_versions()
        async with database.owner_engine.connect() as conn:
            transaction = await conn.begin()
            try:
                before = dict((await conn.execute(definitions, {"names": list(latest)})).all())
                for path in latest.values():
                    # A file that creates (its revision made the function new) runs again
                    # as a replacement.
                    statement = sql_text(path).replace(
                        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
                    )
                    await conn.execute(text(statement))
                after = dict((await conn.execute(definitions, {"names": list(latest)})).all())
            finally:
                await transaction.rollback()
        assert set(before) == set(latest)
        assert after == before


class TestEveryRevision:
    async def test_a_database_runs_the_versions_its_revision_installs(
        self, fresh_database: FreshDatabase
    ):
        """Down from head to the first revision, at each one every function's body is the
        newest version whose header says a revision up to there installs it, and no
        other function of the project exists."""
        scripts = ScriptDirectory.from_config(alembic_config())
        order = [rev.revision for rev in reversed(list(scripts.walk_revisions()))]
        functions = [p for p in SQL_FILES if p.startswith("functions/")]
        installs = {path: order.index(installed_by(path)) for path in functions}
        engine = fresh_database.engine
        await upgrade(engine)
        for position in range(len(order) - 1, -1, -1):
            expected: dict[str, str] = {}
            for path in sorted(functions, key=version_number):
                if installs[path] <= position:
                    expected[path.split("/")[1]] = function_body(sql_text(path))
            assert await project_functions(engine) == expected, order[position]
            if position:
                await downgrade(engine, order[position - 1])


# --- who calls what, at head (docs/DATABASE_CODE.md) -------------------------------------

TRIGGERS = """
SELECT t.tgfoid::regproc::text AS function, c.relname AS table_name
FROM pg_catalog.pg_trigger AS t JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
"""


def readme_callers() -> dict[str, str]:
    """docs/DATABASE_CODE.md's "Who calls what, at head": each function and its row's
    second cell."""
    section = DATABASE_CODE.read_text().split("## Who calls what, at head")[1]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE)
    return dict(rows)


def calls(body: str, function: str) -> bool:
    return re.search(rf"\b{function}\s*\(", body) is not None


def python_statements_call(path: str, function: str) -> bool:
    """Whether a string in the module (not a comment) calls the function."""
    tree = ast.parse((BACKEND_DIR / path).read_text())
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and calls(node.value, function)
        for node in ast.walk(tree)
    )


class TestWhoCallsWhat:
    def test_every_function_has_its_row(self):
        assert sorted(readme_callers()) == sorted(latest_versions())

    def test_the_functions_named_are_those_whose_newest_file_calls_it(self):
        latest = {name: function_body(sql_text(path)) for name, path in latest_versions().items()}
        for function, cell in readme_callers().items():
            named = {token for token in re.findall(r"`(\w+)`", cell) if token in latest}
            callers = {
                name for name, body in latest.items() if name != function and calls(body, function)
            }
            assert named == callers, (function, named, callers)

    def test_the_modules_named_call_it_in_a_statement(self):
        for function, cell in readme_callers().items():
            for path in re.findall(r"`(src/[\w/]+\.py)`", cell):
                assert python_statements_call(path, function), (function, path)

    async def test_the_triggers_named_are_those_of_a_database_at_head(self, database: Database):
        async with database.owner_engine.connect() as conn:
            rows = (await conn.execute(text(TRIGGERS))).all()
        for function, cell in readme_callers().items():
            named = set(re.findall(r"trigger on `(\w+)`", cell))
            assert named == {r.table_name for r in rows if r.function == function}, function

    def test_a_function_nothing_calls_says_why(self):
        for function, cell in readme_callers().items():
            if not re.search(r"`[^`]+`", cell):
                assert cell.startswith("nothing at head: "), function
