"""``python -m agent``: the same entry point as the ``mm-agent`` console script."""

from agent.cli import main

raise SystemExit(main())
