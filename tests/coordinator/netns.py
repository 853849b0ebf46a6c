"""Network namespaces for end-to-end tests: one namespace per host, joined to the root namespace by a veth
pair on its own /30 (root side ``.1``, host side ``.2``). Namespaces cannot reach each other (no route, no
forwarding): each agent sees the coordinator and nothing else. Unix sockets and files are shared (the
engines' sockets live in the file system), so an agent in a namespace still reaches its local database.

    with namespaces(["a", "b"]) as nets:
        nets["a"].ip      # 10.X.1.2, where the agent listens
        nets["a"].gw      # 10.X.1.1, where it reaches the coordinator
        nets["a"].wrap(argv)  # ["ip", "netns", "exec", name, *argv]
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Net:
    name: str
    ip: str
    gw: str

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def tcp_open(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((ip, port)) == 0


@contextmanager
def namespaces(names: list[str]) -> Iterator[dict[str, Net]]:
    """Create one namespace per name (unique per call); always deleted afterwards."""
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    octet = random.randrange(100, 250)
    made: list[str] = []
    nets: dict[str, Net] = {}
    try:
        for i, n in enumerate(names, start=1):
            ns, root_if, ns_if = f"fz{tag}{n}", f"fz{tag}{n}r", f"fz{tag}{n}n"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", ns)
            gw, ip = f"10.{octet}.{i}.1", f"10.{octet}.{i}.2"
            _ip("addr", "add", f"{gw}/30", "dev", root_if)
            _ip("link", "set", root_if, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{ip}/30", "dev", ns_if)
            _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            nets[n] = Net(ns, ip, gw)
        yield nets
    finally:
        for ns in made:  # deleting the namespace destroys its veth end, and with it the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
