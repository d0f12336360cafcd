"""The demo model's held-out sign accuracy over several training seeds, from an extracted demo cache.

``make demo`` trains one seed, and with 18 test clips a face condition (one clip = 5.6 points) one
seed's figures move by several points from seed to seed.  This trains the demo's model (its settings:
pipeline/demo/run.py's demo_overrides, plus any --set) on the demo cache once per seed and prints a
Markdown table of the held-out figures as the demo computes them: fused and per-head sign accuracy on
the non-neutral test clips, and the fused accuracy by face condition; then their mean.  It also gives
the fused sign accuracy on the training clips, to show how far training fits them.

    make demo                                              # the corpus and its cache, once
    python bench/demo_seeds.py --seeds 1 2 3
    python bench/demo_seeds.py --cache /elsewhere/cache --seeds 1 2 3 --set demo.text_layer=-1

Run folders go to a temporary directory (``--out`` keeps them).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout as well

from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.demo.run import (demo_overrides, held_out_figures, held_out_predictions,  # noqa: E402
                               plan_demo_corpus, sign_accuracy)


def one_seed(cache: Path, out: Path, seed: int, overrides: list[str]) -> dict:
    """Train one seed on ``cache``; the demo's held-out figures and the training-clip fit."""
    from pipeline.inference.predict import Predictor
    from pipeline.training.train import run_train

    cfg = load_config(None, overrides)
    dcfg = with_overrides(cfg, {**demo_overrides(cfg, cfg.demo.epochs), "train.seed": seed})
    if run_train(dcfg, data=cache, out=out, preset=None, resume=None, seeds=None) != 0:
        raise SystemExit(f"training seed {seed} on {cache} failed")
    _, _, specs = plan_demo_corpus(dcfg.demo)
    predictor = Predictor(out / "best.pt", device="cpu")
    row = {k: v["accuracy"] for k, v in held_out_figures(held_out_predictions(predictor, cache, specs)).items()}
    # the training clips, predicted the same way (held_out_predictions reads the test split's specs)
    train = [dataclasses.replace(s, split="test") for s in specs if s.split == "train"]
    fit = held_out_predictions(predictor, cache, train)
    row["train fit"] = sign_accuracy(np.array([r["score"] for r in fit]),
                                     np.array([r["label"] for r in fit]))["accuracy"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="demo cache (default: demo.workdir/cache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting (repeatable), as dhmd-pipeline --set, e.g. --set model.text_dropout=0.5 "
                             "or --set demo.text_layer=-1 (the demo's own settings are applied from [demo])")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cache = args.cache or Path(load_config(None).demo.workdir) / "cache"
    overrides = args.overrides
    root = args.out or Path(tempfile.mkdtemp(prefix="dhmd-demo-seeds-"))
    cols = ["fused", "text", "audio", "video", "agree", "neutral", "contradict", "train fit"]
    rows = {s: one_seed(cache, root / f"seed{s}", s, overrides) for s in args.seeds}
    print(f"Demo model on {cache}{' with ' + ', '.join(args.overrides) if args.overrides else ''}: "
          f"held-out sign accuracy on non-neutral test clips (%)\n")
    print("| seed | " + " | ".join(cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for s, r in rows.items():
        print(f"| {s} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cols) + " |")
    print("| mean | " + " | ".join(f"{100 * statistics.mean(r[c] for r in rows.values()):.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
