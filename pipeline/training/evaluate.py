"""``dhmd-pipeline evaluate``: a checkpoint's metrics on a data split; and the model-over-data loop
that training's validation and test passes share.

The data is read with the checkpoint's own settings (alignment mode, task, split fractions and seed),
so ``--data`` defaults to what the run was trained on and a by-video split is the same one.  Data whose
feature spec differs from the checkpoint's is refused with both specs in the message.
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from dhmd import DHMD
    from pipeline.config import PipelineConfig
    from pipeline.training.dataset import Normalizer

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available else "cpu"; "cuda" without a GPU is a UserError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = \"cuda\" but no CUDA device is available; use \"auto\" or \"cpu\"",
                        exit_code=2)
    return device


def autocast(device: str, amp: bool) -> Any:
    """bf16 autocast on CUDA when ``amp``; plain fp32 otherwise (CPU always)."""
    import torch

    if device.startswith("cuda") and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_inputs(model: "DHMD", batch: dict[str, Any], device: str) -> tuple[list["torch.Tensor"], dict]:
    """Positional (text, audio, video) and mask keyword tensors of a collated batch, on ``device``."""
    if model.config.finetune_bert:
        if "text_bert" not in batch:
            raise UserError("model.finetune_bert needs BERT token ids (text_bert), which this data lacks",
                            exit_code=2)
        text = batch["text_bert"]
    else:
        text = batch["text"]
    args = [t.to(device, non_blocking=True) for t in (text, batch["audio"], batch["video"])]
    kwargs = {k: batch[k].to(device, non_blocking=True) for k in ("text_mask", "audio_mask", "video_mask")}
    return args, kwargs


@dataclass
class PassResult:
    """Outputs of one pass of a model over samples."""

    predictions: np.ndarray                 # (N,) scores or (N, C) logits, float32
    labels: np.ndarray | None               # (N,)
    ids: list[str]
    losses: dict[str, float] = field(default_factory=dict)       # mean per sample of every loss term
    edges: dict[str, np.ndarray | None] = field(default_factory=dict)  # mean (3, 3) per space


def run_model(model: "DHMD", samples: Sequence[dict], normalizer: "Normalizer | None", batch_size: int,
              device: str, amp: bool = True, desc: str = "eval", progress: bool = True) -> PassResult:
    """Predict every sample (eval mode, no gradients); losses when the samples carry labels.
    ``progress=False``: no progress bar (ranks > 0 of a distributed run)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from pipeline.training.dataset import SampleDataset, collate

    loader = DataLoader(SampleDataset(samples, normalizer), batch_size=batch_size, shuffle=False,
                        collate_fn=collate)
    model.eval()
    preds, labels, ids = [], [], []
    loss_sums: dict[str, float] = {}
    edge_sums: dict[str, Any] = {"homo": None, "hetero": None}
    n = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True, leave=False,
                          file=sys.stderr):
            args, kwargs = model_inputs(model, batch, device)
            y = batch.get("labels")
            with autocast(device, amp):
                out = model(*args, **kwargs, labels=None if y is None else y.to(device))
            b = len(batch["ids"])
            n += b
            preds.append(out.prediction.float().cpu().numpy())
            ids += batch["ids"]
            if y is not None:
                labels.append(y.numpy())
                for k, v in out.losses.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + float(v.float()) * b
            for space in ("homo", "hetero"):
                e = getattr(out, f"edges_{space}")
                if e is not None:
                    s = e.float().sum(0).cpu().numpy().astype(np.float64)
                    edge_sums[space] = s if edge_sums[space] is None else edge_sums[space] + s
    return PassResult(
        predictions=np.concatenate(preds) if preds else np.zeros(0, np.float32),
        labels=np.concatenate(labels) if labels else None, ids=ids,
        losses={k: v / max(n, 1) for k, v in loss_sums.items()},
        edges={k: (None if v is None else v / max(n, 1)) for k, v in edge_sums.items()})


def evaluate_samples(model: "DHMD", samples: Sequence[dict], normalizer: "Normalizer | None", task: str,
                     batch_size: int, device: str, amp: bool = True, desc: str = "eval"
                     ) -> tuple[dict[str, float], PassResult]:
    """Metrics (pipeline.training.metrics) of ``model`` on labelled ``samples``, and the raw pass."""
    from pipeline.training.metrics import task_metrics

    res = run_model(model, samples, normalizer, batch_size, device, amp, desc)
    return task_metrics(task, res.predictions, res.labels), res


def run_evaluate(cfg: "PipelineConfig", checkpoint: Path, data: Path | None = None, split: str = "test",
                 as_json: bool = False) -> int:
    """The ``evaluate`` command: print the metrics of ``checkpoint`` on ``split`` of ``data``."""
    from pipeline.training.checkpoint import check_spec, load_for_inference
    from pipeline.training.dataset import load_data
    from pipeline.training.metrics import format_metrics, json_safe, metric_names

    device = resolve_device(cfg.train.device)
    bundle = load_for_inference(Path(checkpoint), device)
    run_cfg = bundle.config
    data_path = Path(data) if data else Path(run_cfg.train.data)
    loaded = load_data(data_path, run_cfg)
    check_spec(bundle.spec, loaded.spec, Path(checkpoint), data_path)
    samples = loaded.splits.get(split, [])
    if not samples:
        raise UserError(f"{data_path}: the {split} split is empty", exit_code=2)
    task = bundle.model.config.task
    metrics, res = evaluate_samples(bundle.model, samples, bundle.normalizer, task, cfg.train.batch_size,
                                    device, cfg.train.amp, desc=f"evaluate {split}")
    names = metric_names(task)
    if as_json:
        obj = {"checkpoint": str(checkpoint), "data": str(data_path), "split": split, "n": len(samples),
               "task": task, **{k: json_safe(metrics[k]) for k in names}}
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        sys.stdout.write(f"{checkpoint} on {data_path} [{split}, n={len(samples)}]\n"
                         f"{format_metrics(metrics, names)}\n")
    sys.stdout.flush()
    return 0
