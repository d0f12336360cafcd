"""Cost of a dropout mask on the CPU, drawn and applied, per element: torch's generator against the
hashed masks of dhmd/keep_hash.py (the torch reference, and the numba kernels of dhmd/keep_apply.py).

Prints a Markdown table, ns an element (fastest and median of interleaved rounds) on a float32 block of
attention-matrix size (16 x 500 x 500 by default):
    F.dropout                          nn.Dropout's path: bernoulli_ mask, multiply
    16-bit lanes + torch.where         the attention-dropout mask before the hash (commit f5ce60c):
                                       random_ 64-bit words split in four, compared, torch.where
    hash, torch reference              keep_hash.keep_mask + masked_fill_
    hash, numba kernels                keep_apply.drop_ (the path training takes), on all threads

    python bench/keep_masks.py --rounds 5
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout as well
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dhmd import keep_apply, keep_hash  # noqa: E402
from rounds import fastest_median_table, interleaved  # noqa: E402


def lanes_where(x: torch.Tensor, gen: torch.Generator, threshold: int) -> None:
    """The pre-hash attention mask: four 16-bit lanes a random 64-bit word, applied with torch.where."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1, generator=gen)
    keep = words.view(torch.int16)[:n].view(x.shape).ge(threshold - (1 << 15))
    torch.where(keep, x, torch.zeros((), dtype=x.dtype), out=x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 500, 500])
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if keep_apply.kernels() is None:
        raise SystemExit("numba is not installed: the kernels cannot be timed")
    base = torch.rand(*args.shape)
    thr, key, gen = keep_hash.threshold(args.p), keep_hash.key(1), torch.Generator().manual_seed(1)
    methods = {
        "F.dropout (bernoulli_, nn.Dropout)": lambda x: F.dropout(x, args.p, True),
        "16-bit lanes + torch.where (before)": lambda x: lanes_where(x, gen, thr),
        "hash, torch reference": lambda x: x.masked_fill_(~keep_hash.keep_mask(key, 0, x.shape, thr), 0),
        "hash, numba kernels (now)": lambda x: keep_apply.drop_(x, key, 0, thr),
    }
    def measure(fn) -> Callable[[], float]:
        def run() -> float:
            x = base.clone()
            start = time.perf_counter()
            fn(x)
            return (time.perf_counter() - start) / x.numel() * 1e9
        return run

    # round 0 warms up (numba loads its cache)
    times = interleaved({name: measure(fn) for name, fn in methods.items()}, args.rounds)
    print(f"Dropout mask drawn and applied, float32 {'x'.join(map(str, args.shape))} "
          f"({math.prod(args.shape) / 1e6:.0f} M elements), p={args.p}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds\n")
    print(fastest_median_table(times, "method", "ns an element"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
