"""Shared fixtures: real media made on the spot (espeak-ng speech over a real face photograph)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCE = "I really love this wonderful movie, the acting was great."


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def make_clip(media_dir: Path) -> Callable[..., Path]:
    """Make (once per session and parameter set) an mp4 with pipeline.demo.synth.make_clip."""
    from pipeline.demo.synth import make_clip as _make

    def factory(text: str = SENTENCE, name: str | None = None, **kw) -> Path:
        key = hashlib.sha1(repr((text, sorted(kw.items()))).encode()).hexdigest()[:10]
        out = media_dir / (name or f"clip-{key}.mp4")
        if not out.exists():
            _make(out, text, **kw)
        return out

    return factory


@pytest.fixture(scope="session")
def speech_clip(make_clip) -> Path:
    """A ~4 s clip: SENTENCE spoken over the moving astronaut face."""
    return make_clip(SENTENCE, name="speech.mp4")


MEDIA = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dhmd-pipeline" / "media"


@pytest.fixture(scope="session")
def real_speech() -> tuple[Path, str]:
    """A real person's voice and what they say: CMU ARCTIC's arctic_a0007 (16 kHz, 4 s), taken from
    pysptk's source package by scripts/install.sh (step 4b; free for any use, never committed)."""
    path = MEDIA / "arctic_a0007.wav"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/install.sh (step 4b fetches this recording)")
    return path, "and you always want to see it in the superlative degree"


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models run fastest on one torch thread, and other test processes share the two cores.
    Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
