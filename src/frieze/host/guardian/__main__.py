"""``python -m frieze.host.guardian --socket PATH [--state-dir DIR] [--plugin KIND=module:Class ...]``.

Runs the freeze guardian in the foreground until SIGTERM/SIGINT, which thaw everything live before exit.
Prints ``READY <socket>`` on stdout once it accepts connections. Exits 2 on bad arguments and with the
error's exit code when it cannot start (another guardian on the socket: Busy).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from frieze.core.errors import FriezeError
from frieze.host.guardian.server import Guardian, PluginFactory, load_object


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="frieze-guardian", description="The frieze freeze guardian.")
    ap.add_argument("--socket", required=True, help="unix socket path to listen on (created 0600)")
    ap.add_argument("--state-dir", help="journal directory (must not be on a file system that gets frozen)")
    ap.add_argument("--plugin", action="append", default=[], metavar="KIND=module:Class",
                    help="extra app plug-in (in addition to the frieze.apps entry points)")
    args = ap.parse_args(argv)
    plugins: dict[str, PluginFactory] = {}
    try:
        for p in args.plugin:
            kind, sep, target = p.partition("=")
            if not sep or not kind:
                ap.error(f"--plugin {p!r} is not KIND=module:Class")
            plugins[kind] = load_object(target)
        g = Guardian(args.socket, state_dir=args.state_dir, plugins=plugins)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=g.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        g.serve(ready=lambda: print(f"READY {g.socket_path}", flush=True))
    except FriezeError as e:
        print(f"frieze-guardian: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
