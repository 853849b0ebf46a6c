"""HelperProvider: the recorded contract of a volume that another node snapshots (designation, hold, commit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frieze.core.errors import Conflict, NotFound, NotSupported, UsageError
from frieze.host.providers.helper import HelperProvider


def test_helper_records_hold_and_commit(tmp_path: Path) -> None:
    vol = tmp_path / "shared"
    vol.mkdir()
    (vol / "data").write_bytes(b"d")
    p = HelperProvider(state_dir=str(tmp_path / "state"))
    assert not p.supports(str(vol))
    with pytest.raises(NotSupported, match="no node is designated"):
        p.snapshot(str(vol), "s1")
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))
    p.designate(str(vol), "node-b")
    assert p.supports(str(vol)) and p.designated_node(str(vol)) == "node-b"
    ref = p.snapshot(str(vol), "s1")
    assert ref.path == "helper:node-b:s1"
    assert p.snapshot(str(vol), "s1") == ref
    assert p.is_held(ref)
    with pytest.raises(Conflict):
        p.committed(ref, node="node-c", path="/snap/s1")
    p.committed(ref, node="node-b", path="/snap/s1")
    p.committed(ref, node="node-b", path="/snap/s1")  # idempotent
    assert not p.is_held(ref)
    assert HelperProvider(state_dir=str(tmp_path / "state")).record(ref)["path"] == "/snap/s1"  # durable
    assert p.list(str(vol)) == [ref]
    with pytest.raises(NotSupported):
        p.changed_ranges(ref, ref)
    with pytest.raises(NotSupported):
        p.clone(ref, str(tmp_path / "c"))
    p.delete(ref)
    p.delete(ref)
    assert p.list(str(vol)) == []
    with pytest.raises(NotFound):
        p.is_held(ref)
    assert (vol / "data").read_bytes() == b"d"


def test_helper_bad_input(tmp_path: Path) -> None:
    p = HelperProvider(state_dir=str(tmp_path / "state"))
    with pytest.raises(NotFound):
        p.snapshot(str(tmp_path / "missing"), "s1")
    with pytest.raises(NotFound):
        p.designate(str(tmp_path / "missing"), "n")
    with pytest.raises(UsageError):
        p.designate(str(tmp_path), "bad node/../x")
