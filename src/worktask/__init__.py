"""worktask: a task server that runs tasks one at a time, in order, and its client."""

__version__ = "1.0.0"
