"""One training step of the public DMD code (mdswyz/DMD, CVPR 2023), for bench/model_step.py to time.

The issue's speed goal compares DHMD with "the public DMD code on the same GPU".  Nothing of DMD ships
with this project: the user passes a checkout of https://github.com/mdswyz/DMD (``--dmd-repo``), and this
module loads from it, by file path, the model (``trains/singleTask/model/dmd.py``), its two
graph-distillation kernels (``trains/singleTask/distillnets/``), its helpers
(``trains/singleTask/utils/misc.py``) and its hinge loss (``trains/singleTask/HingeLoss.py``), then
composes one step the way its trainer (``trains/singleTask/DMD.py``, ``do_train``) does:

    forward (is_distill=True) -> HoGD and HeGD kernels -> 8 L1 task losses + reconstruction + cycle
    + orthogonality + hinge margin loss + the two graph-distillation losses (weights as in do_train)
    -> backward -> clip_grad_value_(0.6) -> Adam

with the CMU-MOSI settings of its ``config/config.json`` (C=50, 10 heads, 4 layers, kernels 5/5/5, its
dropouts, causal attention mask on) and of its ``run.py`` (GD sizes 64/32, priors, gd_reg 10).  Text
enters as (B, 50, 768) BERT features (``use_bert=False``), as in our benchmark, so neither side runs BERT.

Two adaptations, needed to run that code at all, neither of which changes its cost: when it is timed on
the CPU, ``Tensor.cuda`` is made a no-op in that benchmark process (the code calls ``.cuda()``
unconditionally); and its orthogonality loss,
``CosineEmbeddingLoss`` on 3-D (T, B, C) tensors, raises on current PyTorch ("1D target tensor expects 2D
input tensors"), so it is computed as the same hinge on cosine similarity along dim 1 that older PyTorch
computed for such tensors.  DMD's model needs every sample at the full fixed length (50/375/500): it has
no masks, so its batch has no padding.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# DMD's CMU-MOSI settings (config/config.json "dmd" mosi, commonParams; run.py graph distillation)
MOSI_ARGS = dict(use_bert=False, use_finetune=False, transformers="bert", pretrained="bert-base-uncased",
                 dataset_name="mosi", need_data_aligned=False, feature_dims=(768, 5, 20),
                 dst_feature_dim_nheads=(50, 10), nlevels=4, attn_dropout=0.3, attn_dropout_a=0.2,
                 attn_dropout_v=0.0, relu_dropout=0.0, embed_dropout=0.2, res_dropout=0.0,
                 output_dropout=0.5, text_dropout=0.5, attn_mask=True, conv1d_kernel_size_l=5,
                 conv1d_kernel_size_a=5, conv1d_kernel_size_v=5)
LENGTHS = {"text": 50, "audio": 375, "video": 500}     # the only lengths DMD's MOSI model accepts
REQUIRED = ("trains/singleTask/model/dmd.py", "trains/subNets/transformers_encoder/transformer.py",
            "trains/singleTask/distillnets/get_distillation_kernel.py",
            "trains/singleTask/distillnets/get_distillation_kernel_homo.py",
            "trains/singleTask/utils/misc.py", "trains/singleTask/HingeLoss.py")


class _Args(dict):
    """DMD reads its settings both as attributes and as keys."""

    __getattr__ = dict.__getitem__


def _package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_dmd(repo: Path) -> dict[str, types.ModuleType]:
    """Import DMD's model, kernels, helpers and hinge loss from a checkout, without its package
    ``__init__`` files (they import BERT and the data loaders, which a step does not need)."""
    repo = Path(repo).resolve()
    missing = [p for p in REQUIRED if not (repo / p).is_file()]
    if missing:
        raise SystemExit(f"--dmd-repo {repo}: not a checkout of github.com/mdswyz/DMD (missing {', '.join(missing)})")
    trains = repo / "trains"
    _package("trains", trains)
    sub = _package("trains.subNets", trains / "subNets")
    sub.BertTextEncoder = None              # never built: use_bert=False
    _package("trains.subNets.transformers_encoder", trains / "subNets" / "transformers_encoder")
    _package("trains.singleTask", trains / "singleTask")
    _package("trains.singleTask.model", trains / "singleTask" / "model")
    _package("trains.singleTask.distillnets", trains / "singleTask" / "distillnets")
    utils = _package("trains.singleTask.utils", trains / "singleTask" / "utils")
    misc = _load_file("trains.singleTask.utils.misc", trains / "singleTask" / "utils" / "misc.py")
    utils.distance_metric, utils.min_cosine = misc.distance_metric, misc.min_cosine
    return {"dmd": _load_file("trains.singleTask.model.dmd", trains / "singleTask" / "model" / "dmd.py"),
            "gd_hetero": _load_file("trains.singleTask.distillnets.get_distillation_kernel",
                                    trains / "singleTask" / "distillnets" / "get_distillation_kernel.py"),
            "gd_homo": _load_file("trains.singleTask.distillnets.get_distillation_kernel_homo",
                                  trains / "singleTask" / "distillnets" / "get_distillation_kernel_homo.py"),
            "misc": misc,
            "hinge": _load_file("trains.singleTask.HingeLoss", trains / "singleTask" / "HingeLoss.py")}


def _orthogonality(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """CosineEmbeddingLoss(s, c, target=-1) with margin 0 as older PyTorch computed it for (T, B, C)
    inputs: the cosine along dim 1, clamped at 0, averaged."""
    return F.cosine_similarity(s, c, dim=1, eps=1e-8).clamp_min(0).mean()


def build_dmd_step(repo: Path, device: torch.device, inputs: dict) -> tuple[Callable[[], None], int]:
    """DMD's model, kernels and Adam on ``device``; returns (one training step, parameter count).

    ``inputs`` holds ``text`` (B, 50, 768), ``audio`` (B, 375, 5), ``video`` (B, 500, 20) and ``labels``
    (B,); masks, if any, are ignored (DMD has none)."""
    if device.type != "cuda":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self      # DMD calls .cuda() unconditionally
    mods = load_dmd(repo)
    for name, length in LENGTHS.items():
        if inputs[name].shape[1] != length:
            raise ValueError(f"DMD's MOSI model takes {name} of length {length}, got {inputs[name].shape[1]}")
    args = _Args(MOSI_ARGS)
    c = args["dst_feature_dim_nheads"][0]
    softmax = mods["misc"].softmax
    model = mods["dmd"].DMD(args).to(device)
    kernel = dict(n_classes=1, to_idx=[0, 1, 2], from_idx=[0, 1, 2], gd_reg=10, w_losses=[1, 10],
                  metric="l1", alpha=1 / 8, hyp_params=args)
    gd_homo = mods["gd_homo"].DistillationKernel(hidden_size=c, gd_size=64,
                                                 gd_prior=softmax([0, 0, 1, 0, 1, 0], 0.25), **kernel).to(device)
    gd_hetero = mods["gd_hetero"].DistillationKernel(hidden_size=2 * c, gd_size=32,
                                                     gd_prior=softmax([0, 0, 1, 0, 1, 1], 0.25), **kernel).to(device)
    gd_homo.gd_prior = gd_homo.gd_prior.to(device)
    gd_hetero.gd_prior = gd_hetero.gd_prior.to(device)
    hinge = mods["hinge"].HingeLoss()
    modules = [model, gd_homo, gd_hetero]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    for m in modules:
        m.train()
    text, audio, video = inputs["text"], inputs["audio"], inputs["video"]
    labels = inputs["labels"].view(-1, 1)

    def mse(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return (real - pred).pow(2).sum() / real.numel()

    def step() -> None:
        out = model(text, audio, video, is_distill=True)
        logits_homo = torch.stack([out[f"logits_{m}_homo"] for m in "lva"])
        reprs_homo = torch.stack([out[f"repr_{m}_homo"] for m in "lva"])
        logits_hetero = torch.stack([out[f"logits_{m}_hetero"] for m in "lva"])
        reprs_hetero = torch.stack([out[f"repr_{m}_hetero"] for m in "lva"])
        edges_homo, _ = gd_homo(logits_homo, reprs_homo)
        edges_hetero, _ = gd_hetero(logits_hetero, reprs_hetero)
        heads = ["output_logit", "logits_c"] + [f"logits_{m}_{s}" for s in ("homo", "hetero") for m in "lva"]
        loss_task = sum(F.l1_loss(out[h], labels) for h in heads)
        loss_recon = sum(mse(out[f"recon_{m}"], out[f"origin_{m}"]) for m in "lva")
        loss_cycle = sum(mse(out[f"s_{m}"].permute(1, 2, 0), out[f"s_{m}_r"]) for m in "lva")
        loss_ort = sum(_orthogonality(out[f"s_{m}"], out[f"c_{m}"]) for m in "lva")
        feats = torch.stack([out["c_l_sim"], out["c_v_sim"], out["c_a_sim"]], dim=1).reshape(-1, c)
        ids = labels.repeat_interleave(3, dim=0)
        loss_sim = hinge(ids, feats)
        reg_ho, logit_ho, _ = gd_homo.distillation_loss(logits_homo, reprs_homo, edges_homo)
        reg_he, logit_he, repr_he = gd_hetero.distillation_loss(logits_hetero, reprs_hetero, edges_hetero)
        total = (loss_task + 0.05 * (logit_ho + reg_ho) + 0.05 * (logit_he + repr_he + reg_he)
                 + (loss_cycle + loss_recon + (loss_sim + loss_ort) * 0.1) * 0.1)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_value_(params, 0.6)
        opt.step()

    return step, sum(p.numel() for p in params)
