"""One vocabulary of facial action units (FACS) for every face backend.

A feature column called ``AU12`` means the lip corner puller whichever backend produced it: the
MediaPipe backend derives it from learned blendshape coefficients
(:data:`extractors.face_mediapipe.AU_FROM_BLENDSHAPES`), the py-feat backend reports its own AU
model's prediction under the same name.  Names are ``AU`` plus the two-digit FACS number; what each
number means is :data:`FACS_AUS`.  Both backends give intensities in [0, 1] (MediaPipe: blendshape
coefficients; py-feat: its AU model's output), but they are different models: a checkpoint trained
on one backend's features refuses the other's (the feature spec holds ``face_backend``).
"""
from __future__ import annotations

import re

# FACS action units named by either backend (Ekman, Friesen & Hager 2002).
FACS_AUS: dict[str, str] = {
    "AU01": "inner brow raiser",
    "AU02": "outer brow raiser",
    "AU04": "brow lowerer",
    "AU05": "upper lid raiser",
    "AU06": "cheek raiser",
    "AU07": "lid tightener",
    "AU09": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU11": "nasolabial deepener",
    "AU12": "lip corner puller",
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU17": "chin raiser",
    "AU18": "lip pucker",
    "AU20": "lip stretcher",
    "AU22": "lip funneler",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU28": "lip suck",
    "AU43": "eyes closed",
    "AU45": "blink",
}

_AU_COLUMN = re.compile(r"^AU\d\d$")


def is_au_name(name: str) -> bool:
    """True for a column named in the shared vocabulary (``AU`` + two digits, a known FACS unit)."""
    return bool(_AU_COLUMN.match(name)) and name in FACS_AUS


def au_columns(names: list[str]) -> list[str]:
    """The AU columns of a feature-name list, in their order."""
    return [n for n in names if is_au_name(n)]
