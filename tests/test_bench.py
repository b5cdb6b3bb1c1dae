"""The benchmark harness runs end to end on a tiny setting (`python -m bench --quick`).

This checks the harness, not speed: no figure is compared with anything. Parts that cannot run
here (no Apache ZooKeeper, no FUSE, zkfsd ensembles not up) must still produce their rows, with a
note saying why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(420)
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    out_json = tmp_path / "latest.json"
    out_md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out_json),
         "--markdown", str(out_md)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=400,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"

    data = json.loads(out_json.read_text())
    assert data["meta"]["mode"] == "quick"
    assert {"nproc", "kernel", "python"} <= set(data["meta"]["machine"])
    rows = data["rows"]
    sections = {r["section"] for r in rows}
    for expected in ("throughput (lean driver), standalone", "latency, standalone",
                     "fsyncs per acknowledged write, standalone", "failure detection, standalone",
                     "failure detection, ensemble", "memory and scale"):
        assert expected in sections, (expected, sorted(sections))
    assert any(s.startswith("mount") for s in sections), sorted(sections)
    assert "errors" not in sections, [(r["metric"], r["note"]) for r in rows
                                      if r["section"] == "errors"]
    for r in rows:
        # Every row is either measured (on at least one side) or says why not.
        assert r["a"] or r["b"] or r["note"], r
        if r["a"] and r["b"]:
            assert r["ratio"] is not None, r
    # zkfsd itself always runs: its standalone throughput cells are all measured.
    zkfsd_cells = [r for r in rows if r["section"] == "throughput (lean driver), standalone"]
    assert len(zkfsd_cells) == 16 and all(r["a"] for r in zkfsd_cells), zkfsd_cells

    # kazoo, 16 sessions: standalone and ensemble rows for each phase; zkfsd standalone measured.
    kazoo = {r["metric"]: r for r in rows if r["section"] == "kazoo, 16 sessions"}
    for op in ("create", "setData", "getData"):
        assert kazoo[f"{op} (standalone)"]["a"], kazoo
        assert f"{op} (ensemble, clients over all 3 members)" in kazoo, sorted(kazoo)
    # Mount A -> mount B: event latency p50/p99 and cached stat/cat rows, measured or explained.
    ab = {r["metric"]: r for r in rows if r["section"].startswith("mount A -> mount B")}
    for metric in ("write on A -> inotify CLOSE_WRITE on B, p50",
                   "write on A -> inotify CLOSE_WRITE on B, p99",
                   "cached stat on B (file written on A)", "cached open+read+close on B"):
        assert metric in ab, sorted(ab)

    assert "| metric |" in out_md.read_text()
    assert "throughput (lean driver), standalone" in proc.stdout
