"""Backups given the paths that changed since the parent (``changed_paths``): unlisted subtrees are kept from the
parent unwalked, and the snapshot is the one a full walk would make."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_cli_repo import fails, js, run
from tests.repo.test_data_support import make_repo, same_but_atime, tree_listing

from frieze.core.errors import UsageError
from frieze.repo.backup import _open_source, backup, load_changed_paths, walk_set
from frieze.repo.restore import restore


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def _tree(src: Path) -> None:
    for d in ("a/x", "a/y", "b/c", "db"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (src / "a/x" / f"f{i}.txt").write_text(f"text {i}\n" * (i + 1))
        (src / "a/y" / f"g{i}.bin").write_bytes(os.urandom(3000 + i))
    (src / "b/c/one").write_text("one\n")
    (src / "b/two").write_text("two\n")
    (src / "db/table").write_bytes(os.urandom(8192 * 16))
    os.symlink("../b/two", src / "a/link")


class Opens:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, p: bytes) -> int:
        self.paths.append(os.fsdecode(p))
        return _open_source(p)


TOTALS = ("files", "dirs", "symlinks", "hardlinks", "other", "bytes_total")


def _totals(r: Any) -> dict[str, int]:
    return {k: getattr(r.stats, k) for k in TOTALS}


def _both(repo: Any, src: Path, parent: str, changed: list[str], **kw: Any) -> tuple[Any, Any, Opens]:
    """The hinted backup and a full-walk backup of the same state, both with ``parent`` (their trees may differ in
    access times only: the first backup's listing and reading move some)."""
    opens = Opens()
    hinted = backup(repo, [src], host="h", parent=parent, changed_paths=changed, open_file=opens, **kw)
    full = backup(repo, [src], host="h", parent=parent, **kw)
    # what the snapshot holds, whether walked or kept (the kept subtrees' counts come from the parent's figures)
    assert _totals(hinted) == _totals(full)
    return hinted, full, opens


def test_unlisted_subtrees_are_kept_unwalked_and_the_snapshot_is_the_full_walks(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = backup(repo, [src], host="h")
    with open(src / "db/table", "r+b") as f:  # in place, as a database writes
        f.seek(8192 * 3)
        f.write(os.urandom(8192))
    (src / "b/c/new").write_text("new\n")
    os.unlink(src / "b/two")
    for p in (src / "a/x").iterdir():  # read: atimes move, nothing changes
        p.read_bytes()
    hinted, full, opens = _both(repo, src, first.snapshot_id, ["db/table", "b/c/new", "b/two"])
    assert same_but_atime(repo, hinted.tree, full.tree)
    assert hinted.stats.subtrees_kept == 1  # a (x and y below it are not even listed)
    assert not [p for p in opens.paths if "/a/" in p]
    assert hinted.stats.files_read == 2  # db/table and b/c/new
    assert not hinted.stats.warnings
    out = tmp_path / "out"
    restore(repo, hinted.snapshot_id, out)
    assert tree_listing(out) == tree_listing(src)


def test_a_directory_changed_but_not_listed_is_walked_with_a_warning(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = backup(repo, [src], host="h")
    (src / "a/sneaky").write_text("not listed\n")  # a's mtime moves; a is an entry of the walked root
    hinted, full, _ = _both(repo, src, first.snapshot_id, [])
    assert same_but_atime(repo, hinted.tree, full.tree)
    assert any("a: directory changed but not in the changed paths" in w for w in hinted.stats.warnings)
    assert hinted.stats.subtrees_kept == 4  # b and db, and a/x and a/y below the walked a
    out = tmp_path / "out"
    restore(repo, hinted.snapshot_id, out)
    assert (out / "a/sneaky").read_text() == "not listed\n"


def test_a_removed_directory_that_is_listed_is_gone(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = backup(repo, [src], host="h")
    for p in (src / "b/c").iterdir():
        p.unlink()
    (src / "b/c").rmdir()
    hinted, full, _ = _both(repo, src, first.snapshot_id, ["b/c", "b/c/one"])
    assert same_but_atime(repo, hinted.tree, full.tree)
    out = tmp_path / "out"
    restore(repo, hinted.snapshot_id, out)
    assert tree_listing(out) == tree_listing(src)


def test_a_hard_link_whose_first_link_is_in_a_kept_subtree_stays_a_hard_link(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    os.link(src / "a/x/f3.txt", src / "b/hl")
    first = backup(repo, [src], host="h")
    (src / "b/c/one").write_text("ONE\n")
    hinted, full, _ = _both(repo, src, first.snapshot_id, ["b/c/one"])
    assert same_but_atime(repo, hinted.tree, full.tree)
    out = tmp_path / "out"
    restore(repo, hinted.snapshot_id, out)
    assert os.lstat(out / "b/hl").st_ino == os.lstat(out / "a/x/f3.txt").st_ino


@pytest.mark.parametrize("first_link", ["kept", "changed", "gone"])
def test_a_hard_link_into_a_path_given_later_is_right_whether_that_directory_is_kept_or_walked(
        tmp_path: Path, repo: Any, first_link: str) -> None:
    """Two backup paths given in the other order than the parent's: the second link is met first, and its first
    link's directory (not listed) may be kept, walked because it changed unlisted, or have lost the file."""
    x, y = tmp_path / "x", tmp_path / "y"
    x.mkdir()
    y.mkdir()
    (x / "f").write_text("shared\n")
    os.link(x / "f", y / "g")
    os.link(x / "f", y / "h")  # (so that y/g is still a link when x/f is gone)
    (x / "other").write_text("other\n")
    first = backup(repo, [x, y], host="h")  # x/f is the first link, y/g and y/h hard links to it
    (y / "new").write_text("new\n")
    changed = ["y/new"]
    if first_link == "changed":
        (x / "sneaky").write_text("unlisted\n")  # x is walked, with a warning
    elif first_link == "gone":
        os.unlink(x / "f")
        (x / "sneaky").write_text("unlisted\n")
    hinted = backup(repo, [y, x], host="h", parent=first.snapshot_id, changed_paths=changed)
    full = backup(repo, [y, x], host="h", parent=first.snapshot_id)
    assert _totals(hinted) == _totals(full)  # (their trees differ in which link is the first)
    if first_link == "gone":
        assert any("walked the whole tree" in w for w in hinted.stats.warnings)
    out = tmp_path / "out"
    restore(repo, hinted.snapshot_id, out)
    assert (out / "y/g").read_text() == "shared\n"
    assert os.lstat(out / "y/g").st_ino == os.lstat(out / "y/h").st_ino
    if first_link != "gone":
        assert os.lstat(out / "y/g").st_ino == os.lstat(out / "x/f").st_ino
    else:
        assert not (out / "x/f").exists()


def test_without_a_parent_everything_is_read(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    r = backup(repo, [src], host="h", parent=None, changed_paths=[])
    assert r.stats.subtrees_kept == 0 and r.stats.files == 43
    out = tmp_path / "out"
    restore(repo, r.snapshot_id, out)
    assert tree_listing(out) == tree_listing(src)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a//b", "a/./b", "", "a/"])
def test_a_bad_changed_path_is_refused_before_anything_is_written(tmp_path: Path, repo: Any, bad: str) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = backup(repo, [src], host="h")
    with pytest.raises(UsageError, match="not a relative snapshot path"):
        backup(repo, [src], host="h", parent=first.snapshot_id, changed_paths=["db/table", bad])
    assert [s.id for s in repo.list_snapshots()] == [first.snapshot_id]


def test_walk_set_holds_each_listed_path_and_every_directory_above() -> None:
    assert walk_set(["a/b/c", "d"], ["e/f"]) == {"", "a", "a/b", "a/b/c", "d", "e", "e/f"}
    with pytest.raises(UsageError, match="not one string"):
        walk_set("a/b")  # type: ignore[arg-type]  # (else each character would be a path)


def test_load_changed_paths_names_the_problem(tmp_path: Path) -> None:
    p = tmp_path / "cp.json"
    p.write_text(json.dumps({"a": 1}))
    with pytest.raises(UsageError, match="expected an array"):
        load_changed_paths(p)
    p.write_text("[")
    with pytest.raises(UsageError, match=r"cp\.json"):
        load_changed_paths(p)
    p.write_text(json.dumps(["ok/x", "../up"]))
    with pytest.raises(UsageError, match=r"cp\.json: changed path '\.\./up'"):
        load_changed_paths(p)


def test_random_changes_listed_exactly_give_the_full_walks_snapshot(tmp_path: Path, repo: Any) -> None:
    """Many rounds of random edits (content, mode, mtime, new and removed files and directories, symlinks);
    each hinted backup, given exactly the edited paths, equals the full walk's tree and restores byte for byte."""
    rnd = random.Random(7)
    src = tmp_path / "src"
    _tree(src)
    prev = backup(repo, [src], host="h").snapshot_id
    kept = 0
    for round_ in range(12):
        changed: list[str] = []
        for _ in range(rnd.randint(1, 4)):
            files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and not p.is_symlink())
            dirs = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_dir() and not p.is_symlink())
            op = rnd.choice(["write", "chmod", "touch", "add", "rm", "mkdir", "rmdir", "symlink"])
            if op in ("write", "chmod", "touch", "rm") and files:
                f = rnd.choice(files)
                p = src / f
                if not p.exists():
                    continue
                if op == "write":
                    p.write_bytes(os.urandom(rnd.randint(0, 5000)))
                elif op == "chmod":
                    os.chmod(p, rnd.choice([0o600, 0o644, 0o640]))
                elif op == "touch":
                    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
                else:
                    p.unlink()
                changed.append(f)
            elif op in ("add", "mkdir", "symlink") and dirs:
                d = rnd.choice(dirs)
                name = f"{op}{round_}_{rnd.randint(0, 999)}"
                p = src / d / name
                if p.exists():
                    continue
                if op == "add":
                    p.write_text(name * 10)
                elif op == "mkdir":
                    p.mkdir()
                    (p / "inner").write_text("inner\n")
                    changed.append(f"{d}/{name}/inner")
                else:
                    os.symlink("target-" + name, p)
                changed.append(f"{d}/{name}")
            elif op == "rmdir" and dirs:
                d = rnd.choice(dirs)
                p = src / d
                if not p.exists() or d == "a":
                    continue
                for q in sorted(p.rglob("*"), key=lambda x: -len(x.parts)):
                    changed.append(str(q.relative_to(src)))
                    q.rmdir() if q.is_dir() and not q.is_symlink() else q.unlink()
                p.rmdir()
                changed.append(d)
        hinted, full, _ = _both(repo, src, prev, changed)
        assert same_but_atime(repo, hinted.tree, full.tree), (round_, changed)
        assert not hinted.stats.warnings, hinted.stats.warnings
        kept += hinted.stats.subtrees_kept
        prev = hinted.snapshot_id
    assert kept >= 12
    out = tmp_path / "out"
    restore(repo, prev, out)
    assert tree_listing(out) == tree_listing(src)


def test_cli_changed_paths(tmp_path: Path) -> None:
    rp = str(tmp_path / "repo")
    js(tmp_path, "init", "--repo", rp)
    src = tmp_path / "src"
    _tree(src)
    js(tmp_path, "backup", str(src), "--repo", rp)
    (src / "b/c/one").write_text("ONE\n")
    cp = tmp_path / "changed.json"
    cp.write_text(json.dumps(["b/c/one"]))
    st = js(tmp_path, "backup", str(src), "--repo", rp, "--changed-paths", str(cp))["stats"]
    assert st["subtrees_kept"] == 2 and st["files_read"] == 1  # a and db kept
    text = run(tmp_path, "backup", str(src), "--repo", rp, "--changed-paths", str(cp)).stdout
    assert "2 directories kept unwalked" in text
    err = fails(tmp_path, 3, "", "backup", str(src), "--repo", rp,
                "--changed-paths", str(tmp_path / "missing.json"))
    assert "missing.json does not exist" in err["message"]
    err = fails(tmp_path, 2, "", "backup", str(src), "--repo", rp, "--parent", "none", "--changed-paths", str(cp))
    assert "needs a parent" in err["message"]
    cp.write_text(json.dumps(["/etc/passwd"]))
    err = fails(tmp_path, 2, "", "backup", str(src), "--repo", rp, "--changed-paths", str(cp))
    assert "not a relative snapshot path" in err["message"]
    assert len(js(tmp_path, "snapshots", "--repo", rp)) == 3
