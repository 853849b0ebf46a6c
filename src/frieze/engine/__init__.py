"""frieze.engine: durable operations on DBOS, with undo paths, admission and duplicate detection.

See docs/design/workflow-engine.md. Public API::

    from frieze.engine import (Engine, EngineConfig, Workflow, task, Task, Checkpoint, TaskContext,
                               OpState, OpStatus, LogLine, Limits, Limit, Resources)
"""

from frieze.engine.engine import Engine
from frieze.engine.errors import (
    InvalidArgs,
    LimitExceeded,
    OpFinished,
    OpNotFound,
    UnknownOpType,
    WorkflowDefinitionError,
)
from frieze.engine.model import EngineConfig, Limit, Limits, LogLine, OpState, OpStatus, Resources
from frieze.engine.workflow import Checkpoint, Task, TaskContext, Workflow, task

__all__ = [
    "Checkpoint",
    "Engine",
    "EngineConfig",
    "InvalidArgs",
    "Limit",
    "LimitExceeded",
    "Limits",
    "LogLine",
    "OpFinished",
    "OpNotFound",
    "OpState",
    "OpStatus",
    "Resources",
    "Task",
    "TaskContext",
    "UnknownOpType",
    "Workflow",
    "WorkflowDefinitionError",
    "task",
]
