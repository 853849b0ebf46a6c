"""The coordinator's workflow engine: its configuration (limits, pools) and the workflows it runs."""

from __future__ import annotations

from frieze.coordinator.config import CoordinatorConfig
from frieze.engine import Engine, EngineConfig, Limit, Limits


def make_engine(config: CoordinatorConfig) -> Engine:
    from frieze.coordinator.workflows.backup import BackupWorkflow
    from frieze.coordinator.workflows.recover import RecoverWorkflow
    from frieze.coordinator.workflows.restore import RestoreWorkflow

    limits = Limits(
        per_type={"backup": Limit(soft=4, hard=200), "restore": Limit(soft=2, hard=50),
                  "recover": Limit(soft=2, hard=50)},
        per_type_target={"backup": Limit(soft=2)},
        per_host=Limit(soft=2, hard=50),
        busy_delay_s=1.0,
    )
    return Engine(
        EngineConfig(database_url=config.engine, executor_id=config.executor_id, limits=limits,
                     pools={"backup": 4, "restore": 2, "recover": 2}, on_checkpoint=config.on_checkpoint),
        workflows=[BackupWorkflow, RestoreWorkflow, RecoverWorkflow],
    )
