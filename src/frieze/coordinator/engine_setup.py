"""The coordinator's workflow engine: its configuration (limits, pools) and the workflows it runs."""

from __future__ import annotations

from frieze.coordinator.config import CoordinatorConfig
from frieze.engine import Engine, EngineConfig, Limit, Limits


def make_engine(config: CoordinatorConfig) -> Engine:
    from frieze.coordinator.workflows.access import AccessWorkflow
    from frieze.coordinator.workflows.backup import BackupWorkflow
    from frieze.coordinator.workflows.provision import ProvisionWorkflow
    from frieze.coordinator.workflows.recover import RecoverWorkflow
    from frieze.coordinator.workflows.restore import RestoreWorkflow

    # Backups: per host, per repository and per policy through counted resources (coordinator.limits); the
    # engine's per-host limit then applies to restores (their target host). Global caps per type stay here.
    limits = Limits(
        per_type={"backup": Limit(soft=8, hard=200), "restore": Limit(soft=2, hard=50),
                  "recover": Limit(soft=2, hard=50), "provision": Limit(soft=1, hard=50),
                  "access": Limit(soft=2, hard=50)},
        per_host=Limit(soft=2, hard=50),
        busy_delay_s=1.0,
    )
    return Engine(
        EngineConfig(database_url=config.engine, executor_id=config.executor_id, limits=limits,
                     pools={"backup": 4, "restore": 2, "recover": 2, "provision": 1, "access": 2},
                     on_checkpoint=config.on_checkpoint),
        workflows=[BackupWorkflow, RestoreWorkflow, RecoverWorkflow, ProvisionWorkflow, AccessWorkflow],
    )
