"""The demo model follows the words, not the face: trained on clips whose face contradicts the words in
a third of them (and is neutral in another third), with modality dropout, it predicts the sign of the
words on clips over a face it never saw, unwarped (the astronaut smiles a little of itself)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo import corpus as dc

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


def _specs() -> list[dc.ClipSpec]:
    pos = [s for s in dc.SENTENCES if s.score >= 2][:3]
    neg = [s for s in dc.SENTENCES if s.score <= -2][:3]
    rng = np.random.default_rng(5)
    specs = []
    n = 0
    for sent in pos + neg:
        sid = dc.sentence_id(sent)
        # train: the face agrees, is neutral, contradicts (one clip each, three voices, three people);
        # valid: agrees; test: a held-out voice over the held-out face, not warped at all
        plan = [("train", v, c) for v, c in zip(dc.TRAIN_VOICES[:3], ("agree", "neutral", "contradict"))]
        plan += [("valid", dc.TRAIN_VOICES[3], "agree"), ("test", dc.TEST_VOICES[n % 2], "neutral")]
        for split, voice, cond in plan:
            test = split == "test"
            expression = {"agree": 0.8, "neutral": 0.0, "contradict": -0.8}[cond] * np.sign(sent.score)
            specs.append(dc.ClipSpec(
                clip_id=f"{sid}-{voice.tag}", video_id=sid, text=sent.text, score=sent.score, split=split,
                voice=voice.name, rate=voice.rate, pitch=voice.pitch, expression=float(expression),
                seed=int(rng.integers(1 << 30)), fps=8.0,
                identity=dc.TEST_IDENTITIES[0] if test else dc.TRAIN_IDENTITIES[n % len(dc.TRAIN_IDENTITIES)],
                condition=cond, look=dc.Look() if test else dc.random_look(rng)))
            n += 1
    return specs


def test_sign_follows_the_words_over_an_unseen_unwarped_face(tmp_path):
    from pipeline.config import PipelineConfig, with_overrides
    from pipeline.demo.run import demo_overrides, held_out_predictions
    from pipeline.extract.batch import run_extract
    from pipeline.inference.predict import Predictor
    from pipeline.training.train import run_train

    specs = _specs()
    train = [s for s in specs if s.split == "train"]
    assert sum(s.condition == "contradict" for s in train) == len(train) // 3
    assert {s.identity for s in specs if s.split == "test"}.isdisjoint({s.identity for s in train})
    corpus, cache, runs = tmp_path / "corpus", tmp_path / "cache", tmp_path / "runs"
    # every split carries its transcript: this test is about the face, not speech recognition
    labels = dc.build_corpus(corpus, specs, workers=2, with_text=dc.SPLITS)
    cfg = PipelineConfig()
    cfg = with_overrides(cfg, {**demo_overrides(cfg, epochs=25), "extract.fps": 4.0, "train.seed": 1})
    assert cfg.train.modality_dropout > 0
    assert run_extract(cfg, videos_dir=corpus, out=cache, labels=labels, workers=2) == 0
    assert run_train(cfg, data=cache, out=runs, preset=None, resume=None, seeds=None) == 0
    rows = held_out_predictions(Predictor(runs / "best.pt", device="cpu"), cache, specs)
    assert len(rows) == 6
    for r in rows:
        assert r["identity"] == dc.TEST_IDENTITIES[0] and r["expression"] == 0.0
        # Clearly on the words' side, not only by sign.  A model trained the old way on these same
        # clips (every training face following the words, no modality dropout) also gets the signs,
        # but the astronaut's own smile pulls its negative sentences up to -0.5 ... -0.7 (video head
        # +2.2); this one gives -2.9 and +1.7 ... +1.8 (measured when the test was written).
        assert np.sign(r["score"]) == np.sign(r["label"]) and abs(r["score"]) >= 1.0, \
            (r["text"], r["score"], r["unimodal"])
    # the words' head is what carries it: its sign is right on every clip
    assert all(np.sign(r["unimodal"]["text"]) == np.sign(r["label"]) for r in rows)
