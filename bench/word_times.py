"""How well given words are timed: forced alignment (clip window, 30 s window) against recognise-and-match.

    PYTHONPATH=$PWD python3 bench/word_times.py --sentences 16

Speech with known word boundaries: every word of a demo sentence is spoken on its own by espeak-ng
(four voices in turn), cut to its voiced samples (|x| > 0.02), and the words are joined with random
gaps of 30-200 ms, so each word's true start and end are known to a sample.  The sentence's words
are then timed the three ways :mod:`extractors.transcript` can time a transcript that has no times:

- ``align, clip window``: :meth:`SpeechRecognizer.align` with ``asr.align_window = "clip"`` (default);
- ``align, 30 s window``: the same with ``"whisper"`` (the encoder reads a window padded to 30 s);
- ``recognise + match``: recognition with word timestamps, then :func:`extractors.words.match_times`
  (the path for clips over 30 s).

Printed: a Markdown table of the absolute error of word starts and ends (mean, median, 90th
percentile, share within 100 ms) and the seconds each method takes per sentence.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SR = 16000
VOICES = ("en-us", "en+f2", "en-gb", "en+m3")


def spoken_word(word: str, voice: str) -> np.ndarray:
    """One word by espeak-ng at 16 kHz, cut to its voiced samples."""
    from extractors.decode import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), word], check=True,
                       capture_output=True)
        audio = load_audio(path, SR)
    voiced = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[voiced[0]:voiced[-1] + 1]


def sentence(words: list[str], voice: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Audio of the words with random gaps, and the true (start, end) of each word in seconds."""
    parts, truth, t = [np.zeros(int(0.3 * SR), np.float32)], [], 0.3
    for w in words:
        a = spoken_word(w, voice)
        truth.append((t, t + len(a) / SR))
        gap = np.zeros(int(rng.uniform(0.03, 0.2) * SR), np.float32)
        parts += [a, gap]
        t += (len(a) + len(gap)) / SR
    parts.append(np.zeros(SR // 2, np.float32))
    return np.concatenate(parts), np.asarray(truth)


def main() -> None:
    from extractors.asr import SpeechRecognizer
    from extractors.words import match_times, split_words
    from pipeline.config import AsrConfig
    from pipeline.demo.corpus import SENTENCES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--model", default="builtin:tiny.en")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    clip_win = SpeechRecognizer(AsrConfig(model=args.model, align_window="clip"))
    full_win = SpeechRecognizer(AsrConfig(model=args.model, align_window="whisper"))

    def recognise_and_match(words: list[str], audio: np.ndarray) -> list:
        return match_times(words, clip_win.transcribe(audio, SR), audio, SR)

    methods = {"align, clip window (default)": lambda w, a: clip_win.align(w, a, SR),
               "align, 30 s window": lambda w, a: full_win.align(w, a, SR),
               "recognise + match": recognise_and_match}
    errors: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    n_words = 0
    for k, s in enumerate(SENTENCES[:args.sentences]):
        words = split_words(s.text)
        audio, truth = sentence(words, VOICES[k % len(VOICES)], rng)
        n_words += len(words)
        for name, run in methods.items():
            t0 = time.perf_counter()
            timed = run(words, audio)
            seconds[name] += time.perf_counter() - t0
            est = np.asarray([(w.start, w.end) for w in timed])
            errors[name].append(np.abs(est - truth).ravel())
    print(f"{args.sentences} sentences, {n_words} words, espeak-ng voices {', '.join(VOICES)}; model {args.model}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| method | mean error ms | median ms | 90th pct ms | within 100 ms | s per sentence |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in methods:
        e = np.concatenate(errors[name]) * 1000
        print(f"| {name} | {e.mean():.0f} | {np.median(e):.0f} | {np.percentile(e, 90):.0f} | "
              f"{np.mean(e <= 100):.2f} | {seconds[name] / args.sentences:.2f} |")


if __name__ == "__main__":
    main()
