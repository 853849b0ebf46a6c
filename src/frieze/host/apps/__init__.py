"""Application plug-ins. The port is :class:`frieze.host.apps.base.AppPlugin`; find one with
:func:`frieze.host.apps.registry.load` (entry-point group ``frieze.apps``).

=========  ==========  =========================================  ==========================  ======================
kind       start/stop  quiesce (engine-side bound)                recover                     verify
=========  ==========  =========================================  ==========================  ======================
postgres   pg_ctl      pg_backup_start on a held session            time, LSN, restore point,   pg_amcheck
                       (idle_session_timeout; writers not blocked)  end of WAL (archive)        --heapallindexed
mariadb    argv/       BACKUP STAGE BLOCK_COMMIT or FTWRL          time (1 s), binlog          mariadb-check
           SHUTDOWN    (wait_timeout etc. <= lease)                 position, end of binlogs
sqlite     no          BEGIN IMMEDIATE after wal_checkpoint          no                          integrity_check
                       (lock dies with the process)
redis      config/     CLIENT PAUSE <lease> WRITE + BGSAVE or       no                          redis-check-rdb/-aof
           SHUTDOWN    BGREWRITEAOF (pause outlives its client)
files      no          fsfreeze (syncfs first; guardian-owned)      no                          no
script     no          user hooks, timeout, on_error fail|continue  no                          optional hook
=========  ==========  =========================================  ==========================  ======================

Besides the port every plug-in has ``thaw_orphan(spec)`` for the freeze guardian: it ends a freeze whose
holder died, from a process holding no state (Redis ``CLIENT UNPAUSE``, ``fsfreeze -u``, the unquiesce hook;
a no-op for the session-bound engines). Quiesce state (held sessions, leases) lives in the plug-in instance,
so the process that quiesces must be the one that unquiesces.
"""
