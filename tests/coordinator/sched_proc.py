"""One coordinator process for the several-coordinators scheduling test (test_sched_multi.py): the real
Coordinator on a shared PostgreSQL catalog and engine database, with the in-process agent stand-in for host
``h1``. It waits for the go file, then runs scheduler passes from several threads at once for a while
(racing the other process), writes the operation ids it submitted, and keeps its engine running (so it
also executes backups) until the stop file appears.

    python -m tests.coordinator.sched_proc STATE CATALOG_URL ENGINE_URL EXECUTOR SNAPS DIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.scheduler import Scheduler
from frieze.coordinator.service import Coordinator
from frieze.core.clock import now
from tests.coordinator.local_port import LocalPort


def main() -> None:
    state, catalog, engine, executor, snaps, d = sys.argv[1:7]
    ctl = Path(d)
    c = Coordinator(CoordinatorConfig(state_dir=Path(state), catalog_url=catalog, engine_url=engine,
                                      executor_id=executor, scheduler=False))
    lp = LocalPort("h1", Path(snaps))
    c.agents.set_factory(lambda host: lp)
    (ctl / f"ready-{executor}").write_text("1")
    while not (ctl / "go").exists():
        time.sleep(0.02)
    submitted: list[str] = []
    lock = threading.Lock()
    # a claim is an orphan only after 15 s: a live coordinator stalled a few seconds under load keeps its claim
    # (the planted orphan is minutes old, so it is still taken over)
    scheds = [Scheduler(c, orphan_after_s=15.0) for _ in range(3)]
    deadline = time.monotonic() + 6.0

    def loop(sc: Scheduler) -> None:
        while time.monotonic() < deadline:
            got = sc.tick(now())
            with lock:
                submitted.extend(got)
            time.sleep(0.05)

    ts = [threading.Thread(target=loop, args=(sc,)) for sc in scheds]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # written whole, then renamed: the test reads the file as soon as its name exists
    tmp = ctl / f".submitted-{executor}.json.tmp"
    tmp.write_text(json.dumps(submitted))
    os.replace(tmp, ctl / f"submitted-{executor}.json")
    try:
        while not (ctl / "stop").exists():
            time.sleep(0.1)
    finally:
        c.close()


if __name__ == "__main__":
    main()
