"""Extraction speed against MMSA-FET 0.4.1 (the tool researchers use today), on the same clips, in one run.

    python -m venv --system-site-packages /tmp/mmsafet-venv
    /tmp/mmsafet-venv/bin/pip install --no-deps mmsa-fet==0.4.1 scenedetect==0.6.7.1
    /tmp/mmsafet-venv/bin/pip install python_speech_features ctc-segmentation opensmile
    PYTHONPATH=$PWD python3 bench/vs_mmsafet.py --mmsa-python /tmp/mmsafet-venv/bin/python --clips 8

MMSA-FET is never needed by the tests and never installed into this project's environment: it runs
in its own virtual environment (made with --system-site-packages, so it shares torch, transformers,
librosa and mediapipe with ours), given with --mmsa-python.  Without it the script says how to
install it and exits.

Both tools extract the same N clips (espeak-ng demo sentences over the moving face, pipeline.demo.synth,
made once into --workdir) with the same transcripts given, so no speech recognition runs on either side:

- ours: ``python -m pipeline.cli extract CLIPS --labels labels.csv --out EMPTY`` in a fresh process
  with the defaults (transcript from the labels' text, its word times by forced alignment with Whisper
  tiny.en, MiniLM-L6 token features, librosa acoustic features with pYIN pitch, Face Landmarker
  features at 15 fps read by two model instances in threads, the video of the next clips read ahead of
  their audio; one worker process);
- MMSA-FET: a fresh process that builds ``FeatureExtractionTool`` with its example configs ``librosa``
  (22.05 kHz, MFCC/chroma/CQT/contrast/tonnetz...), ``mediapipe`` (face mesh at 25 fps) and ``bert`` with
  ``pretrained`` pointed at the same MiniLM-L6 folder, then ``run_single(clip, text=transcript)`` per clip.
  Its MediaPipe extractor does not accept the ``tool_output`` argument ``run_single`` passes, so the
  script wraps it to drop it (the only change).

Each side's wall time covers its whole process (imports, model loading, every clip); the two run one
after the other, alternating which goes first over --rounds.  Printed: a Markdown table with clips per second of each and
our clips per second over MMSA-FET's (the goal is at least 1.5x).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MMSA_SCRIPT = r"""
import json, sys, time, logging
from pathlib import Path
from MSA_FET import FeatureExtractionTool
from MSA_FET.extractors.video import mediapipe as mp_mod
cls = mp_mod.mediapipeExtractor
_extract = cls.extract
cls.extract = lambda self, img_dir, video_name=None, tool_output=None: _extract(self, img_dir, video_name)
here = Path(sys.argv[2])
cfg = {}
for name in ("librosa", "mediapipe", "bert"):
    cfg.update(json.loads((Path(__import__("MSA_FET").__file__).parent / "example_configs" / f"{name}.json").read_text()))
cfg["text"]["pretrained"] = sys.argv[3]
cfg["text"]["device"] = "cpu"
tool = FeatureExtractionTool(cfg, tmp_dir=here / "tmp", log_dir=here / "log", verbose=0)
jobs = json.loads(Path(sys.argv[1]).read_text())
shapes = []
for clip, text in jobs:
    out = tool.run_single(clip, text=text)
    shapes.append([list(out[k].shape) for k in ("audio", "vision", "text") if k in out])
print("SHAPES", json.dumps(shapes[0]))
"""


def make_clips(workdir: Path, n: int) -> list[tuple[Path, str]]:
    from pipeline.demo.corpus import SENTENCES
    from pipeline.demo.synth import make_clip

    clips_dir = workdir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, s in enumerate(SENTENCES[:n]):
        path = clips_dir / f"c{i:02d}.mp4"
        if not path.exists():
            make_clip(path, s.text, voice=("en-us", "en+f2")[i % 2], seed=i)
        out.append((path, s.text))
    with open(workdir / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "text"])
        for path, text in out:
            w.writerow([path.stem, 0, text])
    return out


def video_seconds(clips: list[tuple[Path, str]]) -> float:
    from extractors.decode import probe

    return sum(probe(p).duration_s for p, _ in clips)


def run_ours(workdir: Path, k: int) -> float:
    out = workdir / f"ours-cache-{k}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "extract", str(workdir / "clips"), "--labels",
                           str(workdir / "labels.csv"), "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"our extract failed:\n{proc.stderr[-2000:]}")
    return wall


def run_mmsa(python: str, workdir: Path, clips: list[tuple[Path, str]], k: int) -> float:
    import json

    from extractors.text import BUILTIN_MODELS
    from extractors.packaged_models import builtin_model

    minilm, _, _ = builtin_model("builtin:minilm-l6", BUILTIN_MODELS, "text model")
    here = workdir / f"mmsa-{k}"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    jobs = here / "jobs.json"
    jobs.write_text(json.dumps([[str(p), t] for p, t in clips]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", MMSA_SCRIPT, str(jobs), str(here), minilm], capture_output=True,
                          text=True, env=env, cwd=here)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "SHAPES" not in proc.stdout:
        sys.exit(f"MMSA-FET failed:\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmsa-python", default="/tmp/mmsafet-venv/bin/python")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dhmd-vs-mmsafet"))
    args = ap.parse_args()
    check = subprocess.run([args.mmsa_python, "-c", "import MSA_FET"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"MMSA-FET is not importable with {args.mmsa_python}; install it as the docstring says:\n"
                 + __doc__.split("\n\n")[1])
    clips = make_clips(args.workdir, args.clips)
    seconds = video_seconds(clips)
    load = os.getloadavg()[0]
    ours, mmsa = [], []
    for k in range(args.rounds):       # who goes first alternates, so a drift in the machine's speed evens out
        if k % 2:
            mmsa.append(run_mmsa(args.mmsa_python, args.workdir, clips, k))
        ours.append(run_ours(args.workdir, k))
        if not k % 2:
            mmsa.append(run_mmsa(args.mmsa_python, args.workdir, clips, k))
    o, m = statistics.median(ours), statistics.median(mmsa)
    print(f"{len(clips)} clips, {seconds:.1f} s of video; {os.cpu_count()} CPUs; load {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; median of {args.rounds} round(s)\n")
    print("| tool | wall s | clips / s | video s / wall s |")
    print("|---|---:|---:|---:|")
    print(f"| dhmd-pipeline extract | {o:.1f} | {len(clips) / o:.3f} | {seconds / o:.2f} |")
    print(f"| MMSA-FET 0.4.1 (librosa + mediapipe + bert) | {m:.1f} | {len(clips) / m:.3f} | {seconds / m:.2f} |")
    ratios = [mm / oo for oo, mm in zip(ours, mmsa)]
    print(f"\nours / MMSA-FET clips per second: {m / o:.2f}x (ratio of the medians); round by round "
          + ", ".join(f"{r:.2f}x" for r in ratios) + f"; median of the rounds' ratios {statistics.median(ratios):.2f}x")
    from pipeline.extract.cache import read_manifest

    stages: dict[str, float] = {}
    for rec in read_manifest(args.workdir / f"ours-cache-{args.rounds - 1}"):
        for k, v in (rec.get("timings_s") or {}).items():
            stages[k] = stages.get(k, 0.0) + float(v)
    print("our stages, seconds summed over clips (video branch beside the audio branch): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "total"))


if __name__ == "__main__":
    main()
