"""pipeline.extract.labels: our labels CSV, MMSA-FET's label.csv, clip matching, normalised output."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.extract.labels import match_row, read_labels, write_labels


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_our_layout_with_optional_columns(tmp_path):
    p = _write(tmp_path / "l.csv", "\ufeffclip_id,label,text,split\n"
                                   "a,1.5,Hello there,train\n"
                                   "b,-2,,VAL\n"
                                   "\n"
                                   "c,0,\"yes, a comma\",\n")
    rows = read_labels(p)
    assert [r["clip_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == {"clip_id": "a", "label": 1.5, "text": "Hello there", "split": "train", "video_id": None}
    assert rows[1]["label"] == -2.0 and rows[1]["text"] is None and rows[1]["split"] == "valid"
    assert rows[2]["text"] == "yes, a comma" and rows[2]["split"] is None


def test_minimal_layout_and_column_order(tmp_path):
    rows = read_labels(_write(tmp_path / "l.csv", "label,clip_id,video_id\n1,x,vid\nfalse,y,vid\n"))
    assert rows == [{"clip_id": "x", "label": 1.0, "text": None, "split": None, "video_id": "vid"},
                    {"clip_id": "y", "label": 0.0, "text": None, "split": None, "video_id": "vid"}]


def test_mmsa_fet_label_csv(tmp_path):
    p = _write(tmp_path / "label.csv",
               "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
               "03bSnISJMiM,1,A LOT OF SAD PARTS,-0.8,,,,Negative,train\n"
               "03bSnISJMiM,10,I LIKE IT,2.2,,,,Positive,test\n")
    rows = read_labels(p)
    assert [r["clip_id"] for r in rows] == ["03bSnISJMiM_1", "03bSnISJMiM_10"]
    assert rows[0]["video_id"] == "03bSnISJMiM" and rows[0]["split"] == "train"
    assert rows[1]["label"] == 2.2 and rows[1]["text"] == "I LIKE IT" and rows[1]["split"] == "test"
    by_id = {r["clip_id"]: r for r in rows}
    # MMSA-FET folder layout Raw/<video_id>/<clip_id>.mp4, and a flat folder of <video_id>_<clip>.mp4
    assert match_row(Path("Raw/03bSnISJMiM/10.mp4"), by_id) is by_id["03bSnISJMiM_10"]
    assert match_row(Path("flat/03bSnISJMiM_1.mp4"), by_id) is by_id["03bSnISJMiM_1"]
    assert match_row(Path("Raw/other/1.mp4"), by_id) is None


@pytest.mark.parametrize("content, needle", [
    ("clip,label\na,1\n", "clip_id and label"),
    ("clip_id,label\na,good\n", "not a number"),
    ("clip_id,label\na,\n", "label is empty"),
    ("clip_id,label\na,nan\n", "finite"),
    ("clip_id,label\na,1\na,2\n", "also appears on line 2"),
    ("clip_id,label,split\na,1,holdout\n", "split 'holdout'"),
    ("clip_id,label\n", "no rows"),
    ("clip_id,label\n,1\n", "clip_id is empty"),
])
def test_bad_label_files_are_usage_errors_naming_the_line(tmp_path, content, needle):
    p = _write(tmp_path / "bad.csv", content)
    with pytest.raises(UserError) as e:
        read_labels(p)
    assert e.value.exit_code == 2
    assert needle in str(e.value) and str(p) in str(e.value)


def test_missing_file_is_usage_error(tmp_path):
    with pytest.raises(UserError) as e:
        read_labels(tmp_path / "nope.csv")
    assert e.value.exit_code == 2 and "not found" in str(e.value)


def test_write_labels_round_trips(tmp_path):
    rows = read_labels(_write(tmp_path / "l.csv", "clip_id,label,text,split\n"
                                                  "clip é ü,-0.6666666666666666,\"Ça va, très bien\",test\n"
                                                  "b,3,,\n"))
    out = tmp_path / "cache" / "labels.csv"
    write_labels(rows, out)
    with open(out, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["clip_id", "label", "text", "split", "video_id"]
    assert table[1] == ["clip é ü", "-0.6666666666666666", "Ça va, très bien", "test", ""]
    assert read_labels(out) == rows
    assert not list(out.parent.glob("*.tmp"))
