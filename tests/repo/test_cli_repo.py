"""``frieze repo ...`` end to end: the real ``frieze`` entry point as a subprocess on a tmp_path repository.

Cheap key slots through ``FRIEZE_INSECURE_TEST_KDF=1``; the rollback state directory under tmp_path
(``XDG_STATE_HOME``); the password always through a file or the environment, never argv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

FRIEZE = str(Path(sys.executable).with_name("frieze"))
PASSWORD = "correct horse battery staple"
PYCACHE = os.path.join(tempfile.gettempdir(), f"frieze-test-pycache-{os.getuid()}")


def _env(tmp: Path, **extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRIEZE_")}
    pw = tmp / "password"
    if not pw.exists():
        pw.write_text(PASSWORD + "\n")
    env.update({"FRIEZE_PASSWORD_FILE": str(pw), "FRIEZE_INSECURE_TEST_KDF": "1",
                "XDG_STATE_HOME": str(tmp / "state"), "COLUMNS": "200",
                # bytecode cached outside the source tree: ~0.5 s less per run than compiling every module
                "PYTHONPYCACHEPREFIX": PYCACHE})
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run(tmp: Path, *args: str, cwd: Path | None = None, ok: bool = True, **env: str | None
        ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([FRIEZE, "repo", *args], env=_env(tmp, **env), cwd=cwd or tmp, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    if ok and p.returncode != 0:
        raise AssertionError(f"frieze repo {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def js(tmp: Path, *args: str, **kw: Any) -> Any:
    p = run(tmp, *args, "--json", **kw)
    return json.loads(p.stdout)


def fails(tmp: Path, code: int, err_code: str, *args: str, **kw: Any) -> dict[str, Any]:
    """Run with --json, expect exit ``code`` and a JSON error whose code starts with ``err_code``."""
    p = run(tmp, *args, "--json", ok=False, **kw)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    doc = json.loads(p.stdout)
    assert doc["error"]["code"].startswith(err_code), doc
    assert PASSWORD not in p.stdout + p.stderr
    return dict(doc["error"])


def state(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``root`` with its type and content hash / link target (to prove nothing changed)."""
    out: dict[str, tuple[str, str]] = {}
    if not root.exists():
        return out
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(p.stat().st_mode))
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode))
    return out


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Like ``state``, plus mtimes of files (what a byte-for-byte restore must reproduce)."""
    s = state(root)
    for rel, (kind, v) in list(s.items()):
        if kind == "file":
            s[rel] = (kind, v + str((root / rel).stat().st_mtime_ns))
    return s


def make_source(src: Path) -> None:
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n" * 1000)
    (src / "big.bin").write_bytes(os.urandom(3 << 19))
    (src / "empty").write_bytes(b"")
    (src / "sub" / "b.txt").write_text("bravo\n")
    (src / "sub" / "deep" / "c.bin").write_bytes(os.urandom(70_000))
    (src / "gone.txt").write_text("to be deleted\n")
    (src / "link").symlink_to("a.txt")
    os.chmod(src / "sub" / "b.txt", 0o640)


@pytest.fixture(scope="module")
def repo1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A repository with one snapshot of a small tree (shared by the bad-input tests)."""
    tmp = tmp_path_factory.mktemp("cli")
    src = tmp / "src"
    make_source(src)
    repo = tmp / "repo"
    run(tmp, "init", "--repo", str(repo))
    sid = js(tmp, "backup", str(src), "--repo", str(repo), "--tag", "base")["snapshot"]
    return tmp, repo, sid


# ------------------------------------------------------------------------------------------ the cycle

def test_init_backup_restore_diff_check_forget_prune(tmp_path: Path) -> None:
    tmp, src, repo = tmp_path, tmp_path / "src", tmp_path / "repo"
    make_source(src)
    env = {"FRIEZE_REPO": str(repo)}
    d = js(tmp, "init", **env)
    assert len(d["repository"]) == 32 and d["location"] == str(repo) and d["format_version"] == 1

    b1 = js(tmp, "backup", str(src), "--tag", "one", "--label", '{"consistency": "crash", "n": 1}',
            "--host", "h1", **env)
    assert b1["parent"] is None and b1["stats"]["files"] == 6 and b1["stats"]["symlinks"] == 1
    first_tree = tree(src)

    (src / "a.txt").write_text("alpha changed\n")
    (src / "gone.txt").unlink()
    (src / "new.txt").write_text("new\n")
    b2 = js(tmp, "backup", str(src), "--tag", "two", "--host", "h1", **env)
    assert b2["parent"] == b1["snapshot"], "automatic parent: same host and paths"
    assert b2["stats"]["files_unchanged"] >= 4
    assert b2["stats"]["bytes_read"] < 1 << 20, "unchanged files are not read again"
    b3 = js(tmp, "backup", str(src), "--tag", "three", "--host", "h1", "--parent", "none", **env)
    assert b3["parent"] is None

    snaps = js(tmp, "snapshots", **env)
    assert [s["tags"] for s in snaps] == [["one"], ["two"], ["three"]]
    assert all(s["host"] == "h1" and s["paths"] == [str(src)] for s in snaps)
    assert [s["id"] for s in js(tmp, "snapshots", "--tag", "two", **env)] == [b2["snapshot"]]

    ls = js(tmp, "ls", "tag:two", "-R", **env)
    assert ls["snapshot"] == b2["snapshot"]
    paths = {e["path"]: e for e in ls["entries"]}
    assert set(paths) == {"a.txt", "big.bin", "empty", "link", "new.txt", "sub", "sub/b.txt", "sub/deep",
                          "sub/deep/c.bin"}
    assert paths["link"]["target"] == "a.txt" and paths["sub/b.txt"]["mode"] == "0640"
    assert paths["big.bin"]["size"] == 3 << 19
    top = js(tmp, "ls", b2["snapshot"][:10], "sub", **env)
    assert [e["path"] for e in top["entries"]] == ["sub/b.txt", "sub/deep"]

    # restore byte for byte (latest = three), then the first snapshot, then chosen paths only
    out = tmp / "out"
    r = js(tmp, "restore", "latest", "--target", str(out), **env)
    assert r["snapshot"] == b3["snapshot"] and r["target"] == str(out)
    assert tree(out) == tree(src)
    out1 = tmp / "out1"
    js(tmp, "restore", "tag:one", "--target", str(out1), **env)
    assert tree(out1) == first_tree
    part = tmp / "part"
    js(tmp, "restore", "tag:one", "sub/deep", "a.txt", "--target", str(part), **env)
    assert set(state(part)) == {"a.txt", "sub", "sub/deep", "sub/deep/c.bin"}
    assert (part / "a.txt").read_bytes() == (out1 / "a.txt").read_bytes()
    v = js(tmp, "restore", "tag:one", "--target", str(out1), "--verify", **env)
    assert v["stats"]["mismatches"] == []
    (out1 / "a.txt").write_text("changed\n")
    hv = run(tmp, "restore", "tag:one", "--target", str(out1), "--verify", ok=False, **env)
    assert hv.returncode != 0 and "differs a.txt" in hv.stdout and "[red]" not in hv.stdout, hv.stdout
    (out1 / "a.txt").write_bytes((part / "a.txt").read_bytes())

    dd = js(tmp, "diff", "tag:one", "tag:two", **env)
    assert dd["counts"] == {"added": 1, "removed": 1, "modified": 1}
    kinds = {c["path"]: (c["kind"], c["reasons"]) for c in dd["changes"]}
    assert kinds["new.txt"][0] == "added" and kinds["gone.txt"][0] == "removed"
    assert kinds["a.txt"][0] == "modified" and "content" in kinds["a.txt"][1]

    c = js(tmp, "check", "--read-data", **env)
    assert c["ok"] is True and c["problems"] == [] and c["counts"]["snapshots"] == 3
    assert c["counts"]["packs_read"] == c["counts"]["packs"] > 0
    c17 = js(tmp, "check", "--read-data", "--subset", "1/7", **env)
    assert c17["ok"] and c17["counts"]["packs_read"] <= c["counts"]["packs"]

    # forget: dry run first (nothing changes), then for real with prune
    before = state(repo)
    f = js(tmp, "forget", "--keep-last", "1", "--keep-tag", "one", "--dry-run", **env)
    dec = {x["id"]: x for x in f["decisions"]}
    assert dec[b3["snapshot"]]["keep"] and dec[b3["snapshot"]]["reasons"] == ["last 1/1"]
    assert dec[b1["snapshot"]]["keep"] and dec[b1["snapshot"]]["reasons"] == ["tag one"]
    assert not dec[b2["snapshot"]]["keep"] and dec[b2["snapshot"]]["reasons"] == ["no rule keeps it"]
    assert f["removed"] == [b2["snapshot"]] and f["dry_run"] is True
    assert state(repo) == before
    f = js(tmp, "forget", "--keep-last", "1", "--prune", "--delete-margin", "0", **env)
    assert sorted(f["removed"]) == sorted([b1["snapshot"], b2["snapshot"]])
    assert f["prune"]["live_blobs"] > 0
    assert [s["id"] for s in js(tmp, "snapshots", **env)] == [b3["snapshot"]]
    p = js(tmp, "prune", "--delete-margin", "0", "--repack-threshold", "0", **env)
    assert p["packs_before"] >= 1
    assert js(tmp, "check", "--read-data", **env)["ok"]
    out3 = tmp / "out3"
    js(tmp, "restore", "latest", "--target", str(out3), **env)
    assert tree(out3) == tree(src)
    st = js(tmp, "stats", **env)
    assert st["snapshots"] == 1 and st["damaged_index_files"] == []


def test_human_output_progress_and_keys_and_copy(tmp_path: Path) -> None:
    tmp, src, repo = tmp_path, tmp_path / "src", tmp_path / "repo"
    make_source(src)
    env = {"FRIEZE_REPO": str(repo)}
    assert "created repository" in run(tmp, "init", **env).stdout
    p = run(tmp, "backup", str(src), "--progress", **env)
    assert "snapshot" in p.stdout and "saved" in p.stdout
    assert "B/s" in p.stderr and "ETA" in p.stderr and "files" in p.stderr, p.stderr  # the rich bar
    p = run(tmp, "check", "--read-data", "--progress", **env)
    assert "ok" in p.stdout and "packs" in p.stderr
    p = run(tmp, "restore", "latest", "--target", str(tmp / "o"), "--progress", **env)
    assert "restored into" in p.stdout and "B/s" in p.stderr
    assert tree(tmp / "o") == tree(src)
    assert run(tmp, "snapshots", **env).stdout.count("\n") >= 4
    assert "-0644" in run(tmp, "ls", **env).stdout
    assert run(tmp, "backup", str(src), "--quiet", **env).stdout.strip().isalnum()
    p = run(tmp, "forget", "--keep-last", "1", "--dry-run", **env)
    assert "remove" in p.stdout and "no rule keeps it" in p.stdout and "last 1/1" in p.stdout

    # keys: add a second password, rotate it, the old one stops working, the last slot stays
    (tmp / "pw2").write_text("second password\n")
    (tmp / "pw3").write_text("third password\n")
    slot2 = js(tmp, "keys", "add", "--new-password-file", str(tmp / "pw2"), **env)["slot"]
    slots = js(tmp, "keys", "list", **env)
    assert len(slots) == 2 and sum(s["current"] for s in slots) == 1
    as2 = {"FRIEZE_PASSWORD_FILE": str(tmp / "pw2"), **env}
    rot = js(tmp, "keys", "rotate", "--new-password-file", str(tmp / "pw3"), **as2)
    assert rot["removed"] == slot2
    fails(tmp, 5, "auth.wrong_password", "snapshots", **as2)
    as3 = {"FRIEZE_PASSWORD_FILE": str(tmp / "pw3"), **env}
    first = next(s["slot"] for s in js(tmp, "keys", "list", **as3) if not s["current"])
    js(tmp, "keys", "remove", first[:8], **as3)
    only = js(tmp, "keys", "list", **as3)
    assert len(only) == 1
    before = state(repo)
    fails(tmp, 4, "conflict", "keys", "remove", only[0]["slot"], **as3)
    assert state(repo) == before
    fails(tmp, 5, "auth.wrong_password", "snapshots", **env)  # the original password is gone too

    # copy into a new repository (same dedup domain), then again (skipped), restore from the copy
    dst = tmp / "dst"
    cenv = {**as3, "FRIEZE_TO_PASSWORD": "dest password"}
    cp = js(tmp, "copy", "--to", str(dst), "--init", **cenv)
    assert len(cp["copied"]) == 2 and cp["blobs_new"] > 0
    again = js(tmp, "copy", "--to", str(dst), **cenv)
    assert again["copied"] == {} and len(again["skipped"]) == 2
    denv = {"FRIEZE_REPO": str(dst), "FRIEZE_PASSWORD_FILE": None, "FRIEZE_PASSWORD": "dest password"}
    assert len(js(tmp, "snapshots", **denv)) == 2
    js(tmp, "restore", "latest", "--target", str(tmp / "from-copy"), **denv)
    assert tree(tmp / "from-copy") == tree(src)
    assert js(tmp, "check", "--read-data", **denv)["ok"]


# -------------------------------------------------------------------------------------- bad input

def test_wrong_password_missing_path_no_repo_change_nothing(repo1: tuple[Path, Path, str]) -> None:
    tmp, repo, _sid = repo1
    env = {"FRIEZE_REPO": str(repo)}
    before = state(repo)
    e = fails(tmp, 5, "auth.wrong_password", "backup", str(tmp / "src"), FRIEZE_PASSWORD_FILE=None,
              FRIEZE_PASSWORD="not the password", **env)
    assert "wrong password" in e["message"]
    (tmp / "badpw").write_text("also wrong\n")
    fails(tmp, 5, "auth.wrong_password", "snapshots", "--password-file", str(tmp / "badpw"), **env)
    e = fails(tmp, 3, "not_found", "backup", str(tmp / "does-not-exist"), **env)
    assert str(tmp / "does-not-exist") in e["message"]
    fails(tmp, 2, "usage", "backup", str(tmp / "src"), "--label", "{not json", **env)
    fails(tmp, 2, "usage", "backup", **env)
    fails(tmp, 3, "not_found", "ls", "nosuchsnapshot", **env)
    fails(tmp, 3, "not_found", "restore", "tag:nosuchtag", "--target", str(tmp / "t0"), **env)
    fails(tmp, 2, "usage", "forget", **env)
    fails(tmp, 2, "usage", "check", "--read-data", "--subset", "8/7", **env)
    fails(tmp, 2, "usage", "prune", "--delete-margin", "soon", **env)
    assert state(repo) == before
    assert not (tmp / "t0").exists()

    # no repository given / a repository that does not exist (and is not created)
    e = fails(tmp, 2, "usage", "snapshots")
    assert "--repo" in e["message"] and "FRIEZE_REPO" in e["message"]
    fails(tmp, 3, "not_found", "snapshots", "--repo", str(tmp / "nowhere"))
    fails(tmp, 3, "not_found", "backup", str(tmp / "src"), "--repo", str(tmp / "nowhere2"))
    assert not (tmp / "nowhere").exists() and not (tmp / "nowhere2").exists()
    fails(tmp, 3, "not_found", "snapshots", "--repo", str(tmp / "src"))  # a directory, not a repository

    # no password anywhere and no terminal: a usage error that says how to give one
    e = fails(tmp, 2, "usage", "snapshots", FRIEZE_PASSWORD_FILE=None, FRIEZE_PASSWORD=None, **env)
    assert "FRIEZE_PASSWORD" in e["message"]
    fails(tmp, 3, "not_found", "snapshots", FRIEZE_PASSWORD_FILE=str(tmp / "no-such-file"), **env)
    # the password is never an argument
    p = run(tmp, "backup", str(tmp / "src"), "--password", PASSWORD, ok=False, **env)
    assert p.returncode == 2
    assert state(repo) == before
    # human errors go to stderr with the error code
    p = run(tmp, "backup", str(tmp / "does-not-exist"), ok=False, **env)
    assert p.returncode == 3 and p.stdout == "" and "not_found" in p.stderr


def test_init_and_restore_refusals(repo1: tuple[Path, Path, str]) -> None:
    tmp, repo, sid = repo1
    env = {"FRIEZE_REPO": str(repo)}
    before = state(repo)
    fails(tmp, 4, "already_exists", "init", **env)
    src_before = state(tmp / "src")
    e = fails(tmp, 4, "conflict", "init", "--repo", str(tmp / "src"))
    assert "not empty" in e["message"]
    assert state(tmp / "src") == src_before and state(repo) == before

    target = tmp / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    e = fails(tmp, 4, "conflict", "restore", sid, "--target", str(target), **env)
    assert "not empty" in e["message"] and "--overwrite" in e["message"]
    assert state(target) == {"keep.txt": state(target)["keep.txt"]} and (target / "keep.txt").read_text() == "mine\n"
    (tmp / "afile").write_text("x")
    fails(tmp, 4, "conflict", "restore", sid, "--target", str(tmp / "afile"), **env)
    fails(tmp, 3, "not_found", "restore", sid, "no/such/path", "--target", str(tmp / "t1"), **env)
    assert not (tmp / "t1").exists(), "a refused restore leaves no target behind"
    fails(tmp, 2, "usage", "restore", sid, **env)  # no --target
    js(tmp, "restore", sid, "--target", str(target), "--overwrite", **env)
    assert (target / "keep.txt").read_text() == "mine\n" and (target / "a.txt").exists()
    assert state(repo) == before


def _copy_repo(tmp: Path, repo: Path, name: str) -> Path:
    dst = tmp / name
    subprocess.run(["cp", "-a", str(repo), str(dst)], check=True)
    os.chmod(dst / "config", 0o600)
    return dst


def test_damaged_config_and_newer_format_version(repo1: tuple[Path, Path, str]) -> None:
    tmp, repo, _sid = repo1
    damaged = _copy_repo(tmp, repo, "damaged")
    data = bytearray((damaged / "config").read_bytes())
    data[len(data) // 2] ^= 0x40
    (damaged / "config").write_bytes(bytes(data))
    before = state(damaged)
    e = fails(tmp, 6, "integrity", "snapshots", "--repo", str(damaged))
    assert "config" in e["message"]
    fails(tmp, 6, "integrity", "backup", str(tmp / "src"), "--repo", str(damaged))
    assert state(damaged) == before

    newer = _copy_repo(tmp, repo, "newer")
    data = bytearray((newer / "config").read_bytes())
    data[4:6] = (99).to_bytes(2, "little")
    (newer / "config").write_bytes(bytes(data))
    before = state(newer)
    e = fails(tmp, 7, "format", "backup", str(tmp / "src"), "--repo", str(newer))
    assert "newer" in e["message"] and "config" in e["message"]
    p = run(tmp, "snapshots", "--repo", str(newer), ok=False)
    assert p.returncode == 7 and "newer" in p.stderr
    assert state(newer) == before

    garbage = tmp / "garbage"
    garbage.mkdir()
    (garbage / "config").write_bytes(b"this is not a frieze config at all")
    fails(tmp, 7, "format", "snapshots", "--repo", str(garbage))

    # a damaged data pack: check names it and exits with the integrity code; the report is still JSON
    broken = _copy_repo(tmp, repo, "broken")
    pack = next(p for p in (broken / "data").rglob("*") if p.is_file())
    os.chmod(pack, 0o600)
    b = bytearray(pack.read_bytes())
    b[100] ^= 1
    pack.write_bytes(bytes(b))
    p = run(tmp, "check", "--read-data", "--json", "--repo", str(broken), ok=False)
    assert p.returncode == 6
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "integrity"
    assert any(pr["kind"] in ("pack", "blob") for pr in doc["problems"])
    assert run(tmp, "check", "--repo", str(broken), "--json").returncode == 0  # structure alone is fine


def test_relative_paths_resolve_against_the_working_directory(repo1: tuple[Path, Path, str]) -> None:
    tmp, _repo, _sid = repo1
    work = tmp / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "f.txt").write_text("relative\n")
    d = js(tmp, "init", "--repo", "rel/repo", cwd=work)
    assert d["location"] == str(work / "rel" / "repo") and (work / "rel" / "repo" / "config").exists()
    b = js(tmp, "backup", "data", cwd=work, FRIEZE_REPO="rel/repo")
    snaps = js(tmp, "snapshots", cwd=work, FRIEZE_REPO="rel/repo")
    assert snaps[0]["paths"] == [str(work / "data")], "snapshot paths are recorded absolute"
    r = js(tmp, "restore", b["snapshot"], "--target", "restored", cwd=work, FRIEZE_REPO="rel/repo")
    assert r["target"] == str(work / "restored")
    assert (work / "restored" / "f.txt").read_text() == "relative\n"
    # the same relative location from another directory is another (absent) place: refused, not created
    e = fails(tmp, 3, "not_found", "snapshots", cwd=tmp, FRIEZE_REPO="rel/repo")
    assert str(tmp / "rel" / "repo") in e["message"]
    assert not (tmp / "rel").exists()


def test_names_are_printed_as_they_are(repo1: tuple[Path, Path, str]) -> None:
    """File names that look like markup or emoji codes reach the human output unchanged."""
    tmp, repo, _sid = repo1
    src = tmp / "odd-names"
    src.mkdir()
    names = [":smile:", "[bold]x", ":thumbs_up: and [red]"]
    for n in names:
        (src / n).write_text(n)
    sid = js(tmp, "backup", str(src), "--repo", str(repo))["snapshot"]
    listed = run(tmp, "ls", sid, "--repo", str(repo)).stdout
    for n in names:
        assert n in listed, (n, listed)
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in listed
