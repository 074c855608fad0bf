"""The panel console (`/console`): a few static files, served from this package.

The page is a client of the /v1 API like any other: it sends the API key the user pasted
(kept in the tab's sessionStorage) as `Authorization: Bearer`, so what it can see and do
is exactly what the key can; nothing here reads the database. Its answers carry a
Content-Security-Policy (scripts and styles from this server only: no inline script or
style, no other origin); the /v1 and FHIR routes are untouched (no middleware: these are
plain routes, matched after the API's). docs/CONSOLE.md says why and how.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"
NOT_FOUND_PAGE = STATIC / "not-found.html"

# Everything from this server, nothing inline; API calls to this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

# The files it serves, read once: a name not in this table is 404 (no path is joined
# from the request).
ASSETS = {
    path.relative_to(STATIC).as_posix(): path
    for path in STATIC.rglob("*")
    if path.is_file() and path.suffix in {".js", ".css"}
}

router = APIRouter(include_in_schema=False)


def _file(path: Path, status_code: int = 200) -> Response:
    media = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return Response(
        path.read_bytes(),
        status_code=status_code,
        media_type=f"{media}; charset=utf-8",
        headers=dict(HEADERS),
    )


@router.get("/console")
async def console_page() -> Response:
    """The console's one page; its screens are chosen in the URL's fragment."""
    return _file(PAGE)


@router.get("/console/")
async def console_page_slash() -> Response:
    """`/console/` is the console too: a redirect to `/console`, given as a path (never
    built from the request's Host header)."""
    return Response(status_code=308, headers={**HEADERS, "Location": "/console"})


@router.get("/console/static/{name:path}")
async def console_asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(status_code=404)
    return _file(path)


@router.get("/console/{rest:path}")
async def console_not_found(rest: str) -> Response:
    """Any other path under /console (a link typed or kept from elsewhere): a page saying
    so in words, with a link to the console, rather than the API's problem JSON."""
    return _file(NOT_FOUND_PAGE, status_code=404)
