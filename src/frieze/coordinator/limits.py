"""Limits per host, per repository and per policy, enforced by the workflow engine's admission control.

Every backup holds a *counted* resource (``frieze.engine.Resources.counted``) of each host it touches,
``limit:host:<id>``, and of its repository, ``limit:repo:<id>``, each with the limit this backup obeys. The engine
admits it only while fewer admitted operations hold each key than that limit, across every coordinator sharing
the engine database (admission runs under the engine's lock); otherwise it waits in the queue, in order, and is
admitted as soon as any holder finishes (exact, work-conserving).

Effective limits of one backup: ``min(host.max_concurrent, policy.max_per_host)`` for each host of its
protection set and ``min(repository.max_concurrent, policy.max_per_repository)`` for its repository. A backup
under a narrower policy waits while as many backups as *its* limit hold the key, so backups whose effective
limit is at most *k* never run more than *k* at once on that host (or repository) among themselves and no
host or repository ever has more than its own ``max_concurrent``. (Backups queued before this version hold
slot names ``limit:host:<id>#i`` as exclusive resources; those still work as before.)
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "limit:"


def key(scope: str, ident: str) -> str:
    """The counted resource of ``scope`` (``host``, ``repo``) ``ident``."""
    return f"{PREFIX}{scope}:{ident}"


def effective(own: int, policy: int | None) -> int:
    """The limit a backup obeys: the entity's own, narrowed by its policy's (None: no narrowing)."""
    return max(1, min(own, policy) if policy is not None else own)


def counted(wanted: Iterable[tuple[str, str, int]]) -> list[list[str | int]]:
    """``[[key, limit], ...]`` for each (scope, ident, limit) of ``wanted`` (the engine's ``counted`` form)."""
    return [[key(scope, ident), max(1, limit)] for scope, ident, limit in wanted]
