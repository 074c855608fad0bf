"""What the test modules share: factories, fixtures' types, and helpers. Test modules
never import each other; whatever two of them need lives here.

- Database factories insert one row each and commit. They run as whatever role the
  session has; under the application role they set the tenant first, exactly as the
  service does, so RLS accepts the rows. Organizations are made by the owner, as in
  production (the application role may not create them): the session's
  `info["owner_engine"]` names the owner's engine (see `with_owner`).
- HTTP factories create through the API (`post_patient`, `post_provider`).
- `careteam` runs a `careteam` command in this process, as its own process would run it;
  `start_serve` runs `careteam serve` as a subprocess.
- `seed_duplicates` writes data that breaks the rule, as it was before the migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from typer.testing import CliRunner

from src.cli import app as careteam_app
from src.config import BACKEND_DIR, get_settings
from src.db import Database
from src.services.transaction import SET_TENANT  # the service's own statement

RLS, UNIQUE = "20260114_rls_coverage", "20260114_unique_primary"
PRIMARIES = "SELECT patient_id, provider_id FROM care_team_assignments WHERE is_primary_provider"

# --- database factories ------------------------------------------------------------------


async def set_tenant(db: AsyncSession | AsyncConnection, org: uuid.UUID) -> None:
    """Set the tenant for the current transaction, with the service's own statement."""
    connection = await db.connection() if isinstance(db, AsyncSession) else db
    await connection.exec_driver_sql(SET_TENANT.text, (str(org),))


async def _insert(db: AsyncSession, org: uuid.UUID, sql: str, params: dict[str, Any]) -> uuid.UUID:
    await set_tenant(db, org)
    new_id: uuid.UUID = (await db.execute(text(sql), params)).scalar_one()
    await db.commit()
    return new_id


async def owner_count(database: Database, sql: str, **params: object) -> int:
    """A count (or any one integer) as the owner sees it, across tenants."""
    async with database.owner_engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one())


def with_owner(database: Database) -> Database:
    """`database`, whose sessions can make organizations for the factories."""
    database.sessionmaker.configure(info={"owner_engine": database.owner_engine})
    return database


async def create_organization(db: AsyncSession, *, name: str = "Test Clinic") -> uuid.UUID:
    owner: AsyncEngine = db.info["owner_engine"]
    async with owner.begin() as conn:
        org: uuid.UUID = (
            await conn.execute(
                text("INSERT INTO organizations (name) VALUES (:name) RETURNING id"),
                {"name": name},
            )
        ).scalar_one()
    return org


async def create_patient(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    first_name: str = "Pat",
    last_name: str = "Ient",
    dob: datetime.date = datetime.date(1980, 1, 1),
) -> uuid.UUID:
    return await _insert(
        db,
        organization_id,
        "INSERT INTO patients (organization_id, first_name, last_name, dob) "
        "VALUES (:org, :first, :last, :dob) RETURNING id",
        {"org": organization_id, "first": first_name, "last": last_name, "dob": dob},
    )


async def create_provider(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    first_name: str = "Dana",
    last_name: str = "Doctor",
    npi: str | None = None,
    active: bool = True,
) -> uuid.UUID:
    return await _insert(
        db,
        organization_id,
        "INSERT INTO providers (organization_id, first_name, last_name, npi, active) "
        "VALUES (:org, :first, :last, :npi, :active) RETURNING id",
        {
            "org": organization_id,
            "first": first_name,
            "last": last_name,
            "npi": npi,
            "active": active,
        },
    )


async def create_clinic(
    db: AsyncSession, *, providers: int = 3
) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """An organization with one patient and `providers` active providers."""
    org = await create_organization(db)
    patient = await create_patient(db, organization_id=org)
    provider_ids = [await create_provider(db, organization_id=org) for _ in range(providers)]
    return org, patient, provider_ids


# --- reading what the service wrote ------------------------------------------------------


async def _patient_rows(
    db: AsyncSession, org: uuid.UUID, patient: uuid.UUID, select_from: str
) -> list[Any]:
    """`SELECT <select_from> WHERE` the patient's rows, read directly under the tenant, in
    a transaction of its own (the session can go to the service next)."""
    await set_tenant(db, org)
    result = await db.execute(
        text(f"SELECT {select_from} WHERE organization_id = :org AND patient_id = :patient"),
        {"org": org, "patient": patient},
    )
    rows = list(result.all())
    await db.rollback()
    return rows


async def team_rows(db: AsyncSession, org: uuid.UUID, patient: uuid.UUID) -> dict[uuid.UUID, bool]:
    """provider_id -> is_primary_provider, read directly from the table."""
    rows = await _patient_rows(
        db, org, patient, "provider_id, is_primary_provider FROM care_team_assignments"
    )
    return {row.provider_id: row.is_primary_provider for row in rows}


async def event_types(db: AsyncSession, org: uuid.UUID, patient: uuid.UUID) -> list[str]:
    rows = await _patient_rows(db, org, patient, "event_type, id FROM care_team_events")
    return [row.event_type for row in sorted(rows, key=lambda row: row.id)]


async def wait_until_blocked(database: Database) -> None:
    """Wait until some application connection waits on a lock."""
    async with database.owner_engine.connect() as conn:
        for _ in range(200):  # 10 s
            waiting = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
            if waiting:
                return
            await conn.rollback()
            await asyncio.sleep(0.05)
    raise AssertionError("the service call never waited on a lock")


# --- the access log, made to fail ----------------------------------------------------------


@contextlib.asynccontextmanager
async def access_log_trigger(
    database: Database, org: uuid.UUID, action: str
) -> AsyncIterator[None]:
    """While inside: before each access log entry of this organization, a trigger (made
    as the owner, in this test's own database) runs `action`, a PL/pgSQL statement."""
    name = f"trigger_{org.hex}"
    async with database.owner_engine.begin() as owner:
        await owner.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
                f"IF NEW.organization_id = '{org}' THEN {action}; END IF; "
                "RETURN NEW; END $f$"
            )
        )
        await owner.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON access_log FOR EACH ROW "
                f"EXECUTE FUNCTION {name}()"
            )
        )
    try:
        yield
    finally:
        async with database.owner_engine.begin() as owner:
            await owner.execute(text(f"DROP TRIGGER {name} ON access_log"))
            await owner.execute(text(f"DROP FUNCTION {name}()"))


def log_refused(database: Database, org: uuid.UUID) -> contextlib.AbstractAsyncContextManager[None]:
    """While inside: the database refuses this organization's access log entries, as a
    full disk or a lost table would."""
    return access_log_trigger(database, org, "RAISE EXCEPTION 'log refused'")


def log_delayed(
    database: Database, org: uuid.UUID, seconds: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """While inside: each of this organization's access log entries takes `seconds`."""
    return access_log_trigger(database, org, f"PERFORM pg_sleep({float(seconds)})")


# --- a database of one's own, and data from before the rule --------------------------------


@dataclass
class FreshDatabase:
    url: str
    engine: AsyncEngine  # the owner's

    async def execute(self, sql: str, **params: Any) -> list[Any]:
        """Run one statement as the owner, committed; return its rows (if any)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []


class Seeded:
    def __init__(self) -> None:
        self.expected_primaries: dict[uuid.UUID, uuid.UUID] = {}
        self.demoted: list[tuple[uuid.UUID, uuid.UUID]] = []


async def seed_duplicates(db: FreshDatabase, *, duplicates: bool = True) -> Seeded:
    """Patients with 3 primaries, a tie on assigned_at, one clean, one without primary."""
    seeded = Seeded()
    org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]

    async def patient() -> uuid.UUID:
        rows = await db.execute(
            "INSERT INTO patients (organization_id) VALUES (:org) RETURNING id", org=org
        )
        return rows[0][0]

    async def provider() -> uuid.UUID:
        rows = await db.execute(
            "INSERT INTO providers (organization_id) VALUES (:org) RETURNING id", org=org
        )
        return rows[0][0]

    async def assign(
        patient_id: uuid.UUID,
        *,
        primary: bool,
        at: datetime.datetime,
        assignment_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        provider_id = await provider()
        await db.execute(
            "INSERT INTO care_team_assignments (id, organization_id, patient_id, provider_id, "
            "is_primary_provider, assigned_at) VALUES (:id, :org, :patient, :provider, "
            ":primary, :at)",
            id=assignment_id or uuid.uuid4(),
            org=org,
            patient=patient_id,
            provider=provider_id,
            primary=primary,
            at=at,
        )
        return provider_id

    t = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    day = datetime.timedelta(days=1)
    if duplicates:
        # Three primaries: the latest assigned_at is kept.
        three = await patient()
        old = [
            await assign(three, primary=True, at=t),
            await assign(three, primary=True, at=t + day),
        ]
        latest = await assign(three, primary=True, at=t + 2 * day)
        await assign(three, primary=False, at=t + 3 * day)
        seeded.expected_primaries[three] = latest
        seeded.demoted += [(three, p) for p in old]
        # A tie on assigned_at: the highest id is kept.
        tie = await patient()
        low = await assign(
            tie, primary=True, at=t, assignment_id=uuid.UUID("00000000-0000-4000-8000-000000000001")
        )
        high = await assign(
            tie, primary=True, at=t, assignment_id=uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
        )
        seeded.expected_primaries[tie] = high
        seeded.demoted.append((tie, low))
    clean = await patient()
    seeded.expected_primaries[clean] = await assign(clean, primary=True, at=t)
    await assign(clean, primary=False, at=t + day)
    no_primary = await patient()
    await assign(no_primary, primary=False, at=t)
    return seeded


# --- the HTTP API ---------------------------------------------------------------------------


@dataclass
class Tenant:
    organization_id: uuid.UUID
    api_key_id: uuid.UUID
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


TenantFactory = Callable[[], Awaitable[Tenant]]


def npi(serial: int) -> str:
    """A valid NPI: nine digits, then the Luhn check digit over 80840 and them (CMS)."""
    body = f"{123450000 + serial:09d}"
    digits = [int(d) for d in "80840" + body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return body + str((10 - total % 10) % 10)


async def post_patient(client: httpx.AsyncClient, tenant: Tenant, **overrides: object) -> str:
    body = {"first_name": "Alice", "last_name": "Example", "dob": "1984-02-29", **overrides}
    response = await client.post("/v1/patients", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post_provider(client: httpx.AsyncClient, tenant: Tenant, **overrides: object) -> str:
    body = {"first_name": "Grace", "last_name": "Doctor", **overrides}
    response = await client.post("/v1/providers", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def assign(client: httpx.AsyncClient, tenant: Tenant, patient: str, provider: str) -> None:
    """`provider` becomes the patient's primary through the API (the previous one stays,
    as secondary)."""
    r = await client.put(
        f"/v1/patients/{patient}/care-team/primary",
        json={"provider_id": provider},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text


async def add_secondary(
    client: httpx.AsyncClient, tenant: Tenant, patient: str, provider: str
) -> None:
    """`provider` joins the patient's care team as a secondary, through the API."""
    r = await client.post(
        f"/v1/patients/{patient}/care-team/members",
        json={"provider_id": provider},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text


# --- a live server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(
    method: str, url: str, body: object = None, key: str | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON body or None) of one request; never raises on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


@dataclass
class LiveApi:
    """A `careteam serve` subprocess and an API key of one of its organizations."""

    process: subprocess.Popen[str]
    base_url: str
    log: Path  # what the server printed (a file: a pipe nobody reads would fill and block it)
    key: str = ""

    def get_json(self, path: str) -> Any:
        status, body = http_json("GET", self.base_url + path, key=self.key)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict[str, object]) -> Any:
        status, answer = http_json("POST", self.base_url + path, body, key=self.key)
        assert status in (200, 201), (path, status, answer)
        return answer

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Stop it with `sig` (SIGINT: as Ctrl-C); everything it printed."""
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.log.read_text()


def start_serve(env: dict[str, str], log: Path, *args: str, timeout_s: float = 90) -> LiveApi:
    """Start `careteam serve` on a free port with `env` over this process's environment,
    its output in the file `log`, and wait until it answers /healthz."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.cli", "serve", "--port", str(port), *args],
            cwd=BACKEND_DIR,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1):
                return LiveApi(process, base_url, log)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(f"careteam serve did not start:\n{log.read_text()}") from None
            time.sleep(0.2)


# --- the careteam command, in this process ---------------------------------------------

# What a fresh interpreter (no -W, no PYTHONWARNINGS) does not print.
_SILENT_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _warning_to_stderr(  # noqa: PLR0917 (warnings.showwarning's signature)
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def careteam(
    *args: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """`careteam ARGS`, run in this process as its own process runs it: the entry point's
    typer main (parsing, usage errors, exit codes), then the command; its stdout and
    stderr apart, with what a fresh process also prints on stderr (log records of WARNING
    and up, through logging's last resort; warnings). `env` overrides the environment
    for the run (None unsets a variable); the settings are read again from it.

    An exception that escapes the command (a traceback, for the user) fails the test.
    A process costs seconds of imports; what only a process shows (signals, the embedded
    server's users, a process's exit) is tested with real ones."""
    root = logging.getLogger()
    handlers, sigterm = root.handlers[:], signal.getsignal(signal.SIGTERM)
    root.handlers[:] = []  # as in a fresh process: no handler, so the last resort prints
    get_settings.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for category in _SILENT_WARNINGS:
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _warning_to_stderr
            result = CliRunner().invoke(
                careteam_app, list(args), env=env, prog_name="careteam", catch_exceptions=False
            )
    finally:
        root.handlers[:] = handlers
        signal.signal(signal.SIGTERM, sigterm)  # every command sets it for its process
        get_settings.cache_clear()
    return subprocess.CompletedProcess(
        ["careteam", *args], result.exit_code, result.stdout, result.stderr
    )


# --- SMART Backend Services ------------------------------------------------------------------

TOKEN_URL = "http://careteam.test/auth/token"  # the token URL of the tests' ASGI client
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class SigningKey:
    """A client's key pair: the private key signs, `jwk` (public) is registered."""

    private: Any
    jwk: dict[str, Any]
    alg: str

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])


def ec_key(kid: str | None = None) -> SigningKey:
    """A new EC P-384 key pair (ES384)."""
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

    private = ec.generate_private_key(ec.SECP384R1())
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return SigningKey(private, {**jwk, "kid": kid or uuid.uuid4().hex}, "ES384")


def rsa_key(kid: str | None = None, bits: int = 2048) -> SigningKey:
    """A new RSA key pair (RS384)."""
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from jwt.algorithms import RSAAlgorithm  # noqa: PLC0415

    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return SigningKey(private, {**jwk, "kid": kid or uuid.uuid4().hex}, "RS384")


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}


def client_assertion(
    key: SigningKey,
    client_id: uuid.UUID | str,
    *,
    aud: str = TOKEN_URL,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A client assertion signed by `key` (its kid in the header), valid for 4 minutes
    from now with a new jti; `claims` override or add (None removes one)."""
    import jwt  # noqa: PLC0415

    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": str(client_id),
        "sub": str(client_id),
        "aud": aud,
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    header = {"kid": key.kid, "typ": "JWT", **(headers or {})}
    return jwt.encode(payload, key.private, algorithm=key.alg, headers=header)


def token_form(assertion: str, scope: str = "system/*.rs", **overrides: str) -> dict[str, str]:
    """The token request's form (client_credentials with the assertion)."""
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
        **overrides,
    }


async def register_client(
    database: Database,
    organization_id: uuid.UUID,
    scopes: list[str],
    *,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    name: str = "test client",
) -> uuid.UUID:
    """A SMART client of the organization (as `careteam client register` makes it)."""
    from src.services.smart_service import SmartService  # noqa: PLC0415

    async with AsyncSession(database.owner_engine) as owner:
        client = await SmartService.register_client(
            db=owner,
            organization_id=organization_id,
            name=name,
            scopes=scopes,
            jwks=jwks,
            jwks_url=jwks_url,
        )
    return client.id


async def request_token(
    client: httpx.AsyncClient, key: SigningKey, client_id: uuid.UUID, scope: str
) -> dict[str, Any]:
    """A token from the token endpoint (asserting it is granted): its JSON answer."""
    response = await client.post(
        "/auth/token", data=token_form(client_assertion(key, client_id), scope)
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def token_headers(
    database: Database,
    client: httpx.AsyncClient,
    organization_id: uuid.UUID,
    scopes: list[str],
) -> dict[str, str]:
    """The Authorization header of a new access token with exactly `scopes`, of a client
    registered with them."""
    key = ec_key()
    client_id = await register_client(database, organization_id, scopes, jwks=jwks_of(key))
    answer = await request_token(client, key, client_id, " ".join(scopes))
    return {"Authorization": f"Bearer {answer['access_token']}"}


def resolving(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """Make every DNS name a JWKS URL names resolve to `addresses` (none: it does not
    resolve), as smart_keys.resolve_host looks them up; the names asked are listed in
    the list returned."""
    import ipaddress  # noqa: PLC0415

    from src.services import smart_keys  # noqa: PLC0415

    asked: list[str] = []

    async def resolve_host(host: str, port: int) -> list[smart_keys.IpAddress]:
        asked.append(host)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(address) for address in addresses]

    monkeypatch.setattr(smart_keys, "resolve_host", resolve_host)
    return asked
