"""Bad input on a real local repository: a wrong password, a damaged config, a newer format version, a missing
backup path. Each is a clear error naming the problem with a non-zero exit code, and nothing in the store
changes: the list of keys and every key's bytes (and every file on disk, temp files included) are identical
before and after."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, cheap_params

from frieze.core.errors import FormatError, FriezeError, IntegrityError, NotFound, WrongPassword
from frieze.repo.backup import backup
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.repository import Repository


def _keys_and_bytes(store: LocalBlobStore) -> dict[str, bytes]:
    return {b.key: store.get(b.key) for b in store.list("")}


def _disk(root: Path) -> dict[str, tuple[int, str]]:
    """Every directory and file under ``root`` (temp files too): mode and content hash."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            body = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            out[p.relative_to(root).as_posix()] = (p.lstat().st_mode, body)
    return out


@pytest.fixture(name="repo_dir")
def _repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    repo = Repository.init(LocalBlobStore(root), PW, params=cheap_params())
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(50_000))
    backup(repo, [str(src)], host="h")
    return root


def _damage_config(root: Path) -> None:
    p = root / "config"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.chmod(0o600)
    p.write_bytes(bytes(b))


def _newer_version(root: Path) -> None:
    p = root / "config"
    b = bytearray(p.read_bytes())
    struct.pack_into("<H", b, 4, 2)
    p.write_bytes(bytes(b))


def _attempt(root: Path, password: str, path: Path) -> None:
    """What ``frieze repo backup`` does: open, then back up."""
    repo = Repository.open(LocalBlobStore(root), password)
    backup(repo, [str(path)], host="h")


CASES: dict[str, tuple[Callable[[Path], None] | None, str, str, type[FriezeError], str]] = {
    # name: (prepare the store, password, path, error type, text the message must contain)
    "wrong-password": (None, "not the password", "src", WrongPassword, "wrong password"),
    "damaged-config": (_damage_config, PW, "src", IntegrityError, "config"),
    "newer-format-version": (_newer_version, PW, "src", FormatError, "newer"),
    "missing-path": (None, PW, "nope", NotFound, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error_and_changes_nothing(case: str, repo_dir: Path, tmp_path: Path) -> None:
    prepare, password, path, err_type, text = CASES[case]
    if prepare is not None:
        prepare(repo_dir)
    store = LocalBlobStore(repo_dir)
    keys_before, disk_before = _keys_and_bytes(store), _disk(repo_dir)
    with pytest.raises(err_type, match=text) as ei:
        _attempt(repo_dir, password, tmp_path / path)
    assert ei.value.exit_code != 0 and ei.value.message
    assert password == PW or password not in str(ei.value)  # a wrong password is never echoed
    keys_after, disk_after = _keys_and_bytes(store), _disk(repo_dir)
    assert sorted(keys_after) == sorted(keys_before)
    assert keys_after == keys_before
    assert disk_after == disk_before
    print(f"RESULT R-BADINPUT case={case} error={type(ei.value).__name__} exit={ei.value.exit_code} "
          f"keys={len(keys_after)} changed_keys={sum(keys_after.get(k) != v for k, v in keys_before.items())} "
          f"changed_files={len(set(disk_before.items()) ^ set(disk_after.items()))}")
