"""The demo: corpus building (idempotent, atomic) and a shrunk demo end to end through the CLI."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import demo_corpus as dc
from pipeline.cli import main
from pipeline.demo import clean_run_dir, sign_accuracy
from pipeline.errors import UserError


def _rows(labels: Path) -> list[dict[str, str]]:
    with open(labels, newline="") as f:
        return list(csv.DictReader(f))


def test_build_corpus_is_idempotent_and_atomic(tmp_path):
    specs = dc.plan_corpus(dc.select_sentences(4), voices_per_sentence=1)
    out = tmp_path / "corpus"
    labels = dc.build_corpus(out, specs, workers=1)
    clips = sorted(out.glob("*.mp4"))
    assert [p.stem for p in clips] == sorted(s.clip_id for s in specs)
    assert not list(out.glob(".*"))                       # no temporary file left behind
    rows = _rows(labels)
    assert [r["clip_id"] for r in rows] == [s.clip_id for s in specs]
    for r, s in zip(rows, specs):
        assert float(r["label"]) == s.score and r["split"] == s.split and r["video_id"] == s.video_id
        # test clips are transcribed like new speech; the others carry their sentence
        assert r["text"] == ("" if s.split == "test" else s.text)

    before = {p.name: p.stat().st_mtime_ns for p in clips}
    dc.build_corpus(out, specs, workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == before

    # a changed render setting re-renders that clip only; a clip not in the plan is removed
    changed = dataclasses.replace(specs[0], pitch=specs[0].pitch + 7)
    stray = out / "stray.mp4"
    stray.write_bytes(clips[-1].read_bytes())
    dc.build_corpus(out, [changed, *specs[1:]], workers=1)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert not stray.exists()
    assert after[f"{changed.clip_id}.mp4"] != before[f"{changed.clip_id}.mp4"]
    assert all(after[n] == t for n, t in before.items() if n != f"{changed.clip_id}.mp4")


def test_sign_accuracy_ignores_neutral_labels():
    acc = sign_accuracy(np.array([1.0, -0.5, 0.3, 2.0, -1.0]), np.array([2.0, -1.0, 0.0, -3.0, -2.0]))
    assert acc["clips"] == 4 and acc["correct"] == 3 and acc["accuracy"] == 0.75


def test_clean_run_dir_refuses_folders_that_are_not_runs(tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError):
        clean_run_dir(other)
    assert (other / "notes.txt").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    clean_run_dir(run)
    assert not run.exists()


def test_shrunk_demo_end_to_end(tmp_path):
    """12 sentences, one training voice each, one epoch: corpus, extract, train, evaluate, predict."""
    runs = tmp_path / "runs" / "demo"
    args = ["demo", "--workdir", str(tmp_path / "work"), "--sentences", "12", "--epochs", "1",
            "--set", f"demo.runs_dir=\"{runs}\"", "--set", "demo.voices_per_sentence=1", "--set", "demo.fps=10"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert (runs / "best.pt").is_file()
    # the evaluate metrics and the prediction table of the held-out clip are printed
    assert "Test metrics" in out and "MAE" in out and "Non0_acc_2" in out
    summary = json.loads((runs / "demo_summary.json").read_text())
    example = summary["example_clip"]
    assert example in out and "label_7" in out
    assert "Held-out sign accuracy" in out
    acc = summary["held_out_sign_accuracy"]
    test_clips = [s for s in summary["test_predictions"]]
    assert acc["clips"] == sum(1 for r in test_clips if r["label"] != 0) > 0
    assert 0.0 <= acc["accuracy"] <= 1.0
    # test clips are spoken only in voices no training clip uses, and were transcribed by ASR
    train_voices = set(summary["corpus"]["train"]["voices"]) | set(summary["corpus"]["valid"]["voices"])
    assert not {r["voice"] for r in test_clips} & train_voices
    assert all(r["transcript"] for r in test_clips)
    assert set(summary["timings_s"]) >= {"corpus", "extract", "train", "evaluate", "predict", "total"}
