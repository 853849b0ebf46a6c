"""The protocol's error projection for FastAPI apps (agent and enrollment): ``{"error": to_dict()}`` with the
class's HTTP status; request validation failures are ``usage`` (400) naming the field."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from frieze.core.errors import FriezeError, InternalError, UsageError


def error_response(e: FriezeError) -> JSONResponse:
    return JSONResponse({"error": e.to_dict()}, status_code=e.http_status)


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_errors(app: FastAPI) -> None:
    """Project FriezeError, validation errors and unexpected exceptions as error bodies."""

    async def frieze_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FriezeError)
        return error_response(exc)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(UsageError(validation_message(exc)))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(InternalError(f"internal error ({type(exc).__name__})"))

    app.add_exception_handler(FriezeError, frieze_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
