"""Redis plug-in with real writers (MULTI INCR + RPUSH): snapshots taken under CLIENT PAUSE WRITE plus a
persistence point (BGSAVE, or BGREWRITEAOF with AOF on) restore to servers that pass redis-check-rdb/-aof and
keep the counter invariant (ctr == LLEN log)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.engines import RedisCounter, copy_tree_live, redis_counters, redis_server

from frieze.host.apps.base import AppSpec
from frieze.host.apps.redis import RedisPlugin


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="frieze-rdsnap-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("aof", [False, True], ids=["rdb", "aof"])
def test_snapshots_under_writers_restore_consistent(workdir: Path, aof: bool) -> None:
    plugin = RedisPlugin()
    snaps = []
    with redis_server(appendonly=aof) as r:
        spec = AppSpec("rd", "redis", str(r.data_dir), options=r.options(), secrets=r.secrets())
        with RedisCounter(r, threads=2) as w:
            time.sleep(0.3)
            for i in range(3):
                h = plugin.quiesce(spec, epoch=i + 1, lease_s=30)
                t1 = time.monotonic()
                dst = workdir / f"snap{i}"
                copy_tree_live(r.data_dir, dst)
                time.sleep(0.2)  # held well past the clients' observation lag, so a write that goes through counts
                t2 = time.monotonic()
                assert plugin.unquiesce(spec, epoch=i + 1).changed
                assert w.log.ended_during_hold(t1, t2) == 0, "a write completed under CLIENT PAUSE WRITE"
                snaps.append((dst, h.info))
                time.sleep(0.3)
        assert not w.log.errors, w.log.errors[:3]
        live = redis_counters(r)
    assert live[0] == live[1]
    for i, (dst, info) in enumerate(snaps):
        v = plugin.verify(AppSpec("rd-snap", "redis", str(dst)))
        with redis_server(appendonly=aof, password=False, data_from=dst) as rr:
            ctr, llen = redis_counters(rr)
        print(f"RESULT RD-SNAP{i} persistence={info['persistence']} ctr={ctr} llen={llen} tools={v.info['tools']}"
              f" quiesce_ms={info['quiesce_ms']}")
        assert ctr == llen and ctr > 0
        assert v.info["ok"]
