"""The demo: corpus building (idempotent, atomic) and a shrunk demo end to end through the CLI."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.demo import corpus as dc
from pipeline.cli import main
from pipeline.demo.run import RUN_MARKER, check_run_dir, clean_run_dir, demo_overrides, sign_accuracy
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


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _unrelated_project(root: Path) -> Path:
    """A folder that is not the demo's: a config.json and a checkpoint-looking file among other files."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"mine": true}')
    (root / "metrics.jsonl").write_text("{}\n")
    (root / "best.pt").write_bytes(b"someone else's model")
    (root / "notes.txt").write_text("keep me")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hello')\n")
    return root


def test_held_out_word_error_rate_counts_every_word_per_voice():
    from pipeline.demo.run import held_out_word_error_rate

    rows = [{"voice": "a", "text": "The soup was warm, tasty.", "transcript": "the soap was warm tasty"},
            {"voice": "a", "text": "I loved it", "transcript": "I loved it a lot"},
            {"voice": "b", "text": "Not bad at all", "transcript": ""}]
    wer = held_out_word_error_rate(rows)
    assert wer["per_voice"]["a"] == {"wer": round(3 / 8, 4), "errors": 3, "words": 8}   # 1 sub + 2 ins
    assert wer["per_voice"]["b"] == {"wer": 1.0, "errors": 4, "words": 4}              # all deleted
    assert (wer["errors"], wer["words"], wer["wer"]) == (7, 12, round(7 / 12, 4))


def test_clean_run_dir_never_deletes_what_the_demo_did_not_write(tmp_path):
    project = _unrelated_project(tmp_path / "project")
    before = _snapshot(project)
    for fn in (check_run_dir, clean_run_dir):
        with pytest.raises(UserError) as e:
            fn(project)
        assert e.value.exit_code == 2 and str(project) in str(e.value) and "notes.txt" in str(e.value)
        assert _snapshot(project) == before
    # a config.json alone is no demo run, nor is a run of `train` (same file names, no demo summary)
    for files in (("config.json",), ("best.pt", "last.pt", "config.json", "metrics.jsonl", "results.json")):
        other = tmp_path / f"other-{len(files)}"
        other.mkdir()
        for name in files:
            (other / name).write_text(f"{name} of someone else")
        with pytest.raises(UserError):
            clean_run_dir(other)
        assert sorted(p.name for p in other.iterdir()) == sorted(files)
    # a file is refused
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError):
        clean_run_dir(tmp_path / "afile")


def test_clean_run_dir_makes_marks_and_empties_its_own_folder(tmp_path):
    run = tmp_path / "runs" / "demo"
    clean_run_dir(run)                                       # missing: made, with the marker
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl", "results.json", "demo_summary.json",
                 "loss_curves.png", "edges.png"):
        (run / name).write_bytes(b"x")
    (run / "explain").mkdir()
    (run / "explain" / "s001-en-us-nyc-f5.png").write_bytes(b"png")
    (run / "user-notes.txt").write_text("added later by the user")
    clean_run_dir(run)
    # the demo's files are gone, the marker stays, a file the demo did not write is left alone
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER, "user-notes.txt"]
    # a run folder left by an older demo (no marker, only demo files and a checkpoint) is taken over
    old = tmp_path / "old"
    old.mkdir()
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl", "demo_summary.json"):
        (old / name).write_bytes(b"x")
    (old / "explain").mkdir()
    (old / "explain" / "a.png").write_bytes(b"png")
    clean_run_dir(old)
    assert sorted(p.name for p in old.iterdir()) == [RUN_MARKER]


def test_demo_refuses_a_runs_dir_that_is_not_its_own_before_any_work(tmp_path):
    project = _unrelated_project(tmp_path / "project")
    before = _snapshot(project)
    work = tmp_path / "work"
    res = CliRunner().invoke(main, ["demo", "--workdir", str(work), "--sentences", "4",
                                    "--set", f"demo.runs_dir=\"{project}\""])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"error: {project}: demo.runs_dir holds files the demo did not write")
    assert _snapshot(project) == before
    assert not work.exists()                                  # refused before rendering anything


def test_demo_always_trains_a_regression():
    from pipeline.config import PipelineConfig, with_overrides

    cfg = with_overrides(PipelineConfig(), {"model.task": "binary", "train.val_metric": "Acc"})
    dcfg = with_overrides(cfg, demo_overrides(cfg, epochs=1))
    assert dcfg.model.task == "regression" and dcfg.train.val_metric == "MAE"
    assert (dcfg.model.hidden_dim, dcfg.model.num_heads) == (cfg.demo.hidden_dim, cfg.demo.num_heads)
    # the demo's own recogniser, and faces read at the rate the clips are rendered at
    assert dcfg.extract.asr.model == cfg.demo.asr_model and dcfg.extract.fps == cfg.demo.fps


def test_shrunk_demo_end_to_end(tmp_path):
    """12 sentences, one training voice each, one epoch: corpus, extract, train, evaluate, predict."""
    runs = tmp_path / "runs" / "demo"
    args = ["demo", "--workdir", str(tmp_path / "work"), "--sentences", "12", "--epochs", "1",
            "--set", f"demo.runs_dir=\"{runs}\"", "--set", "demo.voices_per_sentence=1", "--set", "demo.fps=10"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert (runs / "best.pt").is_file()
    # the model reads faces relative to each clip's resting face (demo.clip_baseline), and the
    # checkpoint's normaliser carries that, so predict and serve do the same
    import torch

    norm = torch.load(runs / "best.pt", map_location="cpu", weights_only=True)["norm"]
    assert norm["video"].get("clip_baseline") == "median" and "clip_baseline" not in norm["audio"]
    # the evaluate metrics and the prediction table of the held-out clip are printed
    assert "Test metrics" in out and "MAE" in out and "Non0_acc_2" in out
    summary = json.loads((runs / "demo_summary.json").read_text())
    # the training-only sentences came along, in the training split only, in their share
    assert summary["training_only_sentences"] == round(len(dc.TRAIN_SENTENCES) * 12 / len(dc.SENTENCES)) > 0
    assert summary["corpus"]["train"]["sentences"] == summary["corpus"]["train"]["clips"]
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
    asr = summary["held_out_asr"]
    from extractors.words import scoring_words
    from pipeline.config import PipelineConfig

    assert asr["words"] == sum(len(scoring_words(r["text"])) for r in test_clips) and 0 <= asr["wer"] < 1
    assert summary["settings"]["extract.asr.model"] == PipelineConfig().demo.asr_model
    assert set(summary["timings_s"]) >= {"corpus", "extract", "train", "evaluate", "predict", "total"}
    # accuracy per face condition, fused and per head, over the held-out face; the disagreement field
    assert "By face condition" in out and "disagreement" in out
    by_cond = summary["by_face_condition"]
    assert list(by_cond) == list(dc.TEST_CONDITIONS)
    for cond, accs in by_cond.items():
        assert set(accs) == {"fused", "text", "audio", "video"}
        assert accs["fused"]["clips"] == sum(r["condition"] == cond and r["label"] != 0 for r in test_clips)
    assert sum(a["fused"]["clips"] for a in by_cond.values()) == acc["clips"]
    assert all(r["disagreement"]["level"] in ("low", "moderate", "high") for r in test_clips)
    assert {r["identity"] for r in test_clips} == set(dc.TEST_IDENTITIES)
    stats = summary["corpus_statistics"]
    assert stats["identities"]["test"] == list(dc.TEST_IDENTITIES)
    assert summary["settings"]["train.modality_dropout"] > 0
    # no test sentence is ever trained on: the corpus and the cache the model was trained on agree
    rows = _rows(tmp_path / "work" / "corpus-12" / "labels.csv")
    train_ids = {r["video_id"] for r in rows if r["split"] in ("train", "valid")}
    test_ids = {r["video_id"] for r in rows if r["split"] == "test"}
    assert test_ids and train_ids and not test_ids & train_ids
    train_texts = {r["text"] for r in rows if r["split"] in ("train", "valid")}
    test_texts = {r["text"] for r in test_clips}
    assert len(test_texts) == len(test_ids) and not test_texts & train_texts
    by_id = {s.clip_id: s for s in dc.plan_corpus(dc.select_sentences(12), voices_per_sentence=1, fps=10.0,
                                                    extra=dc.training_sentences(12))}
    assert {by_id[r["clip_id"]].text for r in rows if r["split"] in ("train", "valid")} == train_texts
    cached = _rows(tmp_path / "work" / "cache-12" / "labels.csv")
    assert {r["clip_id"] for r in cached if r["split"] in ("train", "valid")}.isdisjoint(
        {r["clip_id"] for r in test_clips})
    assert (runs / RUN_MARKER).is_file()
