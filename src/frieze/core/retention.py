"""Retention: which snapshots a policy keeps. A PURE function: no I/O, no clock (``now`` is an argument).

Semantics (close to restic's ``forget``):

- Snapshots are grouped by ``group`` (host + paths, or what the caller puts there); the policy applies to
  each group independently.
- Within a group, snapshots are considered newest first. ``last=N`` keeps the N newest. ``hourly=N`` keeps
  the newest snapshot of each of the N most recent distinct hours that have a snapshot; likewise daily
  (calendar day), weekly (ISO week), monthly, yearly. ``within=d`` keeps every snapshot whose time is at
  or after ``now - d``. ``keep_tags`` keeps every snapshot carrying one of those tags.
- A snapshot is kept if any rule keeps it; each Decision lists every rule that kept it (its reasons), or
  ``["no rule keeps it"]`` when removed. An empty policy keeps everything (reason ``"empty policy"``):
  forgetting everything must be asked for explicitly, never by omission.
- Bucket times are UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know about one snapshot."""

    id: str
    time: datetime
    group: Hashable = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None
    keep_tags: tuple[str, ...] = field(default_factory=tuple)

    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within is not None or self.keep_tags)

    def __post_init__(self) -> None:
        for n in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, n) < 0:
                raise ValueError(f"retention: {n} must be >= 0")


@dataclass(frozen=True)
class Decision:
    id: str
    keep: bool
    reasons: list[str]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_BUCKETS: list[tuple[str, Callable[[datetime], str]]] = [
    ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
]


def apply_policy(snapshots: Sequence[SnapshotRef], policy: RetentionPolicy, now: datetime) -> list[Decision]:
    """One Decision per snapshot, in the input order."""
    reasons: dict[str, list[str]] = {s.id: [] for s in snapshots}
    if policy.empty():
        return [Decision(s.id, True, ["empty policy"]) for s in snapshots]
    groups: dict[Hashable, list[SnapshotRef]] = {}
    for s in snapshots:
        groups.setdefault(s.group, []).append(s)
    now_u = _utc(now)
    for members in groups.values():
        ordered = sorted(members, key=lambda s: (_utc(s.time), s.id), reverse=True)
        for i, s in enumerate(ordered[:policy.last]):
            reasons[s.id].append(f"last {i + 1}/{policy.last}")
        for name, bucket in _BUCKETS:
            limit = getattr(policy, name)
            if not limit:
                continue
            seen: set[str] = set()
            for s in ordered:
                if len(seen) >= limit:
                    break
                b = bucket(_utc(s.time))
                if b in seen:
                    continue
                seen.add(b)
                reasons[s.id].append(f"{name} {b}")
        if policy.within is not None:
            cutoff = now_u - policy.within
            for s in ordered:
                if _utc(s.time) >= cutoff:
                    reasons[s.id].append(f"within {policy.within}")
        if policy.keep_tags:
            for s in ordered:
                hit = sorted(set(s.tags) & set(policy.keep_tags))
                if hit:
                    reasons[s.id].append(f"tag {','.join(hit)}")
    return [Decision(s.id, bool(reasons[s.id]), reasons[s.id] or ["no rule keeps it"]) for s in snapshots]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``"90m"``, ``"36h"``, ``"7d"``, ``"2w"``, ``"1y"`` or combinations such as ``"1d12h"`` → timedelta.

    ``m`` is minutes; months are not a fixed duration and are not accepted. Raises ValueError naming the text.
    """
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    total = 0
    num = ""
    for ch in s:
        if ch.isdigit():
            num += ch
        elif ch in _UNITS and num:
            total += int(num) * _UNITS[ch]
            num = ""
        else:
            raise ValueError(f"bad duration {text!r}: use digits followed by s, m, h, d, w or y (e.g. 7d, 36h)")
    if num:
        raise ValueError(f"bad duration {text!r}: missing unit after {num}")
    return timedelta(seconds=total)
