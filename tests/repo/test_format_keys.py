"""Key slots: wrong password, several slots, add/remove, rotation."""

from __future__ import annotations

import os

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params

from frieze.core.errors import Conflict, WrongPassword
from frieze.repo.keys import HAVE_ARGON2
from frieze.repo.repository import Repository
from frieze.repo.types import KdfParams

CHEAP = KdfParams.cheap_for_tests()


def _repo_with_blob() -> tuple[DictStore, bytes, bytes]:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params())
    data = os.urandom(1000)
    bid = repo.chunk_id(data)
    with repo.writer(host="h") as w:
        w.add_blob(bid, data)
    return st, bid, data


def test_wrong_password() -> None:
    st, _, _ = _repo_with_blob()
    before = {k: v[0] for k, v in st.blobs.items()}
    with pytest.raises(WrongPassword, match="wrong password") as ei:
        Repository.open(st, "not the password")
    assert ei.value.exit_code != 0 and "not the password" not in str(ei.value)
    assert {k: v[0] for k, v in st.blobs.items()} == before  # nothing changed


def test_several_slots_and_rotation() -> None:
    st, bid, data = _repo_with_blob()
    repo = Repository.open(st, PW)
    s2 = repo.add_key("second", CHEAP)
    s3 = repo.add_key("third", CHEAP)
    assert len(repo.list_keys()) == 3
    for pw in (PW, "second", "third"):
        assert Repository.open(st, pw).read_blob(bid) == data
    repo.remove_key(s3)
    with pytest.raises(WrongPassword):
        Repository.open(st, "third")
    # rotate the password of the slot opened with "second"
    r2 = Repository.open(st, "second")
    assert r2.slot_id == s2
    r2.change_password("rotated", CHEAP)
    with pytest.raises(WrongPassword):
        Repository.open(st, "second")
    assert Repository.open(st, "rotated").read_blob(bid) == data
    # never the last slot
    r3 = Repository.open(st, "rotated")
    r3.remove_key(repo.slot_id)
    assert len(r3.list_keys()) == 1
    with pytest.raises(Conflict, match="last"):
        r3.remove_key(r3.slot_id)


def test_damaged_slot_skipped_and_named() -> None:
    st, bid, data = _repo_with_blob()
    repo = Repository.open(st, PW)
    other = repo.add_key("other", CHEAP)
    st.force(f"keys/{other}", b"{garbage")
    assert Repository.open(st, PW).read_blob(bid) == data
    with pytest.raises(WrongPassword, match=other):
        Repository.open(st, "other")


def test_kdf_is_memory_hard_by_default() -> None:
    d = KdfParams()
    assert d.memory_kib >= 65536
    st = DictStore()
    Repository.init(st, PW, params=cheap_params())
    import json

    slot = json.loads(next(v[0] for k, v in st.blobs.items() if k.startswith("keys/")))
    assert slot["kdf"]["alg"] == ("argon2id" if HAVE_ARGON2 else "scrypt")
    assert PW not in json.dumps(slot)


def test_orphan_slot_from_interrupted_init_is_skipped() -> None:
    """An init killed after its key slot but before its config leaves a slot that must not break open."""
    from frieze.repo.crypto import MasterKeys
    from frieze.repo.keys import KeySlots

    st = DictStore()
    KeySlots(st).add("0" * 32, MasterKeys.generate(), PW, CHEAP)  # the interrupted init's slot
    repo = Repository.init(st, PW, params=cheap_params())
    data = os.urandom(100)
    with repo.writer(host="h") as w:
        w.add_blob(repo.chunk_id(data), data)
    for _ in range(3):
        assert Repository.open(st, PW).read_blob(repo.chunk_id(data)) == data
