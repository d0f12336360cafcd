"""Read a labels file, match clips to its rows, and store it normalised next to the cache.

Two layouts are accepted (the header row decides which):

* ours: ``clip_id,label`` plus optional ``text``, ``split`` and ``video_id`` columns, any order;
* MMSA-FET's ``label.csv``: ``video_id,clip_id,text,label,...,mode``.  There ``clip_id`` numbers
  the clip within its source video, so the clip's id is ``f"{video_id}_{clip_id}"`` and the split
  comes from ``mode``.  Its folder layout ``Raw/<video_id>/<clip_id>.mp4`` is matched through the
  clip file's parent folder name and stem (:func:`match_row`).

Every row becomes ``{"clip_id", "label" (float), "text" (str | None), "split" (str | None),
"video_id" (str | None)}``.  Splits are normalised to ``train``/``valid``/``test``.  Problems (missing
file, missing column, bad number, duplicate id, unknown split) raise :class:`UserError` with exit
status 2 that names the file and line, because they are the user's input to fix.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write_text
from pipeline.errors import UserError

LABEL_COLUMNS = ("clip_id", "label", "text", "split", "video_id")
_SPLITS = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
           "validation": "valid", "dev": "valid", "test": "test", "testing": "test"}
_BOOLS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


def _cell(row: dict[str, str | None], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _label(value: str | None, where: str) -> float:
    if value is None:
        raise UserError(f"{where}: the label is empty (every row needs a numeric label)", exit_code=2)
    if value.lower() in _BOOLS:
        return _BOOLS[value.lower()]
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: label {value!r} is not a number", exit_code=2) from None
    if not math.isfinite(number):
        raise UserError(f"{where}: label {value!r} is not a finite number", exit_code=2)
    return number


def _split(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    norm = _SPLITS.get(value.lower())
    if norm is None:
        raise UserError(f"{where}: split {value!r} is not one of train, valid, test", exit_code=2)
    return norm


def _id_part(value: str | None) -> str | None:
    """An id cell as written; '12.0' (a spreadsheet's number) becomes '12'."""
    if value is not None and value.endswith(".0") and value[:-2].isdigit():
        return value[:-2]
    return value


def read_labels(path: Path) -> list[dict[str, Any]]:
    """The rows of a labels CSV (ours or MMSA-FET's label.csv), normalised; see the module doc."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: labels file not found", exit_code=2) from None
    except IsADirectoryError:
        raise UserError(f"{path}: labels file is a directory", exit_code=2) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read labels file ({e.strerror or e})", exit_code=2) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: labels file is not UTF-8 text", exit_code=2) from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "clip_id" not in header or "label" not in header:
        raise UserError(f"{path}: a labels file needs the columns clip_id and label "
                        f"(found: {', '.join(h for h in header if h) or 'no header'})", exit_code=2)
    mmsa = "mode" in header and "video_id" in header and "split" not in header

    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(reader, start=2):
        if all(not (v or "").strip() for k, v in row.items() if k is not None):
            continue                                    # blank line
        where = f"{path}:{line_no}"
        clip = _id_part(_cell(row, "clip_id"))
        video = _id_part(_cell(row, "video_id"))
        if clip is None:
            raise UserError(f"{where}: clip_id is empty", exit_code=2)
        if mmsa:
            if video is None:
                raise UserError(f"{where}: video_id is empty (MMSA-FET label.csv)", exit_code=2)
            clip = f"{video}_{clip}"
        if clip in seen:
            raise UserError(f"{where}: clip_id {clip!r} also appears on line {seen[clip]}", exit_code=2)
        seen[clip] = line_no
        rows.append({"clip_id": clip,
                     "label": _label(_cell(row, "label"), where),
                     "text": _cell(row, "text"),
                     "split": _split(_cell(row, "mode" if mmsa else "split"), where),
                     "video_id": video})
    if not rows:
        raise UserError(f"{path}: labels file has no rows", exit_code=2)
    return rows


def write_labels(rows: list[dict[str, Any]], path: Path) -> None:
    """Store normalised rows as CSV (columns clip_id,label,text,split,video_id), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (repr(r[c]) if c == "label" else r[c]) for c in LABEL_COLUMNS])
    atomic_write_text(Path(path), buf.getvalue())


def match_row(clip: Path, by_id: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The labels row for a clip file: by its stem, else by ``<parent folder>_<stem>`` (MMSA-FET)."""
    clip = Path(clip)
    row = by_id.get(clip.stem)
    if row is None and clip.parent.name:
        row = by_id.get(f"{clip.parent.name}_{clip.stem}")
    return row
