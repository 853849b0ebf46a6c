"""The policy scheduler: starts each scheduled backup exactly once, even with several coordinators.

Every ``interval_s`` each coordinator looks at every enabled policy with a cron expression, computes the
ticks due since ``max(policy creation, now - catch_up_s)`` in the policy's time zone (DST handled by
croniter, see policies.py), and for each tick tries to insert ``schedule_runs(policy_id, tick)``. The primary
key lets exactly one coordinator win the tick; only the winner submits the backup (with the tick in its
arguments, so the engine's duplicate detection folds a second submit while the first is active) and
records the id.

Exactly once, also when the winner dies or stalls between claim and submit:

1. the first task of the backup *binds* the operation to its tick (``op_id`` set where it is still NULL,
   :meth:`Coordinator.bind_schedule_run`); an operation that finds the tick bound to another one stops
   there with a ``conflict`` before it touches any app, so at most one backup per tick ever runs;
2. a claim still without ``op_id`` after ``orphan_after_s`` is an orphan: a coordinator takes it over with a
   compare-and-set on ``claim_no`` (one coordinator wins each takeover) and submits; if the original
   operation exists and is still queued, the engine folds the submit into it (same arguments); if it ran,
   it bound the tick and the row is no orphan;
3. the submitter records the operation id only where none is recorded yet (never over a bound one).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update
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
        op_id = str(acc["operation_id"])
        with self.coord.catalog.session() as s:
            s.execute(update(ScheduleRun).where(ScheduleRun.policy_id == policy_id, ScheduleRun.tick == tick,
                                                ScheduleRun.op_id.is_(None)).values(op_id=op_id))
        log.info("scheduled_backup", policy=name, tick=tick, operation_id=op_id)
        return op_id

    def _orphans(self, policy_id: str, name: str, pset: str, at: datetime) -> list[str]:
        out = []
        limit = at - timedelta(seconds=self.orphan_after_s)
        with self.coord.catalog.session() as s:
            rows = [(r.tick, r.created_at, r.claim_no) for r in s.scalars(
                select(ScheduleRun).where(ScheduleRun.policy_id == policy_id, ScheduleRun.op_id.is_(None)))]
        for tick, created, claim_no in rows:
            if created.replace(tzinfo=created.tzinfo or UTC) >= limit:
                continue
            if not self._take_over(policy_id, tick, claim_no):
                continue  # another coordinator took it over first (or it was submitted meanwhile)
            log.warning("scheduled_tick_orphaned", policy=name, tick=tick, claim=claim_no + 1)
            op = self._submit(policy_id, name, pset, tick)
            if op:
                out.append(op)
        return out

    def _take_over(self, policy_id: str, tick: str, claim_no: int) -> bool:
        """Compare-and-set an orphaned claim to this coordinator (its age restarts, so a slow submit is not
        taken over again at once). Exactly one of several coordinators seeing the same orphan wins."""
        with self.coord.catalog.session() as s:
            n = s.connection().execute(update(ScheduleRun).where(
                ScheduleRun.policy_id == policy_id, ScheduleRun.tick == tick, ScheduleRun.op_id.is_(None),
                ScheduleRun.claim_no == claim_no).values(
                claim_no=claim_no + 1, claimed_by=self.coord.config.executor_id, created_at=now())).rowcount
        return bool(n)
