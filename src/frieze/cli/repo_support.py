"""Helpers of ``frieze repo ...``: where the repository is, the password, opening, output, progress, errors.

- Location: ``--repo`` or ``FRIEZE_REPO``: a local directory (a relative one is taken relative to the current
  directory and always reported as the absolute path), ``file:///abs/path`` or ``s3://bucket/prefix?...``
  (S3 credentials from the usual AWS environment, never from the URL).
- Password: never from the command line. ``--password-file`` / ``FRIEZE_PASSWORD_FILE`` (``-`` = stdin),
  else ``FRIEZE_PASSWORD``, else an interactive prompt (when stdin is a terminal); otherwise a UsageError
  that says how to give one. The same for a second password (new key, copy destination) under other names.
- ``FRIEZE_INSECURE_TEST_KDF=1`` makes *new* key slots use deliberately weak KDF parameters (tests only;
  a warning is printed every time).
- Errors: every FriezeError goes to :func:`frieze.cli.errors.fail` (exit code from its class, JSON on stdout
  with ``--json``); an OSError becomes a StorageError (NoSpace for ENOSPC), Ctrl-C a Cancelled.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from frieze.cli.errors import fail
from frieze.core.errors import (
    Cancelled,
    Conflict,
    FriezeError,
    NoSpace,
    NotFound,
    StorageError,
    UsageError,
)

out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)  # warnings are not cut into lines

P = ParamSpec("P")
R = TypeVar("R")


# ----------------------------------------------------------------------------------------------- errors

def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command: project FriezeErrors (and translated OS errors / Ctrl-C) through ``fail``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from frieze.core.memtune import tune_gc, tune_malloc

        tune_malloc()  # a repository command runs the data path (frieze.core.memtune)
        tune_gc()
        as_json = bool(kwargs.get("as_json", False))
        try:
            return fn(*args, **kwargs)
        except FriezeError as e:
            fail(e, as_json=as_json)
        except KeyboardInterrupt:
            fail(Cancelled("interrupted (Ctrl-C); nothing was committed by the interrupted step"), as_json=as_json)
        except OSError as e:
            where = e.filename if e.filename is not None else ""
            msg = f"{e.strerror or e}{f': {where}' if where else ''}"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                fail(NoSpace(f"ENOSPC: no space left: {msg}", path=str(where)), as_json=as_json)
            fail(StorageError(msg, path=str(where), errno=errno.errorcode.get(e.errno or 0, "")), as_json=as_json)

    return wrapper


# ----------------------------------------------------------------------------------------------- output

def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


class Markup(str):
    """A table cell that is rich markup (every other cell is shown as plain text)."""


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else (v if isinstance(v, Markup) else escape(str(v))) for v in r])
    out.print(t)


def kv(data: dict[str, Any], title: str | None = None) -> None:
    t = Table(show_header=False, title=title)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in data.items():
        text = json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)
        t.add_row(escape(str(k)), "" if v is None else escape(text))
    out.print(t)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def warn(msg: str) -> None:
    err.print(f"[yellow]warning[/]: {escape(msg)}", highlight=False)


# --------------------------------------------------------------------------------------------- location

def repo_url(repo: str | None, *, option: str = "--repo", env: str = "FRIEZE_REPO") -> str:
    """The repository location as a store URL; a local path made absolute (relative to the cwd)."""
    if repo is None or not repo.strip():
        raise UsageError(f"no repository given: use {option} or set {env}")
    if "://" in repo:
        return repo
    return os.path.abspath(os.path.expanduser(repo))


def local_path(url: str) -> str | None:
    if url.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(url).path)
    if "://" in url:
        return None
    return url


def display(url: str) -> str:
    from frieze.repo.blobstore.registry import _safe

    return _safe(url)


def open_store(url: str, *, create: bool) -> Any:
    """The blob store at ``url``. Without ``create``, a local directory that does not exist is a NotFound
    (and is not created)."""
    from frieze.repo.blobstore.registry import open_store as _open

    lp = local_path(url)
    if lp is not None and not create:
        if not os.path.exists(lp):
            raise NotFound(f"no repository at {lp}: the directory does not exist", path=lp)
        if not os.path.isdir(lp):
            raise NotFound(f"no repository at {lp}: not a directory", path=lp)
    if lp is not None and create and os.path.isdir(lp):
        entries = [e for e in os.listdir(lp) if not e.startswith(".")]
        if entries and "config" not in entries:
            raise Conflict(f"refusing to create a repository in {lp}: the directory is not empty "
                           f"({len(entries)} entries, no repository config)", path=lp)
    return _open(url)


# --------------------------------------------------------------------------------------------- password

def _read_file(path: str, what: str) -> str:
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise NotFound(f"{what} file {path} does not exist", path=path) from None
        except OSError as e:
            raise UsageError(f"cannot read {what} file {path}: {e.strerror}", path=path) from None
    text = text.rstrip("\r\n")
    if not text:
        raise UsageError(f"{what} file {path} is empty", path=path)
    return text


def get_password(file_opt: Path | None, *, what: str = "repository password", file_env: str = "FRIEZE_PASSWORD_FILE",
                 env: str = "FRIEZE_PASSWORD", option: str = "--password-file", confirm: bool = False) -> str:
    """A password from the option's file, ``file_env``, ``env`` or a prompt; never from argv."""
    if file_opt is not None:
        return _read_file(str(file_opt), what)
    if os.environ.get(file_env):
        return _read_file(os.environ[file_env], what)
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise UsageError(f"no {what}: set {env}, {file_env} or use {option} (or run interactively)")
    import getpass

    pw = getpass.getpass(f"{what}: ")
    if not pw:
        raise UsageError(f"empty {what}")
    if confirm and getpass.getpass(f"{what} (again): ") != pw:
        raise UsageError(f"the two {what}s differ")
    return pw


def new_kdf() -> Any:
    from frieze.repo.types import KdfParams

    if os.environ.get("FRIEZE_INSECURE_TEST_KDF") == "1":
        warn("FRIEZE_INSECURE_TEST_KDF=1: the new key slot uses deliberately weak KDF parameters (tests only)")
        return KdfParams.cheap_for_tests()
    return KdfParams()


def state_dir() -> Path:
    from frieze.repo.snapshots import default_state_dir

    return Path(os.environ["FRIEZE_STATE_DIR"]) if os.environ.get("FRIEZE_STATE_DIR") else default_state_dir()


def open_repo(repo: str | None, password_file: Path | None, *, store: Any = None) -> Any:
    """Open the repository (config header first: FormatError if newer; WrongPassword; IntegrityError)."""
    from frieze.repo.repository import Repository

    url = repo_url(repo)
    st = store if store is not None else open_store(url, create=False)
    if st.stat("config") is None:
        raise NotFound(f"no repository at {display(url)}: object 'config' is missing", object="config")
    pw = get_password(password_file)
    return Repository.open(st, pw, state_dir=state_dir())


def default_host() -> str:
    return socket.gethostname() or "localhost"


# ----------------------------------------------------------------------------------------- counting store

class CountingStore:
    """A transparent BlobStore wrapper that counts the bytes read and written (for progress bars)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.bytes_read = 0
        self.bytes_written = 0
        self.deleted = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = self._inner.get(key, offset, length)
        with self._lock:
            self.bytes_read += len(data)
        return data

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._inner.put(key, data)
        with self._lock:
            self.bytes_written += len(data)

    def delete(self, key: str) -> None:
        self._inner.delete(key)
        with self._lock:
            self.deleted += 1


# ----------------------------------------------------------------------------------------------- progress

def progress_wanted(as_json: bool, quiet: bool, force: bool | None) -> bool:
    if as_json or quiet:
        return False
    if force is not None:
        return force
    return err.is_terminal


class _Throughput(ProgressColumn):
    """Average throughput since the start (rich's own speed column shows '?' until it has samples)."""

    def render(self, task: Task) -> Text:
        el = task.elapsed or 0.0
        if el <= 0 or not task.completed:
            return Text("-- B/s", style="progress.data.speed")
        return Text(f"{human_bytes(task.completed / el)}/s", style="progress.data.speed")


class Bar:
    """A rich progress bar on stderr (bytes, throughput, ETA) fed by the library's progress events."""

    def __init__(self, enabled: bool, description: str, force_terminal: bool = False) -> None:
        self.enabled = enabled
        self.description = description
        self._console = (Console(stderr=True, force_terminal=True, emoji=False)
                         if force_terminal and not err.is_terminal else err)
        self._prog: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Bar:
        if self.enabled:
            self._prog = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                _Throughput(), TextColumn("{task.fields[files]}"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=self._console, transient=False,
                refresh_per_second=5)
            self._prog.start()
            self._task = self._prog.add_task(self.description, total=None, files="")
        return self

    def update(self, done: int, total: int | None, files: str = "") -> None:
        if self._prog is not None and self._task is not None:
            self._prog.update(self._task, completed=done, total=total or None, files=files)

    def event(self, p: Any) -> None:
        """A :class:`frieze.repo.progress.Progress` event."""
        files = f"{p.files_done}/{p.files_total} files" if p.files_total else f"{p.files_done} files"
        self.update(p.bytes_done, p.bytes_total or None, files)

    def __exit__(self, *exc: object) -> None:
        if self._prog is not None:
            self._prog.stop()


@contextmanager
def polled(bar: Bar, read: Callable[[], tuple[int, int | None, str]], interval: float = 0.2) -> Iterator[None]:
    """Feed ``bar`` from ``read()`` on a thread (for work whose library call has no progress events)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            bar.update(*read())

    t = threading.Thread(target=loop, daemon=True, name="frieze-progress") if bar.enabled else None
    if t is not None:
        t.start()
    try:
        yield
    finally:
        stop.set()
        if t is not None:
            t.join()
        bar.update(*read())


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
