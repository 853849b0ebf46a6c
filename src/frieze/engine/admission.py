"""Admission control. Both calls run inside :meth:`Store.locked` (serialized across coordinators).

- :meth:`Admission.check_hard` at submit: *active* operations (queued, running, paused, aborting) counted per
  type, per type and target, per host; reaching a hard limit rejects the request (:class:`LimitExceeded`).
- :meth:`Admission.admit` before a first run, oldest first: an ``exclusive`` resource held by an admitted
  operation delays the operation by ``busy_delay_s``; a reached soft limit (counting *admitted* operations)
  leaves it waiting in the queue, and so does a ``counted`` resource that as many admitted operations hold
  as the operation's own limit for it; otherwise it is admitted (its first run is then enqueued).
"""

from __future__ import annotations

import time
from collections import Counter

import sqlalchemy as sa

from frieze.engine.errors import LimitExceeded
from frieze.engine.model import ACTIVE_STATES, Limit, Limits, OpState, Resources
from frieze.engine.store import logs, ops

_ACTIVE = [s.value for s in ACTIVE_STATES]


def _reached(limit: Limit, count: int, hard: bool) -> bool:
    bound = limit.hard if hard else limit.soft
    return bound is not None and count >= bound


class Admission:
    """The admission rules of one engine configuration."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def _keys(self, op_type: str, target: str | None, host: str | None) -> list[tuple[str, Limit, tuple[str, ...]]]:
        out: list[tuple[str, Limit, tuple[str, ...]]] = []
        if op_type in self.limits.per_type:
            out.append(("per_type", self.limits.per_type[op_type], (op_type,)))
        if op_type in self.limits.per_type_target and target is not None:
            out.append(("per_type_target", self.limits.per_type_target[op_type], (op_type, target)))
        if host is not None:
            out.append(("per_host", self.limits.per_host, (host,)))
        return out

    @staticmethod
    def _count(rows: list[tuple[str, str | None, str | None]]) -> Counter[tuple[str, tuple[str, ...]]]:
        n: Counter[tuple[str, tuple[str, ...]]] = Counter()
        for t, target, host in rows:
            n[("per_type", (t,))] += 1
            if target is not None:
                n[("per_type_target", (t, target))] += 1
            if host is not None:
                n[("per_host", (host,))] += 1
        return n

    def check_hard(self, c: sa.Connection, op_type: str, res: Resources) -> None:
        """Raise :class:`LimitExceeded` if one more active operation would exceed a hard limit."""
        keys = [k for k in self._keys(op_type, res.target, res.host) if k[1].hard is not None]
        if not keys:
            return
        rows = [(r[0], r[1], r[2]) for r in c.execute(sa.select(ops.c.type, ops.c.target, ops.c.host).where(
            ops.c.state.in_(_ACTIVE)))]
        counts = self._count(rows)
        for kind, limit, key in keys:
            n = counts[(kind, key)]
            if _reached(limit, n, hard=True):
                raise LimitExceeded(
                    f"{op_type} rejected: hard limit {kind} {'/'.join(key)} reached ({n} active, limit {limit.hard})",
                    limit=kind, key=list(key), active=n, hard=limit.hard)

    def admit(self, c: sa.Connection, registered: set[str]) -> list[str]:
        """Admit queued operations that may start now; returns their ids (their run_no is incremented)."""
        now = time.time()
        admitted = c.execute(sa.select(ops.c.type, ops.c.target, ops.c.host, ops.c.exclusive_json).where(
            ops.c.admitted == 1, ops.c.state.in_(_ACTIVE))).all()
        counts = self._count([(r[0], r[1], r[2]) for r in admitted])
        held: set[str] = set()
        holders: Counter[str] = Counter()  # counted key -> admitted operations holding it
        for r in admitted:
            excl, counted = Resources.parse_json(r[3])
            held.update(excl)
            holders.update(k for k, _n in counted)
        waiting = c.execute(sa.select(ops.c.id, ops.c.type, ops.c.target, ops.c.host, ops.c.exclusive_json).where(
            ops.c.state == OpState.QUEUED.value, ops.c.admitted == 0, ops.c.not_before <= now,
            ops.c.type.in_(sorted(registered))).order_by(ops.c.created, ops.c.id).limit(500)).all()
        out: list[str] = []
        for op_id, op_type, target, host, excl_json in waiting:
            excl, counted = Resources.parse_json(excl_json)
            busy = [x for x in excl if x in held]
            if busy:
                c.execute(sa.update(ops).where(ops.c.id == op_id).values(
                    not_before=now + self.limits.busy_delay_s, updated=now))
                c.execute(sa.insert(logs).values(
                    op_id=op_id, ts=now, level="info", step=None,
                    message=f"resource {busy[0]} is busy; trying again in {self.limits.busy_delay_s:g} s"))
                continue
            keys = self._keys(op_type, target, host)
            if any(_reached(limit, counts[(kind, key)], hard=False) for kind, limit, key in keys):
                continue  # waits in the queue, in order
            if any(holders[k] >= max(1, n) for k, n in counted):
                continue  # a counted resource is at its limit: waits in the queue, in order
            c.execute(sa.update(ops).where(ops.c.id == op_id).values(
                admitted=1, enqueued=0, run_no=ops.c.run_no + 1, updated=now))
            for kind, _limit, key in keys:
                counts[(kind, key)] += 1
            held.update(excl)
            holders.update(k for k, _n in counted)
            out.append(op_id)
        return out
