"""script plug-in: hooks run as argv without a shell, get secrets on stdin only (never argv or environment),
are killed at their timeout, and honour on_error = fail | continue."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frieze.core.errors import NotFound, UsageError
from frieze.host.apps.base import AppSpec
from frieze.host.apps.script import HookFailed, ScriptPlugin

SECRET = "s3cr3t-" + "x" * 8

#: A hook that records what it saw: its argv, its environment, its stdin, and its own /proc cmdline/environ.
RECORDER = r"""
import json, os, sys
out = sys.argv[1]
rec = {"argv": sys.argv, "env": dict(os.environ), "stdin": sys.stdin.read(),
       "proc_cmdline": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
       "proc_environ": open("/proc/self/environ", "rb").read().decode(errors="replace")}
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


@pytest.fixture
def d() -> Iterator[Path]:
    p = Path(tempfile.mkdtemp(prefix="frieze-hooks-"))
    (p / "rec.py").write_text(RECORDER)
    yield p
    shutil.rmtree(p, ignore_errors=True)


def spec(d: Path, q: list[str], u: list[str], **opts: Any) -> AppSpec:
    return AppSpec("hooks", "script", str(d), options={"quiesce": q, "unquiesce": u, **opts},
                   secrets={"password": SECRET})


def recs(d: Path) -> list[dict[str, Any]]:
    f = d / "out.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def test_hooks_get_secrets_on_stdin_only(d: Path) -> None:
    hook = [sys.executable, str(d / "rec.py"), str(d / "out.jsonl")]
    p = ScriptPlugin()
    s = spec(d, hook, hook, timeout_s=20)
    h = p.quiesce(s, epoch=5, lease_s=30)
    assert h.info.get("hook_failed") is None
    assert p.unquiesce(s, epoch=5).changed
    r = recs(d)
    assert [json.loads(x["stdin"])["phase"] for x in r] == ["quiesce", "unquiesce"]
    assert json.loads(r[0]["stdin"])["secrets"] == {"password": SECRET}
    assert json.loads(r[0]["stdin"])["epoch"] == 5
    for x in r:
        assert SECRET not in json.dumps(x["argv"]) and SECRET not in x["proc_cmdline"]
        assert SECRET not in json.dumps(x["env"]) and SECRET not in x["proc_environ"]
        assert x["env"]["FRIEZE_APP"] == "hooks"
    assert SECRET not in repr(h) and SECRET not in json.dumps(h.info)


def test_failing_quiesce_hook_fail_mode_undoes_and_raises(d: Path) -> None:
    rec = [sys.executable, str(d / "rec.py"), str(d / "out.jsonl")]
    p = ScriptPlugin()
    s = spec(d, [*rec, "3"], rec, on_error="fail")
    with pytest.raises(HookFailed) as ei:
        p.quiesce(s, epoch=1, lease_s=30)
    assert "exited 3" in str(ei.value) and SECRET not in str(ei.value)
    assert [json.loads(x["stdin"])["phase"] for x in recs(d)] == ["quiesce", "unquiesce"]  # undo ran
    assert p.status(s)["quiesced"] is False
    assert not p.unquiesce(s, epoch=1).changed


def test_failing_quiesce_hook_continue_mode_labels_crash_consistent(d: Path) -> None:
    rec = [sys.executable, str(d / "rec.py"), str(d / "out.jsonl")]
    p = ScriptPlugin()
    s = spec(d, [*rec, "1"], rec, on_error="continue")
    h = p.quiesce(s, epoch=1, lease_s=30)
    assert h.info["hook_failed"] is True and h.info["consistency"] == "crash"
    assert p.unquiesce(s, epoch=1).changed


def test_hook_timeout_kills_the_hook(d: Path) -> None:
    marker = d / "late"
    sleeper = [sys.executable, "-c", f"import time; time.sleep(5); open({str(marker)!r}, 'w').close()"]
    p = ScriptPlugin()
    s = spec(d, sleeper, ["true"], timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(HookFailed) as ei:
        p.quiesce(s, epoch=1, lease_s=30)
    assert time.monotonic() - t0 < 3
    assert "timed out" in str(ei.value)
    time.sleep(5.5)
    assert not marker.exists(), "the timed-out hook kept running"


def test_bad_hook_config_is_refused_before_running_anything(d: Path) -> None:
    p = ScriptPlugin()
    with pytest.raises(UsageError):
        p.quiesce(spec(d, "echo hi", ["true"]), epoch=1, lease_s=5)  # type: ignore[arg-type]  # a shell string
    with pytest.raises(UsageError):
        p.quiesce(spec(d, ["true"], ["true"], on_error="ignore"), epoch=1, lease_s=5)
    with pytest.raises(NotFound):
        p.quiesce(spec(d, ["/nonexistent/hook"], ["true"]), epoch=1, lease_s=5)
    with pytest.raises(UsageError):
        p.quiesce(AppSpec("h", "script", str(d), options={"unquiesce": ["true"]}), epoch=1, lease_s=5)
