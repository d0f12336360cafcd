"""The driver's manifest rewrites stay a small share of its time when a cluster finishes many clips."""
from __future__ import annotations

import time

from pipeline.extract import batch
from pipeline.extract.cache import read_manifest
from pipeline.extract.jobs import failed_record


def _rec(i: int) -> dict:
    return failed_record({"path": f"v/c{i}.mp4", "clip_id": f"c{i}", "entry": None, "key": None}, f"v/c{i}.mp4: bad")


def test_a_slow_manifest_rewrite_spaces_out_the_next(tmp_path):
    m = batch._Manifest(tmp_path, 3)
    m.put(0, _rec(0))                                    # the first put writes
    assert [r["clip_id"] for r in read_manifest(tmp_path)] == ["c0"]
    m.write_s = 1.0                                      # as if that rewrite had taken a second
    m.last = time.monotonic() - (batch.MANIFEST_EVERY_S + 0.5)
    m.put(1, _rec(1))                                    # past MANIFEST_EVERY_S, within 10 x 1 s: not yet
    assert [r["clip_id"] for r in read_manifest(tmp_path)] == ["c0"]
    m.last = time.monotonic() - (batch.MANIFEST_COST_FACTOR * 1.0 + 0.5)
    m.put(2, _rec(2))
    assert [r["clip_id"] for r in read_manifest(tmp_path)] == ["c0", "c1", "c2"]
    assert m.write_s < 1.0                               # measured again
    m.records[0] = _rec(5)
    m.flush()                                            # the end of a run always writes
    assert read_manifest(tmp_path)[0]["clip_id"] == "c5"
