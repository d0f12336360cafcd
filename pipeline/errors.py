"""Errors a user can act on: the CLI prints their message as one line, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment; ``exit_code`` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class NotBuiltError(UserError):
    """A subcommand whose implementation has not landed yet."""

    def __init__(self, command: str):
        super().__init__(f"'{command}' is not built yet in this version of dhmd-pipeline", exit_code=1)


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and the first line of its message (for messages
    that name a cause without a traceback)."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    if len(first) > limit:
        first = first[:limit - 3].rstrip() + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
