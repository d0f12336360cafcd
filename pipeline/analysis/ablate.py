"""``dhmd-pipeline ablate``: the rows of the paper's Table 6, each trained over ``--seeds``.

Each row is the run's settings with some of the four component switches off (model.use_fd, use_ca,
use_gd, use_dm); the rows are every combination Table 6 reports that the switches allow:

    full        everything on
    no_fd       w/o FD   feature decoupling (one space: no homogeneous space, no HoGD / HoDM)
    no_ca       w/o CA   cross-modal attention units
    no_gd       w/o GD   graph distillation (HoGD and HeGD)
    no_dm       w/o DM   dictionary matching (HoDM and HeDM)
    no_gd_dm    w/o GD and DM

``ablate --data D --seeds 1,2,3 --out DIR [--rows full,no_gd]`` trains row ``r`` with ``train --seeds``
into ``DIR/<r>/`` (its own summary.json), then writes ``DIR/ablation.json`` (per row and metric: mean,
standard deviation with ddof 1, the per-seed values), ``DIR/ablation.md`` (the table) and
``DIR/ablation.png`` (bars with the standard deviation) and prints the table.
An interrupted ablation continues with ``--resume``: finished rows are read back, an unfinished one
is resumed like ``train --resume``.  Every row uses the same data split (train.split_seed).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

ROWS: dict[str, tuple[str, dict[str, bool]]] = {
    "full": ("DHMD (full)", {}),
    "no_fd": ("w/o FD", {"model.use_fd": False}),
    "no_ca": ("w/o CA", {"model.use_ca": False}),
    "no_gd": ("w/o GD", {"model.use_gd": False}),
    "no_dm": ("w/o DM", {"model.use_dm": False}),
    "no_gd_dm": ("w/o GD and DM", {"model.use_gd": False, "model.use_dm": False}),
}


# the metrics drawn in ablation.png (Table 6 reports accuracy, F1 and MAE)
PLOT_METRICS = {"regression": ("Has0_acc_2", "Mult_acc_7", "MAE"), "binary": ("Acc", "F1"),
                "classification": ("Acc", "F1")}


def parse_rows(text: str | None) -> list[str]:
    """"full,no_gd" -> ["full", "no_gd"]; None -> every row; UserError (exit 2) for unknown names."""
    if text is None:
        return list(ROWS)
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if not rows or unknown or len(set(rows)) != len(rows):
        raise UserError(f"--rows {text!r}: expected distinct names from {', '.join(ROWS)}", exit_code=2)
    return rows


def format_table(table: dict[str, Any], names: list[str]) -> str:
    """Markdown table: one row per ablation, ``mean ± std`` per metric."""
    lines = ["| row | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in table["rows"]:
        cells = []
        for n in names:
            m = row["metrics"][n]
            cells.append("n/a" if m["mean"] is None else f"{m['mean']:.4f} ± {m['std'] or 0.0:.4f}")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablate(cfg: "PipelineConfig", data: Path | None, out: Path, seeds: str, rows: str | None = None,
               preset: str | None = None, resume: bool = False) -> int:
    """The ``ablate`` command (see the module docstring).  ``cfg`` already holds the preset."""
    from pipeline.config import with_overrides
    from pipeline.training.metrics import metric_names
    from pipeline.training.train import parse_seeds, run_train

    names = parse_rows(rows)
    seed_list = parse_seeds(seeds)
    if not seed_list:
        raise UserError("--seeds is required, e.g. --seeds 1,2,3", exit_code=2)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder", exit_code=2)
    if not resume and out.is_dir() and any((out / r).exists() for r in ROWS):
        raise UserError(f"{out} already holds an ablation: continue it with --resume or choose another --out",
                        exit_code=2)
    seeds_text = ",".join(map(str, seed_list))
    table_rows = []
    for name in names:
        label, switches = ROWS[name]
        row_dir = out / name
        summary_path = row_dir / "summary.json"
        if not summary_path.is_file():
            log.info("ablation row %s (%s): seeds %s -> %s", name, label, seeds_text, row_dir)
            rcfg = with_overrides(cfg, switches)
            if resume and (row_dir / "seeds.json").is_file():
                run_train(rcfg, resume=row_dir)
            else:
                run_train(rcfg, data=data, out=row_dir, preset=preset, seeds=seeds_text)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        table_rows.append({"row": name, "label": label, "switches": switches, "split": summary["split"],
                           "seeds": summary["seeds"], "metrics": summary["metrics"]})
    task = cfg.model.task
    table = {"task": task, "seeds": seed_list, "std_ddof": 1, "rows": table_rows}
    text = format_table(table, list(metric_names(task)))
    atomic_write_text(out / "ablation.json", json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", f"Table 6 rows, {table_rows[0]['split']} split, seeds {seeds_text} "
                                           f"(mean ± std, ddof 1)\n\n{text}\n")
    from pipeline.analysis.figures import plot_ablation

    plot_ablation(table, list(PLOT_METRICS[task]), out / "ablation.png")
    sys.stdout.write(f"{out}: ablation over seeds {seeds_text} (mean ± std)\n{text}\n")
    sys.stdout.flush()
    return 0
