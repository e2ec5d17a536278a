"""
Smoke test of benchmarks/: every dispycos workload runs once at a tiny size
through the same code as the real benchmark (run.py --quick), so the
benchmark keeps working. No timing assertions.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import common  # noqa: E402
import run  # noqa: E402


def test_every_dispycos_workload_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--trials", "1", "--systems", "dispycos",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["errors"] == [], data["errors"]
    for w in common.WORKLOADS:
        [trial] = data["trials"]["dispycos"][w]
        assert trial is not None and trial["value"] > 0, (w, trial)
    mem = data["trials"]["dispycos"]["MEM"][0]
    assert len(mem["processes"]) == 3  # the node and its 2 servers
    assert "Medians of 1 trials" in proc.stdout
    assert not list(tmp_path.glob("*.png"))  # no plot unless asked or a full run


def test_ratios_are_oriented_so_that_above_one_is_better():
    assert run.ratio("W1", 200.0, 100.0) == 2.0  # rate: dispycos / anchor
    assert run.ratio("W2", 0.5, 1.5) == 3.0  # time: anchor / dispycos
    assert run.ratio("MEM", 50.0, 100.0) == 2.0
    assert run.ratio("W4", None, 1.0) is None
    results = {
        "dispycos": {"W1": [{"value": 4000.0}], "W5": [{"value": 1.9}], "MEM": [{"value": 95.0}]},
        "pycos": {"W1": [{"value": 1000.0}], "W5": [{"value": 1.7}], "MEM": [{"value": 100.0}]},
    }
    medians, ratios, targets = run.summarize(results, ["dispycos", "pycos"], ["W1", "W5", "MEM"])
    assert ratios["W1"]["pycos"] == 4.0
    assert targets["W1"]["met"] is False  # >= 5x wanted
    assert targets["W5"]["met"] is True  # absolute speedup >= 1.85
    assert targets["MEM"]["met"] is False  # <= 90 MiB
    text = run.report(medians, ratios, targets, ["dispycos", "pycos"], ["W1", "W5", "MEM"], 1, results)
    assert "> 1 means dispycos is better" in text
