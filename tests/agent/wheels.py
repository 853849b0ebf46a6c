"""Build a real, pip-installable wheel of frieze at another version, from this checkout's ``src/frieze``.

The venv has no ``wheel`` package and an old setuptools (no built-in bdist_wheel), so the wheel is assembled
here by the spec (PEP 427: the package files, ``*.dist-info/METADATA``, ``WHEEL``, ``entry_points.txt`` and a
``RECORD`` of sha256 digests); pip installs and checks it like any other wheel. ``broken=True`` makes a wheel
whose agent exits at start (for the rollback test).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from tests.agent.support import REPO

BROKEN_MAIN = '"""A broken agent release: exits at start."""\n\nraise SystemExit(3)\n'


def _rec(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_frieze_wheel(version: str, out: Path, *, broken: bool = False) -> Path:
    src = REPO / "src" / "frieze"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"frieze-{version}-py3-none-any.whl"
    dist = f"frieze-{version}.dist-info"
    records: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        def add(name: str, data: bytes) -> None:
            z.writestr(name, data)
            records.append(_rec(name, data))

        for f in sorted(src.rglob("*")):
            if f.is_dir() or "__pycache__" in f.parts or f.suffix in (".pyc",):
                continue
            rel = "frieze/" + f.relative_to(src).as_posix()
            data = f.read_bytes()
            if rel == "frieze/__init__.py":
                data = data.replace(b'__version__ = "0.1.0"', f'__version__ = "{version}"'.encode())
            if broken and rel == "frieze/agent/__main__.py":
                data = BROKEN_MAIN.encode()
            add(rel, data)
        add(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: frieze\nVersion: {version}\n".encode())
        add(f"{dist}/WHEEL", b"Wheel-Version: 1.0\nGenerator: frieze-tests\nRoot-Is-Purelib: true\n"
                             b"Tag: py3-none-any\n")
        add(f"{dist}/top_level.txt", b"frieze\n")
        records.append(f"{dist}/RECORD,,")
        z.writestr(f"{dist}/RECORD", "\n".join(records) + "\n")
    return path
