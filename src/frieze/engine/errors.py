"""Errors of the workflow engine: specific subclasses of the one error tree (:mod:`frieze.core.errors`)."""

from __future__ import annotations

from frieze.core.errors import Busy, Conflict, NotFound, UsageError


class UnknownOpType(UsageError):
    """No workflow of that operation type is registered."""

    code = "engine.unknown_op_type"


class InvalidArgs(UsageError):
    """The arguments do not match the workflow's argument model."""

    code = "engine.invalid_args"


class OpNotFound(NotFound):
    """No operation with that id."""

    code = "engine.op_not_found"


class LimitExceeded(Busy):
    """A hard admission limit is reached; the request was rejected and nothing was recorded."""

    code = "engine.limit_exceeded"


class OpFinished(Conflict):
    """The operation is already finished (complete or failed); it cannot be cancelled."""

    code = "engine.op_finished"


class WorkflowDefinitionError(UsageError):
    """A workflow class is malformed (bad recipe, unknown undo point, duplicate name)."""

    code = "engine.bad_workflow"
