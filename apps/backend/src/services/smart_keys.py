"""A SMART client's public keys: the JWK Set it registers, or the URL it is fetched from.

Registration (`careteam client register`) takes a JWK Set (RFC 7517) and keeps it only
if every key in it is a public key this server can check an assertion with: RSA of at
least 2048 bits (RS384) or EC on P-384 (ES384), with a `kid`; private key material and
symmetric keys (`kty: oct`) are refused, saying which key. A JWKS URL must be https
(http only for 127.0.0.1, localhost and ::1, for development and tests): the rule of the
operator's `careteam client register` (check_jwks_url). An organization's administrator
(POST /v1/clients) is held to more (check_public_jwks_url): https only, to a host that
is a DNS name or a public IP literal, never localhost, a loopback, private, link-local,
reserved or multicast address, nor a name that resolves to one; so a tenant cannot make
this server probe its own network.

The token endpoint fetches a URL's set with httpx (SMART_JWKS_TIMEOUT_S in all, at most
MAX_JWKS_BYTES, no redirects). An https URL whose host is a DNS name (not localhost) is
resolved first, every address must be public, and the request goes to the address
checked (TLS still verifies the name): a name that resolved to a public address at
registration and to a private one now (DNS rebinding) is refused. An IP literal cannot
change, so it is checked once, at registration (by the rule of who registered it). The
fetched set is kept for CACHE_TTL_S; an assertion naming a `kid`
the kept set lacks fetches it again, at most once per MIN_REFETCH_S (a client that
rotated its keys is served at once, one that sends unknown kids cannot make this server
fetch in a loop). The fetched set is held to the same rules as a registered one.
Signatures are checked by PyJWT (src/services/smart_service.py), never here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

ALGORITHMS = ("RS384", "ES384")
KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}  # the kty each algorithm's keys have
EC_CURVE = "P-384"  # ES384's curve (RFC 7518 section 3.4)
MIN_RSA_BITS = 2048
MAX_KEYS = 20
MAX_JWKS_BYTES = 64 * 1024
MAX_KID_CHARS = 255
MAX_URL_CHARS = 2048
# Members of a JWK that hold private (or symmetric) key material (RFC 7518 section 6).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CACHE_TTL_S = 300.0
MIN_REFETCH_S = 10.0
MAX_CACHED = 100
SHOWN = 40  # at most this much of a kid is repeated back


class InvalidJwks(ValueError):
    """A JWK Set (or a JWKS URL) this server will not use; the message says why, in one
    line."""


def _shown(value: object) -> str:
    return repr(str(value)[:SHOWN])


def check_jwks(document: Any) -> dict[str, Any]:
    """`document` (a parsed JWK Set) if every key in it is usable; raises InvalidJwks."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InvalidJwks('a JWKS is a JSON object with a "keys" list (RFC 7517 section 5)')
    keys = document["keys"]
    if not keys:
        raise InvalidJwks("the JWKS has no keys")
    if len(keys) > MAX_KEYS:
        raise InvalidJwks(f"the JWKS has {len(keys)} keys; at most {MAX_KEYS}")
    for position, key in enumerate(keys, start=1):
        _check_key(key, position)
    return {"keys": keys}


def _check_key(key: Any, position: int) -> None:
    if not isinstance(key, dict):
        raise InvalidJwks(f"key {position} of the JWKS is not a JSON object")
    kid = key.get("kid")
    if not isinstance(kid, str) or not 1 <= len(kid) <= MAX_KID_CHARS:
        raise InvalidJwks(
            f'key {position} has no "kid" (1 to {MAX_KID_CHARS} characters): assertions '
            "name their key by kid"
        )
    which = f"key {position} (kid {_shown(kid)})"
    kty = key.get("kty")
    if kty == "oct":
        raise InvalidJwks(f"{which} is a symmetric key (kty oct): register public keys only")
    if kty not in ("RSA", "EC"):
        raise InvalidJwks(f"{which}: kty {_shown(kty)} is not supported (RSA or EC)")
    held = [member for member in PRIVATE_MEMBERS if member in key]
    if held:
        raise InvalidJwks(
            f"{which} holds private key material ({', '.join(held)}): register the public "
            "key only, and keep the private key to yourself"
        )
    if key.get("use", "sig") != "sig":
        raise InvalidJwks(f'{which}: "use" must be "sig"')
    algorithm = key.get("alg", "RS384" if kty == "RSA" else "ES384")
    if algorithm not in ALGORITHMS or KEY_TYPES[algorithm] != kty:
        raise InvalidJwks(f"{which}: alg {_shown(algorithm)} is not one of {', '.join(ALGORITHMS)}")
    ops = key.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise InvalidJwks(f'{which}: "key_ops" must include "verify"')
    if kty == "EC" and key.get("crv") != EC_CURVE:
        raise InvalidJwks(f"{which}: an EC key must be on {EC_CURVE} (ES384)")
    try:
        loaded = PyJWK(key, algorithm).key
    except (PyJWTError, ValueError, TypeError) as err:
        raise InvalidJwks(f"{which} is not a valid {kty} public key") from err
    if kty == "RSA" and loaded.key_size < MIN_RSA_BITS:
        raise InvalidJwks(f"{which}: an RSA key must have at least {MIN_RSA_BITS} bits")


def parse_jwks(text: str | bytes) -> dict[str, Any]:
    """The JWK Set in `text` (JSON), checked; raises InvalidJwks."""
    if len(text) > MAX_JWKS_BYTES:
        raise InvalidJwks(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidJwks("the JWKS is not JSON") from err
    return check_jwks(document)


def check_jwks_url(url: str) -> str:
    """`url` if the token endpoint may fetch a JWKS from it: https, or http to this very
    machine (127.0.0.1, localhost, ::1); no user or password in it. Raises InvalidJwks."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidJwks(f"the JWKS URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError as err:
        raise InvalidJwks("the JWKS URL is not a URL") from err
    if not host or parts.username is not None or parts.password is not None:
        raise InvalidJwks("the JWKS URL needs a host, and no user or password")
    if parts.scheme == "https" or (parts.scheme == "http" and host in LOCAL_HOSTS):
        return url
    raise InvalidJwks("the JWKS URL must be https (http only for 127.0.0.1 or localhost)")


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_literal(host: str) -> IpAddress | None:
    """`host` (as urlsplit gives it: no brackets) as an address, if it is one."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public_address(address: IpAddress) -> bool:
    """Whether `address` is on the public internet: not loopback, private, link-local,
    shared (100.64/10), reserved, multicast or unspecified. An IPv4 address mapped into
    IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _is_local_name(host: str) -> bool:
    """localhost, or a name under it (RFC 6761: it resolves to loopback)."""
    name = host.rstrip(".").lower()
    return name in LOCAL_HOSTS or name.endswith(".localhost")


async def resolve_host(host: str, port: int) -> list[IpAddress]:
    """The addresses `host` resolves to (the system resolver, as a connection would).
    Raises OSError (socket.gaierror) when it resolves to none."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # An IPv6 sockaddr may carry a zone ("fe80::1%eth0"): the address is before it.
    return [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for *_, sockaddr in found]


def _default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def check_public_jwks_url(url: str, *, timeout_s: float) -> str:
    """`url` if an organization's administrator may register it (see the module
    docstring): check_jwks_url's rules, https only, and a host that is neither local nor
    a non-public IP literal, nor a name resolving (now) to a non-public address. A name
    that does not resolve yet is accepted: the token endpoint checks again at each
    fetch. Raises InvalidJwks."""
    check_jwks_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise InvalidJwks("the JWKS URL must be https")
    literal = _ip_literal(host)
    if _is_local_name(host) or (literal is not None and not is_public_address(literal)):
        raise InvalidJwks(
            "the JWKS URL's host must be a public address (not localhost, a loopback, "
            "private, link-local, reserved or multicast address)"
        )
    if literal is None:
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await resolve_host(host, _default_port(parts))
        except (OSError, TimeoutError):
            return url
        if not all(is_public_address(address) for address in addresses):
            raise InvalidJwks(
                "the JWKS URL's host resolves to an address that is not public (a loopback, "
                "private, link-local, reserved or multicast address)"
            )
    return url


class JwksUnavailable(Exception):
    """The client's JWKS could not be fetched or is not usable; the message says why."""


class JwksCache:
    """Fetched JWK Sets by URL (see the module docstring). One per process."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[float, dict[str, Any]]] = {}

    def forget(self) -> None:
        self._kept.clear()

    async def keys(self, url: str, *, timeout_s: float, refetch: bool = False) -> dict[str, Any]:
        """The set at `url`: kept, or fetched when not kept, older than CACHE_TTL_S, or
        `refetch` (a kid it lacks) and older than MIN_REFETCH_S. Raises JwksUnavailable."""
        kept = self._kept.get(url)
        now = time.monotonic()
        if kept is not None:
            age = now - kept[0]
            if age < CACHE_TTL_S and not (refetch and age >= MIN_REFETCH_S):
                return kept[1]
        document = await fetch_jwks(url, timeout_s=timeout_s)
        if len(self._kept) >= MAX_CACHED:
            self._kept.clear()
        self._kept[url] = (time.monotonic(), document)
        return document


async def _pinned(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The request for `url`: an https URL whose host is a DNS name (not localhost) goes
    to the address it resolves to, once every address it resolves to is public, with the
    name as Host and as TLS server name (so the certificate is still checked for it).
    Any other URL goes as it is. Raises JwksUnavailable."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    headers = {"Accept": "application/json"}
    if parts.scheme != "https" or _ip_literal(host) is not None or _is_local_name(host):
        return url, headers, {}
    try:
        addresses = await resolve_host(host, _default_port(parts))
    except OSError as err:
        raise JwksUnavailable(
            f"its JWKS URL's host does not resolve ({type(err).__name__})"
        ) from err
    if not addresses or not all(is_public_address(address) for address in addresses):
        raise JwksUnavailable("its JWKS URL's host resolves to an address that is not public")
    address = addresses[0]
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port is not None:
        netloc += f":{parts.port}"
    headers["Host"] = parts.netloc
    return parts._replace(netloc=netloc).geturl(), headers, {"sni_hostname": host}


async def fetch_jwks(
    url: str, *, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Any]:
    """GET `url` (no redirects; at most MAX_JWKS_BYTES; `timeout_s` for all of it,
    resolving the host included; a DNS name's addresses public: _pinned) and check the
    set. `transport` is httpx's (tests). Raises JwksUnavailable."""
    try:
        check_jwks_url(url)
        async with asyncio.timeout(timeout_s):
            target, headers, extensions = await _pinned(url)
            async with (
                httpx.AsyncClient(
                    timeout=timeout_s, follow_redirects=False, transport=transport
                ) as client,
                client.stream("GET", target, headers=headers, extensions=extensions) as response,
            ):
                if response.status_code != 200:
                    raise JwksUnavailable(f"its JWKS URL answered {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable(f"its JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(body)
    except TimeoutError as err:
        raise JwksUnavailable(f"its JWKS URL did not answer within {timeout_s:g} s") from err
    except httpx.HTTPError as err:
        raise JwksUnavailable(f"its JWKS URL could not be read ({type(err).__name__})") from err
    except InvalidJwks as err:
        raise JwksUnavailable(f"its JWKS is not usable: {err}") from err
