"""Redis (6.2+) plug-in: ``CLIENT PAUSE <lease> WRITE`` plus a persistence point; ``redis-check-rdb``.

Spec: ``data_dir`` is Redis' ``dir``. ``options``: ``host``/``port`` or ``socket``, ``username``, ``db_file``
(default ``dump.rdb``), ``config_file`` (for ``start``: ``redis-server <config_file>``). ``secrets``:
``password`` (sent by the driver only).

**Quiesce**: ``CLIENT PAUSE <rest of lease in ms> WRITE`` — Redis itself ends the pause when the lease runs
out, whatever happens to this process — then a persistence point taken while writes are paused: with AOF on,
``BGREWRITEAOF`` and wait until the rewrite finished (``aof_rewrites`` grew); otherwise ``BGSAVE`` and wait until
a save that *started after the pause* finished (``rdb_saves`` grew past an in-flight save; ``LASTSAVE`` when the
counter is missing). A failed save, or one that cannot finish within the lease, unpauses and fails the quiesce.
``info`` records the file and counters. **Unquiesce** = ``CLIENT UNPAUSE``. **Verify** = ``redis-check-rdb``
on the RDB file (and ``redis-check-aof`` on an AOF manifest when present). **Start** runs ``redis-server``
with ``options.config_file`` detached; **stop** = ``SHUTDOWN`` (Redis saves if its config says so).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from frieze.core.errors import DeadlineExceeded, FriezeError, IntegrityError, NotFound
from frieze.host.apps._common import PluginBase, remaining, run_tool
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec


class RedisError(FriezeError):
    """Redis refused or failed a request."""

    code = "app.redis"
    http_status = 502


class _Pause:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.lock = threading.Lock()


class RedisPlugin(PluginBase):
    kind = "redis"
    capabilities = AppCapabilities(
        kind="redis", start_stop=True, quiesce=True, verify=True,
        notes="CLIENT PAUSE <lease> WRITE + BGSAVE or BGREWRITEAOF; no log-based point-in-time recovery",
    )

    def _check_spec(self, spec: AppSpec) -> None:
        if not Path(spec.data_dir).is_dir():
            raise NotFound(f"redis app {spec.name!r}: data dir {spec.data_dir} does not exist", app=spec.name)

    def _client(self, spec: AppSpec, timeout_s: float = 10) -> Any:
        import redis

        o = spec.options
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No silent client-side retries: a quiesce step must happen once, and a dead server must show at once.
        kw: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": min(timeout_s, 10),
                              "retry": Retry(NoBackoff(), 0)}
        if o.get("socket"):
            kw["unix_socket_path"] = str(o["socket"])
        else:
            kw["host"], kw["port"] = str(o.get("host", "127.0.0.1")), int(o.get("port", 6379))
        if o.get("username"):
            kw["username"] = str(o["username"])
        if spec.secrets.get("password"):
            kw["password"] = spec.secrets["password"]
        return redis.Redis(**kw)

    def _call(self, spec: AppSpec, what: str, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as e:
            raise RedisError(f"redis app {spec.name!r}: {what} failed: {e}", app=spec.name) from e

    def _alive(self, spec: AppSpec) -> bool:
        import redis

        c = self._client(spec, 2)
        try:
            return bool(c.ping())
        except redis.RedisError:
            return False
        finally:
            c.close()

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        import redis

        out: dict[str, Any] = {"running": False, "data_dir": spec.data_dir}
        c = self._client(spec, 2)
        try:
            info = c.info("server")
            pers = c.info("persistence")
            out.update(running=True, version=info.get("redis_version"), aof_enabled=bool(pers.get("aof_enabled")),
                       rdb_last_bgsave_status=pers.get("rdb_last_bgsave_status"))
        except redis.RedisError:
            pass
        finally:
            c.close()
        return out

    # ------------------------------------------------------------------------------------------ start/stop
    def start(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        if self._alive(spec):
            return ActionResult(False, f"redis app {spec.name!r} is already running")
        conf = spec.options.get("config_file")
        if not conf:
            raise self.unsupported("start (no options.config_file)")
        if not Path(str(conf)).is_file():
            raise NotFound(f"redis app {spec.name!r}: config file {conf} does not exist")
        proc = subprocess.Popen([str(spec.options.get("server_bin", "redis-server")), str(conf)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + float(spec.options.get("start_timeout_s", 60))
        while not self._alive(spec):
            if proc.poll() is not None:
                raise RedisError(f"redis app {spec.name!r}: redis-server exited {proc.returncode} on start")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"redis app {spec.name!r}: not answering PING after start")
            time.sleep(0.05)
        return ActionResult(True, f"redis app {spec.name!r} started", {"pid": proc.pid})

    def stop(self, spec: AppSpec) -> ActionResult:
        import redis

        self._check_spec(spec)
        if not self._alive(spec):
            return ActionResult(False, f"redis app {spec.name!r} is not running")
        c = self._client(spec, 60)
        try:
            c.shutdown()
        except redis.ConnectionError:
            pass
        except redis.RedisError as e:
            raise RedisError(f"redis app {spec.name!r}: SHUTDOWN failed: {e}") from e
        finally:
            c.close()
        deadline = time.monotonic() + 60
        while self._alive(spec):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"redis app {spec.name!r}: still running after SHUTDOWN")
            time.sleep(0.05)
        return ActionResult(True, f"redis app {spec.name!r} stopped")

    # ------------------------------------------------------------------------------------------ quiesce
    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        import redis

        c = self._client(spec, min(10.0, remaining(deadline)) + 1)
        pause = _Pause(c)
        try:
            before = c.info("persistence")
            ms = max(1, int(remaining(deadline, floor=0.001) * 1000))
            c.execute_command("CLIENT", "PAUSE", ms, "WRITE")
            paused_at = time.time()
            info: dict[str, Any] = {"method": "CLIENT PAUSE WRITE", "pause_ms": ms}
            if before.get("aof_enabled"):
                info.update(self._aof_point(spec, c, deadline))
            else:
                info.update(self._rdb_point(spec, c, deadline, paused_at))
        except (redis.RedisError, FriezeError) as e:
            with contextlib.suppress(redis.RedisError):
                c.execute_command("CLIENT", "UNPAUSE")
            c.close()
            if isinstance(e, FriezeError):
                raise
            raise RedisError(f"redis app {spec.name!r}: quiesce failed: {e}", app=spec.name) from e
        return info, pause

    def _wait(self, spec: AppSpec, c: Any, deadline: float, done: Any, what: str) -> dict[str, Any]:
        while True:
            pers = c.info("persistence")
            if done(pers):
                return dict(pers)
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"redis app {spec.name!r}: {what} did not finish within the lease",
                                       app=spec.name)
            time.sleep(0.01)

    def _rdb_point(self, spec: AppSpec, c: Any, deadline: float, paused_at: float) -> dict[str, Any]:
        import redis

        pers = self._wait(spec, c, deadline, lambda p: not p.get("rdb_bgsave_in_progress"), "an earlier BGSAVE")
        saves0 = pers.get("rdb_saves")
        last0 = int(c.lastsave().timestamp())
        try:
            c.bgsave()
        except redis.ResponseError as e:
            if "already in progress" not in str(e):
                raise
            pers = self._wait(spec, c, deadline, lambda p: not p.get("rdb_bgsave_in_progress"), "an earlier BGSAVE")
            saves0 = pers.get("rdb_saves")
            c.bgsave()
        if saves0 is not None:
            pers = self._wait(spec, c, deadline, lambda p: p.get("rdb_saves", 0) > saves0
                              and not p.get("rdb_bgsave_in_progress"), "BGSAVE")
        else:  # pragma: no cover - Redis < 7
            pers = self._wait(spec, c, deadline, lambda p: int(p.get("rdb_last_save_time", 0)) > last0
                              and not p.get("rdb_bgsave_in_progress"), "BGSAVE")
        if pers.get("rdb_last_bgsave_status") != "ok":
            raise RedisError(f"redis app {spec.name!r}: BGSAVE failed (rdb_last_bgsave_status="
                             f"{pers.get('rdb_last_bgsave_status')})", app=spec.name)
        cfg = self._files(spec, c)
        return {"persistence": "rdb", "rdb_saves": pers.get("rdb_saves"), **cfg}

    def _aof_point(self, spec: AppSpec, c: Any, deadline: float) -> dict[str, Any]:
        def busy(p: dict[str, Any]) -> bool:
            return bool(p.get("aof_rewrite_in_progress") or p.get("aof_rewrite_scheduled"))

        pers = self._wait(spec, c, deadline, lambda p: not busy(p), "an earlier AOF rewrite")
        n0 = int(pers.get("aof_rewrites", 0))
        c.bgrewriteaof()
        pers = self._wait(spec, c, deadline, lambda p: int(p.get("aof_rewrites", 0)) > n0 and not busy(p),
                          "BGREWRITEAOF")
        if pers.get("aof_last_bgrewrite_status") != "ok" or pers.get("aof_last_write_status") != "ok":
            raise RedisError(f"redis app {spec.name!r}: AOF rewrite failed", app=spec.name)
        return {"persistence": "aof", "aof_rewrites": pers.get("aof_rewrites"), **self._files(spec, c)}

    def _files(self, spec: AppSpec, c: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # CONFIG may be renamed/disabled
            cfg = c.config_get("dir")
            cfg.update(c.config_get("dbfilename"))
            cfg.update(c.config_get("appenddirname"))
            out = {"dir": cfg.get("dir"), "dbfilename": cfg.get("dbfilename"),
                   "appenddirname": cfg.get("appenddirname")}
        return out

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        import redis

        p: _Pause = resource
        with p.lock:
            try:
                if expired:
                    return {"released_by": "CLIENT PAUSE timeout"}
                p.client.execute_command("CLIENT", "UNPAUSE")
                return {}
            except redis.RedisError as e:
                raise RedisError(f"redis app {spec.name!r}: CLIENT UNPAUSE failed: {e}", app=spec.name) from e
            finally:
                p.client.close()

    def thaw_orphan(self, spec: AppSpec) -> ActionResult:
        """``CLIENT UNPAUSE``: a pause outlives the connection that set it (until its timeout)."""
        self._check_spec(spec)
        c = self._client(spec, 10)
        try:
            paused = self._call(spec, "INFO", lambda: c.info("clients")).get("paused_reason", None)
            self._call(spec, "CLIENT UNPAUSE", lambda: c.execute_command("CLIENT", "UNPAUSE"))
        finally:
            c.close()
        if paused is None:  # Redis < 7.2 does not say whether it was paused
            return ActionResult(True, f"redis app {spec.name!r}: CLIENT UNPAUSE sent", {"paused_reason": "unknown"})
        return ActionResult(paused != "none", f"redis app {spec.name!r}: CLIENT UNPAUSE sent",
                            {"paused_reason": paused})

    # ------------------------------------------------------------------------------------------ verify
    def verify(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        d = Path(spec.data_dir)
        rdb = d / str(spec.options.get("db_file", "dump.rdb"))
        checked: list[str] = []
        aof_dir = d / str(spec.options.get("aof_dir", "appendonlydir"))
        manifests = sorted(aof_dir.glob("*.manifest")) if aof_dir.is_dir() else []
        if not rdb.exists() and not manifests:
            raise NotFound(f"redis app {spec.name!r}: neither {rdb} nor an AOF manifest in {aof_dir} exists")
        if rdb.exists():
            r = run_tool(["redis-check-rdb", str(rdb)], what=f"redis app {spec.name!r}: redis-check-rdb",
                         timeout=600, check=False)
            if r.returncode != 0 or "RDB looks OK" not in r.stdout:
                raise IntegrityError(f"redis app {spec.name!r}: redis-check-rdb {rdb}: {r.stdout.strip()[-800:]}",
                                     app=spec.name)
            checked.append("redis-check-rdb")
        for m in manifests:
            r = run_tool(["redis-check-aof", str(m)], what=f"redis app {spec.name!r}: redis-check-aof",
                         timeout=600, check=False)
            if r.returncode != 0 or "is valid" not in r.stdout:
                raise IntegrityError(f"redis app {spec.name!r}: redis-check-aof {m}: {r.stdout.strip()[-800:]}",
                                     app=spec.name)
            checked.append("redis-check-aof")
        return ActionResult(False, f"redis app {spec.name!r}: {' and '.join(checked)} found no problems",
                            {"ok": True, "tools": checked})
