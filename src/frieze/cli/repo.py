"""``frieze repo ...``: the repository on its own (no coordinator): init, backup, restore, ls, snapshots, diff,
check, forget, prune, copy, keys, stats.

Where and who (see :mod:`frieze.cli.repo_support`): ``--repo`` or ``FRIEZE_REPO``; the password from
``--password-file`` / ``FRIEZE_PASSWORD_FILE``, ``FRIEZE_PASSWORD`` or a prompt, never from the command line.
Every command takes ``--json`` (one JSON document on stdout; errors as ``{"error": {...}}``); the exit code
is the error class's (``frieze.core.errors``). Long work shows a progress bar on stderr when it is a terminal
(``--progress`` forces it, ``--quiet`` or ``--json`` hide it).

Snapshot references: a full id, a unique prefix, ``latest``, or ``tag:NAME`` (the newest snapshot with that tag).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from frieze.cli.repo_support import (
    Bar,
    CountingStore,
    Markup,
    default_host,
    display,
    emit_json,
    handle_errors,
    human_bytes,
    kv,
    local_path,
    new_kdf,
    open_repo,
    open_store,
    out,
    polled,
    progress_wanted,
    repo_url,
    state_dir,
    table,
    warn,
)
from frieze.core.errors import AlreadyExists, Conflict, IntegrityError, NotFound, UsageError

app = typer.Typer(help="The repository on its own: init, backup, restore, ls, snapshots, diff, check, forget, "
                       "prune, copy, keys.", no_args_is_help=True)
keys_app = typer.Typer(help="Key slots: list, add, remove, rotate the password.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

Repo = Annotated[str | None, typer.Option("--repo", envvar="FRIEZE_REPO", show_envvar=True,
                                          help="repository: a directory, file:///path or s3://bucket/prefix")]
PasswordFile = Annotated[Path | None, typer.Option(
    "--password-file", envvar="FRIEZE_PASSWORD_FILE", show_envvar=True,
    help="file holding the password ('-' = stdin); else FRIEZE_PASSWORD, else a prompt")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout (errors too)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar, minimal output")]
ShowProgress = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                   help="force the progress bar on or off (default: on a terminal)")]


def _resolve(repo: Any, ref: str | None) -> str:
    """A snapshot reference → what ``load_snapshot`` takes (``tag:NAME`` → the newest id with that tag)."""
    if ref is None or not ref.strip():
        raise UsageError("no snapshot given (an id, a prefix, 'latest' or tag:NAME)")
    if ref.startswith("tag:"):
        tag = ref[4:]
        hits = [s for s in repo.list_snapshots() if tag in s.tags]
        if not hits:
            raise NotFound(f"no snapshot has the tag {tag!r}", object=ref)
        return str(max(hits, key=lambda s: (s.time, s.seq, s.id)).id)
    return ref


def _duration_s(text: str, what: str) -> float:
    from frieze.core.retention import parse_duration

    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text).total_seconds()
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


# ------------------------------------------------------------------------------------------------- init

@app.command()
@handle_errors
def init(repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False,
         compression_level: Annotated[int, typer.Option(help="zstd level for data blobs")] = 1,
         pack_size_mib: Annotated[int, typer.Option(help="target pack size in MiB")] = 16) -> None:
    """Create a new, empty repository (a directory is created if missing; a non-empty one is refused)."""
    from frieze.cli.repo_support import get_password
    from frieze.repo.repository import Repository
    from frieze.repo.types import RepoParams

    url = repo_url(repo)
    if not 1 <= compression_level <= 22:
        raise UsageError(f"--compression-level {compression_level}: use 1..22")
    if not 1 <= pack_size_mib <= 1024:
        raise UsageError(f"--pack-size-mib {pack_size_mib}: use 1..1024")
    lp = local_path(url)
    if lp is not None and os.path.exists(os.path.join(lp, "config")):
        raise AlreadyExists(f"a repository already exists at {lp} (object 'config' is present)", object="config")
    pw = get_password(password_file, confirm=True)
    st = open_store(url, create=True)
    r = Repository.init(st, pw, params=RepoParams(kdf=new_kdf(), compression_level=compression_level,
                                                  pack_size=pack_size_mib << 20), state_dir=state_dir())
    res = {"repository": r.id, "location": display(url), "format_version": r.config.version,
           "key_slot": r.slot_id}
    if as_json:
        emit_json(res)
    else:
        out.print(f"created repository [bold]{r.id}[/] at {display(url)}")


# ----------------------------------------------------------------------------------------------- backup

@app.command()
@handle_errors
def backup(paths: Annotated[list[str] | None, typer.Argument(help="files or directories to back up")] = None,
           tag: Annotated[list[str] | None, typer.Option("--tag", help="tag (repeatable)")] = None,
           host: Annotated[str | None, typer.Option(help="host name recorded (default: this host)")] = None,
           label: Annotated[str | None, typer.Option(help="arbitrary JSON kept with the snapshot")] = None,
           parent: Annotated[str, typer.Option(
               help="'auto' (newest snapshot of the same host and paths), 'none', or a snapshot")] = "auto",
           fixed_blocks: Annotated[list[str] | None, typer.Option(
               "--fixed-blocks", help="GLOB=PAGE[:BLOCK] or postgres/innodb: page-aligned blocks")] = None,
           changed_ranges: Annotated[Path | None, typer.Option(
               help="JSON file: snapshot path -> [[offset, length], ...] or null")] = None,
           changed_paths: Annotated[Path | None, typer.Option(
               help="JSON file: array of every snapshot path that may differ from the parent "
                    "(other directories keep the parent's subtree unwalked)")] = None,
           threads: Annotated[int | None, typer.Option(help="worker threads (default: CPUs)")] = None,
           read_threads: Annotated[int, typer.Option(help="files read at once (0: read by the walking thread)")] = 2,
           direct_io: Annotated[bool, typer.Option(
               "--direct-io/--no-direct-io",
               help="read with O_DIRECT (around the page cache): fixed blocks and whole chunked files")] = True,
           repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
           progress: ShowProgress = None) -> None:
    """Back up files and directories as one snapshot (unchanged files of the parent are not read again)."""
    from frieze.repo.backup import backup as do_backup
    from frieze.repo.backup import load_changed_paths, load_changed_ranges
    from frieze.repo.chunking import parse_fixed_blocks

    if not paths:
        raise UsageError("backup needs at least one path")
    abs_paths = [os.path.abspath(p) for p in paths]
    for p in abs_paths:  # before the password prompt, and before anything is written
        if not os.path.lexists(p):
            raise NotFound(f"backup path {p} does not exist", path=p)
    lab: Any = None
    if label is not None:
        try:
            lab = json.loads(label)
        except ValueError as e:
            raise UsageError(f"--label is not valid JSON ({e})") from None
    globs = parse_fixed_blocks(fixed_blocks or [])
    ranges = load_changed_ranges(changed_ranges) if changed_ranges is not None else None
    cpaths = load_changed_paths(changed_paths) if changed_paths is not None else None
    if cpaths is not None and parent == "none":
        raise UsageError("--changed-paths needs a parent snapshot (not --parent none)")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if not 0 <= read_threads <= 64:
        raise UsageError(f"--read-threads must be between 0 and 64, not {read_threads}")
    r = open_repo(repo, password_file)
    par: str | None = None if parent == "none" else ("auto" if parent == "auto" else _resolve(r, parent))
    show = progress_wanted(as_json, quiet, progress)
    with Bar(show, "backup", force_terminal=bool(progress)) as bar:
        res = do_backup(r, list(abs_paths), host=host or default_host(), tags=list(tag or []), label=lab,
                        parent=par, changed_ranges=ranges, changed_paths=cpaths,
                        fixed_block_globs=globs or None, progress=bar.event if show else None, threads=threads,
                        read_threads=read_threads, direct_io=direct_io)
    s = res.stats
    if as_json:
        emit_json({"repository": r.id, **res.to_dict()})
        return
    if quiet:
        out.print(res.snapshot_id)
        return
    rate = s.bytes_total / s.duration_s if s.duration_s else 0.0
    out.print(f"snapshot [bold]{res.snapshot_id[:8]}[/] saved ({res.snapshot_id})"
              + (f", parent {res.parent[:8]}" if res.parent else ", no parent"))
    out.print(f"  {s.files} files, {s.dirs} dirs, {human_bytes(s.bytes_total)} in {s.duration_s:.1f} s "
              f"({human_bytes(rate)}/s); {s.files_unchanged} unchanged"
              + (f", {s.subtrees_kept} directories kept unwalked" if s.subtrees_kept else "")
              + f", read {human_bytes(s.bytes_read)}, "
              f"new {human_bytes(s.bytes_new)} in {s.chunks_new} chunks", markup=False)
    for w in s.warnings[:20]:
        warn(w)
    if len(s.warnings) > 20:
        warn(f"... and {len(s.warnings) - 20} more warnings (see --json)")


# ---------------------------------------------------------------------------------------------- restore

@app.command()
@handle_errors
def restore(snapshot: Annotated[str | None, typer.Argument(help="id, prefix, latest or tag:NAME")] = None,
            paths: Annotated[list[str] | None, typer.Argument(help="only these snapshot paths")] = None,
            target: Annotated[str | None, typer.Option("--target", "-t", help="directory to restore into")] = None,
            overwrite: Annotated[bool, typer.Option(help="allow a non-empty target (files are replaced)")] = False,
            verify: Annotated[bool, typer.Option(help="write nothing: compare the target with the snapshot")] = False,
            allow_devices: Annotated[bool, typer.Option(help="create device files (needs privilege)")] = False,
            threads: Annotated[int | None, typer.Option(help="worker threads (default: CPUs)")] = None,
            direct_io: Annotated[bool, typer.Option(
                "--direct-io/--no-direct-io", help="write long runs of large files with O_DIRECT")] = True,
            repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
            progress: ShowProgress = None) -> None:
    """Restore a snapshot, or chosen paths of it, into a target directory (never writes outside it)."""
    from frieze.repo.restore import restore as do_restore

    if target is None or not target.strip():
        raise UsageError("restore needs --target DIR")
    tgt = os.path.abspath(target)
    if verify:
        if not os.path.isdir(tgt):
            raise NotFound(f"restore --verify: target {tgt} is not a directory", path=tgt)
    elif os.path.lexists(tgt):
        if os.path.islink(tgt) or not os.path.isdir(tgt):
            raise Conflict(f"restore target {tgt} exists and is not a directory", path=tgt)
        if os.listdir(tgt) and not overwrite:
            raise Conflict(f"restore target {tgt} is not empty (use --overwrite to restore into it anyway)",
                           path=tgt)
    r = open_repo(repo, password_file)
    ref = _resolve(r, snapshot)
    show = progress_wanted(as_json, quiet, progress)
    created = not os.path.lexists(tgt)
    try:
        with Bar(show, "verify" if verify else "restore", force_terminal=bool(progress)) as bar:
            res = do_restore(r, ref, tgt, paths=list(paths) if paths else None, verify=verify,
                             allow_devices=allow_devices, threads=threads, progress=bar.event if show else None,
                             direct_io=direct_io)
    except BaseException:
        if created and os.path.isdir(tgt) and not os.listdir(tgt):
            os.rmdir(tgt)  # a refused restore leaves no trace (an empty target it created itself)
        raise
    s = res.stats
    failed = IntegrityError(f"{len(s.mismatches)} difference(s) between {res.target} and snapshot "
                            f"{res.snapshot_id[:8]}", snapshot=res.snapshot_id,
                            mismatches=s.mismatches[:100]) if verify and s.mismatches else None
    if as_json:
        emit_json({"repository": r.id, **res.to_dict(), **({"error": failed.to_dict()} if failed else {})})
    elif not quiet:
        rate = s.bytes_written / s.duration_s if s.duration_s else 0.0
        verb = "verified against" if verify else "restored into"
        out.print(f"snapshot [bold]{res.snapshot_id[:8]}[/] {verb} {escape(res.target)}: {s.files} files, "
                  f"{s.dirs} dirs, {s.symlinks} symlinks, {human_bytes(s.bytes_written or s.bytes_verified)} in "
                  f"{s.duration_s:.1f} s ({human_bytes(rate)}/s)")
        for w in s.warnings[:20]:
            warn(w)
        for m in s.mismatches[:50]:
            out.print(f"  [red]differs[/] {escape(m)}")
    if failed is not None:
        if as_json:
            raise SystemExit(failed.exit_code)  # the JSON document (with "error") is already out
        raise failed


# ------------------------------------------------------------------------------------------- snapshots

@app.command("snapshots")
@handle_errors
def snapshots_cmd(host: Annotated[str | None, typer.Option(help="only this host")] = None,
                  tag: Annotated[list[str] | None, typer.Option("--tag", help="only with this tag")] = None,
                  path: Annotated[str | None, typer.Option(help="only snapshots of this path")] = None,
                  repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """List snapshots (oldest first)."""
    r = open_repo(repo, password_file)
    snaps = r.list_snapshots()
    want_path = os.path.abspath(path) if path else None
    sel = [s for s in snaps if (host is None or s.host == host) and all(t in s.tags for t in (tag or []))
           and (want_path is None or want_path in s.paths)]
    if as_json:
        emit_json([s.to_dict() for s in sel])
        return
    table(["id", "time", "host", "tags", "paths"],  # cells are plain text (table() escapes)
          [[s.id[:8], s.time.strftime("%Y-%m-%d %H:%M:%S"), s.host, ",".join(s.tags), " ".join(s.paths)]
           for s in sel], title=f"{len(sel)} snapshot(s)")


# ------------------------------------------------------------------------------------------------- ls

@app.command()
@handle_errors
def ls(snapshot: Annotated[str, typer.Argument(help="id, prefix, latest or tag:NAME")] = "latest",
       path: Annotated[str, typer.Argument(help="a path inside the snapshot")] = "",
       recursive: Annotated[bool, typer.Option("--recursive", "-R", help="all descendants")] = False,
       repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """List the entries of a snapshot path."""
    from frieze.repo.browse import ls as do_ls

    r = open_repo(repo, password_file)
    snap = r.load_snapshot(_resolve(r, snapshot))
    entries = [e.to_dict() for e in do_ls(r, snap.id, path, recursive=recursive)]
    if as_json:
        emit_json({"snapshot": snap.id, "path": path, "entries": entries})
        return
    for e in entries:
        kind = {"dir": "d", "symlink": "l", "hardlink": "h", "fifo": "p", "char": "c", "block": "b",
                "socket": "s"}.get(e["type"], "-")
        extra = f" -> {e['target']}" if "target" in e else (f" => {e['link']}" if "link" in e else "")
        owner = f"{e.get('user') or e['uid']}:{e.get('group') or e['gid']}"
        out.print(f"{kind}{e['mode']} {owner:>15s} {e['size']:>12d} {e['mtime'][:19]} {e['path']}{extra}",
                  markup=False)


# ------------------------------------------------------------------------------------------------ diff

@app.command()
@handle_errors
def diff(a: Annotated[str | None, typer.Argument(help="older snapshot")] = None,
         b: Annotated[str | None, typer.Argument(help="newer snapshot")] = None,
         repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """What changed from snapshot A to snapshot B."""
    from frieze.repo.diff import diff as do_diff

    if a is None or b is None:
        raise UsageError("diff needs two snapshots")
    r = open_repo(repo, password_file)
    sa, sb = r.load_snapshot(_resolve(r, a)), r.load_snapshot(_resolve(r, b))
    res = do_diff(r, sa.id, sb.id)
    if as_json:
        emit_json({"a": sa.id, "b": sb.id, **res.to_dict()})
        return
    sign = {"added": "[green]+[/]", "removed": "[red]-[/]", "modified": "[yellow]M[/]"}
    for c in res.changes:
        why = f"  ({', '.join(c.reasons)})" if c.reasons else ""
        out.print(f"{sign[c.kind]} {escape(c.path)}{'/' if c.type == 'dir' else ''}{escape(why)}")
    n = res.counts()
    out.print(f"{n['added']} added, {n['removed']} removed, {n['modified']} modified "
              f"({sa.id[:8]} -> {sb.id[:8]})")


# ----------------------------------------------------------------------------------------------- check

@app.command()
@handle_errors
def check(read_data: Annotated[bool, typer.Option("--read-data", help="read and verify every byte")] = False,
          subset: Annotated[str | None, typer.Option(help="with --read-data: only packs i of m, e.g. 1/7")] = None,
          threads: Annotated[int, typer.Option(help="parallel pack reads")] = 2,
          repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
          progress: ShowProgress = None) -> None:
    """Check the structure (and with --read-data the data) of the repository; changes nothing."""
    from frieze.repo.check import check as do_check
    from frieze.repo.check import in_subset, parse_subset
    from frieze.repo.pack import DATA_PREFIX, pack_id_from_key, pack_key

    sub = None
    if subset is not None:
        if not read_data:
            raise UsageError("--subset needs --read-data")
        try:
            sub = parse_subset(subset)
        except Exception as e:
            raise UsageError(str(getattr(e, "message", e))) from None
    r = open_repo(repo, password_file)
    show = progress_wanted(as_json, quiet, progress) and read_data
    sizes: list[int] = []
    if show:
        packs = []
        for bi in r.store.list(DATA_PREFIX):
            pid = pack_id_from_key(bi.key)
            if pid is not None and pack_key(pid) == bi.key and in_subset(pid, sub):
                packs.append((pid, bi.size))
        packs.sort()
        acc = 0
        for _pid, size in packs:
            acc += size
            sizes.append(acc)
    with Bar(show, "read-data", force_terminal=bool(progress)) as bar:
        def cb(_phase: str, done: int, total: int) -> None:
            if sizes:
                bar.update(sizes[min(done, len(sizes)) - 1] if done else 0, sizes[-1], f"{done}/{total} packs")

        rep = do_check(r, read_data=read_data, subset=sub, threads=max(1, threads), progress=cb if show else None)
    d = rep.to_dict()
    if as_json:
        if not rep.ok:
            err_ = IntegrityError(f"check found {len(rep.errors())} error(s)", errors=len(rep.errors()))
            d["error"] = err_.to_dict()
        emit_json({"repository": r.id, **d})
    else:
        if rep.problems:
            table(["severity", "kind", "id", "message"],
                  [[p.severity, p.kind, p.id, p.message] for p in rep.problems], title="problems")
        c = rep.counts
        out.print(f"{'[green]ok[/]' if rep.ok else '[red]DAMAGED[/]'}: {c.get('snapshots', 0)} snapshots, "
                  f"{c.get('trees', 0)} trees, {c.get('data_blobs', 0)} data blobs, {c.get('packs', 0)} packs"
                  + (f", {c.get('packs_read', 0)} packs read" if read_data else "")
                  + f"; {len(rep.errors())} error(s), {len(rep.problems) - len(rep.errors())} warning(s)")
    if not rep.ok:
        if as_json:
            raise SystemExit(IntegrityError.exit_code)  # the report (with "error") is already out
        raise IntegrityError(f"check found {len(rep.errors())} error(s) (listed above)", errors=len(rep.errors()))


# ---------------------------------------------------------------------------------------------- forget

def _prune_opts(delete_margin: str, unindexed_min_age: str, repack_threshold: float, dry_run: bool) -> Any:
    from frieze.repo.prune import PruneOptions

    if not 0.0 <= repack_threshold <= 1.0:
        raise UsageError("--repack-threshold must be between 0 and 1")
    return PruneOptions(delete_margin_s=_duration_s(delete_margin, "--delete-margin"),
                        unindexed_min_age_s=_duration_s(unindexed_min_age, "--unindexed-min-age"),
                        repack_threshold=repack_threshold, dry_run=dry_run)


DeleteMargin = Annotated[str, typer.Option(
    help="phase two deletes packs that have been garbage for this long (e.g. 1h, 0 = now)")]
UnindexedAge = Annotated[str, typer.Option(help="delete packs in no index (interrupted backups) older than this")]
Repack = Annotated[float, typer.Option(help="repack a pack when at least this fraction of it is garbage")]


def _run_prune(r: Any, opts: Any, show: bool, force: bool) -> Any:
    from frieze.repo.prune import prune as do_prune

    st = r.store
    with Bar(show, "prune", force_terminal=force) as bar, polled(
            bar, lambda: (st.bytes_read + st.bytes_written, None, f"{st.deleted} deleted")):
        return do_prune(r, opts, host=default_host())


def _prune_text(p: Any) -> str:
    verb = "would" if p.dry_run else "did"
    return (f"prune ({verb}): {p.live_blobs} live blobs; packs: {p.packs_before} before, {p.packs_kept} kept, "
            f"{p.packs_repacked} repacked ({p.blobs_repacked} blobs), {p.packs_dropped} dropped; "
            f"{p.packs_deleted + p.unindexed_deleted} deleted ({human_bytes(p.bytes_deleted)}), "
            f"{p.garbage_pending} pending the safety margin")


@app.command()
@handle_errors
def forget(ids: Annotated[list[str] | None, typer.Argument(help="snapshots to forget (instead of a policy)")] = None,
           keep_last: Annotated[int, typer.Option(help="keep the N newest")] = 0,
           keep_hourly: Annotated[int, typer.Option(help="keep the newest of each of the last N hours")] = 0,
           keep_daily: Annotated[int, typer.Option(help="... days")] = 0,
           keep_weekly: Annotated[int, typer.Option(help="... ISO weeks")] = 0,
           keep_monthly: Annotated[int, typer.Option(help="... months")] = 0,
           keep_yearly: Annotated[int, typer.Option(help="... years")] = 0,
           keep_within: Annotated[str | None, typer.Option(help="keep all newer than this, e.g. 7d, 36h")] = None,
           keep_tag: Annotated[list[str] | None, typer.Option("--keep-tag", help="keep snapshots with this tag")]
           = None,
           host: Annotated[str | None, typer.Option(help="apply the policy only to this host's snapshots")] = None,
           tag: Annotated[list[str] | None, typer.Option("--tag", help="... only to snapshots with this tag")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="print the decisions, change nothing")]
           = False,
           prune: Annotated[bool, typer.Option("--prune", help="prune afterwards")] = False,
           delete_margin: DeleteMargin = "1h", unindexed_min_age: UnindexedAge = "6h", repack_threshold: Repack = 0.10,
           repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
           progress: ShowProgress = None) -> None:
    """Forget snapshots by id, or by a retention policy (grouped by host and paths); prints keep/remove and why."""
    from frieze.core.retention import RetentionPolicy, parse_duration
    from frieze.repo.prune import forget as do_forget

    within = None
    if keep_within is not None:
        try:
            within = parse_duration(keep_within)
        except ValueError as e:
            raise UsageError(f"--keep-within: {e}") from None
    try:
        policy = RetentionPolicy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                                 monthly=keep_monthly, yearly=keep_yearly, within=within,
                                 keep_tags=tuple(keep_tag or []))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if ids and not policy.empty():
        raise UsageError("give snapshot ids or a retention policy, not both")
    if not ids and policy.empty():
        raise UsageError("forget needs snapshot ids or a policy (--keep-last, --keep-daily, ..., --keep-within); "
                         "an empty policy would keep everything")
    opts = _prune_opts(delete_margin, unindexed_min_age, repack_threshold, dry_run) if prune else None
    st = CountingStore(open_store(repo_url(repo), create=False)) if prune else None
    r = open_repo(repo, password_file, store=st)
    infos = {s.id: s for s in r.list_snapshots()}

    def select(e: dict[str, Any]) -> bool:
        return (host is None or e["host"] == host) and all(t in e["tags"] for t in (tag or []))

    refs = [_resolve(r, i) for i in ids] if ids else None
    rep = do_forget(r, ids=refs, policy=None if ids else policy, dry_run=dry_run, host=default_host(),
                    select=select if (host is not None or tag) else None)
    pr = _run_prune(r, opts, progress_wanted(as_json, quiet, progress), bool(progress)) if opts is not None else None
    if as_json:
        emit_json({"repository": r.id, **rep.to_dict(), "prune": pr.to_dict() if pr is not None else None})
        return
    order = sorted(rep.decisions, key=lambda d: (infos[d.id].time if d.id in infos else 0, d.id))
    table(["id", "time", "host", "tags", "decision", "reasons"],
          [[d.id[:8], infos[d.id].time.strftime("%Y-%m-%d %H:%M:%S") if d.id in infos else "",
            infos[d.id].host if d.id in infos else "", ",".join(infos[d.id].tags) if d.id in infos else "",
            "keep" if d.keep else Markup("[red]remove[/]"), "; ".join(d.reasons)] for d in order],
          title="forget (dry run: nothing changed)" if dry_run else "forget")
    n_keep = sum(1 for d in rep.decisions if d.keep)
    out.print(f"{n_keep} kept, {len(rep.removed)} {'would be removed' if dry_run else 'removed'}")
    if pr is not None:
        out.print(_prune_text(pr))


@app.command("prune")
@handle_errors
def prune_cmd(dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="count, change nothing")] = False,
              delete_margin: DeleteMargin = "1h", unindexed_min_age: UnindexedAge = "6h",
              repack_threshold: Repack = 0.10,
              repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
              progress: ShowProgress = None) -> None:
    """Remove data no snapshot references (two-phase: packs are deleted a safety margin after they left the index)."""
    opts = _prune_opts(delete_margin, unindexed_min_age, repack_threshold, dry_run)
    st = CountingStore(open_store(repo_url(repo), create=False))
    r = open_repo(repo, password_file, store=st)
    pr = _run_prune(r, opts, progress_wanted(as_json, quiet, progress), bool(progress))
    if as_json:
        emit_json({"repository": r.id, **pr.to_dict()})
    else:
        out.print(_prune_text(pr))


# ------------------------------------------------------------------------------------------------ copy

@app.command()
@handle_errors
def copy(snapshots: Annotated[list[str] | None, typer.Argument(help="snapshots to copy (default: all)")] = None,
         to: Annotated[str | None, typer.Option("--to", envvar="FRIEZE_TO_REPO", show_envvar=True,
                                                help="destination repository")] = None,
         to_password_file: Annotated[Path | None, typer.Option(
             "--to-password-file", envvar="FRIEZE_TO_PASSWORD_FILE", show_envvar=True,
             help="file holding the destination's password; else FRIEZE_TO_PASSWORD, else a prompt")] = None,
         init_dest: Annotated[bool, typer.Option(
             "--init", help="create the destination first, in the same dedup domain (copies without re-chunking)")]
         = False,
         repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False, quiet: Quiet = False,
         progress: ShowProgress = None) -> None:
    """Copy snapshots into another repository (re-encrypted under its keys, deduplicated against it)."""
    from frieze.cli.repo_support import get_password
    from frieze.repo.copy import copy_snapshots
    from frieze.repo.repository import Repository
    from frieze.repo.types import RepoParams

    dst_url = repo_url(to, option="--to", env="FRIEZE_TO_REPO")
    src_url = repo_url(repo)
    if dst_url == src_url:
        raise UsageError("copy: source and destination are the same repository")
    src_store = CountingStore(open_store(src_url, create=False))
    src = open_repo(repo, password_file, store=src_store)
    for ref in snapshots or []:
        src.load_snapshot(_resolve(src, ref))  # every reference resolves before the destination is touched
    refs = [_resolve(src, ref) for ref in snapshots] if snapshots else None

    def dst_password(confirm: bool) -> str:
        return get_password(to_password_file, what="destination password", file_env="FRIEZE_TO_PASSWORD_FILE",
                            env="FRIEZE_TO_PASSWORD", option="--to-password-file", confirm=confirm)

    if init_dest:
        pw = dst_password(True)
        dst_store = open_store(dst_url, create=True)
        dst = Repository.init(dst_store, pw, params=RepoParams(kdf=new_kdf(), copy_id_keys_from=src),
                              state_dir=state_dir())
    else:
        dst_store = open_store(dst_url, create=False)
        if dst_store.stat("config") is None:
            raise NotFound(f"no repository at {display(dst_url)} (use --init to create it)", object="config")
        dst = Repository.open(dst_store, dst_password(False), state_dir=state_dir())
    show = progress_wanted(as_json, quiet, progress)
    with Bar(show, "copy", force_terminal=bool(progress)) as bar, polled(
            bar, lambda: (src_store.bytes_read, None, "")):
        rep = copy_snapshots(src, dst, refs, host=default_host())
    if as_json:
        emit_json({"source": src.id, "destination": dst.id, **rep.to_dict()})
    elif not quiet:
        out.print(f"copied {len(rep.copied)} snapshot(s) to {display(dst_url)} ({len(rep.skipped)} already there); "
                  f"{rep.blobs_new} new blobs, {rep.blobs_reused} reused, read {human_bytes(rep.bytes_read)}")
        for s, d in rep.copied.items():
            out.print(f"  {s[:8]} -> {d[:8]}")


# ------------------------------------------------------------------------------------------------ stats

@app.command()
@handle_errors
def stats(repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """Counts and sizes: packs, blobs, index files, snapshots, dedup index memory."""
    r = open_repo(repo, password_file)
    d = r.stats()
    if as_json:
        emit_json(d)
    else:
        kv(d, title=f"repository {r.id}")


# ------------------------------------------------------------------------------------------------- keys

NewPasswordFile = Annotated[Path | None, typer.Option(
    "--new-password-file", envvar="FRIEZE_NEW_PASSWORD_FILE", show_envvar=True,
    help="file holding the new password; else FRIEZE_NEW_PASSWORD, else a prompt")]


def _new_password(path: Path | None) -> str:
    from frieze.cli.repo_support import get_password

    return get_password(path, what="new password", file_env="FRIEZE_NEW_PASSWORD_FILE", env="FRIEZE_NEW_PASSWORD",
                        option="--new-password-file", confirm=True)


@keys_app.command("list")
@handle_errors
def keys_list(repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """List key slots (the one this password opened is marked)."""
    r = open_repo(repo, password_file)
    slots = [{"slot": s.slot, "created": s.created, "kdf": s.kdf, "current": s.slot == r.slot_id}
             for s in r.list_keys()]
    if as_json:
        emit_json(slots)
    else:
        table(["slot", "created", "kdf", "current"],
              [[s["slot"], s["created"], s["kdf"], "*" if s["current"] else ""] for s in slots])


@keys_app.command("add")
@handle_errors
def keys_add(new_password_file: NewPasswordFile = None, repo: Repo = None, password_file: PasswordFile = None,
             as_json: Json = False) -> None:
    """Add a key slot for another password."""
    r = open_repo(repo, password_file)
    slot = r.add_key(_new_password(new_password_file), new_kdf())
    if as_json:
        emit_json({"repository": r.id, "slot": slot})
    else:
        out.print(f"added key slot {slot}")


def _slot(r: Any, ref: str) -> str:
    hits = [s.slot for s in r.list_keys() if s.slot.startswith(ref)] if ref else []
    if not hits:
        raise NotFound(f"key slot {ref!r} does not exist", object=f"keys/{ref}")
    if len(hits) > 1:
        raise UsageError(f"key slot prefix {ref!r} is ambiguous ({len(hits)} matches)")
    return str(hits[0])


@keys_app.command("remove")
@handle_errors
def keys_remove(slot: Annotated[str | None, typer.Argument(help="slot id or unique prefix")] = None,
                repo: Repo = None, password_file: PasswordFile = None, as_json: Json = False) -> None:
    """Remove a key slot (never the last one)."""
    if slot is None:
        raise UsageError("keys remove needs a slot id (see keys list)")
    r = open_repo(repo, password_file)
    sid = _slot(r, slot)
    r.remove_key(sid)
    if as_json:
        emit_json({"repository": r.id, "removed": sid})
    else:
        out.print(f"removed key slot {sid}" + (" (the one this password opened)" if sid == r.slot_id else ""))


@keys_app.command("rotate")
@handle_errors
def keys_rotate(new_password_file: NewPasswordFile = None, repo: Repo = None, password_file: PasswordFile = None,
                as_json: Json = False) -> None:
    """Change the password: add a slot for the new one, then remove the slot the old one opened."""
    r = open_repo(repo, password_file)
    old = r.slot_id
    new = r.change_password(_new_password(new_password_file), new_kdf())
    if as_json:
        emit_json({"repository": r.id, "removed": old, "slot": new})
    else:
        out.print(f"password changed: key slot {old} replaced by {new}")
