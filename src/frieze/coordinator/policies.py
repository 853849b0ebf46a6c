"""Policy schedules: cron expressions evaluated in the policy's time zone, DST handled by croniter.

A scheduled run's identity is (policy id, the UTC instant of the tick). The scheduler turns that into a
deterministic workflow id (``sched-<policy>-<iso tick>``), so with several coordinators each tick starts
exactly once: the engine attaches a second start with the same id to the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from frieze.core.clock import iso
from frieze.core.errors import UsageError
from frieze.core.retention import RetentionPolicy

CONSISTENCY = ("application", "crash")
ON_QUIESCE_FAILURE = ("abort", "continue")
RETENTION_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")


def check_timezone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise UsageError(f"unknown time zone {tz!r}", timezone=tz) from e


def check_cron(expr: str) -> str:
    """A valid 5-field cron expression, else UsageError naming it."""
    if not isinstance(expr, str) or len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise UsageError(f"invalid cron expression {expr!r} (five fields: minute hour day month weekday)",
                         cron=expr)
    return expr


def fixed_time(expr: str) -> bool:
    """Whether the job fires at fixed wall-clock hours (hour field of plain numbers), as opposed to an
    interval job (``*``, ``*/n``, ranges in the hour field)."""
    hour = expr.split()[1]
    return all(part.isdigit() for part in hour.split(","))


def iter_runs(expr: str, tz: str, after: datetime) -> Iterator[datetime]:
    """Fire times after ``after``, aware UTC, in order, with daylight-saving changes handled like cron:

    - a wall time skipped by a spring-forward change fires once, at the first valid instant after it;
    - a fixed-time job whose wall time repeats in a fall-back change fires once (the first occurrence);
      an interval job keeps its interval in real time through the repeated hour.
    """
    check_cron(expr)
    zone = check_timezone(tz)
    fixed = fixed_time(expr)
    it = croniter(expr, after.astimezone(zone))
    last: datetime | None = None
    last_wall: datetime | None = None
    while True:
        local = it.get_next(datetime)
        t = local.astimezone(UTC)
        wall = local.replace(tzinfo=None)
        if last is not None and t <= last:
            continue
        if fixed and last_wall is not None and wall <= last_wall:
            continue  # the repeated hour of a fall-back change
        last, last_wall = t, wall
        yield t


def next_runs(expr: str, tz: str, after: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` fire times after ``after`` (see :func:`iter_runs`)."""
    out: list[datetime] = []
    for t in iter_runs(expr, tz, after):
        out.append(t)
        if len(out) == count:
            break
    return out


_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """'30m', '12h', '7d', '2w', '1y' (one number and unit)."""
    if (not isinstance(text, str) or len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit()
            or len(text) > 12):
        raise UsageError(f"retention keep_within must be a duration like '7d' or '12h', not {text!r}", value=text)
    return timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])


def check_retention(ret: dict[str, object]) -> dict[str, object]:
    for k, v in ret.items():
        if k not in RETENTION_KEYS:
            raise UsageError(f"unknown retention rule {k!r}; one of {', '.join(RETENTION_KEYS)}", rule=k)
        if k == "keep_within":
            parse_duration(v)  # type: ignore[arg-type]
        elif not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 100000:
            raise UsageError(f"retention {k} must be an integer from 0 to 100000, not {v!r}", rule=k)
    return ret


def retention_policy(ret: dict[str, object]) -> RetentionPolicy | None:
    """The core retention policy of a policy's rules, or None when it keeps everything."""
    if not ret:
        return None
    check_retention(ret)

    def n(k: str) -> int:
        v = ret.get(k, 0)
        return v if isinstance(v, int) else 0

    within = ret.get("keep_within")
    pol = RetentionPolicy(last=n("keep_last"), hourly=n("keep_hourly"), daily=n("keep_daily"),
                          weekly=n("keep_weekly"), monthly=n("keep_monthly"), yearly=n("keep_yearly"),
                          within=parse_duration(within) if isinstance(within, str) else None)
    return None if pol.empty() else pol


def schedule_workflow_id(policy_id: str, tick: datetime) -> str:
    """The deterministic id of the run of ``policy_id`` at ``tick`` (exactly once across coordinators)."""
    return f"sched-{policy_id}-{iso(tick)}"
