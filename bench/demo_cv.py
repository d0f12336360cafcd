"""Choose demo settings without the test split: leave-one-voice-out cross-validation on the demo's
training and validation clips, the held-out clips heard through speech recognition.

``make demo`` reports its figures on the test split; a setting chosen by those figures would be fitted
to them.  This script gives a second, larger held-out set that the demo never reports: the training and
validation clips (about 270, one voice a sentence) are split by voice into ``--folds`` folds (6); each
fold is held out in turn while the demo's model trains on the rest (a tenth of the sentences
validating), so a fold's clips are unseen sentences in voices the model has not heard, as the test
clips are; and they are predicted with their words as a recogniser hears them (``--asr``), not from
the transcript.  ``--by identity`` holds out face identities instead (the training identities dealt out
to the folds), so a fold's clips show a face no training clip shows, as the test clips' face is.  The
table gives sign accuracy on the non-neutral held-out clips, fused and per head,
and the fused accuracy by face condition (agree / neutral / contradict), over all folds.

    make demo                                                 # the corpus and its cache, once
    python bench/demo_cv.py                                   # the [demo] settings
    python bench/demo_cv.py --set model.text_dropout=0.5      # a candidate, same folds, same hearing
    python bench/demo_cv.py --by identity --folds 3           # unseen faces instead of unheard voices

The heard text (recognised, then encoded at ``demo.text_layer``) is made once per recogniser and kept
in ``--work`` (default: demo.workdir/cv), so later runs only train.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout as well

from pipeline.config import load_config, with_overrides  # noqa: E402
from pipeline.demo.run import (cached_entries, demo_overrides, held_out_figures,  # noqa: E402
                               held_out_predictions, plan_demo_corpus)


def heard_entries(cache: Path, corpus: Path, specs: list, cfg, asr_model: str, out: Path) -> dict[str, Path]:
    """clip_id -> a copy of the clip's cache entry whose words are what ``asr_model`` (with the ensemble
    of ``cfg.extract.asr``) hears in the clip
    (recognised, timed and encoded as extraction does for a clip without a transcript)."""
    from tqdm import tqdm

    from extractors.asr import SpeechRecognizer
    from extractors.decode import load_audio
    from extractors.text import TextEncoder
    from pipeline.extract.cache import load_entry, save_entry

    out.mkdir(parents=True, exist_ok=True)
    # a heard copy is named by its cache entry's key, so a clip rendered or extracted anew is heard anew
    entries = cached_entries(cache, {s.clip_id for s in specs})
    named = {rec["clip_id"]: out / f"{rec.get('key') or rec['clip_id']}.npz" for rec, _ in entries}
    done = {clip_id: path for clip_id, path in named.items() if path.is_file()}
    todo = [(rec, path) for rec, path in entries if rec["clip_id"] not in done]
    if todo:
        asr = SpeechRecognizer(cfg.extract.asr.model_copy(update={"model": asr_model}))
        text = TextEncoder(cfg.extract.text)
        for rec, path in tqdm(todo, desc=f"hearing clips ({asr_model})", unit="clip"):
            clip = load_entry(path)
            rate = cfg.extract.sample_rate
            words = asr.transcribe(load_audio(corpus / f"{rec['clip_id']}.mp4", rate), rate)
            tokens = text.encode([w.text for w in words])
            clip = dataclasses.replace(
                clip, transcript=" ".join(w.text for w in words), transcript_source="asr",
                words=[w.text for w in words], word_times_source="asr",
                word_start=np.asarray([w.start for w in words], dtype=np.float32),
                word_end=np.asarray([w.end for w in words], dtype=np.float32),
                text_features=tokens.features, text_ids=tokens.ids, text_mask=tokens.mask,
                text_segment=tokens.segment, token_word_index=np.asarray(tokens.word_index, dtype=np.int32))
            save_entry(named[rec["clip_id"]], clip)
            done[rec["clip_id"]] = named[rec["clip_id"]]
    return done


def fold_cache(cache: Path, heard: dict[str, Path], specs: list, fold_dir: Path, heard_training: bool = False,
               given_words: bool = False) -> None:
    """A cache folder whose labels.csv splits ``specs`` as given and whose test clips are heard (with
    ``heard_training`` the training and validation clips too, instead of their given transcripts; with
    ``given_words`` none: the test clips keep the words spoken, as a perfect recogniser would hear them)."""
    from pipeline.demo.corpus import labels_csv
    from pipeline.extract.cache import write_manifest

    if fold_dir.exists():
        shutil.rmtree(fold_dir)
    (fold_dir / "entries").mkdir(parents=True)
    split = {s.clip_id: s.split for s in specs}
    records = []
    for rec, path in cached_entries(cache, set(split)):
        target = (heard[rec["clip_id"]] if heard_training or (split[rec["clip_id"]] == "test" and not given_words)
                  else path)
        os.symlink(Path(target).resolve(), fold_dir / rec["entry"])
        records.append(rec)
    write_manifest(fold_dir, records)
    (fold_dir / "labels.csv").write_text(labels_csv(specs, with_text=("train", "valid", "test")))


# what a fold holds out: a training voice, a face identity, or an accent (espeak-ng's language voice,
# both of its variants: a held-out clip's accent is then one no training clip has, as the test voices')
GROUPS = {"voice": lambda s: s.voice, "identity": lambda s: s.identity,
          "accent": lambda s: s.voice.split("+")[0]}


def folds_of(specs: list, k: int = 6, by: str = "voice") -> list[list]:
    """The non-test specs re-split into (at most) ``k`` folds by training voice, face identity or
    accent (``by``, a key of :data:`GROUPS`): in fold i, the clips in voices (identities, accents) i,
    i + k, ... (sorted by name) are the test split, a tenth of the other sentences valid, the rest
    train.  By voice, a fold's clips are unseen sentences in unheard voices; by accent, in voices of an
    accent no training clip has, as the test clips' are; by identity, over faces no training clip
    shows, as the test clips' face is.  Either way a held-out sentence is spoken in no training clip
    (``demo.voices_per_sentence = 1``).

    ``by = "accent+identity"`` (two keys) holds out both at once, as the test split does: a fold's
    test clips are those in its held-out accents *and* identities, its training clips those in
    neither, and the clips in one but not the other are left out of that fold (trained on by none,
    so the folds train on fewer clips, about 4/9 of the pool with 3 folds)."""
    pool = [s for s in specs if s.split != "test"]
    keys = by.split("+")
    if not keys or any(key not in GROUPS for key in keys):
        raise ValueError(f"folds by {' or '.join(map(repr, GROUPS))} (or two joined by '+'), not {by!r}")
    groups = [sorted({GROUPS[key](s) for s in pool}) for key in keys]
    out = []
    for i in range(min(k, *map(len, groups))):
        held_groups = [set(g[i::k]) for g in groups]
        # per clip: in how many of the held-out groups it lies (all: held out; some: in no split)
        inside = {s.clip_id: sum(GROUPS[key](s) in g for key, g in zip(keys, held_groups)) for s in pool}
        held = {s.video_id for s in pool if inside[s.clip_id] == len(keys)}
        left_out = {s.video_id for s in pool if 0 < inside[s.clip_id] < len(keys)}
        if any(s.video_id in held and inside[s.clip_id] < len(keys) for s in pool):
            raise SystemExit(f"sentences of the clips in {[sorted(g) for g in held_groups]} have other clips "
                             f"too: set demo.voices_per_sentence = 1 for this cross-validation")
        rest = sorted({s.video_id for s in pool} - held - left_out)
        valid = set(rest[::10])
        out.append([dataclasses.replace(s, split="test" if s.video_id in held else
                                        "valid" if s.video_id in valid else "train")
                    for s in pool if s.video_id not in left_out])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="demo cache (default: demo.workdir/cache)")
    parser.add_argument("--corpus", type=Path, default=None, help="demo clips (default: demo.workdir/corpus)")
    parser.add_argument("--work", type=Path, default=None, help="heard entries and fold folders "
                                                                "(default: demo.workdir/cv)")
    parser.add_argument("--asr", default=None, help="recogniser that hears the held-out clips "
                                                    "(default: the demo's, demo.asr_model; with demo.asr_ensemble either way)")
    parser.add_argument("--folds", type=int, default=6,
                        help="folds (training voices or identities are dealt out to them)")
    parser.add_argument("--by", choices=(*GROUPS, "accent+identity"), default="voice",
                        help="hold out voices (unheard voices), accents (voices of an accent no training "
                             "voice has, as the test split's), face identities (unseen faces), or accents "
                             "and identities together (as the test split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds per fold")
    reading = parser.add_mutually_exclusive_group()   # which words the clips are read with
    reading.add_argument("--heard-training", action="store_true",
                        help="train on what the recogniser hears in the training clips as well, instead of "
                             "their transcripts (both ways, the held-out clips are heard)")
    reading.add_argument("--given-words", action="store_true",
                        help="read the held-out clips with the words spoken instead of what the recogniser "
                             "hears: what a perfect recogniser would give (a bound, not a demo setting)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting (repeatable), as dhmd-pipeline --set; the [demo] settings apply")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pipeline.inference.predict import Predictor
    from pipeline.training.train import run_train

    cfg = load_config(None, args.overrides)
    dcfg = with_overrides(cfg, demo_overrides(cfg, cfg.demo.epochs))
    workdir = Path(cfg.demo.workdir)
    cache, corpus = args.cache or workdir / "cache", args.corpus or workdir / "corpus"
    asr_model = args.asr or dcfg.extract.asr.model
    asr_name = "+".join([asr_model, *dcfg.extract.asr.ensemble])   # the recogniser and its ensemble (--asr replaces the first)
    work = args.work or workdir / "cv"
    _, _, specs = plan_demo_corpus(dcfg.demo)
    pool = [s for s in specs if s.split != "test"]
    tag = f"{asr_name.replace(':', '_').replace('/', '_')}-layer{dcfg.extract.text.layer}"
    heard = heard_entries(cache, corpus, pool, dcfg, asr_model, work / f"heard-{tag}")
    rows = []
    for i, fold in enumerate(folds_of(specs, args.folds, args.by)):
        fold_cache(cache, heard, fold, work / f"fold{i}", args.heard_training, args.given_words)
        for seed in args.seeds:
            out = work / f"fold{i}-run{seed}"
            shutil.rmtree(out, ignore_errors=True)
            if run_train(with_overrides(dcfg, {"train.seed": seed}), data=work / f"fold{i}", out=out,
                         preset=None, resume=None, seeds=None) != 0:
                raise SystemExit(f"training fold {i} seed {seed} failed")
            got = held_out_predictions(Predictor(out / "best.pt", device="cpu"), work / f"fold{i}", fold)
            rows.append((seed, got))
    cols = ["fused", "text", "audio", "video", "agree", "neutral", "contradict"]
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = held_out_figures([r for s, got in rows if s == seed for r in got])
    unseen = {"voice": "in unheard voices", "accent": "in unheard accents", "identity": "over unseen faces",
              "accent+identity": "in unheard accents over unseen faces"}[args.by]
    words = ("read with the words spoken (no recogniser: a bound)" if args.given_words
             else f"heard by {asr_name}")
    print(f"\nDemo settings{' with ' + ', '.join(args.overrides) if args.overrides else ''}"
          f"{', trained on heard transcripts' if args.heard_training else ''}: "
          f"{args.folds}-fold CV by {args.by} on the training and validation clips (unseen sentences "
          f"{unseen}), held-out clips {words}; sign accuracy on the non-neutral held-out clips (%, n clips)\n")
    print("| seed | " + " | ".join(cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for seed, r in per_seed.items():
        print(f"| {seed} | " + " | ".join(f"{100 * r[c]['accuracy']:.1f} ({r[c]['clips']})" for c in cols) + " |")
    if len(per_seed) > 1:
        print("| mean | " + " | ".join(f"{100 * statistics.mean(r[c]['accuracy'] for r in per_seed.values()):.1f}"
                                      for c in cols) + " |")
    (work / "last.json").write_text(json.dumps({"overrides": args.overrides, "asr": asr_name,
                                                "heard_training": args.heard_training,
                                                "given_words": args.given_words,
                                                "per_seed": per_seed,
                                                "predictions": [dict(r, seed=s) for s, got in rows for r in got]},
                                               indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
