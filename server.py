"""Run the worktask server from a checkout: `python server.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from worktask.server import main

if __name__ == "__main__":
    sys.exit(main())
