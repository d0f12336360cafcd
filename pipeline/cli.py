"""The ``dhmd-pipeline`` command line: parses arguments, builds the config once, calls a stage.

Each subcommand's work lives in its stage package (``pipeline.extract.batch``, ``pipeline.training.train``,
...); this file only wires options to those functions and turns errors into exit statuses:
0 success, 1 runtime failure, 2 usage or config error, 3 some inputs failed.

Logging: the project's own loggers (``dhmd_pipeline``, ``pipeline.*``, ``extractors.*``, ``dhmd.*``)
log at INFO by default (progress lines), DEBUG with ``-v``; other libraries show warnings and errors
only, unless ``-vv`` (DEBUG everywhere).  ``--quiet`` shows warnings and errors only.  An error the
user can act on (:class:`ConfigError`, :class:`UserError`) is one line on stderr; ``--debug`` prints
its traceback first, with the same exit status.
"""
from __future__ import annotations

import functools
import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from pipeline.config import DEFAULT_CONFIG, MIN_DEMO_SENTENCES, ConfigError, PipelineConfig, load_config
from pipeline.errors import NotBuiltError, UserError
from pipeline.logs import log_levels, setup_logging

log = logging.getLogger("dhmd_pipeline")

def _setup_logging(verbose: int, quiet: bool) -> None:
    """One stderr handler on the root logger at the levels of -v/--quiet (see pipeline.logs)."""
    setup_logging(*log_levels(verbose, quiet))


def common_options(fn: Callable) -> Callable:
    """--config/--set/-v/--quiet/--debug for every subcommand; builds the config and handles errors."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                  default=None, help="Settings file (default: pipeline.toml of this project).")
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override one setting, e.g. --set train.epochs=8 (repeatable).")
    @click.option("-v", "--verbose", count=True,
                  help="-v: debug messages of dhmd-pipeline; -vv: debug messages of every library too "
                       "(default: progress messages of dhmd-pipeline, warnings of the rest).")
    @click.option("--quiet", is_flag=True, help="Only warnings and errors.")
    @click.option("--debug", is_flag=True, help="Show the full traceback of an error (same exit status).")
    @functools.wraps(fn)
    def wrapper(config_path: Path | None, overrides: tuple[str, ...], verbose: int, quiet: bool,
                debug: bool, **kwargs: Any) -> None:
        _setup_logging(verbose, quiet)
        log.debug("settings: %s%s", config_path or DEFAULT_CONFIG,
                  "".join(f" --set {o}" for o in overrides))
        try:
            cfg = load_config(config_path, overrides)
            code = fn(cfg, **kwargs)
        except ConfigError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"config error: {e}", err=True)
            sys.exit(2)
        except UserError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is kept (extract: rerun the same command; train: --resume DIR)", err=True)
            sys.exit(130)
        sys.exit(int(code or 0))

    return wrapper


def _stage(module: str, function: str, command: str) -> Callable:
    """Import a stage implementation lazily, so --help never loads torch."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise NotBuiltError(command) from None
        raise
    fn = getattr(mod, function, None)
    if fn is None:
        raise NotBuiltError(command)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhmd-pipeline")
def main() -> None:
    """From a folder of raw video clips to a trained DHMD model and predictions.

    \b
      dhmd-pipeline extract videos/      transcript, BERT tokens, face and acoustic features
      dhmd-pipeline train                train DHMD on the extracted cache (or an MMSA pickle)
      dhmd-pipeline predict clip.mp4     sentiment for new clips, with explanations
      dhmd-pipeline analyze --checkpoint best.pt --out DIR   the paper's analyses
      dhmd-pipeline ablate --seeds 1,2,3 --out DIR           Table 6 ablation rows
    """


@main.command()
@click.argument("videos_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder (default: extract.out, data/cache).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV of clip_id,label[,text,split] (MMSA-FET label.csv also accepted).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Clips processed in parallel (default: extract.workers; with --engine ray: extract.ray.workers).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
              help="Where clips are extracted: this machine, or Ray actors (default: extract.engine, local).")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="With --engine ray: '' starts a local Ray instance, 'auto' or 'ray://host:port' joins a "
                   "cluster (default: extract.ray.address).")
@common_options
def extract(cfg: PipelineConfig, videos_dir: Path, out: Path | None, labels: Path | None,
            workers: int | None, engine: str | None, ray_address: str | None) -> int:
    """Extract transcript, text, face and acoustic features from every clip in VIDEOS_DIR."""
    run = _stage("pipeline.extract.batch", "run_extract", "extract")
    return run(cfg, videos_dir=videos_dir, out=out, labels=labels, workers=workers, engine=engine,
               ray_address=ray_address)


@main.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Cache folder from extract, or an MMSA pickle (default: train.data).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: data/runs/<timestamp>).")
@click.option("--preset", type=click.Choice(["mosi", "mosei", "urfunny", "mustard"]), default=None,
              help="The paper's settings for a dataset (Table 1, Section 4); --set values win.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue a killed run from DIR/last.pt.")
@click.option("--seeds", type=str, default=None, help="Comma-separated seeds, one run each, e.g. 1,2,3.")
@click.option("--parallel", type=click.IntRange(1, 256), default=1, show_default=True,
              help="With --seeds: train this many seeds at once (one GPU each when there are GPUs, "
                   "else processes sharing the CPU cores).")
@click.option("--nproc", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Train one model with N local processes (DDP: gloo on CPU, NCCL on CUDA, one GPU each); "
                   "torchrun --nproc_per_node N is detected the same way.")
@common_options
def train(cfg: PipelineConfig, data: Path | None, out: Path | None, preset: str | None,
          resume: Path | None, seeds: str | None, parallel: int, nproc: int) -> int:
    """Train DHMD on extracted features or an MMSA pickle."""
    params = click.get_current_context().params
    if nproc > 1:   # start N copies of this command as one distributed run, and wait for them
        launch = _stage("pipeline.training.distributed", "launch_local", "train")
        return launch(nproc, _without_option(sys.argv[1:], "--nproc"))
    if preset:   # the preset sits between the settings file and --set, so --set values win
        from pipeline.training.presets import preset_overrides

        cfg = load_config(params["config_path"], params["overrides"], preset=preset_overrides(preset))
    run = _stage("pipeline.training.train", "run_train", "train")
    set_keys = [o.split("=", 1)[0].strip() for o in params["overrides"] or ()]
    return run(cfg, data=data, out=out, preset=preset, resume=resume, seeds=seeds, set_keys=set_keys,
               parallel=parallel)


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (what --nproc's processes are started with)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


@main.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A best.pt or last.pt from train.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Cache folder or MMSA pickle (default: the data the checkpoint was trained on).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common_options
def evaluate(cfg: PipelineConfig, checkpoint: Path, data: Path | None, split: str, as_json: bool) -> int:
    """Evaluate a checkpoint on a data split and print its metrics."""
    run = _stage("pipeline.training.evaluate", "run_evaluate", "evaluate")
    return run(cfg, checkpoint=checkpoint, data=data, split=split, as_json=as_json)


@main.command()
@click.argument("clips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model to use (default: the predict.checkpoint setting; when that is empty, the newest "
                   "best.pt in data/runs/*/ or data/runs/*/*/, e.g. a seed-<n> run of train --seeds).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per clip.")
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a PNG per clip with edge matrices and a timeline.")
@common_options
def predict(cfg: PipelineConfig, clips: tuple[Path, ...], checkpoint: Path | None, as_json: bool,
            explain_dir: Path | None) -> int:
    """Predict sentiment for one or more clips, with explanations."""
    run = _stage("pipeline.inference.predict", "run_predict", "predict")
    return run(cfg, clips=list(clips), checkpoint=checkpoint, as_json=as_json, explain_dir=explain_dir)


@main.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Cache folder from extract (default: train.data).")
@click.option("--format", "fmt", type=click.Choice(["mmsa"]), default="mmsa", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output file.")
@common_options
def export(cfg: PipelineConfig, data: Path | None, fmt: str, out: Path) -> int:
    """Write extracted features in the MMSA pickle layout."""
    run = _stage("pipeline.training.export", "run_export", "export")
    return run(cfg, data=data, fmt=fmt, out=out)


@main.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A best.pt or last.pt from train (its run folder's metrics.jsonl gives the edges per epoch).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Cache folder or MMSA pickle (default: the data the checkpoint was trained on).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for analysis.json and one PNG per analysis.")
@common_options
def analyze(cfg: PipelineConfig, checkpoint: Path, data: Path | None, split: str, out: Path) -> int:
    """The paper's analyses of a trained model (Table 7, Figs. 4-12) into OUT/analysis.json and PNGs."""
    run = _stage("pipeline.analysis.analyze", "run_analyze", "analyze")
    return run(cfg, checkpoint=checkpoint, out=out, data=data, split=split)


@main.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Cache folder from extract, or an MMSA pickle (default: train.data).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder: one train --seeds run folder per row, ablation.json and ablation.md.")
@click.option("--seeds", type=str, required=True, help="Comma-separated seeds per row, e.g. 1,2,3.")
@click.option("--rows", type=str, default=None,
              help="Comma-separated rows (default all): full, no_fd, no_ca, no_gd, no_dm, no_gd_dm.")
@click.option("--preset", type=click.Choice(["mosi", "mosei", "urfunny", "mustard"]), default=None,
              help="A dataset's recipe (as train --preset); --set values win.")
@click.option("--resume", is_flag=True, help="Continue an interrupted ablation in OUT.")
@common_options
def ablate(cfg: PipelineConfig, data: Path | None, out: Path, seeds: str, rows: str | None,
           preset: str | None, resume: bool) -> int:
    """Train the rows of Table 6 (component ablations) over seeds; print and write the table."""
    params = click.get_current_context().params
    if preset:   # as train: the preset sits between the settings file and --set
        from pipeline.training.presets import preset_overrides

        cfg = load_config(params["config_path"], params["overrides"], preset=preset_overrides(preset))
    run = _stage("pipeline.analysis.ablate", "run_ablate", "ablate")
    return run(cfg, data=data, out=out, seeds=seeds, rows=rows, preset=preset, resume=resume)


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the demo corpus, cache and run go (default: demo.workdir).")
@click.option("--sentences", type=click.IntRange(min=MIN_DEMO_SENTENCES), default=None,
              help=f"Use only this many sentences, at least {MIN_DEMO_SENTENCES} (a shrunk demo; "
                   f"default: demo.sentences, 0 = all).")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, help="Training epochs.")
@common_options
def demo(cfg: PipelineConfig, workdir: Path | None, sentences: int | None, epochs: int | None) -> int:
    """Build an offline labelled corpus, then extract -> train -> evaluate -> predict."""
    run = _stage("pipeline.demo.run", "run_demo", "demo")
    return run(cfg, workdir=workdir, sentences=sentences, epochs=epochs)


@main.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model to serve (default: as predict: predict.checkpoint, else the newest best.pt in "
                   "data/runs/*/ or data/runs/*/*/, e.g. the demo's data/runs/demo/best.pt).")
@click.option("--host", type=str, default=None, help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: serve.port, 8000).")
@click.option("--token", type=str, default=None,
              help="Require this token on every request (default: serve.token; empty = none).")
@common_options
def serve(cfg: PipelineConfig, checkpoint: Path | None, host: str | None, port: int | None,
          token: str | None) -> int:
    """Serve a model over HTTP: POST /predict, a web page at /, GET /health and /model."""
    run = _stage("pipeline.serve.run", "run_serve", "serve")
    return run(cfg, checkpoint=checkpoint, host=host, port=port, token=token)


if __name__ == "__main__":
    main()
