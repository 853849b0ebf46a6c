"""The in-memory task table: every action runs as a task, answered at once and polled.

- Actions on the same target (``app:x``, ``volume:y``) run one at a time in arrival order (a FIFO queue per
  target, drained by one pool thread while it has work); other targets run in parallel on a small pool.
- A submission with an ``Idempotency-Key`` already seen returns the earlier task.
- At most ``keep`` finished tasks are kept (oldest dropped first).
- A task's function returns ``(changed, message, result)``; a :class:`FriezeError` fails the task with its
  error body; any other exception fails it as ``internal`` (the traceback goes to the log, not the body).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from frieze.core.errors import FriezeError, InternalError, NotFound
from frieze.protocol.models import ErrorBody, Task

log = logging.getLogger("frieze.agent.tasks")

Outcome = tuple[bool, str, dict[str, Any]]
Action = Callable[[], Outcome]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class TaskTable:
    def __init__(self, workers: int = 8, keep: int = 1000) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-task")
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._keys: dict[str, str] = {}
        self._queues: dict[str, deque[tuple[str, Action]]] = {}
        self._lock = threading.Lock()
        self.keep = keep

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(self, task_id: str) -> Task:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None:
                raise NotFound(f"task {task_id!r} is not known to this agent (tasks live in memory)", task=task_id)
            return t.model_copy(deep=True)

    def submit(self, action: str, target: str, fn: Action, *, key: str | None = None) -> Task:
        with self._lock:
            if key is not None and key in self._keys and self._keys[key] in self._tasks:
                return self._tasks[self._keys[key]].model_copy(deep=True)
            t = Task(id="tsk_" + secrets.token_hex(10), action=action, target=target, state="pending",
                     created_at=_now())
            self._tasks[t.id] = t
            if key is not None:
                self._keys[key] = t.id
            self._trim()
            snapshot = t.model_copy(deep=True)
            # One FIFO queue per target; a pool thread drains it only while it has work (no thread waits idle).
            q = self._queues.get(target)
            start = q is None
            if q is None:
                q = self._queues[target] = deque()
            q.append((t.id, fn))
        if start:
            self._pool.submit(self._drain, target)
        return snapshot

    def _drain(self, target: str) -> None:
        while True:
            with self._lock:
                q = self._queues[target]
                if not q:
                    del self._queues[target]
                    return
                task_id, fn = q.popleft()
            self._run(task_id, fn)

    def _trim(self) -> None:
        finished = [k for k, v in self._tasks.items() if v.finished]
        for k in finished[: max(0, len(self._tasks) - self.keep)]:
            del self._tasks[k]
        live = set(self._tasks)
        for key in [k for k, v in self._keys.items() if v not in live]:
            del self._keys[key]

    def _update(self, task_id: str, **fields: Any) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is not None:
                for k, v in fields.items():
                    setattr(t, k, v)

    def _run(self, task_id: str, fn: Action) -> None:
        self._update(task_id, state="running", started_at=_now())
        try:
            changed, message, result = fn()
        except FriezeError as e:
            self._update(task_id, state="failed", finished_at=_now(), message=e.message,
                         error=ErrorBody.model_validate(e.to_dict()))
            return
        except Exception as e:  # a bug: never leak details into the body
            log.exception("task %s failed unexpectedly", task_id)
            err = InternalError(f"internal error in agent task ({type(e).__name__})")
            self._update(task_id, state="failed", finished_at=_now(), message=err.message,
                         error=ErrorBody.model_validate(err.to_dict()))
            return
        self._update(task_id, state="done", finished_at=_now(), changed=changed, message=message,
                     result=result)
