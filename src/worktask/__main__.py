"""`python -m worktask`: the command-line client."""

from worktask.cli import main

raise SystemExit(main())
