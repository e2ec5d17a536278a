#!/usr/bin/env python
"""
Where dispycos spends its time in a benchmark workload: runs
bench_dispycos.py with cProfile in the client (driver) process and py-spy on
the node and both servers, from after the warm-up task to the end of the
measurement, then prints the functions that dominate.

    python benchmarks/profile_dispycos.py [--only W1,W2,W3] [--out DIR] [--top 25]

py-spy comes from the anchors venv (benchmarks/.anchors-venv/bin/py-spy,
``pip install py-spy`` there) or $PATH; without it only the client is
profiled. Profiling slows everything down: the rates printed here are not
benchmark results.
"""

import argparse
import collections
import glob
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402


def find_pyspy():
    for path in (os.path.join(HERE, ".anchors-venv", "bin", "py-spy"), shutil.which("py-spy")):
        if path and os.path.exists(path):
            return path
    return None


def _frame_name(frame):
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for prefix in (os.path.join(ROOT, ""), "site-packages/"):
        i = path.find(prefix)
        if i >= 0:
            path = path[i + len(prefix):]
    return "%s (%s)" % (name, path or where)


#: Leaf frames that mean a thread is waiting, not working.
_IDLE = ("EPollReactor.doPoll", "Condition.wait", "Queue.get", "Event.wait", "Thread.join", "select (",
         "_wait_for_tstate_lock")


def summarize_pyspy(path, top):
    """Self and inclusive sample shares per function from a py-spy raw (collapsed) file."""
    self_c, incl_c = collections.Counter(), collections.Counter()
    total = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame_name(fr) for fr in stack.split(";") if not fr.startswith(("process ", "thread "))]
            if not frames or frames[-1].startswith(_IDLE):
                continue  # waiting in epoll or for work: idle
            total += n
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl_c[fr] += n
    out = io.StringIO()
    out.write("  %d samples (CPU, idle excluded)\n" % total)
    if not total:
        return out.getvalue()
    out.write("  self time:\n")
    for fr, n in self_c.most_common(top):
        out.write("    %5.1f%%  %s\n" % (100.0 * n / total, fr))
    out.write("  inclusive time:\n")
    for fr, n in incl_c.most_common(top + 10):
        if fr.startswith(("<module>", "_run_module_as_main", "_run_code", "main (", "run (twisted",
                          "mainLoop", "runUntilCurrent")):
            continue
        out.write("    %5.1f%%  %s\n" % (100.0 * n / total, fr))
    return out.getvalue()


def summarize_pstats(path, top):
    out = io.StringIO()
    st = pstats.Stats(path, stream=out)
    st.strip_dirs()
    total = st.total_tt
    out.write("  total %.3f s of CPU in profiled functions\n  by own time (tottime):\n" % total)
    st.sort_stats("tottime").print_stats(top)
    out.write("  by cumulative time:\n")
    st.sort_stats("cumulative").print_stats(top)
    # keep only the tables
    text = out.getvalue()
    return "\n".join(line for line in text.splitlines() if line.strip() and "function calls" not in line
                     and "Ordered by" not in line and "List reduced" not in line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="W1,W1a,W2,W3,W4")
    p.add_argument("--out", help="keep the raw profiles here (default: a temporary directory)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    out_dir = args.out or tempfile.mkdtemp(prefix="dispycos-profile-")
    os.makedirs(out_dir, exist_ok=True)
    pyspy = find_pyspy()
    env = dict(os.environ, BENCH_PROFILE_DIR=out_dir)
    if pyspy:
        env["BENCH_PYSPY"] = pyspy
    else:
        print("note: py-spy not found: only the client is profiled")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    try:
        for w in [x.strip() for x in args.only.split(",") if x.strip()]:
            cmd = [sys.executable, os.path.join(HERE, "bench_dispycos.py"), "--workload", w]
            if args.quick:
                cmd.append("--quick")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            line = [x for x in r.stdout.splitlines() if x.startswith(common.RESULT_TAG)]
            print("=" * 100)
            if not line:
                print("%s failed:\n%s" % (w, (r.stdout + r.stderr)[-3000:]))
                continue
            res = json.loads(line[0][len(common.RESULT_TAG):])
            print("%s under the profilers: %.4g %s (not a benchmark result)" % (w, res["value"], res["unit"]))
            client = os.path.join(out_dir, "%s-client.pstats" % w)
            if os.path.exists(client):
                print("-- client (driver process, cProfile)")
                print(summarize_pstats(client, args.top))
            for path in sorted(glob.glob(os.path.join(out_dir, "%s-*.pyspy.txt" % w))):
                role = os.path.basename(path)[len(w) + 1:-len(".pyspy.txt")]
                print("-- %s (py-spy)" % role)
                print(summarize_pyspy(path, args.top))
    finally:
        if not args.out:
            shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
