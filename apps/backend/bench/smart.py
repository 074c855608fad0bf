"""Benchmark: SMART Backend Services (issue 26): how long a token request takes, and what
a request costs with an access token against the same request with an API key.

Usage (from apps/backend):

    uv run python bench/smart.py [--tokens 200] [--seconds 10] [--clients 8]
                                 [--patients 2000]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server), fills one
organization with --patients patients (a primary each), makes an API key and registers a
SMART client (an EC P-384 key, ES384, as `careteam client register` does), then drives
the application in this process (httpx over ASGI: no sockets, the same for both):

- the token request: --tokens requests to `POST /auth/token`, one after another, each
  with a new assertion (a new jti). The assertion is signed before the clock starts
  (that is the client's work): the time is the server's, from the request to the token
  (checking the signature, claiming the jti, storing the token's hash: one round trip
  for the client's keys, one for the token). Median and 95th percentile, in ms.
- the care-team read `GET /v1/patients/{id}/care-team` with --clients concurrent
  clients for --seconds, with the API key, then with the access token (system/*.rs),
  twice in alternation; the ratio is token reads per second over key reads per second
  in the same round. A token is checked exactly as a key is (one hash lookup, then in
  every transaction inside PostgreSQL), so the ratio should be about 1.

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
from common import log, throwaway_database
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from load import drive, organization_with
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.app import create_app
from src.config import get_settings
from src.db import open_database
from src.migration_runner import upgrade
from src.services.organization_service import OrganizationService
from src.services.smart_service import CLIENT_ASSERTION_TYPE, SmartService

BASE = "http://bench"
TOKEN_URL = f"{BASE}/auth/token"
ASSIGN = "SELECT careteam_assign_primary($1, $2, $3, 'seed', 'other', NULL)"


def assertion(private: Any, kid: str, client_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {
        "iss": str(client_id),
        "sub": str(client_id),
        "aud": TOKEN_URL,
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, private, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})


def form(signed: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": signed,
        "scope": "system/*.rs",
    }


async def token_requests(
    client: httpx.AsyncClient, private: Any, kid: str, client_id: uuid.UUID, n: int
) -> dict[str, Any]:
    """`n` token requests one after another: the server's time for each, in ms."""
    times = []
    for _ in range(n):
        signed = assertion(private, kid, client_id)  # the client's work, not timed
        started = time.perf_counter()
        response = await client.post("/auth/token", data=form(signed))
        times.append(1000 * (time.perf_counter() - started))
        if response.status_code != 200:
            raise SystemExit(f"token request refused: {response.status_code} {response.text}")
    ordered = sorted(times)
    return {
        "requests": n,
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("smart", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        try:
            log("migrating a new database to head")
            await upgrade(database.owner_engine)
            log(f"populating {args.patients:,} patients with a primary each")
            conn = await asyncpg.connect(url)
            try:
                org, patients, providers = await organization_with(conn, 20, args.patients)
                await conn.executemany(
                    ASSIGN,
                    [(org, p, providers[i % len(providers)]) for i, p in enumerate(patients)],
                )
            finally:
                await conn.close()
            private = ec.generate_private_key(ec.SECP384R1())
            kid = "bench-1"
            jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid}
            async with AsyncSession(database.owner_engine) as owner:
                issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
                registered = await SmartService.register_client(
                    db=owner,
                    organization_id=org,
                    name="bench",
                    scopes=["system/*.rs"],
                    jwks={"keys": [jwk]},
                )
            transport = httpx.ASGITransport(app=create_app(database))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                log(f"{args.tokens} token requests, one after another")
                await token_requests(client, private, kid, registered.id, 5)  # warm
                tokens = await token_requests(client, private, kid, registered.id, args.tokens)
                answer = (
                    await client.post(
                        "/auth/token", data=form(assertion(private, kid, registered.id))
                    )
                ).json()
                if answer.get("expires_in", 0) < args.seconds * 2 + 10:
                    raise SystemExit(
                        f"the token lives {answer.get('expires_in')} s: too short for the "
                        "reads (set SMART_TOKEN_LIFETIME_S higher, or --seconds lower)"
                    )
                credentials = {
                    "api_key": {"Authorization": f"Bearer {issued.key}"},
                    "access_token": {"Authorization": f"Bearer {answer['access_token']}"},
                }

                def reader(headers: dict[str, str]) -> Any:
                    async def read(rng: Any) -> None:
                        patient = rng.choice(patients)
                        response = await client.get(
                            f"/v1/patients/{patient}/care-team", headers=headers
                        )
                        if response.status_code != 200:
                            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

                    return read

                rounds = []
                for round_ in range(2):
                    figures: dict[str, Any] = {}
                    for name, headers in credentials.items():
                        log(f"care-team reads with the {name} (round {round_ + 1} of 2)")
                        await drive(args.clients, 1.0, reader(headers))  # warm
                        figures[name] = await drive(args.clients, args.seconds, reader(headers))
                    figures["ratio"] = round(
                        figures["access_token"]["ops_per_s"] / figures["api_key"]["ops_per_s"], 2
                    )
                    rounds.append(figures)
        finally:
            await database.dispose()
    return {
        "patients": args.patients,
        "clients": args.clients,
        "seconds": args.seconds,
        "token_request": tokens,
        "rounds": rounds,
        "token_over_key_ratio_median": round(statistics.median(r["ratio"] for r in rounds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200, help="token requests to time")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--patients", type=int, default=2_000, help="patients")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2, default=str))


if __name__ == "__main__":
    main()
