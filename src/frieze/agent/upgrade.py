"""Installing a new agent version next to the current one, switching to it, and rolling back.

Layout under the install root::

    <root>/versions/<version>-<sha8>/lib   pip install --no-deps --no-index --target of the offered wheel/sdist
    <root>/current -> versions/<...>       switched atomically (symlink to a temp name, then rename)
    <root>/upgrade.json                    {"previous", "new", "new_version"} while an upgrade is on trial
    <root>/incoming/                       the offered file, only after its SHA-256 matched

Contract: :meth:`Installer.check_offer` verifies the hash before anything is written (mismatch →
:class:`IntegrityError`, nothing changed). :meth:`Installer.install` installs into a fresh directory (a failed
install, or a distribution that is not frieze, removes it; ``current`` is untouched), then records the trial
and switches ``current``. The supervisor (``frieze.agent.daemon``) starts the new version and calls
:meth:`Installer.rollback` if it does not report healthy in time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from frieze.core.errors import FriezeError, IntegrityError, UsageError

_FILENAME = re.compile(r"^[A-Za-z0-9_.+-]+\.(whl|tar\.gz|zip)$")


class InstallFailed(FriezeError):
    """Installing the offered version failed; nothing was switched."""

    code = "agent.install_failed"
    exit_code = 16
    http_status = 500


class Installer:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @property
    def trial_file(self) -> Path:
        return self.root / "upgrade.json"

    def current(self) -> Path | None:
        """The version directory ``current`` points at (None: the base installation)."""
        if not self.current_link.is_symlink():
            return None
        return self.current_link.resolve()

    def lib_path(self) -> str | None:
        cur = self.current()
        return str(cur / "lib") if cur is not None else None

    # -- offer ---------------------------------------------------------------------------------------
    @staticmethod
    def check_offer(data: bytes, sha256: str, filename: str) -> None:
        if not _FILENAME.match(filename):
            raise UsageError(f"upgrade: {filename!r} is not a wheel or sdist file name", filename=filename)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise UsageError("upgrade: sha256 must be 64 lowercase hex digits")
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise IntegrityError(f"upgrade: {filename} has SHA-256 {got}, not the announced {sha256}; refused, "
                                 "nothing changed", filename=filename, sha256=got)

    def install(self, data: bytes, sha256: str, filename: str, running_version: str) -> tuple[bool, str,
                                                                                                dict[str, Any]]:
        self.check_offer(data, sha256, filename)
        versions = self.root / "versions"
        incoming = self.root / "incoming"
        versions.mkdir(parents=True, exist_ok=True)
        incoming.mkdir(parents=True, exist_ok=True)
        dist = incoming / filename
        dist.write_bytes(data)
        tmp = versions / f".tmp-{secrets.token_hex(4)}"
        try:
            argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "--quiet", "--no-compile", "--target", str(tmp / "lib")]
            if not filename.endswith(".whl"):
                argv.append("--no-build-isolation")
            r = subprocess.run([*argv, str(dist)], capture_output=True, text=True, timeout=600,
                               env=_clean_env())
            if r.returncode != 0:
                raise InstallFailed(f"upgrade: pip could not install {filename}: {(r.stderr or r.stdout)[-600:]}",
                                    filename=filename)
            version = _frieze_version(tmp / "lib")
            if version is None:
                raise InstallFailed(f"upgrade: {filename} is not a frieze distribution", filename=filename)
            final = versions / f"{version}-{sha256[:8]}"
            if final.exists():
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                dist.unlink()
        cur = self.current()
        if cur == final.resolve():
            return False, f"agent is already at {version} ({final.name})", {"from": running_version, "to": version}
        with contextlib.suppress(FileNotFoundError):
            (self.root / "rolled_back.json").unlink()  # a new trial: the last rollback is history
        self.trial_file.write_text(json.dumps({"previous": str(cur) if cur else None, "new": str(final),
                                               "new_version": version, "from_version": running_version}))
        self.switch(final)
        return True, f"installed {version}; restarting into it", {"from": running_version, "to": version,
                                                                   "dir": str(final)}

    def switch(self, to: Path | None) -> None:
        """Point ``current`` at ``to`` (None: remove it, back to the base installation), atomically."""
        if to is None:
            with contextlib.suppress(FileNotFoundError):
                self.current_link.unlink()
            return
        tmp = self.root / f".current-{secrets.token_hex(4)}"
        os.symlink(os.path.relpath(to, self.root), tmp)
        os.replace(tmp, self.current_link)

    def trial(self) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = json.loads(self.trial_file.read_text())
            return out
        except (FileNotFoundError, ValueError):
            return None

    def accept(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.trial_file.unlink()

    def rollback(self) -> dict[str, Any] | None:
        """Switch back to the trial's previous version; returns the trial record (None if none)."""
        t = self.trial()
        if t is None:
            return None
        prev = t.get("previous")
        self.switch(Path(prev) if prev else None)
        (self.root / "rolled_back.json").write_text(json.dumps(t))
        self.accept()
        return t

    def rolled_back_from(self) -> str | None:
        try:
            return str(json.loads((self.root / "rolled_back.json").read_text()).get("new_version"))
        except (FileNotFoundError, ValueError):
            return None


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["PIP_NO_INPUT"] = "1"
    return env


def _frieze_version(lib: Path) -> str | None:
    for d in distributions(path=[str(lib)]):
        if (d.metadata["Name"] or "").lower() == "frieze":
            return str(d.version)
    return None
