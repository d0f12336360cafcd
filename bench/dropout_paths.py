"""Compare DHMD's CPU attention-dropout paths in one process, steps interleaved (fair under changing load).

Prints a Markdown table of one training step (forward, every loss, backward, clipping, Adam) at CMU-MOSI
unaligned shapes with the paper's defaults, for:
    paper (dropout_attention)   the current CPU path (dhmd/dropout_attention.py: in float32 the fused C
                                kernel of dhmd/fused_attention.py when it could be built)
    paper (chunked)             the same function with the fused kernel off: its chunked torch / numba
                                path (the fallback without a C compiler, and the path before the kernel)
    paper (checkpointed SDPA)   the path before issue 15: SDPA's math path with dropout under activation
                                checkpointing (bernoulli_ masks, drawn again in the recomputation)
    attn_dropout=0              SDPA's fused flash kernel, no attention dropout (a lower bound)
The variants run round-robin, ``--rounds`` times after one warm-up step each; the table gives each one's
fastest and median step.

    python bench/dropout_paths.py --batch 8 --rounds 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dhmd.crossmodal as crossmodal  # noqa: E402
from dhmd import fused_attention  # noqa: E402
from model_step import dhmd_step, make_batch  # noqa: E402
from rounds import fastest_median_table, interleaved  # noqa: E402

CURRENT = crossmodal.dropout_attention


def checkpointed_sdpa(q, k, v, key_mask, dropout_p, scale):
    """The pre-issue-15 CPU path: SDPA (math path with dropout), recomputed in backward."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return checkpoint(F.scaled_dot_product_attention, q, k, v, mask, dropout_p, False, scale=scale,
                      use_reentrant=False)


def chunked(q, k, v, key_mask, dropout_p, scale):
    """dhmd.dropout_attention with the fused C kernel switched off (its chunked path)."""
    usable = fused_attention.usable
    fused_attention.usable = lambda t: False
    try:
        return CURRENT(q, k, v, key_mask, dropout_p, scale)
    finally:
        fused_attention.usable = usable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    inputs = make_batch(args.batch, device, "none")
    variants = {"paper (dropout_attention)": (CURRENT, None),
                "paper (chunked)": (chunked, None),
                "paper (checkpointed SDPA, before)": (checkpointed_sdpa, None),
                "attn_dropout=0 (flash SDPA)": (CURRENT, {"attn_dropout": 0.0})}
    steps = {name: (path, dhmd_step(device, inputs, False, over)[0]) for name, (path, over) in variants.items()}

    def run(name: str) -> float:
        path, step = steps[name]
        crossmodal.dropout_attention = path
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    times = interleaved({name: (lambda name=name: run(name)) for name in steps}, args.rounds)
    print(f"DHMD training step on the CPU ({torch.get_num_threads()} threads), batch {args.batch}, MOSI shapes, "
          f"{args.rounds} interleaved rounds\n")
    print(fastest_median_table(times, "variant", "s", ("samples/s (fastest)", lambda s: f"{args.batch / s:.2f}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
