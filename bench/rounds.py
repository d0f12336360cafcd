"""Interleaved timing rounds for the bench scripts: every method once per round, round-robin, so a
drift in the machine's speed (this VM's drifts by up to 30% over minutes) falls on all of them alike."""
from __future__ import annotations

import statistics
from typing import Callable


def interleaved(measures: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """``rounds`` values of each measure (one call each per round, in turn), after ``warmup`` rounds
    whose values are dropped (first calls load caches and compile kernels)."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(warmup + rounds):
        for name, measure in measures.items():
            value = measure()
            if r >= warmup:
                times[name].append(value)
    return times


def fastest_median_table(times: dict[str, list[float]], label: str, unit: str,
                         extra: tuple[str, Callable[[float], str]] | None = None) -> str:
    """A Markdown table: a row per method with its fastest and median value (and ``extra``: a column
    title and a function of the fastest value)."""
    head = f"| {label} | {unit} (fastest) | {unit} (median) |" + (f" {extra[0]} |" if extra else "")
    rule = "|---|---:|---:|" + ("---:|" if extra else "")
    rows = [f"| {name} | {min(v):.2f} | {statistics.median(v):.2f} |" + (f" {extra[1](min(v))} |" if extra else "")
            for name, v in times.items()]
    return "\n".join([head, rule, *rows])
