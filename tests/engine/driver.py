"""A coordinator process for crash and takeover tests: ``python -m tests.engine.driver ...``.

Starts an :class:`Engine` with the test workflows, optionally submits a batch of ``five`` operations (only if
``--ops-file`` does not exist yet, so a restart does not submit again): ``--submit N`` plain ones, or ``--plan
FILE``, a JSON list of per-operation argument overrides (``kill_after``, ``fail_at``, ``cancel_at``, ...). It
prints ``READY`` and then serves until SIGTERM, or with ``--until-idle`` until every operation in the database
is final (exit 0). Kill points are in the operations' arguments (``kill_after``): ``effect:<task>`` fires in the
task body right after its side effect, any other value is a step name and fires from the engine's ``on_step``
hook right after that step is durably recorded.
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from pathlib import Path  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from frieze.engine import Engine, EngineConfig  # noqa: E402
from frieze.engine.model import ACTIVE_STATES  # noqa: E402
from frieze.engine.store import ops  # noqa: E402
from tests.engine import flows  # noqa: E402
from tests.engine.flows import ALL, Ledger, kill_once  # noqa: E402


def main(argv: list[str] | None = None, ready: Callable[[], None] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--executor", default="coord-1")
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--ops-file")
    ap.add_argument("--submit", type=int, default=0)
    ap.add_argument("--kill-points", default="")
    ap.add_argument("--plan", help="JSON file: a list of argument overrides, one operation each")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--peer-timeout", type=float, default=10.0)
    ap.add_argument("--until-idle", action="store_true")
    a = ap.parse_args(argv)
    os.environ["FRIEZE_EXECUTOR"] = a.executor
    ledger = Ledger(a.ledger)
    eng: Engine | None = None

    kill_points: dict[str, str | None] = {}

    def on_step(op_id: str, name: str) -> None:
        assert eng is not None
        if op_id not in kill_points:
            kill_points[op_id] = eng.status(op_id).args.get("kill_after")
        if kill_points[op_id] == name:
            kill_once(ledger, name, op_id)

    eng = Engine(EngineConfig(database_url=a.db, executor_id=a.executor, on_step=on_step,
                              pools={"five": a.pool}, dispatch_interval_s=0.05, queue_poll_s=0.05,
                              peer_timeout_s=a.peer_timeout, heartbeat_s=1.0), ALL)
    eng.store.create()
    flows.CANCEL = eng.cancel
    if (a.submit or a.plan) and a.ops_file and not Path(a.ops_file).exists():
        points = [p for p in a.kill_points.split(",") if p]
        plan: list[dict[str, object]] = (json.loads(Path(a.plan).read_text()) if a.plan else
                                         [{"kill_after": points[i] if i < len(points) else None}
                                          for i in range(a.submit)])
        ids = []
        for i, extra in enumerate(plan):
            args = {"ledger": a.ledger, "tag": f"op{i}", "sleep_s": a.sleep, **extra}
            ids.append(eng.submit("five", args))
        tmp = a.ops_file + ".tmp"
        Path(tmp).write_text(json.dumps(ids))
        os.replace(tmp, a.ops_file)
    eng.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if ready is not None:
        ready()
    else:
        print("READY", flush=True)
    print(f"{a.executor} pid {os.getpid()} started {T0:.3f} ready {time.time():.3f} "
          f"(+{time.time() - T0:.2f} s)", file=sys.stderr, flush=True)
    active = [s.value for s in ACTIVE_STATES]
    while not stop.wait(0.1):
        if a.until_idle:
            with eng.store.tx() as c:
                n = c.execute(sa.select(sa.func.count()).select_from(ops).where(ops.c.state.in_(active))).scalar()
            if not n:
                break
    eng.shutdown()
    return 0


def forked_main(argv: list[str], conn: Connection, log_path: str) -> None:
    """Entry of a coordinator forked from the test process (imports already done: restarts are fast).

    stdout/stderr go to ``log_path``; "ready" is sent on ``conn`` once the engine is started."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    global T0
    T0 = time.time()
    sys.exit(main(argv, ready=lambda: conn.send("ready")))


if __name__ == "__main__":
    sys.exit(main())
