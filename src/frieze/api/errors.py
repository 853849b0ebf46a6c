"""The API's one projection of errors to HTTP.

- :class:`~frieze.core.errors.FriezeError` → the status of its class, body ``{code, message, retryable}``
  (plus ``details`` when they carry no secret: details are built by our own code from names and ids).
- Request validation (422) → ``{code: "usage.invalid_request", message, retryable: false, errors}`` where
  ``errors`` lists the location and message of each problem but never the rejected input value.
- Malformed JSON (400) → ``{code: "usage.bad_json", ...}``.
- Any other exception → 500 ``{code: "internal", message: "internal error (see the coordinator log)"}``;
  the traceback goes to the log, never to the body.

:data:`ERROR_RESPONSES` documents these bodies in the OpenAPI spec for every route.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from frieze.core.errors import FriezeError

log = structlog.get_logger("frieze.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    retryable: bool
    details: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []


_ERR = {"model": ErrorBody}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Bad request (malformed JSON or invalid value)"},
    401: {**_ERR, "description": "No valid API token"},
    403: {**_ERR, "description": "The token's role does not allow this"},
    404: {**_ERR, "description": "Not found"},
    409: {**_ERR, "description": "Conflicts with the current state"},
    422: {**_ERR, "description": "Request does not match the schema"},
    429: {**_ERR, "description": "Busy; retry later"},
    500: {**_ERR, "description": "Internal error"},
    501: {**_ERR, "description": "Not supported"},
    503: {**_ERR, "description": "Storage or agent unavailable"},
    504: {**_ERR, "description": "Deadline exceeded"},
    507: {**_ERR, "description": "No space"},
}


def project(exc: FriezeError) -> JSONResponse:
    """The one mapping of the error tree to an HTTP response."""
    body = exc.to_dict()
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(status_code=exc.http_status, content=body, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        out.append({"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))})
    return out


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(FriezeError)
    async def _frieze(_req: Request, exc: FriezeError) -> JSONResponse:
        if exc.http_status >= 500:
            log.warning("request_failed", code=exc.code, status=exc.http_status, message=exc.message)
        return project(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errs):
            return JSONResponse(status_code=400, content={"code": "usage.bad_json",
                                                          "message": "the body is not valid JSON",
                                                          "retryable": False, "details": {}, "errors": errs})
        where = ", ".join(".".join(e["loc"]) + ": " + e["msg"] for e in errs[:5])
        return JSONResponse(status_code=422, content={"code": "usage.invalid_request",
                                                      "message": f"the request is not valid: {where}",
                                                      "retryable": False, "details": {}, "errors": errs})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "usage.method_not_allowed", 401: "auth", 403: "auth.forbidden"}.get(
            exc.status_code, "usage")
        return JSONResponse(status_code=exc.status_code, content={"code": code, "message": str(exc.detail),
                                                                  "retryable": False, "details": {}, "errors": []})

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> JSONResponse:
        log.error("internal_error", exc_type=type(exc).__name__, exc_info=exc)
        return JSONResponse(status_code=500, content={"code": "internal",
                                                      "message": "internal error (see the coordinator log)",
                                                      "retryable": False, "details": {}, "errors": []})
