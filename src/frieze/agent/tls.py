"""Who is calling: the verified peer certificate in the ASGI scope, and the role check.

uvicorn verifies the client certificate against the coordinator CA (``ssl_cert_reqs=CERT_REQUIRED``) but does
not expose it to the app. :class:`PeerCertH11Protocol` (uvicorn ``http=`` class) reads it from the SSL object
when the connection is made and adds ``scope["extensions"]["tls"] = {"peer_cert", "peer_der"}`` to every
request on that connection. :class:`RequireRole` is an ASGI middleware that answers 403 ``auth.forbidden``
to any HTTP request whose verified certificate does not carry ``OU=<role>`` (or has none in the scope), before
any route runs.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from frieze.core.errors import Forbidden


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the verified peer certificate added to each request's scope."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is None:
            return
        der = ssl_obj.getpeercert(binary_form=True)
        if not der:
            return
        tls = {"peer_cert": ssl_obj.getpeercert(), "peer_der": der}
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = with_tls


def subject_attrs(peer_cert: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rdn in peer_cert.get("subject", ()):
        for k, v in rdn:
            out[k] = v
    return out


class RequireRole:
    """ASGI middleware: only callers whose verified certificate has ``OU=role`` get through."""

    def __init__(self, app: Any, role: str) -> None:
        self.app = app
        self.role = role

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("extensions", {}).get("tls") or {}
        attrs = subject_attrs(tls.get("peer_cert") or {})
        if attrs.get("organizationalUnitName") != self.role:
            who = attrs.get("commonName", "no verified certificate")
            err = Forbidden(f"caller {who!r} is not a {self.role}; only the coordinator may call the agent")
            body = json.dumps({"error": err.to_dict()}).encode()
            await send({"type": "http.response.start", "status": err.http_status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
