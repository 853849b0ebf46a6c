"""Who is calling on the agent port: the verified client certificate, exposed to the app.

uvicorn does not put the TLS peer certificate in the ASGI scope, so :class:`MTLSH11Protocol` (used with
``http="h11"``) reads it from the SSL object when the connection is made and adds
``scope["extensions"]["tls"] = {"peer_cert": <dict from getpeercert()>, "peer_der": bytes}`` to every
request on that connection. The TLS handshake itself (CA, CERT_REQUIRED/OPTIONAL) is uvicorn's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class MTLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the verified peer certificate added to each request's scope."""

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


def peer_identity(scope: Any, role: str = "agent") -> tuple[str, str] | None:
    """(common name, sha256 fingerprint of the DER) of the verified client certificate whose subject OU is
    ``role``, or None (no certificate, or another role)."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("peer_der"):
        return None
    cn = ou = None
    for rdn in tls["peer_cert"].get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
            elif k == "organizationalUnitName":
                ou = v
    if cn is None or ou != role:
        return None
    return cn, hashlib.sha256(tls["peer_der"]).hexdigest()
