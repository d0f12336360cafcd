"""Fixtures shared by the extractor tests."""
from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture
def scoring_passes(monkeypatch) -> Callable[[Any], list[list[str]]]:
    """``watch(recogniser)`` -> a list that gathers the transcripts of each scoring pass (one per
    Whisper model) of an ensemble's :meth:`~extractors.asr.SpeechRecognizer._log_probs`, which still
    scores them."""
    def watch(recogniser: Any) -> list[list[str]]:
        scored: list[list[str]] = []
        real = recogniser._log_probs

        def counting(model, audio, texts):
            scored.append(list(texts))
            return real(model, audio, texts)
        monkeypatch.setattr(recogniser, "_log_probs", counting)
        return scored
    return watch
