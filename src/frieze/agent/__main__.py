"""``python -m frieze.agent run|serve|enroll ...`` (see :mod:`frieze.agent.daemon`)."""

from frieze.agent.daemon import main

raise SystemExit(main())
