"""``dhmd-pipeline analyze``: the paper's analyses of a trained model (Table 7, Figs. 4-12).

``analyze --checkpoint CKPT [--data D] [--split S] --out DIR`` runs the checkpoint over one split (by
default the test split of the data it was trained on) and writes ``DIR/analysis.json`` with five
sections, and one PNG per section (``DIR/<section>.png``):

- ``unimodal_accuracy`` (Table 7, Figs. 4-6): the metrics of each space's auxiliary head alone
  (``homo`` / ``hetero`` x ``text`` / ``audio`` / ``video``), of their per-modality average (what
  ``predict`` shows as unimodal), and of the fused model.  ``accuracy`` is Has0_acc_2 for regression,
  Acc otherwise.
- ``edges_by_epoch`` (Figs. 9-10): the mean HoGD / HeGD edge matrices on the valid split after every
  training epoch, read from the run's ``metrics.jsonl`` (next to the checkpoint; runs trained before
  train recorded them have none, which the section says).
- ``feature_embedding`` (Figs. 7-8): a seeded t-SNE of the pooled homogeneous and heterogeneous
  features (one point per sample, modality and space), per space because the two spaces have different
  widths (C and 2C); each point keeps its modality and class.
- ``dictionary_by_class`` (Fig. 11): per space, the mean dictionary attention over the K atoms of the
  samples of each class (the 7 rounded scores for regression, the labels otherwise), averaged over the
  three modalities, and each class's top atoms.
- ``attention_maps`` (Fig. 12): the head-mean attention weights of the last layer of each of the six
  cross-modal transformers for the first few samples of the split (pipeline.analysis.attention).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import UserError
from pipeline.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

SECTIONS = ("unimodal_accuracy", "edges_by_epoch", "feature_embedding", "dictionary_by_class", "attention_maps")
SPACES = ("homo", "hetero")
MODALITIES = ("text", "audio", "video")
ATTENTION_SAMPLES = 3
TOP_ATOMS = 5
MAX_EMBED_POINTS = 3000          # t-SNE points per space at most (samples beyond are left out, seeded)


# ------------------------------------------------------------------------------------------ the pass

def collect(model: Any, samples: list[dict], normalizer: Any, batch_size: int, device: str) -> dict[str, Any]:
    """One pass (eval mode, no gradients) that keeps what the analyses need, as numpy arrays."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from pipeline.training.dataset import SampleDataset, collate
    from pipeline.training.evaluate import model_inputs

    loader = DataLoader(SampleDataset(samples, normalizer), batch_size=batch_size, shuffle=False,
                        collate_fn=collate)
    model.eval()
    keep: dict[str, list] = {}

    def add(key: str, value: Any) -> None:
        if value is not None:
            keep.setdefault(key, []).append(value.float().cpu().numpy())

    ids: list[str] = []
    labels: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="analyze", unit="batch", disable=None, leave=False, file=sys.stderr):
            args, kwargs = model_inputs(model, batch, device)
            out = model(*args, **kwargs)
            ids += batch["ids"]
            if "labels" in batch:
                labels.append(batch["labels"].numpy())
            add("prediction", out.prediction)
            for space in SPACES:
                heads = getattr(out, f"unimodal_{space}")
                for m in MODALITIES:
                    add(f"{space}.{m}", None if heads is None else heads[m])
                add(f"pooled.{space}", getattr(out, f"pooled_{space}"))
                add(f"dict.{space}", getattr(out, f"dict_attn_{space}"))
            for m in MODALITIES:
                add(f"average.{m}", out.unimodal[m])
    result = {k: np.concatenate(v) for k, v in keep.items()}
    result["ids"] = ids
    result["labels"] = np.concatenate(labels) if labels else None
    return result


def sample_classes(labels: np.ndarray, task: str) -> np.ndarray:
    """Class per sample: the rounded score in -3..3 for regression (Fig. 7's seven classes), else the label."""
    if task == "regression":
        return np.round(np.clip(labels.astype(np.float64), -3.0, 3.0)).astype(np.int64)
    return labels.astype(np.int64)


# ------------------------------------------------------------------------------------------ sections

def unimodal_accuracy(res: dict[str, Any], task: str) -> dict[str, Any]:
    from pipeline.training.metrics import json_safe, task_metrics

    y = res["labels"]
    key = "Has0_acc_2" if task == "regression" else "Acc"

    def metrics(pred: np.ndarray) -> dict[str, Any]:
        m = task_metrics(task, pred, y)
        return {"accuracy": json_safe(m[key]), "metrics": {k: json_safe(v) for k, v in m.items()}}

    section: dict[str, Any] = {"accuracy_metric": key, "n": int(len(y)), "fused": metrics(res["prediction"])}
    for space in (*SPACES, "average"):
        section[space] = ({m: metrics(res[f"{space}.{m}"]) for m in MODALITIES}
                          if f"{space}.text" in res else None)
    return section


def edges_by_epoch(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    epochs: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "edges" in row:
                epochs.append({"epoch": row["epoch"], "homo": row["edges"].get("homo"),
                               "hetero": row["edges"].get("hetero")})
    note = None if epochs else (f"{path} records no edges per epoch (a run from before train recorded "
                                f"them, or no metrics.jsonl next to the checkpoint)")
    return {"source": str(path), "epochs": epochs, "note": note}


def feature_embedding(res: dict[str, Any], classes: np.ndarray, seed: int = 0) -> dict[str, Any]:
    from sklearn.manifold import TSNE

    section: dict[str, Any] = {"method": "t-SNE", "seed": seed, "spaces": {}}
    for space in SPACES:
        feats = res.get(f"pooled.{space}")
        if feats is None:
            section["spaces"][space] = None
            continue
        n = feats.shape[0]
        rows = np.arange(n)
        if n * 3 > MAX_EMBED_POINTS:
            rows = np.sort(np.random.default_rng(seed).choice(n, MAX_EMBED_POINTS // 3, replace=False))
        x = feats[rows].reshape(len(rows) * 3, -1).astype(np.float64)          # sample-major, modality-minor
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        section["spaces"][space] = {
            "points": np.round(xy, 4).tolist(),
            "modality": [m for _ in rows for m in MODALITIES],
            "class": [int(classes[r]) for r in rows for _ in MODALITIES],
            "sample": [res["ids"][r] for r in rows for _ in MODALITIES],
            "dim": int(feats.shape[-1])}
    return section


def dictionary_by_class(res: dict[str, Any], classes: np.ndarray, top: int = TOP_ATOMS) -> dict[str, Any]:
    present = sorted(int(c) for c in np.unique(classes))
    section: dict[str, Any] = {"classes": present, "spaces": {}}
    for space in SPACES:
        attn = res.get(f"dict.{space}")                       # (N, 3, K)
        if attn is None:
            section["spaces"][space] = None
            continue
        per_sample = attn.mean(axis=1)                        # mean over the three modalities
        means = np.stack([per_sample[classes == c].mean(axis=0) for c in present])     # (n_classes, K)
        section["spaces"][space] = {
            "mean": np.round(means, 6).tolist(),
            "count": [int((classes == c).sum()) for c in present],
            "top_atoms": {str(c): [int(k) for k in np.argsort(-means[i])[:top]] for i, c in enumerate(present)}}
    return section


def attention_maps(model: Any, samples: list[dict], normalizer: Any, device: str,
                   n: int = ATTENTION_SAMPLES) -> dict[str, Any]:
    """One sample at a time (no padding): id, its frame counts and the six maps."""
    from pipeline.analysis.attention import cross_modal_attention_maps
    from pipeline.training.dataset import SampleDataset, collate
    from pipeline.training.evaluate import model_inputs

    if getattr(model, "crossmodal", None) is None:
        return {"layer": "last", "samples": [], "note": "the model has no cross-modal attention (use_ca = false)"}
    ds = SampleDataset(samples[:n], normalizer)
    out = []
    for i in range(len(ds)):
        batch = collate([ds[i]])
        args, kwargs = model_inputs(model, batch, device)
        maps = cross_modal_attention_maps(model, args, kwargs)
        out.append({"id": batch["ids"][0], "maps": {k: np.round(v[0], 5).tolist() for k, v in maps.items()}})
    return {"layer": "last", "heads": "mean", "samples": out}


# ------------------------------------------------------------------------------------------ plots

def plot_all(analysis: dict[str, Any], out: Path) -> list[Path]:
    from pipeline.analysis import figures

    return [figures.PLOTS[name](analysis[name], out / f"{name}.png") for name in SECTIONS]


# ------------------------------------------------------------------------------------------ entry

def analyze(checkpoint: Path, out: Path, cfg: "PipelineConfig", data: Path | None = None,
            split: str = "test") -> dict[str, Any]:
    """Write ``out/analysis.json`` and the PNGs; returns the analysis."""
    from pipeline.training.checkpoint import check_spec, load_for_inference
    from pipeline.training.dataset import load_data
    from pipeline.training.evaluate import resolve_device

    device = resolve_device(cfg.train.device)
    bundle = load_for_inference(Path(checkpoint), device)
    run_cfg = bundle.config
    data_path = Path(data) if data else Path(run_cfg.train.data)
    loaded = load_data(data_path, run_cfg)
    check_spec(bundle.spec, loaded.spec, Path(checkpoint), data_path)
    samples = loaded.splits.get(split, [])
    if not samples:
        raise UserError(f"{data_path}: the {split} split is empty", exit_code=2)
    if any("label" not in s for s in samples):
        raise UserError(f"{data_path}: the {split} split has samples without labels; analyze needs labels",
                        exit_code=2)
    task = bundle.model.config.task
    res = collect(bundle.model, samples, bundle.normalizer, cfg.train.batch_size, device)
    classes = sample_classes(res["labels"], task)
    analysis = {
        "checkpoint": str(checkpoint), "data": str(data_path), "split": split, "n": len(samples), "task": task,
        "unimodal_accuracy": unimodal_accuracy(res, task),
        "edges_by_epoch": edges_by_epoch(Path(checkpoint).parent),
        "feature_embedding": feature_embedding(res, classes, seed=run_cfg.train.seed),
        "dictionary_by_class": dictionary_by_class(res, classes),
        "attention_maps": attention_maps(bundle.model, samples, bundle.normalizer, device),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_all(analysis, out)
    atomic_write_text(out / "analysis.json", json.dumps(analysis) + "\n")
    return analysis


def run_analyze(cfg: "PipelineConfig", checkpoint: Path, out: Path, data: Path | None = None,
                split: str = "test") -> int:
    """The ``analyze`` command: write the analyses and print the unimodal accuracy table."""
    analysis = analyze(checkpoint, out, cfg, data, split)
    sec = analysis["unimodal_accuracy"]
    lines = [f"{out}/analysis.json: {analysis['split']} split, n={analysis['n']}; {sec['accuracy_metric']}",
             f"{'':8}" + "".join(f"{m:>8}" for m in MODALITIES)]
    for space in (*SPACES, "average"):
        if sec[space] is not None:
            lines.append(f"{space:8}" + "".join(
                f"{'n/a' if sec[space][m]['accuracy'] is None else format(sec[space][m]['accuracy'], '.4f'):>8}"
                for m in MODALITIES))
    fused = sec["fused"]["accuracy"]
    lines.append(f"{'fused':8}{'n/a' if fused is None else format(fused, '.4f'):>8}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0
