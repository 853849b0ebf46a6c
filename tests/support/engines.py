"""Private engine instances and workloads for tests (re-exported from :mod:`frieze.host.apps.testbed`).

Context managers start a real server in a fresh temp dir on a free loopback port and always stop it and
remove the dir on exit (safe as root: PostgreSQL runs as the ``postgres`` OS user):

- :func:`pg_server` (PostgreSQL 15; ``wal_level=replica``, ``archive_mode=on``, archive into ``srv.archive_dir``,
  ``track_commit_timestamp=on``), :func:`pg_restored_copy`, :class:`PgBench`, :func:`pgbench_sums`,
  :class:`PgCommitLog`, :func:`pg_commit_times`, :func:`pg_amcheck`
- :func:`mariadb_server` (MariaDB 10.11, binlog on, user ``frieze`` with a random password, database ``app``),
  :func:`mariadb_restored_copy`, :class:`MariaTransfers`, :func:`maria_sum`
- :func:`redis_server` (Redis 7, ``save ""``, optional AOF and password), :class:`RedisCounter`,
  :func:`redis_counters`
- :func:`loop_mount` (ext4/xfs on a loop device, always thawed/unmounted), :class:`FileWriter`
- :class:`SQLiteCounter`, :func:`sqlite_check`, :func:`sqlite_module` (pysqlite3 when installed)

Workloads are threads (``with Workload(...) as w:``) recording each write's start/end in ``w.log``
(:class:`OpLog`: ``count()``, ``commits_between()``, ``window()``).
"""

from frieze.host.apps.testbed import (
    PG_BIN,
    FileWriter,
    MariaServer,
    MariaTransfers,
    OpLog,
    PgBench,
    PgCommitLog,
    PgServer,
    RedisCounter,
    RedisServer,
    SQLiteCounter,
    chown_tree,
    copy_tree_live,
    free_port,
    init_pg,
    loop_mount,
    maria_sum,
    mariadb_restored_copy,
    mariadb_server,
    owned_tempdir,
    percentile,
    pg_amcheck,
    pg_commit_times,
    pg_restored_copy,
    pg_server,
    pgbench_sums,
    redis_counters,
    redis_server,
    sqlite_check,
    sqlite_module,
)

__all__ = [
    "PG_BIN",
    "FileWriter",
    "MariaServer",
    "MariaTransfers",
    "OpLog",
    "PgBench",
    "PgCommitLog",
    "PgServer",
    "RedisCounter",
    "RedisServer",
    "SQLiteCounter",
    "chown_tree",
    "copy_tree_live",
    "free_port",
    "init_pg",
    "loop_mount",
    "maria_sum",
    "mariadb_restored_copy",
    "mariadb_server",
    "owned_tempdir",
    "percentile",
    "pg_amcheck",
    "pg_commit_times",
    "pg_restored_copy",
    "pg_server",
    "pgbench_sums",
    "redis_counters",
    "redis_server",
    "sqlite_check",
    "sqlite_module",
]
