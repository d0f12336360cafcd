"""Errors raised by the extractors.

Every message is one line that names the file (or model) and the cause, so
the extraction stage can report a skipped clip without a traceback.
"""
from __future__ import annotations


class ExtractionError(Exception):
    """A clip cannot be turned into features; the message names the file and the cause."""


class ModelLoadError(ExtractionError):
    """A configured model (ASR or text encoder) cannot be loaded.

    Subclass of :class:`ExtractionError` so callers that catch extraction
    problems also catch this one; callers that want to stop the whole run
    (a model that fails fails for every clip) can catch it first.
    """
