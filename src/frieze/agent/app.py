"""The agent's FastAPI application (docs/design/agent-protocol.md §5).

Every route first validates (against the host configuration and the live system, changing nothing) and
only then submits a task; the route answers 202 with the task. Data streams (snapshot files, tar, file puts)
answer directly. The whole app is wrapped in :class:`frieze.agent.tls.RequireRole` (``OU=coordinator``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

import frieze
from frieze.agent import snapdata
from frieze.agent.host import HostService
from frieze.agent.tasks import Outcome, TaskTable
from frieze.agent.tls import RequireRole
from frieze.agent.upgrade import Installer
from frieze.core.errors import Conflict, FriezeError, NotFound, NotSupported, UsageError
from frieze.protocol.ca import ROLE_COORDINATOR
from frieze.protocol.http import install_errors
from frieze.protocol.models import (
    AppCall,
    Empty,
    QuiesceRequest,
    RecoverRequest,
    SnapshotRequest,
    TargetRequest,
    Task,
    UnquiesceRequest,
    VersionInfo,
)

MAX_UPGRADE_BYTES = 256 << 20

IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


class AgentState:
    """What the routes share: the host service, the task table, the installer and the restart request."""

    def __init__(self, host: HostService, tasks: TaskTable, installer: Installer | None) -> None:
        self.host = host
        self.tasks = tasks
        self.installer = installer
        self.request_restart: Callable[[], None] = lambda: None


def _accepted(t: Task) -> JSONResponse:
    return JSONResponse(t.model_dump(mode="json"), status_code=202)


def create_app(state: AgentState, *, require_role: str | None = ROLE_COORDINATOR) -> Any:
    """The ASGI app. ``require_role=None`` only for in-process unit tests of routing."""
    app = FastAPI(title="frieze agent", version=frieze.__version__, openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None)
    install_errors(app)
    host, tasks = state.host, state.tasks

    def submit(action: str, target: str, fn: Callable[[], Outcome], key: str | None) -> JSONResponse:
        return _accepted(tasks.submit(action, target, fn, key=key))

    # -- meta ----------------------------------------------------------------------------------------
    @app.get("/v1/version", response_model=VersionInfo)
    def version() -> VersionInfo:
        inst = state.installer
        cur = inst.current() if inst else None
        return VersionInfo(version=frieze.__version__, python=platform.python_version(),
                           install_root=str(inst.root) if inst else None, current=str(cur) if cur else None,
                           rolled_back_from=inst.rolled_back_from() if inst else None)

    @app.get("/v1/tasks/{task_id}", response_model=Task)
    def get_task(task_id: str) -> Task:
        return tasks.get(task_id)

    @app.post("/v1/discover", status_code=202, response_model=Task)
    def discover(body: Empty | None = None, key: IdemKey = None) -> JSONResponse:
        return submit("discover", "host", host.do_discover, key)

    # -- apps ----------------------------------------------------------------------------------------
    def app_action(action: str) -> Callable[..., JSONResponse]:
        def route(app_name: str, body: AppCall, key: IdemKey = None) -> JSONResponse:
            spec = host.check_app(app_name, body, action)
            fn = getattr(host, f"do_{action}")
            return submit(action, f"app:{app_name}", lambda: fn(spec), key)

        return route

    for action in ("start", "stop", "status", "verify"):
        app.post(f"/v1/apps/{{app_name}}/{action}", status_code=202, response_model=Task,
                 name=f"app_{action}")(app_action(action))

    @app.post("/v1/apps/{app_name}/quiesce", status_code=202, response_model=Task)
    def quiesce(app_name: str, body: QuiesceRequest, key: IdemKey = None) -> JSONResponse:
        spec = host.check_quiesce(app_name, body)
        return submit("quiesce", f"app:{app_name}", lambda: host.do_quiesce(spec, body), key)

    @app.post("/v1/apps/{app_name}/unquiesce", status_code=202, response_model=Task)
    def unquiesce(app_name: str, body: UnquiesceRequest, key: IdemKey = None) -> JSONResponse:
        spec = host.check_app(app_name, body, "unquiesce")
        return submit("unquiesce", f"app:{app_name}", lambda: host.do_unquiesce(spec, body), key)

    @app.post("/v1/apps/{app_name}/recover", status_code=202, response_model=Task)
    def recover(app_name: str, body: RecoverRequest, key: IdemKey = None) -> JSONResponse:
        spec, target = host.check_recover(app_name, body)
        return submit("recover", f"app:{app_name}", lambda: host.do_recover(spec, target), key)

    # -- snapshots -----------------------------------------------------------------------------------
    @app.post("/v1/volumes/{volume}/snapshots", status_code=202, response_model=Task)
    def snapshot(volume: str, body: SnapshotRequest, key: IdemKey = None) -> JSONResponse:
        host.check_snapshot(volume, body)
        return submit("snapshot", f"volume:{volume}", lambda: host.do_snapshot(volume, body), key)

    @app.post("/v1/volumes/{volume}/snapshots/{snap_id}/prepare", status_code=202, response_model=Task)
    def prepare_snapshot(volume: str, snap_id: str, body: Empty | None = None, key: IdemKey = None) -> JSONResponse:
        host.check_prepare(volume, snap_id)
        return submit("prepare_snapshot", f"volume:{volume}", lambda: host.do_prepare_snapshot(volume, snap_id), key)

    @app.post("/v1/volumes/{volume}/snapshots/{snap_id}/delete", status_code=202, response_model=Task)
    def delete_snapshot(volume: str, snap_id: str, body: Empty | None = None, key: IdemKey = None) -> JSONResponse:
        host.volume(volume)
        return submit("delete_snapshot", f"volume:{volume}", lambda: host.do_delete_snapshot(volume, snap_id), key)

    @app.post("/v1/volumes/{volume}/snapshots/{snap_id}/exists", status_code=202, response_model=Task)
    def snapshot_exists(volume: str, snap_id: str, body: Empty | None = None) -> JSONResponse:
        host.volume(volume)
        return submit("snapshot_exists", f"volume:{volume}:read", lambda: host.do_snapshot_exists(volume, snap_id),
                      None)

    @app.get("/v1/volumes/{volume}/snapshots/{snap_id}/files")
    def snapshot_files(volume: str, snap_id: str) -> list[dict[str, Any]]:
        ref = host.snapshot_ref(volume, snap_id)
        extras = str(host.extras_dir(volume, snap_id))
        return [e.model_dump() for e in snapdata.list_entries(ref.path, extras)]

    @app.get("/v1/volumes/{volume}/snapshots/{snap_id}/changes")
    def snapshot_changes(volume: str, snap_id: str, parent: Annotated[str, Query(max_length=64)]) -> dict[str, Any]:
        return host.changed_ranges(volume, snap_id, parent)

    @app.get("/v1/volumes/{volume}/snapshots/{snap_id}/file")
    def snapshot_file(volume: str, snap_id: str, path: Annotated[str, Query(max_length=4096)],
                      range_: Annotated[str | None, Header(alias="Range")] = None) -> Response:
        ref = host.snapshot_ref(volume, snap_id)
        f, size = snapdata.open_file(ref.path, path, str(host.extras_dir(volume, snap_id)))
        try:
            rng = snapdata.parse_range(range_, size)
        except FriezeError:
            f.close()
            raise
        if rng is None:
            return StreamingResponse(snapdata.iter_range(f, 0, size), media_type="application/octet-stream",
                                     headers={"Content-Length": str(size), "Accept-Ranges": "bytes"})
        off, n = rng
        return StreamingResponse(snapdata.iter_range(f, off, n), status_code=206,
                                 media_type="application/octet-stream",
                                 headers={"Content-Length": str(n),
                                          "Content-Range": f"bytes {off}-{off + n - 1}/{size}"})

    @app.get("/v1/volumes/{volume}/snapshots/{snap_id}/tar")
    def snapshot_tar(volume: str, snap_id: str) -> StreamingResponse:
        ref = host.snapshot_ref(volume, snap_id)
        extras = str(host.extras_dir(volume, snap_id))
        return StreamingResponse(snapdata.iter_tar(ref.path, extras), media_type="application/x-tar")

    # -- restore -------------------------------------------------------------------------------------
    def allowed_roots() -> list[str]:
        return [v.path for v in host.cfg.volumes.values()] + list(host.cfg.restore_roots)

    def check_not_running(target: str, force: bool) -> None:
        host.check_not_frozen(target, f"restore into {target}")
        if force:
            return
        real = os.path.realpath(target)
        for name, a in host.cfg.apps.items():
            d = os.path.realpath(a.data_dir)
            if not (snapdata._inside(real, d) or snapdata._inside(d, real)):
                continue
            try:
                running = bool(host.plugin(a.kind).status(host.spec(name, AppCall())).get("running"))
            except NotFound:
                running = False
            except FriezeError as e:
                raise Conflict(f"restore into {target}: cannot tell whether app {name!r} is running ({e.code}); "
                               "use force to overwrite anyway", target=target, app=name) from e
            if running:
                raise Conflict(f"restore into {target} would overwrite the data of running app {name!r}; stop it "
                               "or use force", target=target, app=name)

    @app.post("/v1/restore/state", status_code=202, response_model=Task)
    def restore_state(body: TargetRequest) -> JSONResponse:
        t = snapdata.check_target(body.target, allowed_roots())
        return submit("target_state", f"path:{t}", lambda: (False, "", snapdata.target_state(t)), None)

    @app.post("/v1/restore/digests", status_code=202, response_model=Task)
    def restore_digests(body: TargetRequest) -> JSONResponse:
        t = snapdata.check_target(body.target, allowed_roots())

        def run() -> Outcome:
            if not os.path.isdir(t):
                raise NotFound(f"restore target {t} does not exist", target=t)
            digests = {e.path: e.digest for e in snapdata.list_entries(t) if e.type == "file"}
            return False, f"{len(digests)} files under {t}", {"digests": digests}

        return submit("target_digests", f"path:{t}", run, None)

    @app.post("/v1/restore/remove", status_code=202, response_model=Task)
    def restore_remove(body: TargetRequest, key: IdemKey = None) -> JSONResponse:
        t = snapdata.check_target(body.target, allowed_roots())
        if t in {os.path.realpath(r) for r in allowed_roots()}:
            raise Conflict(f"refusing to remove {t}: it is a volume or restore root itself", target=t)
        check_not_running(t, False)

        def run() -> Outcome:
            with host.io_on(t, f"remove {t}"):
                removed = snapdata.remove_target(t)
            return removed, (f"removed {t}" if removed else f"{t} does not exist"), {}

        return submit("remove_target", f"path:{t}", run, key)

    @app.put("/v1/restore/file")
    async def restore_file(request: Request, target: Annotated[str, Query(max_length=4096)],
                           path: Annotated[str, Query(max_length=4096)],
                           type: Annotated[str, Query(pattern="^(file|dir|symlink)$")] = "file",
                           mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644,
                           digest: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
                           link: Annotated[str | None, Query(max_length=4096)] = None,
                           mtime_ns: Annotated[int | None, Query(ge=0)] = None,
                           uid: Annotated[int | None, Query(ge=0, le=2**32 - 2)] = None,
                           gid: Annotated[int | None, Query(ge=0, le=2**32 - 2)] = None,
                           force: bool = False) -> dict[str, Any]:
        t = snapdata.check_target(target, allowed_roots())
        snapdata.check_rel(path)
        if type == "file" and digest is None:
            raise UsageError(f"restore: file {path!r} needs its BLAKE3 digest", path=path)
        await run_in_threadpool(check_not_running, t, force)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            async for chunk in request.stream():
                spool.write(chunk)
            spool.seek(0)

            def chunks() -> Any:
                while b := spool.read(1 << 20):
                    yield b

            def put() -> dict[str, Any]:
                with host.io_on(t, f"restore into {t}"):
                    res: dict[str, Any] = snapdata.put_entry(t, path, type, chunks(), mode=mode, digest=digest,
                                                             link=link, mtime_ns=mtime_ns, force=force,
                                                             uid=uid, gid=gid)
                    return res

            out: dict[str, Any] = await run_in_threadpool(put)
            return out

    @app.post("/v1/restore/tar", status_code=202, response_model=Task)
    async def restore_tar(request: Request, target: Annotated[str, Query(max_length=4096)],
                          force: bool = False, key: IdemKey = None) -> JSONResponse:
        t = snapdata.check_target(target, allowed_roots())
        await run_in_threadpool(check_not_running, t, force)
        st = snapdata.target_state(t)
        if st["exists"] and not st["empty"] and not force:
            raise Conflict(f"restore target {t} is not empty (use force to restore into it)", target=t)
        fd, tmp = tempfile.mkstemp(prefix="frieze-restore-", suffix=".tar", dir=str(host.cfg.state))
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise

        def run() -> Outcome:
            try:
                with host.io_on(t, f"restore into {t}"):
                    res = snapdata.extract_tar(tmp, t, force=force)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True, f"restored {res['files']} files into {t}", res

        return submit("restore_tar", f"path:{t}", run, key)

    # -- upgrade -------------------------------------------------------------------------------------
    @app.post("/v1/upgrade", status_code=202, response_model=Task)
    async def upgrade(request: Request, sha256: Annotated[str, Query()], filename: Annotated[str, Query()],
                      key: IdemKey = None) -> JSONResponse:
        inst = state.installer
        if inst is None:
            raise NotSupported("upgrade needs the agent to run under its supervisor with an install root "
                               "(install_root in agent.toml)")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > MAX_UPGRADE_BYTES:
                raise UsageError(f"upgrade: {filename} is larger than {MAX_UPGRADE_BYTES} bytes")
        data = bytes(buf)
        inst.check_offer(data, sha256, filename)

        def run() -> Outcome:
            changed, msg, res = inst.install(data, sha256, filename, frieze.__version__)
            if changed:
                state.request_restart()
            return changed, msg, res

        return submit("upgrade", "agent", run, key)

    return RequireRole(app, require_role) if require_role else app

