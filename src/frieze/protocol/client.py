"""``AgentClient``: the typed, synchronous client of the agent protocol (httpx over mutual TLS).

Every action method submits the call and returns the agent's :class:`Task` at once; :meth:`AgentClient.wait`
polls it until it is finished and returns it, or raises the task's error as its :mod:`frieze.core.errors`
class. ``call(...)``-style convenience: ``client.wait(client.quiesce(...).id).result``.

Transport failures (refused, reset, TLS handshake) raise :class:`AgentUnreachable` (retryable); an error
body raises its own class (``StaleEpoch`` stays ``StaleEpoch``). When ``expected_cn`` is given the agent's
server certificate must name it (an agent of host A cannot answer for host B).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from frieze.core.errors import AuthError, DeadlineExceeded, FriezeError
from frieze.protocol.errors import AgentProtocolError, AgentUnreachable, error_from_body
from frieze.protocol.models import FileEntry, Task, VersionInfo


def _q(s: str) -> str:
    return quote(s, safe="")


class AgentClient:
    """One agent, at ``base_url`` (``https://host:port``), with a client ``ssl_context`` (OU=coordinator)."""

    def __init__(self, base_url: str, ssl_context: Any, *, timeout: float = 30.0,
                 expected_cn: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.expected_cn = expected_cn
        self._http = httpx.Client(base_url=self.base_url, verify=ssl_context, timeout=timeout)
        self._cn_checked = False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *a: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _check_peer(self, resp: httpx.Response) -> None:
        if self.expected_cn is None or self._cn_checked:
            return
        stream = resp.extensions.get("network_stream")
        ssl_obj = stream.get_extra_info("ssl_object") if stream is not None else None
        cert = ssl_obj.getpeercert() if ssl_obj is not None else None
        cn = None
        for rdn in (cert or {}).get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
        if cn != self.expected_cn:
            raise AuthError(f"agent at {self.base_url} presented certificate CN={cn!r}, expected "
                            f"{self.expected_cn!r}", url=self.base_url)
        self._cn_checked = True

    def _send(self, method: str, path: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        try:
            req = self._http.build_request(method, path, **kw)
            resp = self._http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise AgentUnreachable(f"agent at {self.base_url} unreachable ({type(e).__name__}: {e})",
                                   url=self.base_url) from e
        try:
            self._check_peer(resp)
        except FriezeError:
            resp.close()
            raise
        if resp.status_code >= 400:
            if stream:
                resp.read()
                resp.close()
            raise self._error(resp)
        return resp

    def _error(self, resp: httpx.Response) -> FriezeError:
        try:
            body = resp.json()
            err = body["error"]
            if not isinstance(err, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return AgentProtocolError(f"agent at {self.base_url} answered HTTP {resp.status_code} without an "
                                      f"error body", status=resp.status_code)
        return error_from_body(err, resp.status_code)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        try:
            return resp.json()
        except ValueError as e:
            raise AgentProtocolError(f"agent at {self.base_url} answered non-JSON for {path}") from e

    def _task(self, path: str, body: dict[str, Any] | None = None, *, idempotency_key: str | None = None,
              **kw: Any) -> Task:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if "content" not in kw:
            kw["json"] = body or {}
        return Task.model_validate(self._json("POST", path, headers=headers, **kw))

    # -- tasks ---------------------------------------------------------------------------------------
    def task(self, task_id: str) -> Task:
        return Task.model_validate(self._json("GET", f"/v1/tasks/{_q(task_id)}"))

    def wait(self, task_id: str, timeout: float = 120.0, *, raise_on_failure: bool = True) -> Task:
        """Poll until the task is finished; its error is raised as its class unless ``raise_on_failure`` is
        False. :class:`DeadlineExceeded` if it is still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            t = self.task(task_id)
            if t.finished:
                if t.state == "failed" and raise_on_failure:
                    assert t.error is not None
                    raise error_from_body(t.error.model_dump(), 500)
                return t
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"agent task {task_id} ({t.action} {t.target}) still {t.state} after "
                                       f"{timeout}s", task=task_id)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def run(self, task: Task, timeout: float = 120.0) -> Task:
        """Wait for a submitted task (raising its error)."""
        return self.wait(task.id, timeout)

    # -- meta ----------------------------------------------------------------------------------------
    def version(self) -> VersionInfo:
        return VersionInfo.model_validate(self._json("GET", "/v1/version"))

    def discover(self) -> Task:
        return self._task("/v1/discover")

    # -- apps ----------------------------------------------------------------------------------------
    def _app(self, app: str, action: str, body: dict[str, Any], key: str | None) -> Task:
        return self._task(f"/v1/apps/{_q(app)}/{action}", {k: v for k, v in body.items() if v is not None},
                          idempotency_key=key)

    def start(self, app: str, *, secrets: dict[str, str] | None = None, idempotency_key: str | None = None) -> Task:
        return self._app(app, "start", {"secrets": secrets}, idempotency_key)

    def stop(self, app: str, *, secrets: dict[str, str] | None = None, idempotency_key: str | None = None) -> Task:
        return self._app(app, "stop", {"secrets": secrets}, idempotency_key)

    def status(self, app: str, *, secrets: dict[str, str] | None = None) -> Task:
        return self._app(app, "status", {"secrets": secrets}, None)

    def verify(self, app: str, *, secrets: dict[str, str] | None = None) -> Task:
        return self._app(app, "verify", {"secrets": secrets}, None)

    def quiesce(self, app: str, *, epoch: int, lease_s: float | None = None, secrets: dict[str, str] | None = None,
                kind: str | None = None, data_dir: str | None = None, idempotency_key: str | None = None) -> Task:
        return self._app(app, "quiesce", {"epoch": epoch, "lease_s": lease_s, "secrets": secrets, "kind": kind,
                                          "data_dir": data_dir}, idempotency_key)

    def unquiesce(self, app: str, *, epoch: int, secrets: dict[str, str] | None = None,
                  idempotency_key: str | None = None) -> Task:
        return self._app(app, "unquiesce", {"epoch": epoch, "secrets": secrets}, idempotency_key)

    def recover(self, app: str, *, time: str | None = None, position: str | None = None, name: str | None = None,
                all_logs: bool = False, secrets: dict[str, str] | None = None,
                idempotency_key: str | None = None) -> Task:
        body: dict[str, Any] = {"time": time, "position": position, "name": name, "secrets": secrets}
        if all_logs:
            body["all_logs"] = True
        return self._app(app, "recover", body, idempotency_key)

    # -- volumes and snapshots -----------------------------------------------------------------------
    def snapshot(self, volume: str, *, snap_id: str, epoch: int, idempotency_key: str | None = None) -> Task:
        return self._task(f"/v1/volumes/{_q(volume)}/snapshots", {"snap_id": snap_id, "epoch": epoch},
                          idempotency_key=idempotency_key)

    def prepare_snapshot(self, volume: str, snap_id: str) -> Task:
        return self._task(f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/prepare")

    def delete_snapshot(self, volume: str, snap_id: str) -> Task:
        return self._task(f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/delete")

    def snapshot_exists(self, volume: str, snap_id: str) -> Task:
        return self._task(f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/exists")

    def entries(self, volume: str, snap_id: str) -> list[FileEntry]:
        """The snapshot's listing, each file with its BLAKE3 digest."""
        data = self._json("GET", f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/files")
        return [FileEntry.model_validate(e) for e in data]

    def changed_ranges(self, volume: str, snap_id: str, parent: str) -> dict[str, list[tuple[int, int]] | None]:
        """Per regular file of ``snap_id``: the byte ranges ``(offset, length)`` that may differ from the same
        path in snapshot ``parent`` (``[]``: unchanged), or None (read it all). NotSupported when the volume's
        provider cannot tell (copy, helper); NotFound when either snapshot is gone."""
        data = self._json("GET", f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/changes",
                          params={"parent": parent})
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            raise AgentProtocolError(f"agent at {self.base_url} answered changed ranges without 'files'")
        out: dict[str, list[tuple[int, int]] | None] = {}
        for path, ranges in files.items():
            if ranges is None:
                out[str(path)] = None
            elif isinstance(ranges, list) and all(isinstance(r, list) and len(r) == 2 for r in ranges):
                out[str(path)] = [(int(a), int(n)) for a, n in ranges]
            else:
                raise AgentProtocolError(f"agent at {self.base_url} sent malformed ranges for {path!r}")
        return out

    def read_file(self, volume: str, snap_id: str, path: str, *, offset: int = 0,
                  length: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of one file of the snapshot (a byte range when ``offset``/``length`` are given)."""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        resp = self._send("GET", f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/file",
                          params={"path": path}, headers=headers, stream=True)
        try:
            yield from resp.iter_bytes(chunk_size)
        finally:
            resp.close()

    def read_tar(self, volume: str, snap_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The whole snapshot as an uncompressed tar stream."""
        resp = self._send("GET", f"/v1/volumes/{_q(volume)}/snapshots/{_q(snap_id)}/tar", stream=True)
        try:
            yield from resp.iter_bytes(chunk_size)
        finally:
            resp.close()

    # -- restore -------------------------------------------------------------------------------------
    def target_state(self, target: str) -> Task:
        return self._task("/v1/restore/state", {"target": target})

    def target_digests(self, target: str) -> Task:
        """Task whose result is ``{"digests": {relative path: BLAKE3}}`` of the files under ``target``."""
        return self._task("/v1/restore/digests", {"target": target})

    def remove_target(self, target: str) -> Task:
        return self._task("/v1/restore/remove", {"target": target})

    def put_file(self, target: str, entry: FileEntry, chunks: Iterable[bytes] | None, *,
                 force: bool = False) -> dict[str, Any]:
        """Write one entry under ``target`` (a file is checked against ``entry.digest`` before it is kept)."""
        params: dict[str, Any] = {"target": target, "path": entry.path, "type": entry.type, "mode": entry.mode,
                                  "force": str(force).lower()}
        if entry.digest:
            params["digest"] = entry.digest
        if entry.target is not None:
            params["link"] = entry.target
        if entry.mtime_ns:
            params["mtime_ns"] = entry.mtime_ns
        if entry.uid is not None:
            params["uid"] = entry.uid
        if entry.gid is not None:
            params["gid"] = entry.gid
        content: Iterable[bytes] = chunks if chunks is not None else [b""]
        result: dict[str, Any] = self._json("PUT", "/v1/restore/file", params=params, content=content)
        return result

    def restore_tar(self, target: str, chunks: Iterable[bytes], *, force: bool = False) -> Task:
        """Send a tar stream to be unpacked under ``target``; returns the unpacking task."""
        return self._task("/v1/restore/tar", None, params={"target": target, "force": str(force).lower()},
                          content=chunks)

    # -- upgrade -------------------------------------------------------------------------------------
    def upgrade(self, data: bytes, sha256: str, filename: str) -> Task:
        """Offer a wheel or sdist; the agent checks ``sha256`` before anything, installs, restarts."""
        return self._task("/v1/upgrade", None, params={"sha256": sha256, "filename": filename}, content=data)
