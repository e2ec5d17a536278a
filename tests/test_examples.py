"""
Run the examples (examples/client*.py) and C{python -m dispycos.demo} as
subprocesses, the examples against a real node named in C{$DISPYCOS_NODES}.
"""

import math
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from .conftest import ROOT, env_for_children

TIMEOUT = 120
LOC = r"(\d+\.\d+\.\d+\.\d+:\d+)"


def run_example(node, name, *args):
    env = env_for_children()
    env["DISPYCOS_NODES"] = node.location
    env["DISPYCOS_SECRET"] = node.secret
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def test_client1_distributes_jobs(node):
    out = run_example(node, "client1.py")
    placed = re.findall(r"^  job (\d+) processed by %s$" % LOC, out, re.M)
    assert [int(i) for i, _ in placed] == list(range(10)), out
    assert len({loc for _, loc in placed}) == 2, out  # both servers were used
    assert out.rstrip().endswith("done: 10 jobs"), out


def test_client1_job_count_argument(node):
    out = run_example(node, "client1.py", 3)
    assert len(re.findall(r"^  job \d+ processed by ", out, re.M)) == 3, out
    assert "done: 3 jobs" in out, out


def test_client2_results_in_submission_order(node):
    out = run_example(node, "client2.py")
    results = re.findall(r"^    result for (\d+) from %s: (.+)$" % LOC, out, re.M)
    assert [int(i) for i, _, _ in results] == list(range(10)), out
    assert len({loc for _, loc, _ in results}) == 2, out
    assert "failed" not in out, out
    assert out.rstrip().endswith("done: 10 jobs"), out


def test_client3_objects_go_and_come_back(node):
    before = node.output()
    out = run_example(node, "client3.py", 6)
    requests = {int(i): float(n) for i, n in re.findall(r"^  request (\d+): ([\d.]+)$", out, re.M)}
    assert sorted(requests) == list(range(6)), out
    results = re.findall(r"^    result for job (\d+): (\d+): ([\d.]+)$", out, re.M)
    assert [int(k) for k, _, _ in results] == list(range(6)), out  # completion order
    assert sorted(int(i) for _, i, _ in results) == list(range(6)), out
    for _, i, root in results:
        assert math.isclose(float(root), math.sqrt(requests[int(i)]), abs_tol=1e-3), out
    assert out.rstrip().endswith("done: 6 jobs"), out
    # the remote tasks' prints appear on the node's console
    printed = re.findall(r"process at %s received: (\d+\.\d{4})" % LOC, node.output()[len(before):])
    assert sorted(float(n) for _, n in printed) == sorted(requests.values()), node.output()[-3000:]


def test_client8_blocking_task_keeps_messages(node):
    out = run_example(node, "client8.py")
    placed = dict((int(i), loc) for i, loc in re.findall(r"^  job (\d+) processed by %s$" % LOC, out, re.M))
    assert sorted(placed) == [0, 1], out
    sent = defaultdict(list)
    for i, n in re.findall(r"^      job (\d+) sends ([\d.]+)$", out, re.M):
        sent[int(i)].append(float(n))
    assert sorted(sent) == [0, 1] and all(len(v) == 5 for v in sent.values()), out
    computed = dict((loc, float(s)) for loc, s in re.findall(r"^    %s computed result: ([\d.]+)$" % LOC, out, re.M))
    assert len(computed) == 2, out
    for i, loc in placed.items():
        assert math.isclose(computed[loc], sum(sent[i]), abs_tol=0.05), out
    assert out.rstrip().endswith("done: 2 jobs"), out


def test_demo_runs_on_its_own_cluster():
    env = env_for_children()
    env.pop("DISPYCOS_NODES", None)
    env.pop("DISPYCOS_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "dispycos.demo"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "returns 49" in out and "returns 5" in out and "returns 42" in out, out
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out, out
    assert "remote task answers 'HELLO!" in out and "remote task answers 'DISPYCOS!" in out, out
    assert "answered 2 messages" in out, out
    assert re.search(r"^done in [\d.]+ s$", out, re.M), out


@pytest.mark.parametrize("name", ["client1.py", "client2.py", "client3.py", "client8.py"])
def test_example_has_usage_docstring(name):
    import ast

    with open(os.path.join(ROOT, "examples", name)) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and "python examples/%s" % name in doc and "DISPYCOS_NODES=" in doc
