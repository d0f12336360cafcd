"""``dhmd-pipeline train``: DHMD on a cache folder or an MMSA pickle, with resumable runs and seeds.

One run (:class:`Trainer`) writes into its folder (``--out``, default ``data/runs/<timestamp>``)::

    config.json       the resolved settings (preset and --set applied; .extract = how the cache was made)
    metrics.jsonl     one line per epoch: lr, every train and valid loss term, every valid metric, and
                      "edges": the mean HoGD / HeGD edge matrices on the valid split (Figs. 9-10)
    best.pt, last.pt  checkpoints (pipeline.training.checkpoint): best.pt the weights of the best validation
                      epoch, last.pt those of the latest epoch (also after the run has finished) plus
                      optimizer, scheduler, RNG and progress; last.pt is written after every epoch
    results.json      test (and valid) metrics of best.pt, best epoch, sizes
    loss_curves.png   loss terms and the validation metric per epoch
    edges.png         mean HoGD / HeGD edge matrices of best.pt on the valid split

Optimisation: Adam (lr, weight decay; a fine-tuned BERT at ``train.bert_lr``), gradient clipping by
norm or by value (``train.grad_clip_mode``), gradient accumulation (the gradient
of one update is the mean over its ``train.grad_accum`` batches; the epoch's last update averages
the batches it actually has), ReduceLROnPlateau and early stopping on ``train.val_metric`` (stop
after ``train.early_stop_patience`` epochs without improvement), at most ``train.epochs`` epochs.
CUDA with bf16 autocast when present, fp32 on CPU.

Reproducibility: the model is initialised from ``train.seed``; epoch ``e`` shuffles with its own
generator seeded from (seed, e), and last.pt stores the torch / numpy / python RNG states, so
``--resume DIR`` after a kill continues exactly as the uninterrupted run would have (bit-identical on
CPU).  A resume uses the run's own config.json (``--set`` values that differ from it are reported
and ignored) and refuses (exit 2) data whose feature spec or splits (sample ids per split, stored
as a fingerprint in every checkpoint) differ from what the run was trained on.  ``--seeds 1,2,3``
trains one run per seed in ``DIR/seed-<n>/`` on one fixed split and writes ``summary.json`` with the
mean and standard deviation (ddof 1) of every test metric; ``--parallel K`` trains K seeds at once.
Under torchrun or ``--nproc N`` a run is data-parallel over N processes (pipeline.training.distributed).
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import numpy as np

from pipeline.files import atomic_write_text
from pipeline.training import distributed
from pipeline.training.averaging import WeightAverage
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import ExtractConfig, PipelineConfig
    from pipeline.training.dataset import DataBundle

log = logging.getLogger(__name__)

RUNS_DIR = Path("data/runs")
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl", "seeds.json")


# ------------------------------------------------------------------------------------------ helpers

def default_run_dir() -> Path:
    """data/runs/<YYYYmmdd-HHMMSS>, with a -2, -3... suffix when that folder already exists."""
    base = RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def parse_seeds(text: str | None) -> list[int]:
    """"1,2,3" -> [1, 2, 3]; UserError (exit 2) for anything else."""
    if text is None:
        return []
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3", exit_code=2) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 1,2,3", exit_code=2)
    return seeds


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _check_fresh(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder", exit_code=2)
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held:
        raise UserError(f"{out} already holds a run ({', '.join(held)}): continue it with --resume {out} "
                        f"or choose another --out", exit_code=2)


def check_val_metric(metric: str, task: str) -> None:
    """Refuse a validation metric that the task does not produce."""
    from pipeline.training.metrics import metric_names

    allowed = set(metric_names(task)) | {"loss"}
    if metric not in allowed:
        raise UserError(f"train.val_metric = {metric!r} is not a {task} metric; use one of "
                        f"{', '.join(sorted(allowed))} (e.g. --set train.val_metric=\"Acc\")", exit_code=2)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain data and tensors (``weights_only``-loadable)."""
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": {"kind": str(np_state[0]), "keys": [int(k) for k in np_state[1]], "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": {"version": int(py_state[0]), "state": [int(v) for v in py_state[1]],
                       "gauss_next": py_state[2]}}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def extract_config_from_settings(extract: "ExtractConfig", settings: dict[str, Any] | None) -> "ExtractConfig":
    """``extract`` with the settings a cache was made with (an entry's ``settings``) put in, so a
    checkpoint records how to reproduce its features for ``predict``."""
    from pydantic import ValidationError

    from pipeline.config import ExtractConfig

    if not settings:
        return extract
    raw = extract.model_dump()
    for key in ("fps", "sample_rate"):
        if key in settings:
            raw[key] = settings[key]
    text = settings.get("text")
    if isinstance(text, dict):
        raw["text"].update({k: v for k, v in text.items() if k in raw["text"]})
    for section in ("asr", "face", "audio"):
        value = settings.get(section)
        if isinstance(value, dict):
            raw[section].update({k: v for k, v in value.items() if k in raw[section]})
    try:
        return ExtractConfig.model_validate(raw)
    except ValidationError as e:
        log.warning("the cache's extraction settings do not fit [extract] (%s); the checkpoint keeps the "
                    "configured ones", e.errors()[0]["loc"])
        return extract


def split_fingerprint(bundle: "DataBundle") -> dict[str, dict[str, Any]]:
    """Per split: the number of samples and a sha256 of their ids in order (what a resumed run must
    find again to continue the same training)."""
    import hashlib

    from pipeline.training.dataset import SPLITS

    out = {}
    for name in SPLITS:
        ids = [str(s.get("id", "")) for s in bundle.splits.get(name, [])]
        out[name] = {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()}
    return out


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for k, v in node.items():
        flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def ignored_settings(given: dict[str, Any], run: dict[str, Any], keys: list[str] | None = None) -> list[str]:
    """``key = given (the run has run)`` for each setting that differs between the settings given to a
    ``--resume`` call and the run's config.json, which is what the run continues with.

    ``keys``: only these dotted keys (the ``--set`` ones); None compares every setting except those
    the run resolves from its data (``extract.*``, ``align.mode``).  ``train.out`` / ``train.data`` are
    never listed (``--resume DIR`` names the run; its data is the run's)."""
    flat_given, flat_run = _flatten(given), _flatten(run)
    if keys is None:
        names = [k for k in sorted(set(flat_given) | set(flat_run))
                 if not k.startswith("extract.") and k != "align.mode"]
    else:
        names = list(dict.fromkeys(k for k in keys if k in flat_given or k in flat_run))
    return [f"{k} = {flat_given.get(k)!r} (the run has {flat_run.get(k)!r})" for k in names
            if k not in ("train.out", "train.data") and flat_given.get(k) != flat_run.get(k)]


def resolve_for_data(cfg: "PipelineConfig", bundle: "DataBundle") -> "PipelineConfig":
    """The run's settings made true to the data: its alignment and, for a cache, its extraction."""
    update: dict[str, Any] = {"align": cfg.align.model_copy(update={"mode": bundle.align_mode})}
    if bundle.source == "cache":
        update["extract"] = extract_config_from_settings(cfg.extract, bundle.extract_settings)
    return cfg.model_validate({**cfg.model_dump(), **{k: v.model_dump() for k, v in update.items()}})


# ------------------------------------------------------------------------------------------ one run

class Trainer:
    """One training run of DHMD on ``bundle`` into ``out`` (see the module docstring)."""

    def __init__(self, cfg: "PipelineConfig", bundle: "DataBundle", out: Path, preset: str | None = None):
        self.cfg, self.bundle, self.out, self.preset = cfg, bundle, Path(out), preset

    # ---------------------------------------------------------------- setup
    def _build(self, resume: dict[str, Any] | None) -> None:
        import torch

        from dhmd import DHMD, DHMDConfig
        from extractors.errors import ModelLoadError
        from pipeline.training.checkpoint import bert_path
        from pipeline.training.dataset import Normalizer, SampleDataset, baseline_columns, label_scheme
        from pipeline.training.evaluate import resolve_device
        from pipeline.training.metrics import LOWER_IS_BETTER

        cfg, t = self.cfg, self.cfg.train
        check_val_metric(t.val_metric, cfg.model.task)
        self.train_samples = self.bundle.splits["train"]
        if not self.train_samples:
            raise UserError(f"{self.bundle.path}: the train split is empty", exit_code=2)
        self.valid_samples = self.bundle.splits["valid"]
        if not self.valid_samples:
            log.warning("no validation samples: best.pt and early stopping use the training split")
            self.valid_samples = self.train_samples
        self.test_samples = self.bundle.splits["test"]
        self.device = distributed.train_device(resolve_device(t.device))
        self.dist = distributed.current()
        seed_everything(t.seed)
        text_dim, audio_dim, video_dim = self.bundle.dims
        try:
            self.model_config = DHMDConfig(text_dim=text_dim, audio_dim=audio_dim, video_dim=video_dim,
                                           **cfg.model.model_dump())
        except ValueError as e:
            raise UserError(f"[model] settings cannot build DHMD: {e}", exit_code=2) from None
        try:
            self.model = DHMD(self.model_config, pretrained_bert=resume is None,
                              bert_path=bert_path(cfg.model.finetune_bert, cfg.model.bert_model)).to(self.device)
        except (OSError, ModelLoadError) as e:   # the BERT to fine-tune cannot be found or read
            raise UserError(f"cannot load model.bert_model = {cfg.model.bert_model!r} for model.finetune_bert "
                            f"({str(e).splitlines()[0]}); point it at a local model folder", exit_code=2) from None
        self.normalizer = (Normalizer.from_state(resume["norm"]) if resume
                           else Normalizer.fit(self.train_samples, clip_baseline=cfg.train.clip_baseline,
                                               baseline_columns=baseline_columns(cfg.train.clip_baseline_features,
                                                                                 self.bundle.spec)))
        self.train_ds = SampleDataset(self.train_samples, self.normalizer)
        self.label_scheme = label_scheme(cfg.model.task, cfg.model.n_classes)
        # the fine-tuned BERT is a param group of its own (train.bert_lr; 0 = train.lr), after the rest
        bert_ids = {id(p) for p in self.model.bert.parameters()} if self.model.bert is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in bert_ids]
        groups = [{"params": params}]
        if bert_ids:
            bert_params = [p for p in self.model.bert.parameters() if p.requires_grad]
            if resume and len(resume["optimizer"]["param_groups"]) == 1:   # a run from before bert_lr
                groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
            else:
                groups.append({"params": bert_params, "lr": t.bert_lr or t.lr})
        self.optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
        self.mode = "min" if t.val_metric in LOWER_IS_BETTER else "max"
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=self.mode, factor=t.lr_factor, patience=t.lr_patience)
        self.progress: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0,
                                         "stopped": False, "finished": False, "preset": self.preset,
                                         "history": []}
        self.splits = split_fingerprint(self.bundle)
        distributed.seed_rank(t.seed)
        self.average = WeightAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        if resume:
            self._check_resume(resume)
            self.model.load_state_dict(resume["model_state"])
            if self.average is not None:
                if "weight_average" not in resume:
                    raise UserError(f"{self.out / 'last.pt'} holds no weight average to continue with "
                                    f"train.ema_decay = {t.ema_decay}", exit_code=2)
                self.average.load_state(resume["weight_average"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.progress = dict(resume["progress"])
            set_rng_state(distributed.rank_rng(resume) or resume["rng"])
            self.preset = self.progress.get("preset", self.preset)
        self.step_model = distributed.wrap_model(self.model, self.device)   # DDP in a distributed run

    def _check_resume(self, resume: dict[str, Any]) -> None:
        """Refuse (exit 2) to continue a last.pt on data with another feature spec or other splits."""
        from pipeline.training.checkpoint import check_spec

        last = self.out / "last.pt"
        check_spec(dict(resume["spec"]), dict(self.bundle.spec), last, self.bundle.path)
        saved = resume.get("splits")
        if saved is None:       # a last.pt from before split fingerprints: nothing to compare
            log.warning("%s records no split fingerprint: cannot check that %s gives the same splits",
                        last, self.bundle.path)
            return
        changed = [k for k in self.splits if saved.get(k) != self.splits[k]]
        if changed:
            what = "; ".join(f"{k}: {saved.get(k, {}).get('n')} samples then, {self.splits[k]['n']} now"
                             + ("" if saved.get(k, {}).get("n") != self.splits[k]["n"] else " (other ids)")
                             for k in changed)
            raise UserError(f"{last} was trained on other splits than {self.bundle.path} gives now ({what}); "
                            f"resuming would mix data sets: start a new run with --out", exit_code=2)

    def _payload(self, epoch: int, value: float | None) -> dict[str, Any]:
        return {"model_state": self.model.state_dict(), "model_config": self.model_config.to_dict(),
                "pipeline_config": self.cfg.model_dump(mode="json"), "spec": dict(self.bundle.spec),
                "norm": self.normalizer.state(), "label_scheme": self.label_scheme, "epoch": int(epoch),
                "val": {"metric": self.cfg.train.val_metric, "value": value}, "splits": self.splits}

    def _averaged(self) -> ContextManager[None]:
        """Within the block the model holds its averaged weights (``train.ema_decay``), if any."""
        return self.average.swapped_in(self.model) if self.average is not None else nullcontext()

    def _save_last(self) -> None:
        payload = self._payload(self.progress["epoch"], self.progress["best"])
        payload.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                       rng=rng_state(), progress=self.progress)
        if self.average is not None:              # the live weights train on; the average is kept beside
            payload["weight_average"] = self.average.state()
        ranks = distributed.gather_rng(payload["rng"])     # collective: every rank gets here
        if ranks is not None:
            payload["rng_ranks"] = ranks
        if self.dist.is_main:
            save_checkpoint(self.out / "last.pt", payload)

    # ---------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        from pipeline.training.dataset import collate, drop_modalities, swap_modalities
        from pipeline.training.evaluate import autocast, model_inputs

        t = self.cfg.train
        loader = DataLoader(self.train_ds, batch_size=distributed.local_batch_size(t.batch_size),
                            sampler=distributed.train_sampler(self.train_ds, t.seed, epoch),
                            collate_fn=collate, num_workers=t.num_workers,
                            pin_memory=self.device.startswith("cuda"))
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        steps = len(loader)
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False, file=sys.stderr,
                   disable=None if self.dist.is_main else True)
        # modality dropout: its own stream (one per rank), so resuming repeats it exactly
        drop_gen = torch.Generator()
        drop_gen.manual_seed(t.seed * 7_000_003 + epoch + 1_000_003 * self.dist.rank)
        swap_gen = torch.Generator()
        swap_gen.manual_seed(t.seed * 5_000_011 + epoch + 1_000_003 * self.dist.rank)
        for i, batch in enumerate(bar):
            if t.modality_swap > 0:
                swap_modalities(batch, t.modality_swap, swap_gen)
            if t.modality_dropout > 0:
                drop_modalities(batch, t.modality_dropout, drop_gen)
            args, kwargs = model_inputs(self.model, batch, self.device)
            with autocast(self.device, t.amp):
                out = self.step_model(*args, **kwargs, labels=batch["labels"].to(self.device))
            loss = out.losses["total"]
            if not torch.isfinite(loss):
                raise UserError(f"training diverged in epoch {epoch + 1} (loss {float(loss)}); lower train.lr "
                                f"or raise train.grad_clip", exit_code=1)
            # the mean over the batches of this update; the epoch's last group may hold fewer of them
            group = min(t.grad_accum, steps - (i // t.grad_accum) * t.grad_accum)
            (loss.float() / group).backward()
            if (i + 1) % t.grad_accum == 0 or i + 1 == steps:
                if t.grad_clip > 0 and t.grad_clip_mode == "value":      # DMD: clip_grad_value_
                    torch.nn.utils.clip_grad_value_(self.model.parameters(), t.grad_clip)
                elif t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.average is not None:
                    self.average.update(self.model)
            b = len(batch["ids"])
            n += b
            for k, v in out.losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float()) * b
            bar.set_postfix(loss=f"{sums['total'] / n:.4f}")
        sums, n = distributed.sum_over_ranks(sums, n)
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _validate(self, desc: str) -> tuple[dict[str, float], Any]:
        t = self.cfg.train
        return distributed.evaluate_samples(self.model, self.valid_samples, self.normalizer, self.cfg.model.task,
                                t.batch_size, self.device, t.amp, desc=desc)

    def _epoch(self, epoch: int) -> None:
        from pipeline.training.metrics import is_better, json_safe

        t = self.cfg.train
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_losses = self._train_epoch(epoch)
        p = self.progress
        with self._averaged():                    # validated, and kept as best, with averaged weights
            metrics, res = self._validate(desc=f"valid {epoch + 1}")
            value = res.losses.get("total", math.nan) if t.val_metric == "loss" else metrics[t.val_metric]
            value = float(value)
            improved = is_better(t.val_metric, value, p["best"])
            if improved:
                p.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
                if self.dist.is_main:
                    save_checkpoint(self.out / "best.pt", self._payload(epoch + 1, value))
        finite = value if math.isfinite(value) else (math.inf if self.mode == "min" else -math.inf)
        self.scheduler.step(finite)
        if not improved:
            p["bad_epochs"] += 1
        p["history"].append({"epoch": epoch + 1, "lr": lr, "train": train_losses, "valid": res.losses,
                             "valid_metrics": {k: json_safe(v) for k, v in metrics.items()},
                             "val_metric": t.val_metric, "val_value": json_safe(value), "best": improved,
                             # mean HoGD / HeGD edge matrices on the valid split this epoch (analyze)
                             "edges": {k: (None if v is None else np.asarray(v).tolist())
                                       for k, v in res.edges.items()},
                             "time_s": round(time.perf_counter() - start, 3)})
        if self.dist.is_main:
            atomic_write_text(self.out / "metrics.jsonl",
                              "".join(json.dumps(h) + "\n" for h in p["history"]))
        p["epoch"] = epoch + 1
        if t.early_stop_patience and p["bad_epochs"] >= t.early_stop_patience:
            p["stopped"] = True
            log.info("early stop after epoch %d: no %s improvement for %d epochs", epoch + 1, t.val_metric,
                     p["bad_epochs"])
        self._save_last()
        log.info("epoch %d/%d  train loss %.4f  valid %s %.4f%s", epoch + 1, t.epochs,
                 train_losses.get("total", 0.0), t.val_metric, value, "  (best)" if improved else "")

    # ---------------------------------------------------------------- finish
    def _finish(self) -> dict[str, Any]:
        from pipeline.training.metrics import json_safe
        from pipeline.training.plots import plot_edge_matrices, plot_loss_curves

        t, p = self.cfg.train, self.progress
        best_path = self.out / "best.pt"
        # best.pt is evaluated in the model; the final epoch's weights come back before last.pt is saved
        final_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        distributed.barrier()                     # rank 0 has written best.pt
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path)["model_state"])
        else:                     # no epoch ever gave a finite validation value: keep the last weights as best
            if self.average is not None:
                self.model.load_state_dict(self.average.shadow)
            if self.dist.is_main:
                save_checkpoint(best_path, self._payload(p["epoch"], None))
        task = self.cfg.model.task
        valid_metrics, valid_res = self._validate(desc="valid (best)")
        test_metrics = None
        if self.test_samples:
            test_metrics, _ = distributed.evaluate_samples(self.model, self.test_samples, self.normalizer, task,
                                               t.batch_size, self.device, t.amp, desc="test")
        else:
            log.warning("no test samples: results.json has validation metrics only")
        if p["history"] and self.dist.is_main:
            plot_loss_curves(p["history"], self.out / "loss_curves.png", t.val_metric)
        if self.dist.is_main:
            plot_edge_matrices(valid_res.edges, self.out / "edges.png",
                               title=f"mean edge weights on the valid split (best epoch {p['best_epoch']})")
        results = {"task": task, "seed": t.seed, "preset": self.preset, "data": str(self.bundle.path),
                   "best_epoch": p["best_epoch"], "epochs_run": p["epoch"], "stopped_early": p["stopped"],
                   "val_metric": t.val_metric, "best_val": json_safe(p["best"]) if p["best"] is not None else None,
                   "n": self.bundle.counts(), "spec": self.bundle.spec,
                   "valid": {k: json_safe(v) for k, v in valid_metrics.items()},
                   "test": None if test_metrics is None else {k: json_safe(v) for k, v in test_metrics.items()},
                   "edges": {k: (None if v is None else np.asarray(v).tolist())
                             for k, v in valid_res.edges.items()}}
        if self.dist.is_main:
            _write_json(self.out / "results.json", results)
        p["finished"] = True
        self.model.load_state_dict(final_state)
        self._save_last()
        return results

    def run(self, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train (or continue from a last.pt dict), test best.pt, write every run file; the results."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._build(resume)
        if resume is None and self.dist.is_main:
            _write_json(self.out / "config.json", self.cfg.model_dump(mode="json"))
        elif self.progress.get("finished") and (self.out / "results.json").is_file():
            log.info("%s: this run had already finished", self.out)
            return json.loads((self.out / "results.json").read_text())
        log.info("training on %s (%s, %s): %s samples; device %s; run folder %s", self.bundle.path,
                 self.bundle.source, self.bundle.align_mode, self.bundle.counts(), self.device, self.out)
        for epoch in range(self.progress["epoch"], self.cfg.train.epochs):
            if self.progress["stopped"]:
                break
            self._epoch(epoch)
        return self._finish()


# ------------------------------------------------------------------------------------------ output

def _print_results(results: dict[str, Any], out: Path) -> None:
    from pipeline.training.metrics import format_metrics, metric_names

    names = metric_names(results["task"])
    split = "test" if results.get("test") else "valid"
    metrics = {k: (math.nan if v is None else v) for k, v in (results.get(split) or {}).items()}
    sys.stdout.write(f"{out}: {split} metrics of best.pt (epoch {results['best_epoch']} of "
                     f"{results['epochs_run']})\n{format_metrics(metrics, names)}\n")
    sys.stdout.flush()


def summarize_seeds(out: Path, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """summary.json: mean and std (ddof 1; 0 for one seed) of every test metric over the seed runs."""
    from pipeline.training.metrics import json_safe, metric_names

    task = next(iter(results.values()))["task"]
    split = "test" if all(r.get("test") for r in results.values()) else "valid"
    table: dict[str, Any] = {}
    for name in metric_names(task):
        values = [r[split].get(name) for r in results.values()]
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        ok = arr[np.isfinite(arr)]
        table[name] = {"mean": json_safe(float(ok.mean())) if ok.size else None,
                       "std": json_safe(float(ok.std(ddof=1))) if ok.size > 1 else (0.0 if ok.size else None),
                       "values": values}
    summary = {"split": split, "seeds": list(results), "std_ddof": 1, "metrics": table,
               "runs": {str(s): f"seed-{s}" for s in results}}
    _write_json(out / "summary.json", summary)
    width = max(len(n) for n in table)
    lines = [f"{out}: {split} metrics over seeds {', '.join(map(str, results))} (mean +- std)"]
    for name, row in table.items():
        vals = "  ".join("n/a" if v is None else f"{v:.4f}" for v in row["values"])
        mean = "n/a" if row["mean"] is None else f"{row['mean']:.4f}"
        std = "n/a" if row["std"] is None else f"{row['std']:.4f}"
        lines.append(f"{name.rjust(width)}  {mean} +- {std}   [{vals}]")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return summary


# ------------------------------------------------------------------------------------------ entry

def _load_bundle(cfg: "PipelineConfig") -> tuple["PipelineConfig", "DataBundle"]:
    from pipeline.training.dataset import load_data

    bundle = load_data(Path(cfg.train.data), cfg)
    return resolve_for_data(cfg, bundle), bundle


def _train_one_seed(cfg: "PipelineConfig", bundle: "DataBundle", out: Path, seed: int, preset: str | None,
                    resume: bool) -> dict[str, Any]:
    """The run of one seed in ``out/seed-<seed>`` (continued from its last.pt with ``resume``)."""
    from pipeline.config import with_overrides

    sub = out / f"seed-{seed}"
    scfg = with_overrides(cfg, {"train.seed": seed, "train.out": str(sub)})
    trainer = Trainer(scfg, bundle, sub, preset)
    if resume and (sub / "last.pt").is_file():
        return trainer.run(resume=load_checkpoint(sub / "last.pt"))
    if sub.exists() and distributed.current().is_main:
        for name in RUN_FILES + ("best.pt", "results.json"):
            (sub / name).unlink(missing_ok=True)
    distributed.barrier()
    return trainer.run()


def _seed_job(cfg_dump: dict[str, Any], out: str, seed: int, preset: str | None, resume: bool) -> dict[str, Any]:
    """One seed in a --parallel worker process: loads the data itself, trains, returns the results."""
    from pipeline.config import PipelineConfig

    cfg, bundle = _load_bundle(PipelineConfig.model_validate(cfg_dump))
    return _train_one_seed(cfg, bundle, Path(out), seed, preset, resume)


def _train_seeds(cfg: "PipelineConfig", bundle: "DataBundle", out: Path, seeds: list[int],
                 preset: str | None, resume: bool, parallel: int = 1) -> int:
    from pipeline.training.evaluate import resolve_device

    results: dict[int, dict[str, Any]] = {}
    if parallel > 1 and len(seeds) > 1:
        use_cuda = resolve_device(cfg.train.device) == "cuda"
        log.info("training seeds %s, %d at a time", ", ".join(map(str, seeds)), parallel)
        dump = cfg.model_dump(mode="json")
        done = distributed.run_parallel(_seed_job, [(dump, str(out), s, preset, resume) for s in seeds],
                                        parallel, use_cuda)
        results = dict(zip(seeds, done))
    for seed in seeds:
        if seed not in results:
            results[seed] = _train_one_seed(cfg, bundle, out, seed, preset, resume)
        if distributed.current().is_main:
            _print_results(results[seed], out / f"seed-{seed}")
    if distributed.current().is_main:
        summarize_seeds(out, results)
    return 0


def _resume(run_dir: Path, given: "PipelineConfig | None" = None, set_keys: list[str] | None = None) -> int:
    from pipeline.config import PipelineConfig

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"--resume {run_dir}: no config.json there (not a training run folder)", exit_code=2)
    try:
        raw = json.loads(cfg_path.read_text())
        cfg = PipelineConfig.model_validate(raw)
    except ValueError as e:
        raise UserError(f"{cfg_path}: unreadable run settings ({str(e).splitlines()[0]})", exit_code=2) from None
    if given is not None:
        ignored = ignored_settings(given.model_dump(mode="json"), raw, set_keys)
        if ignored:
            log.warning("--resume continues %s with its own settings (%s); these settings given now differ "
                        "and are ignored: %s", run_dir, cfg_path.name, "; ".join(ignored))
    seeds_path = run_dir / "seeds.json"
    preset = None
    if seeds_path.is_file():
        info = json.loads(seeds_path.read_text())
        cfg, bundle = _load_bundle(cfg)
        return _train_seeds(cfg, bundle, run_dir, [int(s) for s in info["seeds"]], info.get("preset"), True,
                            _check_parallel(int(info.get("parallel", 1))))
    cfg, bundle = _load_bundle(cfg)
    trainer = Trainer(cfg, bundle, run_dir, preset)
    last = run_dir / "last.pt"
    if last.is_file():
        ckpt = load_checkpoint(last)
        results = trainer.run(resume=ckpt)
    else:   # killed during the first epoch: nothing to continue from, start that run again
        log.info("%s has no last.pt yet: starting the run from the beginning", run_dir)
        results = trainer.run()
    if distributed.current().is_main:
        _print_results(results, run_dir)
    return 0


def _check_parallel(parallel: int) -> int:
    if parallel > 1 and distributed.current().enabled:
        raise UserError("--parallel runs seeds in processes of its own; it cannot run inside a distributed "
                        "run (torchrun / --nproc): use one or the other", exit_code=2)
    return parallel


def run_train(cfg: "PipelineConfig", data: Path | None = None, out: Path | None = None,
              preset: str | None = None, resume: Path | None = None, seeds: str | None = None,
              set_keys: list[str] | None = None, parallel: int = 1) -> int:
    """The ``train`` command; in a distributed environment (torchrun, ``--nproc``) every process
    runs it and they train one model together (pipeline.training.distributed).  ``parallel``: with
    ``seeds``, how many seeds train at once."""
    distributed.setup(cfg.train.device)
    try:
        return _run_train(cfg, data, out, preset, resume, seeds, set_keys, parallel)
    finally:
        distributed.teardown()


def _run_train(cfg: "PipelineConfig", data: Path | None, out: Path | None, preset: str | None,
               resume: Path | None, seeds: str | None, set_keys: list[str] | None, parallel: int) -> int:
    """The ``train`` command.  ``cfg`` already holds the preset (the CLI folds ``--preset`` in between
    the settings file and ``--set``; use :func:`pipeline.training.presets.apply_preset` when calling this
    directly); ``preset`` is only recorded.  ``resume`` continues a run folder with its own settings;
    those of ``cfg`` that differ are logged as ignored: the ``set_keys`` (the CLI's ``--set`` keys)
    when given, else every setting."""
    from pipeline.config import with_overrides

    if resume is not None:
        if data is not None or out is not None or seeds is not None:
            log.warning("--resume uses the run's own settings; --data/--out/--seeds are ignored")
        return _resume(Path(resume), cfg, set_keys)
    seed_list = parse_seeds(seeds)
    if parallel > 1 and not seed_list:
        raise UserError("--parallel K needs --seeds (it trains K of the seeds at once)", exit_code=2)
    _check_parallel(parallel)
    out_dir = Path(out) if out else (Path(cfg.train.out) if cfg.train.out else default_run_dir())
    overrides: dict[str, Any] = {"train.out": str(out_dir)}
    if data is not None:
        overrides["train.data"] = str(data)
    cfg = with_overrides(cfg, overrides)
    _check_fresh(out_dir)
    distributed.barrier()                # every rank has checked before rank 0 writes anything
    cfg, bundle = _load_bundle(cfg)
    check_val_metric(cfg.train.val_metric, cfg.model.task)
    if seed_list:
        if distributed.current().is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_json(out_dir / "config.json", cfg.model_dump(mode="json"))
            _write_json(out_dir / "seeds.json", {"seeds": seed_list, "preset": preset, "parallel": parallel})
        return _train_seeds(cfg, bundle, out_dir, seed_list, preset, resume=False, parallel=parallel)
    results = Trainer(cfg, bundle, out_dir, preset).run()
    if distributed.current().is_main:
        _print_results(results, out_dir)
    return 0
