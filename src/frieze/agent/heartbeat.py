"""Heartbeats to the coordinator: ``POST /v1/agents/heartbeat {version, address}`` with the agent's own
certificate, every ``heartbeat_s`` seconds, so the coordinator's registry keeps the host online and knows the
agent's version (after an upgrade too). Failures are logged (never a secret) and never stop the agent."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

import frieze
from frieze.agent.config import HostConfig
from frieze.protocol.ca import client_context

log = logging.getLogger("frieze.agent.heartbeat")


def coordinator_url(cfg: HostConfig) -> str | None:
    if cfg.coordinator_url:
        return cfg.coordinator_url
    try:
        url = json.loads((Path(cfg.state_dir) / "enrollment.json").read_text()).get("coordinator")
        return str(url) if url else None
    except (FileNotFoundError, ValueError):
        return None


class Heartbeat:
    def __init__(self, cfg: HostConfig, tls: dict[str, Path]) -> None:
        self.cfg = cfg
        self.url = coordinator_url(cfg)
        self.tls = tls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frieze-heartbeat", daemon=True)
        self.sent = 0

    def start(self) -> None:
        if self.url and self.cfg.heartbeat_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> bool:
        assert self.url is not None
        ctx = client_context(self.tls["cert"], self.tls["key"], self.tls["ca"])
        body = {"version": frieze.__version__, "address": self.cfg.advertise or self.cfg.listen}
        try:
            r = httpx.post(self.url.rstrip("/") + "/v1/agents/heartbeat", json=body, verify=ctx, timeout=10)
        except httpx.TransportError as e:
            log.warning("heartbeat to %s failed: %s", self.url, type(e).__name__)
            return False
        if r.status_code >= 400:
            log.warning("heartbeat to %s refused: HTTP %s", self.url, r.status_code)
            return False
        self.sent += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.cfg.heartbeat_s)
