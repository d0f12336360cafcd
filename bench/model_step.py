"""Benchmark one DHMD training step (forward + backward + Adam) at CMU-MOSI unaligned shapes.

Prints a Markdown table: device, batch, step time, samples/s, peak memory.  Shapes are MOSI's unaligned
features (text 50 x 768 BERT, audio 375 x 5, video 500 x 20) with the paper's default model (C=50, 10
heads, 4 layers, K=512).  Each (device, batch) runs in a fresh process so that memory peaks do not mix.

Memory: on CUDA torch.cuda.max_memory_allocated() after reset_peak_memory_stats() (tensors only, not the
allocator's cache); on CPU the rise of the process's peak resident set size (ru_maxrss) over its value
after the model and the batch were built (before the warm-up steps), i.e. what training steps add
(activations, gradients, Adam state).  On the CPU the dropout kernels (the fused attention's C kernel,
and numba's runtime for the layers' dropout, about 330 MiB resident once per process) are loaded
before that, so the figure is the step's own.

Variants (--variant, repeatable; each is timed in its own rows, --set applies on top of each):
    paper            the paper's defaults (Table 1)
    no-attn-dropout  attn_dropout=0: on CPU SDPA then takes its fused (flash) kernel instead of
                     dhmd.dropout_attention's path; on CUDA the fused kernels run either way
    paper-chunked    the paper's defaults with DHMD_NATIVE=0: on CPU attention with dropout takes the
                     chunked torch / numba path (dhmd/dropout_attention.py) instead of the fused C
                     kernel (dhmd/fused_attention.py), as on a machine without a C compiler

The public DMD code (mdswyz/DMD, the CVPR 2023 predecessor) is timed beside it at the same shapes with
--dmd-repo PATH, a checkout of https://github.com/mdswyz/DMD (bench/dmd_reference.py says how its step
is composed).  Its rows run as that code does: fp32, no masks (it only takes full-length sequences).

    python bench/model_step.py --device auto --batch-sizes 16 64 --steps 5
    python bench/model_step.py --device cpu --batch-sizes 4 --steps 1 --variant paper no-attn-dropout
    git clone https://github.com/mdswyz/DMD /tmp/DMD
    python bench/model_step.py --device cpu --batch-sizes 16 --steps 2 --warmup 1 --padding none \
        --variant paper --dmd-repo /tmp/DMD --rounds 3      # interleaved: paper, DMD, paper, DMD, ...
    python bench/model_step.py --device cuda --batch-sizes 16 64 --padding none --dmd-repo /tmp/DMD
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout as well

from dhmd import DHMD, DHMDConfig  # noqa: E402

SHAPES = {"text": (50, 768), "audio": (375, 5), "video": (500, 20)}
VARIANTS = {"paper": {}, "no-attn-dropout": {"attn_dropout": 0.0}, "paper-chunked": {}}
VARIANT_ENV = {"paper-chunked": {"DHMD_NATIVE": "0"}}    # the chunked torch / numba attention path


def make_batch(batch: int, device: torch.device, padding: str, seed: int = 0) -> dict:
    """Random features; with padding="random" each sample keeps 50-100% of each modality's frames."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (length, dim) in SHAPES.items():
        out[name] = torch.randn(batch, length, dim, generator=g).to(device)
        if padding == "random":
            keep = torch.randint(length // 2, length + 1, (batch,), generator=g)
            keep[0] = length                                              # the batch spans full length
            out[f"{name}_mask"] = (torch.arange(length).unsqueeze(0) < keep.unsqueeze(1)).to(device)
    out["labels"] = (torch.rand(batch, generator=g) * 6 - 3).to(device)
    return out


def parse_overrides(items: list[str]) -> dict:
    """`field=value` pairs for DHMDConfig, each value converted to the type of the field's default."""
    defaults = DHMDConfig(text_dim=768, audio_dim=5, video_dim=20).to_dict()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"--set {item!r}: expected field=value with a DHMDConfig field")
        kind = type(defaults[key])
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def dhmd_step(device: torch.device, inputs: dict, use_amp: bool,
              overrides: dict | None) -> tuple[Callable[[], None], int]:
    """One DHMD training step (every loss of Eq. 14, backward, clipping, Adam) and the parameter count."""
    cfg = DHMDConfig(text_dim=768, audio_dim=5, video_dim=20, **(overrides or {}))
    model = DHMD(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if device.type == "cpu":
        # load the dropout kernels (the fused attention's C kernel, built once per machine; numba's
        # runtime for the layers' dropout, ~330 MiB resident, once per process) before the measured
        # steps, so that the memory column is the step's own
        from dhmd.dropout import Dropout
        from dhmd.dropout_attention import dropout_attention
        x = torch.randn(1, 1, 4, 5, requires_grad=True)
        (dropout_attention(x, x, x, None, 0.1, 0.5).sum() + Dropout(0.1)(x).sum()).backward()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(**inputs).losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.6)
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def measure(device_name: str, batch: int, steps: int, warmup: int, amp: bool, padding: str,
            overrides: dict | None = None, dmd_repo: str | None = None) -> dict:
    """Time `steps` training steps after `warmup` ones (of DHMD, or of the public DMD code when
    `dmd_repo` is given); runs inside a fresh process."""
    torch.manual_seed(0)
    device = torch.device(device_name)
    inputs = make_batch(batch, device, padding)
    if dmd_repo:
        from dmd_reference import build_dmd_step

        use_amp = False                       # the public code trains in fp32
        step, params = build_dmd_step(Path(dmd_repo), device, inputs)
    else:
        use_amp = amp and device.type == "cuda"
        step, params = dhmd_step(device, inputs, use_amp, overrides)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        mem_kind = "max_memory_allocated"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        mem_kind = "ru_maxrss rise"
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch": batch, "ms": elapsed * 1000, "sps": batch / elapsed, "mem": peak, "mem_kind": mem_kind,
            "precision": "bf16 autocast" if use_amp else "fp32",
            "threads": torch.get_num_threads(), "params": params}


def _child(queue: mp.Queue, args: tuple, env: dict) -> None:
    os.environ.update(env)
    queue.put(measure(*args))


def run_isolated(*args, env: dict | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, args, env or {}))
    proc.start()
    while True:                       # a child killed (e.g. out of memory) must not hang the benchmark
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise SystemExit(f"benchmark process for {args[:2]} died (exit code {proc.exitcode}); "
                                 "out of memory?") from None
    proc.join()
    return result


def _median_row(group: list[dict]) -> dict:
    """One row from the rounds of one setting: the median step, the largest memory."""
    mid = statistics.median(r["ms"] for r in group)
    row = dict(group[0])
    row.update(ms=mid, sps=row["batch"] / (mid / 1000), mem=max(r["mem"] for r in group),
               all_ms=[r["ms"] for r in group])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, plus CUDA when present")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA instead of bf16 autocast")
    parser.add_argument("--padding", choices=["random", "none"], default="random",
                        help="random: samples keep 50-100%% of the frames (masked); none: all frames real")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a DHMDConfig field from the paper default (repeatable), "
                             "e.g. --set attn_dropout=0")
    parser.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=["paper"],
                        help="model variants to time, each in its own rows (see the module docstring)")
    parser.add_argument("--dmd-repo", default=None, metavar="PATH",
                        help="a checkout of github.com/mdswyz/DMD: also time the public DMD code")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every row this many times, interleaved (DHMD, DMD, DHMD, ...), and "
                             "report the median step: on a VM whose speed drifts over minutes a ratio "
                             "of rows run minutes apart means little")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(max(1, args.rounds)):
        for variant in args.variant:
            for d in devices:
                for b in args.batch_sizes:
                    row = run_isolated(d, b, args.steps, args.warmup, not args.no_amp, args.padding,
                                       {**VARIANTS[variant], **overrides}, env=VARIANT_ENV.get(variant))
                    runs.setdefault((variant, d, b), []).append({**row, "variant": variant})
        if args.dmd_repo:
            for d in devices:
                for b in args.batch_sizes:
                    row = run_isolated(d, b, args.steps, args.warmup, False, args.padding, None,
                                       args.dmd_repo)
                    runs.setdefault(("public DMD code", d, b), []).append(
                        {**row, "variant": "public DMD code"})
    rows = [_median_row(group) for group in runs.values()]
    print(f"Training step, CMU-MOSI unaligned shapes (text 50x768, audio 375x5, video 500x20), "
          f"DHMD with the paper's defaults (variants: {', '.join(args.variant)})"
          f"{' with ' + ', '.join(args.overrides) if args.overrides else ''}, padding={args.padding}, "
          f"{args.steps} timed steps after {args.warmup} warm-up"
          f"{f', median of {args.rounds} interleaved rounds' if args.rounds > 1 else ''}\n")
    # x DMD: samples/s over the public DMD code's at the same device and batch (when it was timed)
    dmd = {(r["device"], r["batch"]): r for r in rows if r["variant"] == "public DMD code"}
    print("| variant | parameters | device | precision | batch | step ms | samples/s | x DMD samples/s "
          "| peak memory MiB | x DMD memory | memory measure |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if args.rounds > 1:
            r["variant"] += f" (rounds: {', '.join(str(round(x)) for x in r['all_ms'])} ms)"
        dev = r["device"] + (f" ({r['threads']} threads)" if r["device"] == "cpu" else "")
        ref = dmd.get((r["device"], r["batch"]))
        speed = f"{r['sps'] / ref['sps']:.2f}" if ref else "-"
        mem = f"{r['mem'] / ref['mem']:.2f}" if ref and ref["mem"] > 0 else "-"
        print(f"| {r['variant']} | {r['params'] / 1e6:.2f} M | {dev} | {r['precision']} | {r['batch']} | "
              f"{r['ms']:.0f} | {r['sps']:.2f} | {speed} | {r['mem']:.0f} | {mem} | {r['mem_kind']} |")
    if args.rounds > 1 and dmd:
        print("\nRound by round, x DMD samples/s (DMD's step of the same round over this row's):\n")
        for r in rows:
            ref = dmd.get((r["device"], r["batch"]))
            if ref is not None and r is not ref:
                ratios = [f"{m_ref / m:.2f}" for m, m_ref in zip(r["all_ms"], ref["all_ms"])]
                print(f"- {r['variant'].split(' (rounds')[0]}, batch {r['batch']}: {', '.join(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
