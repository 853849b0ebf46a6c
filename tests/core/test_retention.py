"""Retention is a pure function: property tests (hypothesis) and worked examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from frieze.core.retention import RetentionPolicy, SnapshotRef, apply_policy

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

snap_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3 * 365 * 24 * 60), st.sampled_from(["a", "b"]),
              st.sampled_from([(), ("keep",), ("x",)])),
    max_size=60, unique_by=lambda t: t[0],
).map(lambda xs: [SnapshotRef(f"s{i:03d}", NOW - timedelta(minutes=m), g, tags) for i, (m, g, tags) in enumerate(xs)])

policies = st.builds(
    RetentionPolicy, last=st.integers(0, 5), hourly=st.integers(0, 5), daily=st.integers(0, 5),
    weekly=st.integers(0, 5), monthly=st.integers(0, 5), yearly=st.integers(0, 3),
    within=st.one_of(st.none(), st.integers(0, 2000).map(lambda h: timedelta(hours=h))),
    keep_tags=st.sampled_from([(), ("keep",)]),
)


@given(snap_lists, policies)
@settings(max_examples=200, deadline=None)
def test_total_consistent_and_idempotent(snaps: list[SnapshotRef], policy: RetentionPolicy) -> None:
    ds = apply_policy(snaps, policy, NOW)
    assert [d.id for d in ds] == [s.id for s in snaps]  # one decision each, nothing both kept and removed
    for d in ds:
        assert d.reasons and (d.keep == (d.reasons not in (["no rule keeps it"],)))
    kept = [s for s, d in zip(snaps, ds, strict=True) if d.keep]
    # idempotent: applying the policy again to what was kept keeps all of it
    again = apply_policy(kept, policy, NOW)
    assert all(d.keep for d in again)


@given(snap_lists, st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_keep_last_never_removes_newest_n(snaps: list[SnapshotRef], n: int) -> None:
    ds = {d.id: d for d in apply_policy(snaps, RetentionPolicy(last=n), NOW)}
    for g in {s.group for s in snaps}:
        newest = sorted((s for s in snaps if s.group == g), key=lambda s: s.time, reverse=True)[:n]
        assert all(ds[s.id].keep for s in newest)
    assert sum(d.keep for d in ds.values()) == sum(min(n, sum(1 for s in snaps if s.group == g))
                                                    for g in {s.group for s in snaps})


@given(snap_lists)
@settings(max_examples=50, deadline=None)
def test_empty_policy_keeps_everything(snaps: list[SnapshotRef]) -> None:
    assert all(d.keep for d in apply_policy(snaps, RetentionPolicy(), NOW))


def test_daily_and_within_examples() -> None:
    snaps = [SnapshotRef(f"d{d}h{h}", NOW - timedelta(days=d, hours=h)) for d in range(10) for h in (0, 3)]
    ds = {d.id: d for d in apply_policy(snaps, RetentionPolicy(daily=3), NOW)}
    kept = sorted(i for i, d in ds.items() if d.keep)
    assert kept == ["d0h0", "d1h0", "d2h0"]
    assert ds["d0h0"].reasons == ["daily 2026-11-22"]
    assert ds["d5h3"].reasons == ["no rule keeps it"]
    ds = {d.id: d for d in apply_policy(snaps, RetentionPolicy(within=timedelta(days=2)), NOW)}
    assert {i for i, d in ds.items() if d.keep} == {"d0h0", "d0h3", "d1h0", "d1h3", "d2h0"}


def test_weekly_monthly_yearly_and_groups() -> None:
    snaps = [SnapshotRef(f"{g}{d}", NOW - timedelta(days=d), g) for g in ("x", "y") for d in range(0, 800, 5)]
    ds = apply_policy(snaps, RetentionPolicy(weekly=2, monthly=2, yearly=2), NOW)
    for g in ("x", "y"):
        kept = [d for d, s in zip(ds, snaps, strict=True) if s.group == g and d.keep]
        reasons = [r for d in kept for r in d.reasons]
        assert sum(r.startswith("weekly") for r in reasons) == 2
        assert sum(r.startswith("monthly") for r in reasons) == 2
        assert sum(r.startswith("yearly") for r in reasons) == 2
        assert kept[0].id == f"{g}0" or any(d.id == f"{g}0" for d in kept)


def test_parse_duration() -> None:
    import pytest

    from frieze.core.retention import parse_duration

    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "7", "d", "3x", "1.5d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
