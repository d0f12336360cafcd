"""Offline speech recognition chosen by measurement: word error rate and real-time factor per model.

The evaluation set is 48 English sentences of the kind reviews and vlogs hold (negations, contrasts,
sentiment words; no digits), each spoken by espeak-ng in one of 8 voices (American, British, RP,
Scottish, Lancaster, West Midlands, Caribbean, New York; male and female variants) at one of 6 rates
(130-195 words a minute), the voice and rate cycling so every combination of sentence features
meets several voices.  Audio is made on the spot (espeak-ng, 16 kHz) into --workdir and reused.

For each model the recogniser is loaded as ``dhmd-pipeline extract`` loads it (extractors.asr,
int8 on the CPU, beam 5, language "en") and every sentence transcribed once.  WER = (substitutions +
deletions + insertions) / reference words over the whole set, after lower-casing and dropping
punctuation (apostrophes kept: "wasn't" and "was" differ); ``RTF`` = seconds of audio per second of
recognition (above 1 = faster than real time), load time excluded; ``negation errors`` counts the
sentences whose "not"/"n't"/"never"/"no" words were not all recognised.

    PYTHONPATH=$PWD python3 bench/asr_eval.py --models builtin:tiny.en builtin:base builtin:base@float32

``moonshine:base`` alone is Moonshine's text (extractors/moonshine.py; it can hear only beside a Whisper
model in the pipeline, which times its words).  ``MODEL@TYPE`` runs a model with another CPU compute
type (extract.asr.compute_type; default int8);
``MODEL+OTHER`` runs MODEL with the ensemble OTHER (extract.asr.ensemble: the transcript heard by either
that both models together find most probable).  ``--rounds N`` speaks every sentence N times, each time in
another voice and at another rate (N x 48 recordings).
A second table gives the WER of each model per voice.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extractors.words import scoring_words, word_errors  # noqa: E402

SENTENCES = [
    "this was the best dinner i have had in years",
    "the battery dies before lunch every single day",
    "i did not like the ending at all",
    "the service was slow but the food was wonderful",
    "honestly this phone is a complete waste of money",
    "i would never buy this brand again",
    "the movie was not as bad as people said",
    "she loved the colors and the soft fabric",
    "the instructions were confusing and half of the parts were missing",
    "it works exactly as described and shipping was fast",
    "i can't believe how quiet this vacuum is",
    "the hotel room smelled terrible and the staff didn't care",
    "this is not what i ordered",
    "the sequel is far better than the original film",
    "nothing about this experience was pleasant",
    "my kids absolutely adore this game",
    "the sound quality is poor and the volume is too low",
    "i was pleasantly surprised by how comfortable these shoes are",
    "the update made everything slower and less reliable",
    "we had a lovely time at the beach this weekend",
    "i don't think i will be coming back here",
    "the acting was brilliant but the story dragged on",
    "this coffee tastes bitter and burnt",
    "customer support solved my problem within minutes",
    "the screen cracked after one week of normal use",
    "what a wonderful surprise this little restaurant turned out to be",
    "there is no reason to pay this much for a blender",
    "the plot was predictable and the jokes fell flat",
    "i am really happy with this purchase",
    "the chair wobbles and the cushion is too thin",
    "it isn't perfect but it is good enough for the price",
    "the teacher explained everything clearly and patiently",
    "the traffic made us miss the first half of the concert",
    "i have never seen such a beautiful sunset",
    "the app keeps crashing whenever i open the camera",
    "our guide was friendly funny and very knowledgeable",
    "the soup was cold and the bread was stale",
    "this book changed the way i think about work",
    "the delivery was late again and nobody called",
    "i wasn't expecting much but it exceeded my hopes",
    "the paint started peeling after a few days",
    "everyone at the party seemed to enjoy the music",
    "the price is fair and the quality is excellent",
    "i hate waiting in long lines at the airport",
    "the garden looks amazing in the spring",
    "he didn't say a single kind word all evening",
    "the laptop runs hot and the fan is loud",
    "we are thrilled with how the kitchen turned out",
]
VOICES = ["en-us+m3", "en+f2", "en-gb-x-rp+m5", "en-gb-scotland+f3", "en-gb-x-gbclan+m2", "en-gb-x-gbcwmd+f4",
          "en-029+m1", "en-us-nyc+f5"]
RATES = [130, 145, 160, 170, 180, 195]
NEGATIONS = {"not", "never", "no", "nothing", "nobody", "can't", "didn't", "don't", "isn't", "wasn't"}
SR = 16000


def make_set(workdir: Path, rounds: int = 1) -> list[tuple[str, str, int, Path]]:
    """The evaluation set: each sentence once per round, in a voice and at a rate that change with
    the round (round 0: the voice and rate cycle as in the first versions of this benchmark)."""
    workdir.mkdir(parents=True, exist_ok=True)
    items = []
    for r in range(rounds):
        shift = 2 * r + 1
        for i, text in enumerate(SENTENCES):
            if r == 0:
                voice, rate, wav = VOICES[i % len(VOICES)], RATES[(i // len(VOICES) + i) % len(RATES)], f"s{i:02d}.wav"
            else:
                voice, rate = VOICES[(i + shift) % len(VOICES)], RATES[(i * shift + 1) % len(RATES)]
                wav = f"s{i:02d}-{shift}.wav"
            if not (workdir / wav).exists():
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(workdir / wav), text], check=True)
            items.append((text, voice, rate, workdir / wav))
    return items


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
        rate = w.getframerate()
    from extractors.asr import _resample
    return _resample(audio, rate, SR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["builtin:tiny.en", "builtin:base"])
    ap.add_argument("--rounds", type=int, default=1,
                    help="each sentence once per round, in another voice and at another rate each round")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dhmd-asr-eval"))
    ap.add_argument("--show-errors", action="store_true", help="print every sentence that was not exact")
    args = ap.parse_args()
    from extractors.asr import SpeechRecognizer
    from extractors.moonshine import MoonshineListener, is_moonshine
    from extractors.words import Word
    from pipeline.config import AsrConfig

    items = make_set(args.workdir, args.rounds)
    audio = [read_wav(p) for *_, p in items]
    seconds = sum(len(a) for a in audio) / SR
    print(f"evaluation set: {len(items)} sentences, {sum(len(scoring_words(t)) for t, *_ in items)} words, "
          f"{seconds:.0f} s of speech, {len(VOICES)} voices, rates {min(RATES)}-{max(RATES)} wpm; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| model | WER | sentences exact | negation errors | RTF (audio s / s) | load s |")
    print("|---|---|---|---|---|---|")
    per_voice: dict[str, dict[str, list[int]]] = {}
    for spec in args.models:
        models, _, ctype = spec.partition("@")
        model, *ensemble = models.split("+")
        t0 = time.perf_counter()
        if is_moonshine(model) and not ensemble:       # Moonshine alone: its text (it gives no word times)
            listener = MoonshineListener(model)

            def transcribe(a: np.ndarray, _rate: int, listener: MoonshineListener = listener) -> list[Word]:
                return [Word(w, 0.0, 0.0) for w in listener.hear(a).split()]
        else:
            transcribe = SpeechRecognizer(AsrConfig(model=model, ensemble=ensemble,
                                                    compute_type=ctype or "int8")).transcribe
        load = time.perf_counter() - t0
        errors = words = exact = neg_err = 0
        spent = 0.0
        wrong = []
        for (text, voice, rate, _), a in zip(items, audio):
            t0 = time.perf_counter()
            heard = " ".join(w.text for w in transcribe(a, SR))
            spent += time.perf_counter() - t0
            ref, hyp = scoring_words(text), scoring_words(heard)
            e, _ = word_errors(text, heard)
            errors, words, exact = errors + e, words + len(ref), exact + (e == 0)
            v = per_voice.setdefault(spec, {}).setdefault(voice, [0, 0])
            v[0], v[1] = v[0] + e, v[1] + len(ref)
            negs = [w for w in ref if w in NEGATIONS]
            if negs and any(hyp.count(w) < ref.count(w) for w in negs):
                neg_err += 1
            if e:
                wrong.append(f"  {voice} {rate}: {' '.join(ref)!r} -> {' '.join(hyp)!r}")
        print(f"| {spec} | {errors / words:.3f} | {exact}/{len(items)} | {neg_err}/"
              f"{sum(any(w in NEGATIONS for w in scoring_words(t)) for t, *_ in items)} | {seconds / spent:.1f} | {load:.1f} |")
        if args.show_errors:
            print("\n".join(wrong), file=sys.stderr)
    print("\n| WER per voice | " + " | ".join(per_voice) + " |")
    print("|---|" + "---|" * len(per_voice))
    for voice in VOICES:
        print(f"| {voice} | " + " | ".join(f"{per_voice[m][voice][0] / per_voice[m][voice][1]:.2f}"
                                          for m in per_voice) + " |")


if __name__ == "__main__":
    main()
