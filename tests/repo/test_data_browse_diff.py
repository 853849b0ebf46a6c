"""ls and diff of snapshots through the real repository."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo

from frieze.core.errors import NotFound
from frieze.repo.backup import backup
from frieze.repo.browse import ls
from frieze.repo.diff import diff


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for d in ("a/b", "c", "big/x/y"):
        (src / d).mkdir(parents=True)
    (src / "a/b/f").write_bytes(b"one")
    (src / "a/g").write_bytes(b"two")
    (src / "c/h").write_bytes(b"three")
    for i in range(20):
        (src / f"big/x/y/{i}").write_bytes(b"%d" % i)
    os.symlink("a/g", src / "ln")
    return src


def test_ls(tmp_path: Path, repo: Any) -> None:
    src = _src(tmp_path)
    snap = backup(repo, [str(src)], host="h").snapshot_id
    top = [e.to_dict() for e in ls(repo, snap)]
    assert [e["path"] for e in top] == ["a", "big", "c", "ln"]
    assert top[3]["type"] == "symlink" and top[3]["target"] == "a/g"
    json.dumps(top)  # JSON-friendly
    assert [e.path for e in ls(repo, "latest", "a", recursive=True)] == ["a/b", "a/b/f", "a/g"]
    one = [e.to_dict() for e in ls(repo, snap, "a/b/f")]
    assert one[0]["size"] == 3 and one[0]["type"] == "file" and one[0]["chunks"] == 1
    with pytest.raises(NotFound):
        list(ls(repo, snap, "a/nope"))
    with pytest.raises(NotFound):
        list(ls(repo, snap, "a/g/under-a-file"))


def test_diff_reasons_and_skips_equal_subtrees(tmp_path: Path, repo: Any) -> None:
    src = _src(tmp_path)
    s1 = backup(repo, [str(src)], host="h").snapshot_id
    (src / "a/b/f").write_bytes(b"ONE!")
    os.chmod(src / "a/g", 0o600)
    (src / "c/h").unlink()
    (src / "c/new").write_bytes(b"n")
    (src / "a/b/sub").mkdir()
    (src / "a/b/sub/k").write_bytes(b"k")
    os.unlink(src / "ln")
    (src / "ln").write_bytes(b"now a file")
    s2 = backup(repo, [str(src)], host="h").snapshot_id
    res = diff(repo, s1, s2)
    got = {(c.path, c.kind): c.reasons for c in res.changes}
    assert "content" in got[("a/b/f", "modified")] and "size" in got[("a/b/f", "modified")]
    assert got[("a/g", "modified")] == ("mode",)
    assert ("c/h", "removed") in got and ("c/new", "added") in got
    assert ("a/b/sub", "added") in got and ("a/b/sub/k", "added") in got
    assert ("ln", "removed") in got and ("ln", "added") in got
    assert not any(p.startswith("big/") for p, _ in got)
    assert res.trees_skipped >= 1  # "big" had the same subtree id: not read
    assert diff(repo, s2, s2).changes == []
    assert res.counts()["added"] >= 3
    assert json.loads(json.dumps(res.to_dict()))["counts"] == res.counts()
