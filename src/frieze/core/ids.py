"""Identifiers: random, sortable-enough, printable."""

from __future__ import annotations

import secrets


def new_id(prefix: str = "") -> str:
    """A random 128-bit id as 32 hex characters, with an optional ``prefix-``."""
    h = secrets.token_hex(16)
    return f"{prefix}-{h}" if prefix else h
