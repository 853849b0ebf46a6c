"""The FastAPI application: routers under /v1, the error projection, /metrics and request logging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from frieze import __version__
from frieze.api import errors, schemas
from frieze.api.errors import ERROR_RESPONSES
from frieze.api.routers import admin, agents, operations, resources
from frieze.coordinator.metrics import HTTP_REQUESTS, REGISTRY
from frieze.coordinator.service import Coordinator

log = structlog.get_logger("frieze.api")


def create_app(coord: Coordinator, *, agent_only: bool = False) -> FastAPI:
    """The API app over ``coord`` (its lifecycle is the caller's). ``agent_only``: the app served on the
    agent port (mutual TLS), which has nothing but the agents' enrollment and heartbeat."""
    app = FastAPI(title="frieze coordinator", version=__version__, openapi_url="/v1/openapi.json",
                  docs_url="/v1/docs", redoc_url=None, responses=ERROR_RESPONSES,
                  description="Application-consistent snapshot backups of a fleet, from one place.")
    app.state.coordinator = coord
    errors.install(app)
    if agent_only:
        app.include_router(agents.router)
        app.include_router(coord.enrollment_router())
        return app
    for r in (resources.router, operations.router, admin.router):
        app.include_router(r)

    @app.get("/v1/health", response_model=schemas.Health, tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        coord.refresh_gauges()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        resp = await call_next(request)
        route = request.scope.get("route")
        tmpl = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, tmpl, str(resp.status_code)).inc()
        log.info("http", method=request.method, route=tmpl, status=resp.status_code)
        return resp

    return app
