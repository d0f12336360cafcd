"""From stored features to model inputs: samples, batches, splits, feature specs and normalisation.

Two kinds of data feed training, evaluation and export with the same sample format:

* a cache folder made by ``extract`` (``entries/*.npz``, ``manifest.jsonl``, ``labels.csv``), read
  with :func:`sample_from_clip` per entry in the configured ``[align] mode``;
* an MMSA pickle (:mod:`pipeline.training.mmsa`), read with :func:`load_mmsa`.

A *sample* is a dict of numpy arrays for one clip::

    text (Tt, Dt) float32    audio (Ta, Da) float32    video (Tv, Dv) float32
    text_bert (3, Tt) int64  (ids / attention mask / segment ids, for BERT fine-tuning)
    text_mask, audio_mask, video_mask (T,) bool   True = real frame (absent = all real)
    label (float score or int class), id (str)    when known

Unaligned: each modality at its own rate; in a cache sample the video mask is the face mask (frames
without a face stay in place as zero rows and are masked, so time never shifts).  Aligned: audio and
video frames are averaged per word (:mod:`extractors.alignment`, faceless frames left out) and copied to
the word's tokens, so all three have the text's length; every mask is then the text mask, as in MMSA's
aligned files (special tokens carry zero audio/video).  A word with no frame of a modality inside it
takes the nearest frame only when that frame lies within one frame period of the word's midpoint
(video: the nearest frame *with a face*); otherwise its tokens get zeros.  Aligned samples therefore also
carry ``audio_valid`` / ``video_valid`` (T,) bool: True at tokens that hold measured data (a word with
frames), False at special tokens and at words without data.  Aligned MMSA pickles carry no word
information, so there a token is valid when it is real (text mask) and its row is not all zeros.

:func:`collate` pads a list of samples into tensors.  :class:`Normalizer` holds per-feature mean and
standard deviation of audio and video over the training split's frames that hold data (``*_valid``
where present, else ``*_mask``, else every frame); text features are BERT hidden states, already on a
common scale, and are left as they are (as MMSA does).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.extract.cache import ClipFeatures
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "video")
SPLITS = ("train", "valid", "test")
SENTIMENT_CLASSES = ("highly negative", "negative", "weakly negative", "neutral", "weakly positive",
                     "positive", "highly positive")
CONSTANT_STD = 1e-4      # a feature whose training std is below this is only centred (std taken as 1)
DEFAULT_AUDIO_RATE_HZ = 12.5
DEFAULT_FPS = 15.0


# ------------------------------------------------------------------------------------------ samples

def _period(rate: Any, times: np.ndarray, default_rate: float) -> float:
    """Seconds between frames: from the spec's rate, else from the time stamps, else the default."""
    try:
        if rate and float(rate) > 0:
            return 1.0 / float(rate)
    except (TypeError, ValueError):
        pass
    if times.size > 1:
        step = float(np.median(np.diff(np.sort(times))))
        if step > 0:
            return step
    return 1.0 / default_rate


def sample_from_clip(clip: "ClipFeatures", align_mode: str) -> dict[str, np.ndarray]:
    """Model inputs of one cache entry in ``align_mode`` ("aligned" | "unaligned"); see the module doc."""
    if align_mode not in ("aligned", "unaligned"):
        raise ValueError(f"align mode must be 'aligned' or 'unaligned', got {align_mode!r}")
    text = np.asarray(clip.text_features, dtype=np.float32)
    text_mask = np.asarray(clip.text_mask).astype(bool).reshape(-1)
    text_bert = np.stack([np.asarray(clip.text_ids, dtype=np.int64).reshape(-1),
                          np.asarray(clip.text_mask, dtype=np.int64).reshape(-1),
                          np.asarray(clip.text_segment, dtype=np.int64).reshape(-1)])
    audio = np.nan_to_num(np.asarray(clip.audio_features, dtype=np.float32))
    video = np.nan_to_num(np.asarray(clip.video_features, dtype=np.float32))
    face = np.asarray(clip.face_mask, dtype=bool).reshape(-1)
    if face.shape[0] != video.shape[0]:
        raise ValueError(f"{clip.clip_id}: {video.shape[0]} video frames but {face.shape[0]} face-mask values")
    sample: dict[str, Any] = {"text": text, "text_bert": text_bert, "text_mask": text_mask,
                              "id": str(clip.clip_id)}
    if align_mode == "unaligned":
        sample.update(audio=audio, audio_mask=np.ones(audio.shape[0], dtype=bool),
                      video=video, video_mask=face)
        return sample

    spec = (clip.meta or {}).get("spec", {}) or {}
    a_times = np.asarray(clip.audio_times, dtype=np.float64).reshape(-1)
    v_times = np.asarray(clip.video_times, dtype=np.float64).reshape(-1)
    index = np.asarray(clip.token_word_index).reshape(-1).astype(np.int64)
    for name, frames, times, period in (
            ("audio", audio, a_times, _period(spec.get("audio_rate_hz"), a_times, DEFAULT_AUDIO_RATE_HZ)),
            ("video", video[face], v_times[face], _period(spec.get("fps"), v_times, DEFAULT_FPS))):
        sample[name], sample[f"{name}_valid"] = _align_modality(frames, times, clip.word_start, clip.word_end,
                                                                index, period, text_mask)
        sample[f"{name}_mask"] = text_mask.copy()
    return sample


def _align_modality(frames: np.ndarray, times: np.ndarray, word_start: np.ndarray, word_end: np.ndarray,
                    token_word_index: np.ndarray, period: float, text_mask: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The word-aligned ``(Nt, D)`` view of one modality and its ``(Nt,)`` valid mask (see the module doc)."""
    from extractors.alignment import to_tokens, word_frames

    vectors, has = word_frames(frames, times, word_start, word_end, period, max_distance=period)
    tokens = to_tokens(vectors, token_word_index)
    real = token_word_index >= 0
    valid = np.zeros(token_word_index.shape[0], dtype=bool)
    valid[real] = has[token_word_index[real]]
    valid &= np.asarray(text_mask, dtype=bool)[:valid.shape[0]]
    return tokens, valid


def _pad(arrays: list[np.ndarray], masks: list[np.ndarray | None], dim: int) -> tuple[np.ndarray, np.ndarray]:
    length = max([1] + [a.shape[0] for a in arrays])
    x = np.zeros((len(arrays), length, dim), dtype=np.float32)
    m = np.zeros((len(arrays), length), dtype=bool)
    for i, (a, mask) in enumerate(zip(arrays, masks)):
        n = a.shape[0]
        x[i, :n] = a
        m[i, :n] = True if mask is None else np.asarray(mask, dtype=bool)[:n]
    return x, m


def collate(samples: list[dict]) -> dict[str, "torch.Tensor"]:
    """Pad samples into a batch: text/audio/video (B, T, D) float32 zero-padded, *_mask (B, T) bool
    (True = real frame), text_bert (B, 3, Tt) int64, labels (B,) when every sample has one, ids (list).

    Every padded length is at least 1 (a batch of clips without audio gets one masked zero frame).
    """
    import torch

    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for name in MODALITIES:
        arrays = [np.asarray(s[name], dtype=np.float32) for s in samples]
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1:
            raise ValueError(f"{name} features of different widths in one batch: {sorted(dims)}")
        x, m = _pad(arrays, [s.get(f"{name}_mask") for s in samples], dims.pop())
        batch[name] = torch.from_numpy(x)
        batch[f"{name}_mask"] = torch.from_numpy(m)
    if all("text_bert" in s for s in samples):
        length = batch["text"].shape[1]
        tb = np.zeros((len(samples), 3, length), dtype=np.int64)
        for i, s in enumerate(samples):
            ids = np.asarray(s["text_bert"], dtype=np.int64)[:, :length]
            tb[i, :, :ids.shape[1]] = ids
        batch["text_bert"] = torch.from_numpy(tb)
    if all("label" in s for s in samples):
        labels = [s["label"] for s in samples]
        if all(isinstance(v, (int, np.integer)) for v in labels):
            batch["labels"] = torch.tensor(labels, dtype=torch.int64)
        else:
            batch["labels"] = torch.tensor([float(v) for v in labels], dtype=torch.float32)
    batch["ids"] = [str(s.get("id", i)) for i, s in enumerate(samples)]
    return batch


def drop_modalities(batch: dict[str, Any], p: float, generator: "torch.Generator") -> "torch.Tensor":
    """Modality dropout (``train.modality_dropout``): with chance ``p`` per sample and modality, blank
    that modality in a collated ``batch`` (in place); returns the (B, 3) bool tensor of what was
    dropped, in :data:`MODALITIES` order.

    A blanked audio or video sample is all zeros (after the normaliser, the training mean: "no
    information"), its mask unchanged; blanked text is zeros too, and with BERT ids (``text_bert``)
    only the [CLS] token stays.  No sample loses all three: then one of them, chosen at random, is
    kept.  Training so cannot lean on one modality alone, because every modality is sometimes absent.
    """
    import torch

    n = len(batch["ids"])
    drop = torch.rand((n, len(MODALITIES)), generator=generator) < p
    everything = drop.all(dim=1)
    if everything.any():
        keep = torch.randint(0, len(MODALITIES), (int(everything.sum()),), generator=generator)
        rows = everything.nonzero(as_tuple=True)[0]
        drop[rows, keep] = False
    for k, name in enumerate(MODALITIES):
        rows = drop[:, k]
        if rows.any():
            batch[name][rows] = 0.0
            if name == "text" and "text_bert" in batch:
                batch["text_bert"][rows, :, 1:] = 0
    return drop


def swap_modalities(batch: dict[str, Any], p: float, generator: "torch.Generator",
                    modalities: Sequence[str] = ("audio", "video")) -> "torch.Tensor":
    """Modality swap (``train.modality_swap``): with chance ``p`` per sample and modality in
    ``modalities`` (audio, video; never text), give that sample the modality of another sample of the
    batch (features, mask and ``*_valid`` together), its label unchanged; in place.  Returns the
    (B, len(modalities)) bool tensor of what was swapped.

    The model so sees faces and voices that do not go with the words it hears, as happens in real
    recordings, and learns how far to trust them.  It fits data whose label is the words' sentiment
    (the demo corpus); where annotators judged the face too, a swapped face is a wrong example.
    """
    import torch

    n = len(batch["ids"])
    swapped = torch.zeros((n, len(modalities)), dtype=torch.bool)
    if n < 2:
        return swapped
    for k, name in enumerate(modalities):
        rows = torch.rand(n, generator=generator) < p
        # a donor for each sample: any other sample of the batch
        donor = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
        if not rows.any():
            continue
        for key in (name, f"{name}_mask", f"{name}_valid"):
            if key in batch:                  # the right side is a copy (advanced indexing) taken first
                batch[key][rows] = batch[key][donor[rows]]
        swapped[:, k] = rows
    return swapped


# ------------------------------------------------------------------------------------------ normaliser

class Normalizer:
    """Per-feature standardisation of audio and video with statistics of the training split, after an
    optional per-clip baseline.

    ``clip_baseline`` names the modalities (``train.clip_baseline``) whose features are first taken
    relative to the clip's own median over its frames that hold data: person-specific normalisation, as
    OpenFace does for action units.  A face that rests in a smile, or a voice that is simply high, then
    reads as that person's neutral, and what is left is how the clip departs from it.  It assumes that
    more than half of a clip's frames show the person at rest.  ``baseline_columns`` narrows it, per
    modality, to some features (``train.clip_baseline_features``): the voice's spectral shape (who is
    speaking, and the microphone) is taken relative to the clip, as cepstral mean normalisation does,
    while its pitch stays as spoken.

    ``apply`` returns a new sample: ``(x - baseline - mean) / std`` at frames that hold data, exactly 0
    at the others (masked frames, and in aligned samples the tokens whose ``*_valid`` is False: special
    tokens and words without data).
    """

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]], clip_baseline: Sequence[str] = (),
                 baseline_columns: dict[str, Sequence[int]] | None = None):
        self.stats = {k: (np.asarray(m, dtype=np.float32), np.asarray(s, dtype=np.float32))
                      for k, (m, s) in stats.items()}
        unknown = sorted(set(clip_baseline) - set(self.stats))
        if unknown:
            raise ValueError(f"clip_baseline names {unknown}, but the normaliser holds only {sorted(self.stats)}")
        self.clip_baseline = tuple(clip_baseline)
        self.baseline_columns = self._columns(baseline_columns or {}, self.clip_baseline,
                                              {k: m.shape[0] for k, (m, _) in self.stats.items()})

    @staticmethod
    def _columns(columns: dict[str, Sequence[int]], baseline: Sequence[str],
                 dims: dict[str, int]) -> dict[str, np.ndarray]:
        """``columns`` checked: only modalities with a baseline, indices within their dims."""
        out = {}
        for name, cols in columns.items():
            if name not in baseline:
                raise ValueError(f"clip baseline columns given for {name!r}, which has no clip_baseline")
            cols = np.unique(np.asarray(list(cols), dtype=np.int64))
            if dims.get(name) is not None and cols.size and (cols.min() < 0 or cols.max() >= dims[name]):
                raise ValueError(f"clip baseline columns of {name!r} outside its {dims[name]} features")
            out[name] = cols
        return out

    @staticmethod
    def data_rows(sample: dict, name: str, length: int) -> np.ndarray:
        """(length,) bool: the rows of modality ``name`` that hold data (``*_valid`` and ``*_mask``
        where present; every row otherwise)."""
        rows = np.ones(length, dtype=bool)
        for key in (f"{name}_mask", f"{name}_valid"):
            value = sample.get(key)
            if value is not None:
                value = np.asarray(value, dtype=bool).reshape(-1)[:length]
                rows[:value.shape[0]] &= value
                rows[value.shape[0]:] = False
        return rows

    @classmethod
    def _data(cls, sample: dict, name: str, baseline: bool, dtype: Any = np.float64,
              columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The features of ``name`` in ``sample`` (less the clip's median at its data rows when
        ``baseline``: in every feature, or only in ``columns`` when given) and those data rows."""
        x = np.asarray(sample[name], dtype=dtype)
        rows = cls.data_rows(sample, name, x.shape[0])
        if baseline and rows.any():
            if columns is None:
                x = x - np.median(x[rows], axis=0)
            elif columns.size:
                x = x.copy()
                x[:, columns] -= np.median(x[rows][:, columns], axis=0)
        return x, rows

    @classmethod
    def fit(cls, samples: Sequence[dict], modalities: Sequence[str] = ("audio", "video"),
            constant_std: float = CONSTANT_STD, clip_baseline: Sequence[str] = (),
            baseline_columns: dict[str, Sequence[int]] | None = None) -> "Normalizer":
        """Mean and std over the frames of ``samples`` that hold data (:meth:`data_rows`), after the
        per-clip baseline of the modalities in ``clip_baseline`` (of a modality in
        ``baseline_columns``, only those feature columns take it; the others stay as extracted).

        The std is the population one (ddof 0), computed around the mean (two passes, so a large
        offset does not eat the precision).  A feature whose std is below ``constant_std`` (constant
        in these samples) gets std 1: it is only centred, so a small variation elsewhere is not blown
        up by a tiny divisor.  A modality without any data frame gets mean 0 and std 1.
        """
        columns = cls._columns(baseline_columns or {}, clip_baseline, {})   # dims are checked by cls(...)

        def data(s: dict, name: str) -> np.ndarray:
            x, rows = cls._data(s, name, name in clip_baseline, columns=columns.get(name))
            return x[rows]

        stats = {}
        for name in modalities:
            dim = np.asarray(samples[0][name]).shape[1] if samples else 0
            total, count = np.zeros(dim), 0
            for s in samples:                       # pass 1: the mean (streamed: no copy of the split)
                x = data(s, name)
                total += x.sum(axis=0)
                count += x.shape[0]
            if count == 0:
                stats[name] = (np.zeros(dim), np.ones(dim))
                continue
            mean = total / count
            squares = np.zeros(dim)
            for s in samples:                       # pass 2: squared deviations from it
                squares += np.square(data(s, name) - mean).sum(axis=0)
            std = np.sqrt(squares / count)
            stats[name] = (mean, np.where(std < constant_std, 1.0, std))
        return cls(stats, clip_baseline=clip_baseline, baseline_columns=columns)

    def apply(self, sample: dict) -> dict:
        out = dict(sample)
        for name, (mean, std) in self.stats.items():
            x, rows = self._data(sample, name, name in self.clip_baseline, np.float32,
                                 self.baseline_columns.get(name))
            if x.shape[1] != mean.shape[0]:
                raise ValueError(f"{name} features have {x.shape[1]} dims, the normaliser {mean.shape[0]}")
            y = (x - mean) / std
            y[~rows] = 0.0
            out[name] = y.astype(np.float32)
        return out

    def state(self) -> dict[str, dict[str, Any]]:
        """Plain lists (checkpoint content loadable with ``torch.load(weights_only=True)``); a modality
        with a per-clip baseline also carries ``"clip_baseline": "median"``, and where the baseline is
        taken in some features only, their indices as ``"clip_baseline_columns"``."""
        out: dict[str, dict[str, Any]] = {}
        for k, (m, s) in self.stats.items():
            out[k] = {"mean": [float(v) for v in m], "std": [float(v) for v in s]}
            if k in self.clip_baseline:
                out[k]["clip_baseline"] = "median"
                if k in self.baseline_columns:
                    out[k]["clip_baseline_columns"] = [int(c) for c in self.baseline_columns[k]]
        return out

    @classmethod
    def from_state(cls, state: dict[str, dict[str, Any]]) -> "Normalizer":
        baseline = [k for k, v in state.items() if v.get("clip_baseline")]
        unknown = {v["clip_baseline"] for v in state.values() if v.get("clip_baseline")} - {"median"}
        if unknown:
            raise ValueError(f"unknown clip baseline {sorted(unknown)} in the normaliser's state (this version "
                             "knows 'median')")
        return cls({k: (np.asarray(v["mean"]), np.asarray(v["std"])) for k, v in state.items()},
                   clip_baseline=baseline,
                   baseline_columns={k: v["clip_baseline_columns"] for k, v in state.items()
                                     if v.get("clip_baseline") and "clip_baseline_columns" in v})


def baseline_columns(features: dict[str, Sequence[str]], spec: dict[str, Any]) -> dict[str, list[int]]:
    """``train.clip_baseline_features`` as column indices: per modality, the features whose names (the
    spec's ``audio_names`` / ``video_names``) begin with one of the given prefixes.  UserError when the
    data names no features (MMSA pickles) or a prefix matches none, so a typo is not a silent no-op."""
    out: dict[str, list[int]] = {}
    for name, prefixes in features.items():
        names = list(spec.get(f"{name}_names") or [])
        if not names:
            raise UserError(f"train.clip_baseline_features names {name} features, but these {spec.get('source')} "
                            f"data do not name their {name} features (extracted caches do)", exit_code=2)
        unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unmatched:
            raise UserError(f"train.clip_baseline_features: no {name} feature begins with {unmatched} "
                            f"(the features: {', '.join(names)})", exit_code=2)
        out[name] = [i for i, n in enumerate(names) if any(n.startswith(p) for p in prefixes)]
    return out


# ------------------------------------------------------------------------------------------ labels

def label_scheme(task: str, n_classes: int) -> dict[str, Any]:
    """What the labels mean: regression scores in [-3, 3] read as 7 classes, or class indices."""
    if task == "regression":
        return {"task": "regression", "range": [-3.0, 3.0], "n_classes": 7,
                "class_names": list(SENTIMENT_CLASSES),
                "class_rule": "round half to even of the score clipped to [-3, 3]; -3 = highly negative"}
    return {"task": task, "n_classes": int(n_classes), "class_names": [str(i) for i in range(n_classes)]}


def score_class(score: float) -> str:
    """The 7-class sentiment name of a score (round half to even of the clipped score)."""
    return SENTIMENT_CLASSES[int(np.round(np.clip(score, -3.0, 3.0))) + 3]


def _label_value(value: float, task: str, n_classes: int, where: str) -> float | int:
    if task == "regression":
        return float(value)
    if value != round(value) or not 0 <= value < n_classes:
        raise UserError(f"{where}: label {value!r} is not a class index in 0..{n_classes - 1} "
                        f"(model.task={task!r}; scores need model.task=\"regression\")", exit_code=2)
    return int(value)


# ------------------------------------------------------------------------------------------ splits

def split_by_group(groups: Sequence[str], fractions: Sequence[float], seed: int) -> list[str]:
    """A split name per item such that all items of one group share a split; seeded and deterministic.

    Groups are shuffled with ``seed`` and dealt out in order: a group goes to the split whose share of
    the cumulative fractions holds the middle of the group's items.  A split with a positive fraction
    that ends up empty takes a group from the largest split when that one has more than one group.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise UserError(f"train.split must be three non-negative fractions, got {list(fractions)}", exit_code=2)
    fr = fr / fr.sum()
    names = sorted(set(groups))
    sizes = {g: 0 for g in names}
    for g in groups:
        sizes[g] += 1
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    bounds = np.cumsum(fr) * len(groups)
    assign: dict[str, int] = {}
    done = 0
    for g in order:
        middle = done + sizes[g] / 2.0
        assign[g] = int(min(np.searchsorted(bounds, middle, side="right"), 2))
        done += sizes[g]
    for k in range(3):
        if fr[k] > 0 and not any(v == k for v in assign.values()):
            per = [[g for g in order if assign[g] == j] for j in range(3)]
            donor = max(range(3), key=lambda j: (len(per[j]), -j))
            if len(per[donor]) > 1:
                assign[per[donor][-1]] = k
    return [SPLITS[assign[g]] for g in groups]


# ------------------------------------------------------------------------------------------ specs

def clip_spec(clip: "ClipFeatures", align_mode: str) -> dict[str, Any]:
    """The feature spec of one cache entry (see :func:`feature_spec`)."""
    stored = dict((clip.meta or {}).get("spec") or {})
    spec: dict[str, Any] = {"source": "cache", "align": align_mode}
    if stored:
        spec.update(stored)
    else:   # an entry without a stored spec: describe what it holds
        spec.update(text_dim=int(np.asarray(clip.text_features).shape[1]),
                    audio_dim=int(np.asarray(clip.audio_features).shape[1]),
                    video_dim=int(np.asarray(clip.video_features).shape[1]),
                    audio_names=list(clip.audio_names), video_names=list(clip.video_names))
    return spec


def feature_spec(clips: Iterable["ClipFeatures"], align_mode: str) -> dict[str, Any]:
    """What the features of cache entries look like: the extractors' spec stored in each entry
    (text_model, text_dim, audio_dim, video_dim, audio_names, video_names, face_backend, fps,
    audio_rate_hz) plus ``source`` "cache" and ``align``.  Entries that disagree raise UserError."""
    spec: dict[str, Any] | None = None
    first = None
    for clip in clips:
        s = clip_spec(clip, align_mode)
        if spec is None:
            spec, first = s, clip.clip_id
        elif s != spec:
            raise UserError(f"cache entries were made with different extraction settings: {first} has "
                            f"{spec_difference_text(spec, s)}; {clip.clip_id} differs (re-run extract into an "
                            f"empty folder)", exit_code=2)
    if spec is None:
        raise UserError("no cache entries to describe", exit_code=2)
    return spec


def mmsa_spec(text_dim: int, audio_dim: int, video_dim: int, aligned: bool) -> dict[str, Any]:
    """The feature spec of an MMSA pickle."""
    return {"source": "mmsa", "text_dim": int(text_dim), "audio_dim": int(audio_dim),
            "video_dim": int(video_dim), "align": "aligned" if aligned else "unaligned"}


def spec_difference_text(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``key: a != b`` for every differing key, '; '-joined (long lists shortened)."""
    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 80 else text[:77] + "..."

    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {short(a.get(k))} != {short(b.get(k))}" for k in keys if a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------------ data sets

@dataclass
class DataBundle:
    """Samples of every split plus what describes them."""

    source: str                                    # "cache" | "mmsa"
    path: Path
    align_mode: str
    spec: dict[str, Any]
    splits: dict[str, list[dict]]
    extract_settings: dict[str, Any] | None = None  # the cache entries' extraction settings
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def dims(self) -> tuple[int, int, int]:
        for samples in self.splits.values():
            if samples:
                s = samples[0]
                return tuple(int(np.asarray(s[m]).shape[1]) for m in MODALITIES)  # type: ignore[return-value]
        raise UserError(f"{self.path}: no samples", exit_code=2)

    def counts(self) -> dict[str, int]:
        return {k: len(self.splits.get(k, [])) for k in SPLITS}


class SampleDataset:
    """A torch-style map dataset over samples, normalised on access (keeps one copy in memory)."""

    def __init__(self, samples: Sequence[dict], normalizer: Normalizer | None = None):
        self.samples = list(samples)
        self.normalizer = normalizer

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return self.normalizer.apply(s) if self.normalizer is not None else s


def load_data(path: Path, cfg: "PipelineConfig") -> DataBundle:
    """A cache folder or an MMSA pickle at ``path``, read with ``cfg``'s align mode, task and split."""
    path = Path(path)
    if path.is_dir():
        return load_cache(path, cfg)
    if path.is_file():
        return load_mmsa(path, cfg)
    raise UserError(f"{path}: no such data (expected a cache folder from 'dhmd-pipeline extract' or an "
                    f"MMSA .pkl file)", exit_code=2)


def _entry_from_record(cache_dir: Path, rec: dict[str, Any]) -> Path | None:
    """The entry file a manifest record names (field ``entry``: a path; or ``key``)."""
    for name in ("entry", "entry_path", "entry_file"):
        value = rec.get(name)
        if value:
            p = Path(value)
            for cand in (p, cache_dir / p, cache_dir / "entries" / p.name):
                if cand.is_file():
                    return cand
    for name in ("key", "entry_key"):
        value = rec.get(name)
        if value and (cache_dir / "entries" / f"{value}.npz").is_file():
            return cache_dir / "entries" / f"{value}.npz"
    return None


def find_entries(cache_dir: Path) -> dict[str, Path]:
    """clip_id -> entry file: from the manifest's records when they name their entries, else by
    reading the clip id in every ``entries/*.npz`` (the newest entry wins for a clip id)."""
    import json

    from pipeline.extract.cache import read_manifest

    cache_dir = Path(cache_dir)
    found: dict[str, Path] = {}
    records = read_manifest(cache_dir)
    unresolved = 0
    for rec in records:
        if rec.get("status") not in (None, "ok", "cached"):
            continue
        entry = _entry_from_record(cache_dir, rec)
        if entry is None or not rec.get("clip_id"):
            unresolved += 1
            continue
        found[str(rec["clip_id"])] = entry
    if found and not unresolved:
        return found
    scanned: dict[str, tuple[float, Path]] = {}
    for p in sorted((cache_dir / "entries").glob("*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                clip_id = str(json.loads(str(z["meta_json"]))["clip_id"])
        except Exception as e:  # noqa: BLE001 - a damaged entry is reported and skipped
            log.warning("%s: unreadable cache entry skipped (%s)", p, e)
            continue
        mtime = p.stat().st_mtime
        if clip_id not in scanned or mtime > scanned[clip_id][0]:
            scanned[clip_id] = (mtime, p)
    for clip_id, (_, p) in scanned.items():
        found.setdefault(clip_id, p)
    return found


def _extract_settings(clip: "ClipFeatures") -> dict[str, Any] | None:
    settings = (clip.meta or {}).get("settings")
    if not isinstance(settings, dict):
        return None
    return {k: v for k, v in settings.items() if k not in ("clip_id", "label_text", "sidecar")}


def source_groups(clip_ids: Sequence[str], video_ids: Sequence[str | None],
                  sources: Sequence[str | None]) -> list[str]:
    """The source-video group of each clip, for a split that keeps a video's clips together.

    * the labels' ``video_id`` when given;
    * else the clip file's folder when clips sit in per-video subfolders (MMSA-FET's
      ``Raw/<video_id>/<clip_id>.mp4``): a clip whose folder lies below the folder common to all the
      clips' source paths (the cache entry's ``source``, or the manifest's ``path``) is grouped with
      the other clips of that folder;
    * else the clip alone (the clip lies directly in that common folder, all clips share one folder,
      or its source path is unknown), with a warning that those clips are split per clip.
    """
    import os
    from pathlib import PurePath

    parents = {c: str(PurePath(os.path.normpath(src)).parent) for c, v, src in zip(clip_ids, video_ids, sources)
               if not v and src}
    try:
        root = os.path.commonpath(list(parents.values())) if parents else None
    except ValueError:   # absolute and relative paths mixed: no common folder
        root = None
    groups: list[str] = []
    by_folder = per_clip = 0
    for c, v in zip(clip_ids, video_ids):
        if v:
            groups.append(f"video:{v}")
        elif c in parents and len(set(parents.values())) > 1 and parents[c] != root:
            groups.append(f"folder:{parents[c]}")
            by_folder += 1
        else:
            groups.append(f"clip:{c}")
            per_clip += 1
    if by_folder:
        log.info("%d clips without a video_id are grouped by their source folder (%d folders) for the split",
                 by_folder, len({g for g in groups if g.startswith("folder:")}))
    if per_clip:
        log.warning("%d clips have no video_id in labels.csv and do not sit in per-video subfolders: they are "
                    "split per clip, so clips of one source video can land in different splits (add a "
                    "video_id column to the labels, or a split column)", per_clip)
    return groups


def load_cache(cache_dir: Path, cfg: "PipelineConfig") -> DataBundle:
    """The labelled clips of a cache folder, split by labels.csv, else by source video (seeded; the
    source video is the labels' video_id or the clip's folder, see :func:`source_groups`)."""
    from pipeline.extract.cache import load_entry, read_manifest
    from pipeline.extract.labels import read_labels

    cache_dir = Path(cache_dir)
    labels_path = cache_dir / "labels.csv"
    if not labels_path.is_file():
        raise UserError(f"{cache_dir}: no labels.csv in the cache folder; run 'dhmd-pipeline extract "
                        f"VIDEOS --out {cache_dir} --labels LABELS.csv' to train on it", exit_code=2)
    rows = {r["clip_id"]: r for r in read_labels(labels_path)}
    entries = find_entries(cache_dir)
    if not entries:
        raise UserError(f"{cache_dir}: no cache entries (entries/*.npz); run 'dhmd-pipeline extract' first",
                        exit_code=2)
    unlabelled = sorted(set(entries) - set(rows))
    missing = sorted(set(rows) - set(entries))
    if unlabelled:
        log.warning("%d clips without a label skipped (e.g. %s)", len(unlabelled), unlabelled[0])
    if missing:
        log.warning("%d labelled clips have no cache entry (failed or not extracted; e.g. %s)",
                    len(missing), missing[0])
    ids = sorted(set(entries) & set(rows))
    if not ids:
        raise UserError(f"{cache_dir}: none of the {len(entries)} extracted clips has a label in "
                        f"{labels_path}", exit_code=2)

    mode, task, n_classes = cfg.align.mode, cfg.model.task, cfg.model.n_classes
    samples: dict[str, dict] = {}
    sources: dict[str, str] = {}
    spec: dict[str, Any] | None = None
    settings = None
    first = None
    from tqdm import tqdm

    for clip_id in tqdm(ids, desc="load cache", unit="clip", disable=None, leave=False):
        try:
            clip = load_entry(entries[clip_id])
        except Exception as e:  # noqa: BLE001 - name the file
            raise UserError(f"{entries[clip_id]}: cannot read cache entry ({e}); run extract again",
                            exit_code=1) from None
        s = clip_spec(clip, mode)
        if spec is None:
            spec, first, settings = s, clip_id, _extract_settings(clip)
        elif s != spec:
            raise UserError(f"{cache_dir}: entries made with different extraction settings ({first} vs "
                            f"{clip_id}: {spec_difference_text(spec, s)}); extract into one folder per "
                            f"setting", exit_code=2)
        sample = sample_from_clip(clip, mode)
        sample["id"] = clip_id
        sample["raw_text"] = clip.transcript
        sample["video_id"] = rows[clip_id].get("video_id")
        sources[clip_id] = clip.source
        sample["label"] = _label_value(rows[clip_id]["label"], task, n_classes, f"{labels_path} ({clip_id})")
        samples[clip_id] = sample

    given = {i: rows[i].get("split") for i in ids}
    without = [i for i in ids if not given[i]]
    if without:
        if len(without) < len(ids):
            log.warning("%d of %d clips have no split in labels.csv: splitting those by source video",
                        len(without), len(ids))
        manifest_paths = {str(r.get("clip_id")): r.get("path") for r in read_manifest(cache_dir)}
        groups = source_groups(without, [rows[i].get("video_id") for i in without],
                               [sources[i] or manifest_paths.get(i) for i in without])
        for i, name in zip(without, split_by_group(groups, cfg.train.split, cfg.train.split_seed)):
            given[i] = name
    splits = {k: [samples[i] for i in ids if given[i] == k] for k in SPLITS}
    assert spec is not None
    return DataBundle(source="cache", path=cache_dir, align_mode=mode, spec=spec, splits=splits,
                      extract_settings=settings,
                      skipped={"unlabelled": len(unlabelled), "not_extracted": len(missing)})


def _trim(mask: np.ndarray) -> int:
    """Length up to the last real frame (at least 1 when any frame exists)."""
    real = np.flatnonzero(mask)
    return int(real[-1]) + 1 if real.size else min(1, mask.shape[0])


def mmsa_video_id(sample_id: str) -> str | None:
    """The source video of an MMSA id ``video$_$clip`` (None for an id without ``$_$``)."""
    video, sep, _ = str(sample_id).partition("$_$")
    return video if sep and video else None


def _fill_missing_splits(splits: dict[str, list[dict]], path: Path, cfg: "PipelineConfig") -> None:
    """Carve the valid / test splits that a pickle lacks (absent or empty) out of its train split, by
    source video (the video part of ``video$_$clip`` ids; per sample when the ids have none) with the
    seeded :func:`split_by_group` of ``train.split`` / ``train.split_seed`` (a split whose fraction is 0
    stays empty).  Given splits are kept."""
    share = dict(zip(SPLITS, cfg.train.split))
    missing = [k for k in ("valid", "test") if not splits[k] and share[k] > 0]
    pool = splits["train"]
    if not missing or not pool:
        return
    fractions = [share[k] if (k == "train" or k in missing) else 0.0 for k in SPLITS]
    videos = [mmsa_video_id(s["id"]) for s in pool]
    groups = [f"video:{v}" if v else f"sample:{s['id']}" for v, s in zip(videos, pool)]
    names = split_by_group(groups, fractions, cfg.train.split_seed)
    for k in SPLITS:
        splits[k] = [s for s, n in zip(pool, names) if n == k] if k in ("train", *missing) else splits[k]
    how = ("by source video (the video part of the 'video$_$clip' ids)" if all(videos) else
           f"by source video where the ids name one, per sample for {sum(v is None for v in videos)} ids "
           f"without '$_$'")
    log.warning("%s has no %s split: taking %s from its train split %s with train.split = %s, "
                "train.split_seed = %d (train %d, %s)", path, " / ".join(missing), " and ".join(missing), how,
                list(cfg.train.split), cfg.train.split_seed, len(splits["train"]),
                ", ".join(f"{k} {len(splits[k])}" for k in missing))


def load_mmsa(path: Path, cfg: "PipelineConfig") -> DataBundle:
    """The splits of an MMSA pickle as samples (see :mod:`pipeline.training.mmsa`); a missing valid or test
    split is taken from the train split by source video (:func:`_fill_missing_splits`)."""
    from pipeline.training.mmsa import clean, is_aligned, read_pickle, split_labels

    path = Path(path)
    data = read_pickle(path)
    aligned = is_aligned(data)
    mode = "aligned" if aligned else "unaligned"
    if mode != cfg.align.mode:   # a pickle's alignment is fixed: warn when aligned was asked for
        log.log(logging.WARNING if cfg.align.mode == "aligned" else logging.INFO,
                "%s is an %s MMSA file: it is used as such ([align] mode = %r applies to caches)", path, mode,
                cfg.align.mode)
    finetune = cfg.model.finetune_bert
    splits: dict[str, list[dict]] = {k: [] for k in SPLITS}
    dims: tuple[int, int, int] | None = None
    for name, split in data.items():
        where = f"{path} [{name}]"
        labels = split_labels(split, cfg.model.task, where)
        if cfg.model.task != "regression" and labels.size and labels.max() >= cfg.model.n_classes:
            raise UserError(f"{where}: class label {int(labels.max())} but model.n_classes = "
                            f"{cfg.model.n_classes}", exit_code=2)
        audio, vision = clean(split["audio"]), clean(split["vision"])
        text = clean(split["text"]) if "text" in split else None
        bert = np.asarray(split["text_bert"]).astype(np.int64) if "text_bert" in split else None
        if text is None and not finetune:
            raise UserError(f"{where}: no 'text' features (only text_bert ids); set model.finetune_bert=true "
                            f"to train BERT on the ids", exit_code=2)
        if bert is None and finetune:
            raise UserError(f"{where}: model.finetune_bert needs 'text_bert' ids, which this pickle lacks",
                            exit_code=2)
        n = labels.shape[0]
        if text is None:   # a one-wide zero placeholder: the model's BERT reads the ids instead
            text = np.zeros((n, bert.shape[2], 1), dtype=np.float32)
        t_len = text.shape[1]
        for arr, key in ((text, "text"), (audio, "audio"), (vision, "vision")):
            if arr.shape[0] != n:
                raise UserError(f"{where}: {key} has {arr.shape[0]} rows but there are {n} labels", exit_code=2)
        d = (text.shape[2], audio.shape[2], vision.shape[2])
        if dims is not None and d != dims:
            raise UserError(f"{path}: splits have different feature sizes {dims} and {d}", exit_code=2)
        dims = d
        a_len = np.asarray(split.get("audio_lengths", np.full(n, audio.shape[1]))).astype(np.int64)
        v_len = np.asarray(split.get("vision_lengths", np.full(n, vision.shape[1]))).astype(np.int64)
        ids = split.get("id")
        raw = split.get("raw_text")
        for i in range(n):
            t_mask = bert[i, 1] > 0 if bert is not None else np.ones(t_len, dtype=bool)
            lt = _trim(t_mask)
            s: dict[str, Any] = {"text": text[i, :lt], "text_mask": t_mask[:lt].copy(),
                                 "id": str(ids[i]) if ids is not None else f"{name}-{i}",
                                 "label": labels[i].item()}
            if raw is not None:
                s["raw_text"] = str(raw[i])
            if bert is not None:
                s["text_bert"] = bert[i, :, :lt]
            if aligned:   # zero rows (special tokens, words without data) hold no data
                a, v = audio[i, :lt], vision[i, :lt]
                s.update(audio=a, audio_mask=s["text_mask"], audio_valid=s["text_mask"] & a.any(axis=1),
                         video=v, video_mask=s["text_mask"], video_valid=s["text_mask"] & v.any(axis=1))
            else:
                la = int(np.clip(a_len[i], 0, audio.shape[1]))
                lv = int(np.clip(v_len[i], 0, vision.shape[1]))
                s.update(audio=audio[i, :la], video=vision[i, :lv])
            splits[name].append(s)
    assert dims is not None
    _fill_missing_splits(splits, path, cfg)
    spec = mmsa_spec(*dims, aligned)
    if finetune:
        spec["text_input"] = "text_bert"
    return DataBundle(source="mmsa", path=path, align_mode=mode, spec=spec, splits=splits)

