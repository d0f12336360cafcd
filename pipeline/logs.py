"""Log levels of the command line, shared by the main process and extraction worker processes.

The project's own loggers (``dhmd_pipeline``, ``pipeline.*``, ``extractors.*``, ``dhmd.*``) log at INFO
by default (progress lines), DEBUG with ``-v``; other libraries show warnings and errors only, unless
``-vv`` (DEBUG everywhere).  ``--quiet`` shows warnings and errors only.  Worker processes call
:func:`setup_logging` with the levels of the process that started them (:func:`current_levels`), so a
worker logs exactly what the main process would.
"""
from __future__ import annotations

import logging

PROJECT_LOGGERS = ("dhmd_pipeline", "pipeline", "extractors", "dhmd")
# libraries that log a lot below WARNING; held at WARNING unless -vv
NOISY_LOGGERS = ("faster_whisper", "transformers", "numba", "matplotlib", "PIL", "absl", "urllib3")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def is_project(name: str) -> bool:
    """True for a logger of this project."""
    return any(name == p or name.startswith(p + ".") for p in PROJECT_LOGGERS)


class OthersAtLeast(logging.Filter):
    """Passes every record of the project's loggers, and other libraries' from ``level`` up."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or is_project(record.name)


def log_levels(verbose: int, quiet: bool) -> tuple[int, int]:
    """``(project level, other libraries' level)`` for -v count and --quiet."""
    if quiet:
        return logging.WARNING, logging.WARNING
    if verbose >= 2:
        return logging.DEBUG, logging.DEBUG
    return (logging.DEBUG if verbose == 1 else logging.INFO), logging.WARNING


def setup_logging(project: int, others: int, fmt: str = FORMAT) -> None:
    """One stderr handler on the root logger at the project's level, holding other libraries back to
    ``others`` with a filter."""
    logging.basicConfig(level=project, format=fmt, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(OthersAtLeast(others))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.NOTSET if others <= logging.DEBUG else max(others, logging.WARNING))


def current_levels() -> tuple[int, int]:
    """``(project level, other libraries' level)`` this process was set up with (for its workers)."""
    root = logging.getLogger()
    others = [f.level for h in root.handlers for f in h.filters if isinstance(f, OthersAtLeast)]
    project = root.getEffectiveLevel()
    return project, (others[0] if others else max(project, logging.WARNING))
