"""What a Hugging Face model folder holds, for :mod:`extractors.bert`; without importing torch.

:func:`supported` says whether :class:`extractors.bert.BertEncoder` reads a folder; :func:`fetch`
downloads a hub model's config, tokenizer and weights (huggingface_hub's cache, the one
transformers uses).  Cheap, so the cache key can ask (:func:`extractors.text.text_versions`).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")   # hidden_act values BertEncoder implements


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` (empty dict when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def weight_file(folder: Path) -> Path | None:
    """The folder's weights (safetensors first), or None."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def supported(folder: Path) -> bool:
    """Whether :class:`extractors.bert.BertEncoder` reads this folder: ``config.json`` with ``model_type``
    "bert", absolute positions and an activation it implements, ``tokenizer.json`` and weights."""
    cfg = read_config(folder)
    return (cfg.get("model_type") == "bert" and cfg.get("position_embedding_type", "absolute") == "absolute"
            and cfg.get("hidden_act", "gelu") in ACTIVATIONS and (Path(folder) / "tokenizer.json").is_file()
            and weight_file(folder) is not None)


def fetch(name: str) -> Path:
    """Download a hub model's config, tokenizer and weights (once; cached) and return its folder.

    Raises whatever huggingface_hub raises when the name cannot be fetched (offline, unknown name);
    the caller turns it into one readable line.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    config = Path(hf_hub_download(name, "config.json"))
    for optional in ("tokenizer.json", "tokenizer_config.json"):
        try:
            hf_hub_download(name, optional)
        except EntryNotFoundError:
            pass
    if read_config(config.parent).get("model_type") == "bert":
        for weights in WEIGHT_FILES:
            try:
                hf_hub_download(name, weights)
                break
            except EntryNotFoundError:
                continue
    return config.parent


@functools.lru_cache(maxsize=64)
def supported_folder(target: str) -> bool | None:
    """:func:`supported` for a folder; None when ``target`` is not a folder (a hub name not fetched).
    Remembered per process: the cache key asks it for every clip of a run."""
    return supported(Path(target)) if Path(target).expanduser().is_dir() else None
