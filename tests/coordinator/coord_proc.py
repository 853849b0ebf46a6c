"""A coordinator process for fault tests: the real Coordinator and API on a port, with the in-process
agent stand-in (local_port.py) for host ``h1``; ``--die-at CHECKPOINT`` SIGKILLs itself right after that
checkpoint is durable (once: a marker file records it).

    python -m tests.coordinator.coord_proc STATE_DIR PORT SNAPS_DIR [--die-at NAME]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import uvicorn

from frieze.api.app import create_app
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.service import Coordinator
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import cheap_params


def main() -> None:
    state, port, snaps = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    die_at = sys.argv[sys.argv.index("--die-at") + 1] if "--die-at" in sys.argv else None
    marker = state.parent / "died"

    def hook(op_id: str, name: str) -> None:
        if die_at == name and not marker.exists():
            marker.write_text(f"{op_id} {name}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    c = Coordinator(CoordinatorConfig(state_dir=state, scheduler=False, on_checkpoint=hook))
    c.repos.init_params = cheap_params()
    lp = LocalPort("h1", snaps)
    c.agents.set_factory(lambda host: lp)
    try:
        uvicorn.run(create_app(c), host="127.0.0.1", port=port, log_level="warning", http="h11")
    finally:
        c.close()


if __name__ == "__main__":
    main()
