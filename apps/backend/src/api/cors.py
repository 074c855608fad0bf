"""CORS, when CORS_ALLOWED_ORIGINS names origins: Starlette's middleware, with its
refusals answered as every other answer is, as a problem with an `error` code.

A preflight whose origin, method or headers are not allowed is 400 `cors_refused`,
naming which (Starlette answers it in plain text, "Disallowed CORS origin")."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from src.api.errors import CORS_REFUSED, problem_response


class ProblemCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        refused = bytes(answer.body).decode().removeprefix("Disallowed CORS ")
        kept = {
            name: value
            for name, value in answer.headers.items()
            if name.lower().startswith("access-control-") or name.lower() == "vary"
        }
        kind = CORS_REFUSED
        detail = f"this cross-origin request is not allowed: its {refused} (CORS_ALLOWED_ORIGINS)"
        return problem_response(kind.status, kind.code, kind.title, detail, headers=kept)
