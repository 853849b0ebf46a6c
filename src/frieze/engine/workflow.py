"""How a workflow type is declared: tasks, checkpoints, the undo path, typed arguments and variables.

A workflow is a recipe::

    class BackupWorkflow(Workflow[BackupArgs, BackupVars]):
        name = "backup"
        Args = BackupArgs                 # pydantic model; submit() validates against it
        Vars = BackupVars                 # pydantic model with defaults; the only state tasks share
        forward = [quiesce, Checkpoint("quiesced", undo_from="unquiesce"),
                   snapshot, unquiesce, Checkpoint("snapshotted", undo_from="delete_snapshot"),
                   register, Checkpoint("done")]
        undo = [delete_snapshot, unquiesce]

Contracts:

- ``forward`` is tasks and checkpoints in order and ends with a checkpoint. A checkpoint persists ``Vars``
  and closes the *segment* of tasks since the previous checkpoint.
- ``undo`` is its own list of tasks; every undo task is idempotent and safe after a partial forward task.
- The undo point of a segment is the ``undo_from`` of the checkpoint that closes it (``None``: nothing to
  undo). When a task of segment *k* fails, or a cancel is seen after a task of segment *k*, or at checkpoint
  *k*, undo runs the undo tasks from ``undo_from`` of checkpoint *k* to the end of ``undo``.
- Tasks run at least once: a task interrupted by a crash runs again after restart, so a task's external side
  effect must be idempotent (use :attr:`TaskContext.idempotency_key`). A task whose checkpoint has been
  recorded never runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel

from frieze.engine.errors import WorkflowDefinitionError
from frieze.engine.model import Resources

A = TypeVar("A", bound=BaseModel)
V = TypeVar("V", bound=BaseModel)


class PauseRequested(Exception):
    """Raised by :meth:`TaskContext.pause`; the engine catches it (do not catch it in a task)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"pause for {seconds} s")
        self.seconds = seconds


class _Sink(Protocol):
    """What a task context reports to (implemented by the engine's runner)."""

    def log(self, level: str, step: str | None, message: str) -> None: ...

    def progress(self, bytes_done: int | None, bytes_total: int | None) -> None: ...

    def cancel_requested(self) -> bool: ...


class TaskContext(Generic[A, V]):
    """What a task gets: its arguments, the shared variables, progress, log, pause and cancel checks."""

    def __init__(self, *, op_id: str, op_type: str, step: str, attempt_key: str, args: A, vars: V,
                 sink: _Sink, undoing: bool) -> None:
        self.op_id = op_id
        self.op_type = op_type
        self.step = step
        self.args = args
        self.vars = vars
        self.undoing = undoing
        #: Stable across re-runs of this task in this operation: ``"<op_id>:<task name>"``. Use it to make an
        #: external side effect idempotent (e.g. as a request id, a snapshot name, a unique key).
        self.idempotency_key = attempt_key
        self._sink = sink

    def log(self, message: str, level: str = "info") -> None:
        """Append a log line to the operation (secrets in the arguments are redacted)."""
        self._sink.log(level, self.step, message)

    def progress(self, *, bytes_done: int | None = None, bytes_total: int | None = None) -> None:
        """Report bytes moved (throttled by the engine; the last report is always kept)."""
        self._sink.progress(bytes_done, bytes_total)

    def pause(self, seconds: float) -> None:
        """Give the worker back and be run again from the last checkpoint in ``seconds`` ("look again later").

        Never returns. Variable changes made since the last checkpoint are discarded. Not allowed in undo.
        """
        raise PauseRequested(seconds)

    def cancel_requested(self) -> bool:
        """True if a cancel was asked for; a long task may check it to finish early (it still must finish)."""
        return self._sink.cancel_requested()


TaskFn = Callable[[TaskContext[Any, Any]], None]


@dataclass(frozen=True)
class Task:
    """A named unit of work: ``fn(ctx)``. Made with :func:`task`."""

    name: str
    fn: TaskFn

    def __call__(self, ctx: TaskContext[Any, Any]) -> None:
        self.fn(ctx)


@overload
def task(fn: TaskFn, /) -> Task: ...


@overload
def task(*, name: str | None = None) -> Callable[[TaskFn], Task]: ...


def task(fn: TaskFn | None = None, /, *, name: str | None = None) -> Task | Callable[[TaskFn], Task]:
    """Decorator making a function ``fn(ctx: TaskContext[Args, Vars]) -> None`` a task (named after it)."""

    def wrap(f: TaskFn) -> Task:
        return Task(name=name or f.__name__, fn=f)

    if fn is not None:
        return wrap(fn)
    return wrap


@dataclass(frozen=True)
class Checkpoint:
    """Persist the variables here. ``undo_from``: the undo task from which undo starts for this segment."""

    name: str
    undo_from: str | None = None


class _NoArgs(BaseModel):
    pass


class Workflow(Generic[A, V]):
    """Base class of a workflow type. Subclass it with class attributes; never instantiate it."""

    name: ClassVar[str]
    Args: ClassVar[type[BaseModel]] = _NoArgs
    Vars: ClassVar[type[BaseModel]] = _NoArgs
    forward: ClassVar[Sequence[Task | Checkpoint]] = ()
    undo: ClassVar[Sequence[Task]] = ()
    #: Argument names whose values are secrets (besides pydantic ``SecretStr`` fields): redacted everywhere.
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def resources(cls, args: Any) -> Resources:
        """Resources an operation with these (validated) arguments uses; ``submit(resources=...)`` overrides."""
        return Resources()

    @classmethod
    def validate_definition(cls) -> None:
        """Check the recipe; raises :class:`WorkflowDefinitionError` naming the problem."""
        n = getattr(cls, "name", None)
        if not isinstance(n, str) or not n or not n.replace("_", "").replace("-", "").isalnum():
            raise WorkflowDefinitionError(f"workflow {cls.__name__}: name must be a short identifier", name=n)
        if not cls.forward or not isinstance(cls.forward[-1], Checkpoint):
            raise WorkflowDefinitionError(f"workflow {n}: forward must end with a Checkpoint")
        undo_names = [t.name for t in cls.undo]
        if len(set(undo_names)) != len(undo_names):
            raise WorkflowDefinitionError(f"workflow {n}: duplicate undo task names")
        seen: set[str] = set()
        for item in cls.forward:
            if not isinstance(item, Task | Checkpoint):
                raise WorkflowDefinitionError(f"workflow {n}: forward item {item!r} is not a Task or Checkpoint")
            if item.name in seen:
                raise WorkflowDefinitionError(f"workflow {n}: duplicate forward item name {item.name!r}")
            seen.add(item.name)
            if isinstance(item, Checkpoint) and item.undo_from is not None and item.undo_from not in undo_names:
                raise WorkflowDefinitionError(
                    f"workflow {n}: checkpoint {item.name!r} names unknown undo task {item.undo_from!r}")
        try:
            cls.Vars()
        except Exception as e:
            raise WorkflowDefinitionError(f"workflow {n}: Vars must be constructible with defaults: {e}") from e

    @classmethod
    def steps_total(cls) -> int:
        """Number of forward tasks."""
        return sum(1 for x in cls.forward if isinstance(x, Task))

    @classmethod
    def closing_checkpoint(cls, pos: int) -> Checkpoint:
        """The checkpoint at or after forward index ``pos`` (closing that segment)."""
        for item in cls.forward[pos:]:
            if isinstance(item, Checkpoint):
                return item
        raise WorkflowDefinitionError(f"workflow {cls.name}: no checkpoint after position {pos}")

    @classmethod
    def undo_tasks_from(cls, undo_from: str | None) -> list[Task]:
        """The undo tasks to run from the undo point ``undo_from`` (none for ``None``)."""
        if undo_from is None:
            return []
        names = [t.name for t in cls.undo]
        return list(cls.undo[names.index(undo_from):])
