"""`python client.py ...` from the repository root: the worktask client, nothing installed."""

import os
import sys

# The package lives under src/; put it first so that a bare checkout runs as is.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from worktask.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
