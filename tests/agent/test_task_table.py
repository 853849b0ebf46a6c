"""Unit tests of the task table's logic (in-process): per-target FIFO, parallel targets, idempotency keys,
errors as bodies, trimming."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from frieze.agent.tasks import TaskTable
from frieze.core.errors import NotFound, StaleEpoch


def _wait(tt: TaskTable, ids: list[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not all(tt.get(i).finished for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_same_target_fifo_other_targets_parallel() -> None:
    tt = TaskTable(workers=4)
    log: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()

    def job(target: str, name: str) -> tuple[bool, str, dict[str, object]]:
        t0 = time.monotonic()
        time.sleep(0.05)
        with lock:
            log.append((target, name, t0, time.monotonic()))
        return True, name, {}

    ids = [tt.submit("x", "app:a", lambda n=n: job("a", n)).id for n in ("1", "2", "3", "4", "5")]
    ids.append(tt.submit("x", "app:b", lambda: job("b", "b1")).id)
    _wait(tt, ids)
    a = [x for x in log if x[0] == "a"]
    assert [x[1] for x in a] == ["1", "2", "3", "4", "5"]
    for prev, nxt in itertools.pairwise(a):
        assert nxt[2] >= prev[3]  # never overlapping
    b = next(x for x in log if x[0] == "b")
    assert b[2] < a[-1][2]  # b ran while a's queue was still busy
    tt.shutdown()


def test_errors_keys_and_trim() -> None:
    tt = TaskTable(workers=2, keep=3)

    def stale() -> tuple[bool, str, dict[str, object]]:
        raise StaleEpoch("epoch 1 is stale", epoch=1)

    def bug() -> tuple[bool, str, dict[str, object]]:
        raise RuntimeError("secret-ish detail")

    t1 = tt.submit("u", "app:a", stale)
    t2 = tt.submit("u", "app:a", bug)
    _wait(tt, [t1.id, t2.id])
    e1 = tt.get(t1.id).error
    assert e1 is not None and e1.code == "stale_epoch" and e1.details == {"epoch": 1}
    e2 = tt.get(t2.id).error
    assert e2 is not None and e2.code == "internal" and "secret-ish" not in e2.message
    k1 = tt.submit("s", "vol:v", lambda: (True, "", {}), key="k")
    k2 = tt.submit("s", "vol:v", lambda: (True, "", {}), key="k")
    assert k1.id == k2.id
    _wait(tt, [k1.id])
    for _ in range(5):
        _wait(tt, [tt.submit("s", "vol:w", lambda: (False, "", {})).id])
    with pytest.raises(NotFound):
        tt.get(t1.id)  # trimmed: only the newest finished tasks are kept
    tt.shutdown()
