"""Which repository parent the backup's changed-ranges map is valid against (a unit of logic; the ranges
themselves are proven on btrfs and XFS in tests/agent/test_changed_ranges.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from frieze.coordinator.workflows.backup import _hint_parent, snap_id

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class Snap:
    id: str
    host: str
    time: datetime
    tags: list[str] = field(default_factory=list)


def _snap(n: int, op: str, vol: str = "v1") -> Snap:
    return Snap(id=f"s{n}", host=f"frieze:{vol}", time=T0 + timedelta(hours=n), tags=[f"op:{op}", f"volume:{vol}"])


RANGES = {"big.db": [(0, 8192)]}


def test_the_map_goes_with_the_snapshot_made_from_its_host_snapshot() -> None:
    snaps = [_snap(1, "op-a"), _snap(2, "op-b"), _snap(3, "op-x", vol="v2")]
    assert _hint_parent(snaps, "v1", snap_id("op-b", "v1"), RANGES) == ("s2", RANGES)


def test_a_map_against_another_host_snapshot_is_dropped() -> None:
    # the newest repository snapshot was made from op-b's host snapshot, the map is relative to op-a's
    # (op-b's mirror was discarded, say): trusting it would skip changes, so the metadata rule decides
    snaps = [_snap(1, "op-a"), _snap(2, "op-b")]
    assert _hint_parent(snaps, "v1", snap_id("op-a", "v1"), RANGES) == ("auto", None)


def test_no_map_no_parent() -> None:
    assert _hint_parent([_snap(1, "op-a")], "v1", snap_id("op-a", "v1"), None) == ("auto", None)
    assert _hint_parent([], "v1", snap_id("op-a", "v1"), RANGES) == ("auto", None)
    assert _hint_parent([_snap(1, "op-a")], "v1", None, RANGES) == ("auto", None)
