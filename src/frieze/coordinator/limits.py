"""Limits per host, per repository and per policy, enforced by the workflow engine's admission control.

The engine admits an operation only when none of its ``exclusive`` resources is held by another admitted
operation (``frieze.engine.Resources``). A limit of *n* concurrent backups on a host (or a repository) is
expressed with that public API as *n* slots, ``limit:host:<id>#0`` … ``#n-1``: every backup takes one slot of
each host it touches and one of its repository, so at most *n* backups holding slots of that host are ever
admitted at once, across every coordinator sharing the engine database. The slot is chosen at submit time
as the one with the fewest active holders (queued or running), lowest index first.

Effective limits of one backup: ``min(host.max_concurrent, policy.max_per_host)`` slots of each host of its
protection set and ``min(repository.max_concurrent, policy.max_per_repository)`` slots of its repository. A
policy with a smaller limit draws from the first slots only, so backups whose effective limit is at most
*k* never run more than *k* at once on that host (or repository), and no host or repository ever has more
than its own ``max_concurrent``.

Known limit of slots (versus counting): a waiting backup is bound to its slot, so it may wait for that
slot while another one of the same host is free (it is still admitted as soon as its slot frees). The
engine change that would make this exact is in docs/design/coordinator.md §6.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

PREFIX = "limit:"


def slot_names(scope: str, key: str, limit: int) -> list[str]:
    """The slot resources of ``scope`` (``host``, ``repo``) ``key`` under ``limit`` (at least one)."""
    return [f"{PREFIX}{scope}:{key}#{i}" for i in range(max(1, limit))]


def effective(own: int, policy: int | None) -> int:
    """The limit a backup obeys: the entity's own, narrowed by its policy's (None: no narrowing)."""
    return max(1, min(own, policy) if policy is not None else own)


def choose_slots(wanted: Iterable[tuple[str, str, int]], held: Iterable[Iterable[str]]) -> list[str]:
    """One slot per (scope, key, limit) in ``wanted``: the least held by the active operations ``held``
    (each an operation's exclusive resources), the lowest index among equals."""
    n: Counter[str] = Counter(x for res in held for x in res if x.startswith(PREFIX))
    out = []
    for scope, key, limit in wanted:
        names = slot_names(scope, key, limit)
        out.append(min(names, key=lambda s: (n[s], names.index(s))))
    return out
