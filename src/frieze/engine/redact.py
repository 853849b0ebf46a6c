"""Arguments: plain JSON for storage, a redacted copy for display, the secret values to scrub from text."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "<redacted>"


def split_args(model: BaseModel, secret_fields: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(plain, redacted, secret_values)`` of validated arguments.

    ``plain`` round-trips through ``Args.model_validate`` (secrets revealed, JSON types); ``redacted`` has every
    ``SecretStr``/``SecretBytes`` value and every value under a key in ``secret_fields`` replaced by
    ``"<redacted>"``; ``secret_values`` lists the secret strings (to scrub from log lines).
    """
    secrets: list[str] = []
    py = model.model_dump(mode="python")
    js = model.model_dump(mode="json")

    def walk(p: Any, j: Any, secret: bool) -> tuple[Any, Any]:
        if isinstance(p, SecretStr | SecretBytes):
            v = p.get_secret_value()
            s = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            secrets.append(s)
            return s, REDACTED
        if isinstance(p, dict) and isinstance(j, dict):
            plain: dict[str, Any] = {}
            red: dict[str, Any] = {}
            for k in j:
                plain[k], red[k] = walk(p.get(k), j[k], secret or k in secret_fields)
            return plain, red
        if isinstance(p, list | tuple) and isinstance(j, list):
            pairs = [walk(a, b, secret) for a, b in zip(p, j, strict=False)]
            return [a for a, _ in pairs], [b for _, b in pairs]
        if secret:
            if isinstance(j, str):
                secrets.append(j)
            return j, REDACTED
        return j, j

    plain, red = walk(py, js, False)
    return plain, red, [s for s in secrets if s]


def dedup_key(op_type: str, plain_args: dict[str, Any]) -> str:
    """sha256 of the type and the canonical JSON of the validated arguments."""
    text = json.dumps({"type": op_type, "args": plain_args}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of a secret value replaced by ``"<redacted>"``."""
    for s in secrets:
        if len(s) >= 3 and s in text:
            text = text.replace(s, REDACTED)
    return text
