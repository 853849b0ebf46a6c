"""The policy scheduler: starts each scheduled backup exactly once, even with several coordinators.

Every ``interval_s`` each coordinator looks at every enabled policy with a cron expression, computes the
ticks due since ``max(policy creation, now - catch_up_s)`` in the policy's time zone (DST handled by
croniter, see policies.py), and for each tick tries to insert ``schedule_runs(policy_id, tick)``. The primary
key lets exactly one coordinator win the tick; only the winner submits the backup (with the tick in its
arguments, so the engine's duplicate detection also folds a re-submit after a crash) and records the id.
A claimed tick whose submit did not happen (the winner died in between) is submitted by whoever sees it
without an ``op_id`` after ``orphan_after_s``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from frieze.coordinator.catalog.models import Policy, ScheduleRun
from frieze.coordinator.policies import iter_runs
from frieze.core.clock import iso, now
from frieze.core.errors import FriezeError

if TYPE_CHECKING:
    from frieze.coordinator.service import Coordinator

log = structlog.get_logger("frieze.scheduler")


def due_ticks(cron: str, tz: str, since: datetime, until: datetime) -> list[datetime]:
    """Fire times in (since, until], aware UTC (DST rules of :func:`policies.iter_runs`)."""
    out: list[datetime] = []
    for t in iter_runs(cron, tz, since):
        if t > until:
            return out
        out.append(t)
    return out


class Scheduler:
    def __init__(self, coord: Coordinator, interval_s: float = 5.0, catch_up_s: float = 600.0,
                 orphan_after_s: float = 60.0) -> None:
        self.coord = coord
        self.interval_s = interval_s
        self.catch_up_s = catch_up_s
        self.orphan_after_s = orphan_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="frieze-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick(now())
                self.coord.probe_agents()
            except Exception as e:  # keep scheduling; the error is logged without arguments
                log.warning("scheduler_error", error=type(e).__name__, message=str(e)[:200])

    def tick(self, at: datetime) -> list[str]:
        """One pass; returns the operation ids this coordinator submitted."""
        submitted: list[str] = []
        with self.coord.catalog.session() as s:
            pols = [(p.id, p.name, p.cron, p.timezone, p.created_at, p.protection_set_id)
                    for p in s.scalars(select(Policy).where(Policy.enabled.is_(True), Policy.cron.is_not(None)))]
        for pid, name, cron, tz, created, pset in pols:
            assert cron is not None
            since = max(created.replace(tzinfo=created.tzinfo or UTC), at - timedelta(seconds=self.catch_up_s))
            for t in due_ticks(cron, tz, since, at):
                if self._claim(pid, iso(t)):
                    op = self._submit(pid, name, pset, iso(t))
                    if op:
                        submitted.append(op)
            submitted.extend(self._orphans(pid, name, pset, at))
        return submitted

    def _claim(self, policy_id: str, tick: str) -> bool:
        try:
            with self.coord.catalog.session() as s:
                s.add(ScheduleRun(policy_id=policy_id, tick=tick, claimed_by=self.coord.config.executor_id))
            return True
        except SAIntegrityError:
            return False

    def _submit(self, policy_id: str, name: str, pset: str, tick: str) -> str | None:
        try:
            acc = self.coord.submit_backup(pset, policy_id, None, None, scheduled_for=tick)
        except FriezeError as e:
            log.warning("scheduled_backup_refused", policy=name, tick=tick, code=e.code, message=e.message)
            acc = {"operation_id": f"refused:{e.code}"}
        with self.coord.catalog.session() as s:
            row = s.get(ScheduleRun, (policy_id, tick))
            if row is not None:
                row.op_id = acc["operation_id"]
        log.info("scheduled_backup", policy=name, tick=tick, operation_id=acc["operation_id"])
        return str(acc["operation_id"])

    def _orphans(self, policy_id: str, name: str, pset: str, at: datetime) -> list[str]:
        out = []
        limit = at - timedelta(seconds=self.orphan_after_s)
        with self.coord.catalog.session() as s:
            rows = [(r.tick, r.created_at) for r in s.scalars(
                select(ScheduleRun).where(ScheduleRun.policy_id == policy_id, ScheduleRun.op_id.is_(None)))]
        for tick, created in rows:
            if created.replace(tzinfo=created.tzinfo or UTC) < limit:
                op = self._submit(policy_id, name, pset, tick)
                if op:
                    out.append(op)
        return out
