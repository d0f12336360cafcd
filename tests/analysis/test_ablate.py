"""dhmd-pipeline ablate: two Table 6 rows over two seeds on a tiny pickle."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_train_helpers import TINY, make_pickle, set_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.slow
def test_two_rows_two_seeds_write_the_table(tmp_path: Path) -> None:
    data = make_pickle(tmp_path / "d.pkl", n_train=16, seed=5)
    out = tmp_path / "abl"
    args = ["ablate", "--data", str(data), "--out", str(out), "--seeds", "1,2", "--rows", "full,no_gd",
            *set_args(TINY + ["train.epochs=1"])]
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    table = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["full", "no_gd"] and table["seeds"] == [1, 2]
    for row in table["rows"]:
        cfg = json.loads((out / row["row"] / "seed-1" / "config.json").read_text())
        assert cfg["model"]["use_gd"] is (row["row"] == "full")
        for name in ("MAE", "Has0_acc_2", "Corr"):
            m = row["metrics"][name]
            values = [json.loads((out / row["row"] / f"seed-{s}" / "results.json").read_text())["test"][name]
                      for s in (1, 2)]
            assert m["values"] == values
            assert m["mean"] == pytest.approx(np.mean(values)) and m["std"] == pytest.approx(np.std(values, ddof=1))
    # the rows are different models: without GD there are no dtl losses
    hist = json.loads((out / "no_gd" / "seed-1" / "metrics.jsonl").read_text().splitlines()[0])
    assert "dtl_hetero" not in hist["train"] and "dtl_hetero" in json.loads(
        (out / "full" / "seed-1" / "metrics.jsonl").read_text().splitlines()[0])["train"]
    assert (out / "ablation.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "ablation.md").read_text()
    assert "| DHMD (full) |" in md and "| w/o GD |" in md and "±" in md and "w/o GD" in res.stdout
    # a second call refuses to overwrite; --resume reads the finished rows back without training
    assert _invoke(args).exit_code == 2
    res = _invoke(args + ["--resume"])
    assert res.exit_code == 0 and json.loads((out / "ablation.json").read_text()) == table


def test_unknown_row_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["ablate", "--out", str(tmp_path / "a"), "--seeds", "1", "--rows", "full,no_x"])
    assert res.exit_code == 2 and "no_x" in res.output
