"""
Smoke test of benchmarks/: every dispycos workload runs once at a tiny size
through the same code as the real benchmark (run.py --quick), so the
benchmark keeps working (W1map may report "skipped: no Computation.map",
nothing else may be skipped). No timing assertions.
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
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["errors"] == [], data["errors"]
    for w in common.WORKLOADS:
        [trial] = data["trials"]["dispycos"][w]
        assert trial is not None, w
        if w == "W1map" and trial.get("skipped") is not None:
            # the one accepted skip: a checkout whose Computation has no map() yet
            assert trial["skipped"] == "no Computation.map" and trial["value"] is None, trial
            assert "dispycos W1map skipped: no Computation.map" in proc.stdout
            continue
        assert "skipped" not in trial and trial["value"] > 0, (w, trial)
    mem = data["trials"]["dispycos"]["MEM"][0]
    # the node, its zygote and its 2 servers, forked from the zygote (dispycos.node.zygote)
    cmds = [p["cmd"] for p in mem["processes"]]
    assert len(cmds) == 4, cmds
    assert sum("dispycos.node.zygote" in c for c in cmds) == 1 and sum("dispycos.server" in c for c in cmds) == 2, cmds
    assert mem["uss_mib"] > 0 and mem["pss_mib"] > 0
    w7 = data["trials"]["dispycos"]["W7"][0]
    size = common.SIZES["quick"]
    assert (w7["nodes"], w7["servers"]) == (size["w7_nodes"], size["w7_nodes"] * size["w7_servers"])
    assert w7["client_cpu_us_per_task"] > 0
    w1map = data["trials"]["dispycos"]["W1map"][0]
    if w1map["value"] is not None:
        assert w1map["peak_rss_mib"] >= w1map["baseline_rss_mib"] > 0
    assert "Medians of 1 trials" in proc.stdout
    assert not list(tmp_path.glob("*.png"))  # no plot unless asked or a full run


def test_ratios_are_oriented_so_that_above_one_is_better():
    assert run.ratio("W1", 200.0, 100.0) == 2.0  # rate: dispycos / anchor
    assert run.ratio("W2", 0.5, 1.5) == 3.0  # time: anchor / dispycos
    assert run.ratio("MEM", 50.0, 100.0) == 2.0
    assert run.ratio("W4", None, 1.0) is None
    results = {
        "dispycos": {"W1": [{"value": 4000.0}], "W1rr": [{"value": 30000.0}], "W5": [{"value": 1.9}],
                     "W7": [{"value": 33000.0, "client_cpu_us_per_task": 45.0}],
                     "MEM": [{"value": 85.0, "uss_mib": 31.0}], "W1map": [{"value": None, "skipped": "no Computation.map"}]},
        "pycos": {"W1": [{"value": 1000.0}], "W5": [{"value": 1.7}], "MEM": [{"value": 100.0, "uss_mib": 21.0}]},
        "mp": {"W1rr": [{"value": 50000.0, "mp_apply_async_tasks_s": 9000.0}]},
    }
    systems, workloads = ["dispycos", "pycos", "mp"], ["W1", "W1rr", "W1map", "W5", "W7", "MEM"]
    medians, ratios, targets = run.summarize(results, systems, workloads)
    assert ratios["W1"]["pycos"] == 4.0
    assert ratios["MEM.uss_mib"]["pycos"] == 21.0 / 31.0  # details have ratios too
    met = lambda w: [t["met"] for t in targets[w]]
    assert met("W1") == [False]  # >= 6x pycos wanted
    assert met("W1rr") == [True, True]  # >= 20x pycos W1 (30x), >= 1/2 of mp W1rr (0.6)
    assert met("W5") == [True]  # absolute speedup >= 1.85
    assert met("W7") == [True, False]  # W7 / W1rr = 1.1 >= 1.0; 45 us CPU per task > 40
    assert targets["W7"][0]["measured"] == 1.1
    assert met("MEM") == [True, False]  # <= 90 MiB RSS, but > 30 MiB USS
    assert met("W1map") == [None]  # skipped: unknown, not failed
    text = run.report(medians, ratios, targets, systems, workloads, 1, results)
    assert "> 1 means dispycos is better" in text
    assert "skipped" in text and "n/a" in text  # W1map skipped; pycos has no W1rr


def test_peak_rss_sees_a_short_lived_allocation():
    import time

    with common.PeakRSS(interval=0.02) as mem:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        time.sleep(0.2)  # several samples (ru_maxrss alone would miss it below an earlier peak)
        del block
    report = mem.report()
    assert report["rss_growth_mib"] >= 48, report
    assert report["peak_rss_mib"] >= report["baseline_rss_mib"] + 48, report
