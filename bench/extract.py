"""Benchmark ``dhmd-pipeline extract``: per-stage time and the real-time factor for a batch of clips.

Makes N clips (espeak-ng speech of the demo sentences over the moving face, pipeline.demo.synth; about
3-5 s each; reused between runs from --workdir), then for each --workers value runs the real command
``dhmd-pipeline extract`` in a fresh process on an empty cache folder, with the offline defaults
(ASR transcript, MiniLM text encoder, MediaPipe face, librosa acoustic features) unless --set says
otherwise.  Prints one Markdown table:

- stage columns: seconds summed over clips, from each entry's ``timings_s``.  Within a clip the
  video branch (decode_frames, face) runs beside the audio branch (decode_audio, transcript, text,
  acoustic), and for workers > 1 the sum runs over all processes, so the columns add up to more
  than the wall time.  ``transcript`` includes loading the speech recogniser in each process (the
  first clip that needs it pays for it).
- ``startup``: wall time not spent inside clips (imports, loading the text and face models, warm-up),
  i.e. ``wall - sum(total) / workers``.
- ``RTF``: seconds of video per second of wall time, end to end (startup included);
  ``RTF clips``: the same without the startup, i.e. for a batch long enough to amortise it.
- ``CPU s``: user + system CPU seconds of the run and everything it started (ffmpeg included), and
  ``video s / CPU s``; with ``load`` (the 1-minute load average when the run started) they tell
  whether other work on the machine slowed the wall-clock figures down.

    python bench/extract.py --clips 8 --workers 1 2 --device auto
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout as well

STAGES = ("probe", "decode_audio", "transcript", "text", "acoustic", "decode_frames", "face")


def make_clips(folder: Path, n: int) -> list[Path]:
    """``n`` clips of 3-5 s (demo sentences of 8-14 words), made once and reused."""
    from pipeline.demo.corpus import SENTENCES
    from pipeline.demo.synth import make_clip

    folder.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SENTENCES if 8 <= len(s.text.split()) <= 14][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} demo sentences of 8-14 words; ask for fewer clips")
    out = []
    for i, s in enumerate(chosen):
        path = folder / f"bench_{i:03d}.mp4"
        if not path.exists():
            make_clip(path.with_suffix(".part.mp4"), s.text, seed=i, expression=s.score / 3.0)
            path.with_suffix(".part.mp4").rename(path)
        out.append(path)
    return out


def run_extract(videos: Path, out: Path, workers: int, device: str, sets: list[str]
                ) -> tuple[float, float, list[dict]]:
    """Wall and CPU seconds (all processes) of one ``extract`` run in a fresh process, and its records."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", str(videos), "--out", str(out),
           "--workers", str(workers), "--quiet", "--set", f"extract.device={json.dumps(device)}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"extract failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return wall, cpu, records


def row(workers: int, wall: float, cpu: float, records: list[dict], device: str, load: float) -> dict:
    video_s = sum(r["duration_s"] for r in records)
    stage = {s: sum(r["timings_s"].get(s, 0.0) for r in records) for s in STAGES}
    clips_total = sum(r["timings_s"].get("total", 0.0) for r in records)
    startup = max(0.0, wall - clips_total / workers)
    return {"device": device, "workers": workers, "clips": len(records), "video_s": video_s, "wall_s": wall,
            "cpu_s": cpu, "load": load, "startup_s": startup, **stage, "clips_total_s": clips_total,
            "rtf": video_s / wall, "rtf_clips": video_s / (clips_total / workers)}


def table(rows: list[dict]) -> str:
    head = ["device", "workers", "clips", "video s", "load", "wall s", "CPU s", "startup s", *STAGES, "RTF",
            "RTF clips", "video s / CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["device"], str(r["workers"]), str(r["clips"]), f"{r['video_s']:.1f}", f"{r['load']:.1f}",
                 f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['startup_s']:.1f}",
                 *(f"{r[s]:.2f}" for s in STAGES), f"{r['rtf']:.2f}x", f"{r['rtf_clips']:.2f}x",
                 f"{r['video_s'] / r['cpu_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips in the batch (default 8)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/extract"), help="clips and caches go here")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra setting for extract, e.g. extract.asr.beam_size=1 (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    from pipeline.extract.clip import resolve_device

    device = resolve_device(args.device)
    videos = make_clips(args.workdir / "videos", args.clips)
    rows = []
    for w in args.workers:
        load = os.getloadavg()[0]
        wall, cpu, records = run_extract(videos[0].parent, args.workdir / f"cache_w{w}", w, device, args.sets)
        rows.append(row(w, wall, cpu, records, device, load))
    cpu = platform.processor() or platform.machine()
    print(f"extract benchmark, {datetime.date.today()}, {os.cpu_count()} CPU cores ({cpu}), device {device}, "
          f"{args.clips} clips{', ' + ' '.join(args.sets) if args.sets else ''}")
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
