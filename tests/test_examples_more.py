"""
Run more examples (client4, 5, 6, 6_channel, 7, 9_node, 9_server and
shared_scheduler) as subprocesses against a real node named in
C{$DISPYCOS_NODES} (or, for shared_scheduler.py, a shared scheduler process
that uses that node).
"""

import ast
import math
import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT, env_for_children

TIMEOUT = 120
LOC = r"(\d+\.\d+\.\d+\.\d+:\d+)"
ALGS = "md5|sha1|sha224|sha256|sha384|sha512"


def run_example(node, name, *args, cwd=ROOT, env_extra=None):
    env = env_for_children()
    env["DISPYCOS_NODES"] = node.location
    env["DISPYCOS_SECRET"] = node.secret
    env.pop("DISPYCOS_SCHEDULER", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(cwd),
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def line_lengths(path):
    with open(path, "rb") as f:
        return ["%d: %d" % (n, len(line)) for n, line in enumerate(f, 1)]


def test_client4_files_both_ways(node, tmp_path):
    inputs = []
    for i, lines in enumerate([["alpha", "", "beta gamma"], ["x" * 100] * 7, ["only one line"]]):
        path = tmp_path / ("in%d.txt" % i)
        path.write_text("".join(line + "\n" for line in lines))
        inputs.append(str(path))
    out = run_example(node, "client4.py", *inputs)
    outputs = dict((int(i), p) for i, p in re.findall(r"^    job (\d+) output is in (\S+)$", out, re.M))
    assert sorted(outputs) == [0, 1, 2], out
    results_dir = os.path.dirname(outputs[0])
    try:
        for i, src in enumerate(inputs):
            assert os.path.basename(outputs[i]) == "result-" + os.path.basename(src), out
            with open(outputs[i]) as f:
                assert f.read().splitlines() == line_lengths(src), out
        assert "done: 3 files, results in %s" % results_dir in out, out
    finally:
        import shutil

        shutil.rmtree(results_dir, ignore_errors=True)


def test_client4_generated_inputs(node):
    out = run_example(node, "client4.py")
    outputs = dict((int(i), p) for i, p in re.findall(r"^    job (\d+) output is in (\S+)$", out, re.M))
    assert sorted(outputs) == [0, 1, 2, 3], out
    try:
        for i, path in outputs.items():
            assert os.path.basename(path) == "result-input%d.txt" % i, out
            with open(path) as f:
                lines = f.read().splitlines()
            assert 3 <= len(lines) <= 8 and all(re.fullmatch(r"\d+: \d+", l) for l in lines), lines
            assert [int(l.split(":")[0]) for l in lines] == list(range(1, len(lines) + 1)), lines
        assert out.rstrip().splitlines()[-1].startswith("done: 4 files, results in "), out
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(outputs[0]), ignore_errors=True)


def check_client5(out, njobs):
    lines = out.splitlines()
    for i in range(njobs):
        mine = [k for k, l in enumerate(lines) if l.startswith("      job %d output: " % i)]
        pattern = r"^      job %d output: Line (\d+) - current time is \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$" % i
        got = [re.match(pattern, lines[k]) for k in mine]
        assert all(got) and [int(m.group(1)) for m in got] == [1, 2, 3, 4, 5], out
        done = [k for k, l in enumerate(lines) if l == "  job %d done: 5 lines, exit code 0" % i]
        assert len(done) == 1 and done[0] > max(mine), out  # every line before "done"
    assert lines[-1] == "done: %d jobs, exit codes %s" % (njobs, [0] * njobs), out


def test_client5_program_through_pipes(node):
    check_client5(run_example(node, "client5.py"), 4)


def test_client5_from_another_directory(node, tmp_path):
    # the program file is not under the current directory: it lands in the node directory by name
    check_client5(run_example(node, "client5.py", 1, cwd=tmp_path), 1)


def test_client6_live_analytics(node):
    out = run_example(node, "client6.py")
    m = re.search(r"^averaging at %s, saving at %s$" % (LOC, LOC), out, re.M)
    assert m and m.group(1) != m.group(2), out  # the two tasks on the two servers
    signals = re.findall(r"^trend signal at (\d+): (high|low) / (-?[\d.]+)$", out, re.M)
    for pos, trend, avg in signals:
        # the example signals past +-0.4 and prints 4 decimals: 0.40004 shows as 0.4000
        assert (float(avg) >= 0.4) if trend == "high" else (float(avg) <= -0.4), out
        assert 9 <= int(pos) < 1000, out
    assert [int(p) for p, _, _ in signals] == sorted(int(p) for p, _, _ in signals), out
    saved = re.search(r"^averaged 1000 items, saved 1000 items in (\S+) at %s$" % LOC, out, re.M)
    assert saved and saved.group(2) == m.group(2), out
    assert saved.group(1).startswith(node.node_dir + os.sep) and saved.group(1).endswith(os.sep + "tickdata"), out
    last = out.rstrip().splitlines()[-1]
    assert last == "done: 1000 items, %d trend signals (same as the client's own)" % len(signals), out


def test_client6_fewer_items(node):
    out = run_example(node, "client6.py", 50)
    assert "averaged 50 items, saved 50 items in " in out, out
    assert re.search(r"^done: 50 items, \d+ trend signals \(same as the client's own\)$", out, re.M), out


def test_client6_channel_broadcast(node):
    out = run_example(node, "client6_channel.py")
    assert "'start' reached 2 subscribers" in out, out
    assert len(re.findall(r"^  (mean_proc|range_proc) runs at %s$" % LOC, out, re.M)) == 2, out
    assert re.search(r"^mean of 1000 items: -?[\d.]+ \(correct\)$", out, re.M), out
    assert re.search(r"^range of 1000 items: -?[\d.]+ \.\. -?[\d.]+ \(correct\)$", out, re.M), out
    assert out.rstrip().splitlines()[-1] == "done: 1000 items to 2 subscribers", out


def test_client7_schedules_from_status(node):
    out = run_example(node, "client7.py")
    started = re.findall(r"^  rtask_proc started at %s with ([\d.]+)$" % LOC, out, re.M)
    finished = re.findall(r"^      rtask_proc at %s finished with ([\d.]+)$" % LOC, out, re.M)
    assert len(started) == 10 and len(finished) == 10, out
    assert len({loc for loc, _ in started}) == 2, out  # one chain of jobs per server
    for loc in {loc for loc, _ in started}:
        # at each server the jobs finish in the order they started there, one at a time
        assert [n for l, n in started if l == loc] == [n for l, n in finished if l == loc], out
    lines = out.splitlines()
    for loc in {loc for loc, _ in started}:
        events = [("s" if "started" in l else "f") for l in lines if "rtask_proc" in l and loc in l]
        assert events == ["s", "f"] * (len(events) // 2), out
    assert "failed" not in out and "not started" not in out, out
    assert lines[-1] == "done: 10 jobs", out


def test_client7_job_count_argument(node):
    out = run_example(node, "client7.py", 3)
    assert len(re.findall(r"^      rtask_proc at \S+ finished with ", out, re.M)) == 3, out
    assert out.rstrip().splitlines()[-1] == "done: 3 jobs", out


def test_client9_node_in_memory_data(node):
    before = node.output()
    out = run_example(node, "client9_node.py")
    assert re.search(r"^  node 127\.0\.0\.1 enabled with node-data-\d\.bin$", out, re.M), out
    sums = re.findall(r"^   (%s)sum for (node-data-\d\.bin): ([0-9a-f]+)$" % ALGS, out, re.M)
    assert len(sums) == 15 and len({name for _, name, _ in sums}) == 1, out  # one node: one file
    assert out.rstrip().splitlines()[-1] == "done: 15 checksums, 15 correct", out
    # node_setup ran once, on the node (its print is on the node's console)
    printed = re.findall(r'data_file: "(node-data-\d\.bin)"', node.output()[len(before):])
    assert printed == [sums[0][1]], node.output()[-3000:]


def test_client9_server_in_memory_data(node):
    before = node.output()
    out = run_example(node, "client9_server.py")
    enabled = dict(re.findall(r"^  server %s enabled with (server-data-\d\.bin)$" % LOC, out, re.M))
    assert len(enabled) == 2 and len(set(enabled.values())) == 2, out  # a file of its own for each server
    sums = re.findall(r"^   (%s)sum for (server-data-\d\.bin): ([0-9a-f]+)$" % ALGS, out, re.M)
    assert len(sums) == 15, out
    assert out.rstrip().splitlines()[-1] == "done: 15 checksums, 15 correct", out
    printed = dict(re.findall(r"%s processing (server-data-\d\.bin)" % LOC, node.output()[len(before):]))
    assert printed == enabled, node.output()[-3000:]


@pytest.fixture
def shared_scheduler(node):
    from .test_shared import SchedulerProcess

    sched = SchedulerProcess([node.location], node.secret)
    yield sched
    sched.stop()


def check_shared(out, njobs):
    assert re.search(r"^Allocate 127\.0\.0\.1 \(.+\): 2$", out, re.M), out  # printed by the client
    created = re.findall(r"^  Task (\d+) created for ([\d.]+) at %s$" % LOC, out, re.M)
    assert [int(i) for i, _, _ in created] == list(range(njobs)), out
    replies = re.findall(r"^      Received reply for (\d+) from %s: .+$" % LOC, out, re.M)
    assert sorted(int(i) for i, _ in replies) == list(range(njobs)), out
    where = {int(i): loc for i, _, loc in created}
    assert all(where[int(i)] == loc for i, loc in replies), out
    total = sum(float(n) for _, n, _ in created)
    m = re.search(r"^done: %d jobs, ([\d.]+) s of work$" % njobs, out, re.M)
    assert m and math.isclose(float(m.group(1)), total, abs_tol=0.02), out


def test_shared_scheduler_location_argument(node, shared_scheduler):
    out = run_example(node, "shared_scheduler.py", shared_scheduler.location, env_extra={"DISPYCOS_NODES": ""})
    check_shared(out, 6)


def test_shared_scheduler_location_from_environment(node, shared_scheduler):
    out = run_example(node, "shared_scheduler.py", 3,
                      env_extra={"DISPYCOS_NODES": "", "DISPYCOS_SCHEDULER": shared_scheduler.location})
    check_shared(out, 3)


EXAMPLES = ["client4.py", "client5.py", "client6.py", "client6_channel.py", "client7.py", "client9_node.py",
            "client9_server.py", "shared_scheduler.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_has_usage_docstring(name):
    with open(os.path.join(ROOT, "examples", name)) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and "python examples/%s" % name in doc
    assert "DISPYCOS_SECRET=" in doc and ("DISPYCOS_NODES=" in doc or name == "shared_scheduler.py")
