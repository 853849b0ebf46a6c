"""Benchmark: the fsfreeze window a writer sees, on XFS and btrfs, through the freeze guardian.

``python -m frieze.host.bench_freeze [--trials 20] [--hold-ms 0] [--mount PATH ...]``

For each file system: a writer process appends 64 KiB blocks to a file on the mount (``fdatasync`` every
16 writes, so there is dirty data to flush when the freeze comes) and logs how long each write took; the
bench asks a guardian (started for the run) to freeze the mount, holds the freeze ``--hold-ms``, thaws, and
waits 200 ms before the next trial. Per file system it prints::

    RESULT freeze_window fs=xfs trials=20 window_ms_p50=... window_ms_p99=... window_ms_max=...
        freeze_ms_p50=... writer_stall_ms_p50=... writer_stall_ms_p99=... writer_stall_ms_max=...

``window_ms`` is the guardian's monotonic freeze start → thaw done; ``freeze_ms`` the FIFREEZE call alone
(the flush); ``writer_stall_ms`` the longest single write of the writer that overlapped the freeze (what
the application saw). Without ``--mount`` it makes XFS (reflink) and btrfs file systems on loop devices in a
temp dir (root needed) and always removes them. Never point ``--mount`` at a file system that anything
important writes to: it is frozen repeatedly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from frieze.host.guardian.client import GuardianClient, spawn_guardian

WRITER = r"""
import os, sys, time, json
path, stop = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
buf = os.urandom(65536)
slow = []
n = 0
while not os.path.exists(stop):
    t0 = time.monotonic()
    os.write(fd, buf)
    n += 1
    if n % 16 == 0:
        os.fdatasync(fd)
    if n % 512 == 0:
        os.ftruncate(fd, 0); os.lseek(fd, 0, 0)
    t1 = time.monotonic()
    if t1 - t0 > 0.002:
        slow.append((t0, t1))
print(json.dumps({"writes": n, "slow": slow}))
"""


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def _loop_fs(fstype: str, base: str) -> Iterator[str]:
    img, mnt = os.path.join(base, f"{fstype}.img"), os.path.join(base, fstype)
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(512 * 1024 * 1024)
    mkfs = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[fstype]
    _run([*mkfs, img])
    dev = subprocess.run(["losetup", "--find", "--show", img], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        _run(["mount", "-t", fstype, dev, mnt])
        try:
            yield mnt
        finally:
            subprocess.run(["fsfreeze", "-u", mnt], capture_output=True, check=False)
            subprocess.run(["umount", mnt], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def bench_mount(sock: str, mount: str, label: str, trials: int, hold_ms: float) -> dict[str, float]:
    stop = os.path.join(tempfile.gettempdir(), f"frieze-bench-stop-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stop)
    w = subprocess.Popen([sys.executable, "-c", WRITER, os.path.join(mount, "bench-writer.dat"), stop],
                         stdout=subprocess.PIPE, text=True)
    windows: list[tuple[float, float, float, float]] = []  # (start, end, window_ms, freeze_ms)
    try:
        time.sleep(0.5)
        with GuardianClient(sock) as c:
            for i in range(trials):
                t0 = time.monotonic()
                f = c.freeze_fs(mount, 10.0, epoch=int(time.time() * 1000) * 1000 + i)
                if hold_ms:
                    time.sleep(hold_ms / 1000)
                win = c.thaw(f.freeze_id, f.epoch)
                windows.append((t0, time.monotonic(), win, f.frozen_ms))
                time.sleep(0.2)
    finally:
        open(stop, "w").close()  # touch: tells the writer to stop
        out, _ = w.communicate(timeout=30)
        os.unlink(stop)
    slow = json.loads(out.strip().splitlines()[-1])["slow"] if out.strip() else []
    stalls = []
    for a, b, _win, _fz in windows:
        stalls.append(max([(e - s) * 1000 for s, e in slow if s < b and e > a], default=0.0))
    res = {
        "window_ms_p50": _pct([x[2] for x in windows], 0.5), "window_ms_p99": _pct([x[2] for x in windows], 0.99),
        "window_ms_max": max(x[2] for x in windows), "freeze_ms_p50": _pct([x[3] for x in windows], 0.5),
        "writer_stall_ms_p50": _pct(stalls, 0.5), "writer_stall_ms_p99": _pct(stalls, 0.99),
        "writer_stall_ms_max": max(stalls),
    }
    print(f"RESULT freeze_window fs={label} trials={trials} hold_ms={hold_ms:g} "
          + " ".join(f"{k}={v:.1f}" for k, v in res.items()), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_freeze", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--hold-ms", type=float, default=0.0, help="how long to hold each freeze before thawing")
    ap.add_argument("--mount", action="append", default=[], help="an existing mount to use (repeatable)")
    args = ap.parse_args(argv)
    if args.trials < 1:
        ap.error("--trials must be >= 1")
    base = tempfile.mkdtemp(prefix="frieze-bench-freeze-")
    sock = os.path.join(base, "guardian.sock")
    g = spawn_guardian(sock, quiet=True)
    try:
        if args.mount:
            for m in args.mount:
                bench_mount(sock, m, m, args.trials, args.hold_ms)
        else:
            if os.geteuid() != 0:
                print("bench_freeze: making loop file systems needs root; pass --mount", file=sys.stderr)
                return 2
            for fstype in ("xfs", "btrfs"):
                with _loop_fs(fstype, base) as mnt:
                    bench_mount(sock, mnt, fstype, args.trials, args.hold_ms)
    finally:
        g.send_signal(signal.SIGTERM)
        try:
            g.wait(10)
        except subprocess.TimeoutExpired:
            g.kill()
            g.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
