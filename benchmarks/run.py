#!/usr/bin/env python
"""
Benchmarks: dispycos against pycos 4.12.2 (its own dispycos/dispycosnode),
dask.distributed and multiprocessing.Pool, on this machine, loopback only.

    python benchmarks/run.py [--install-anchors] [--trials 3] [--quick] [--json out.json]
                             [--plot out.png] [--only W1,W2] [--systems dispycos,pycos]

Each measurement runs in a fresh driver process (benchmarks/bench_<system>.py)
that starts its own cluster and stops every process it started by PID. The
systems alternate within every trial (the order rotates from one trial to the
next). dispycos and multiprocessing run with this repository's venv; pycos and
dask with benchmarks/.anchors-venv (``--install-anchors`` creates it from
PyPI). Every driver runs in a private network namespace (``unshare -n``, only
``lo``) when the machine allows it; pycos, which discovers by UDP broadcast,
is run only that way and is skipped otherwise.

Ratios are oriented so that > 1 means dispycos is better: dispycos/anchor for
rates and speedups, anchor/dispycos for times and memory.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402

ANCHORS_VENV = os.path.join(HERE, ".anchors-venv")
ANCHOR_PACKAGES = ["pycos==4.12.2", "dask[distributed]", "psutil", "matplotlib", "py-spy"]
SYSTEMS = ["dispycos", "pycos", "dask", "mp"]
#: The systems that have a workload, where not all of them do (pycos has no run_results or map;
#: dask and multiprocessing no async-task kind and no generator tasks; W1g and W7 are dispycos only).
SYSTEMS_OF = {
    "W1g": ("dispycos",),
    "W1a": ("dispycos", "pycos"),
    "W1rr": ("dispycos", "dask", "mp"),
    "W1map": ("dispycos", "mp"),
    "W5g": ("dispycos", "pycos"),
    "W7": ("dispycos",),
}


def applicable(system, workload):
    """True when C{system} has C{workload}."""
    return system in SYSTEMS_OF.get(workload, SYSTEMS)


def check(text, threshold, at_least=True, field="value", vs=None):
    """
    One target: dispycos's median of C{field} (C{"value"} or one of
    common.DETAILS) is C{>= threshold} (C{at_least}) or C{<=}; with C{vs} =
    (system, workload), the ratio (oriented so that > 1 is better) of
    dispycos's value to that system's value of that workload, measured in the
    same run, is checked instead.
    """
    return {"text": text, "threshold": threshold, "at_least": at_least, "field": field,
            "vs": list(vs) if vs else None}


#: The targets of SPEC 6.7 (vs pycos measured in the same run, or absolute), per workload.
TARGETS = {
    "W1": [check(">= 6x pycos W1", 6.0, vs=("pycos", "W1"))],
    "W1rr": [check(">= 20x pycos W1", 20.0, vs=("pycos", "W1")),
             check(">= 1/2 of mp W1rr", 0.5, vs=("mp", "W1rr"))],
    "W1map": [check("completes, client peak RSS <= 200 MiB", 200.0, at_least=False, field="peak_rss_mib")],
    "W2": [check("p50 <= 1/4 of pycos", 4.0, vs=("pycos", "W2"))],
    "W3": [check(">= 20x pycos msgs/s", 20.0, vs=("pycos", "W3"))],
    "W4": [check(">= 3x pycos MiB/s", 3.0, vs=("pycos", "W4"))],
    "W5": [check("speedup >= 1.85", 1.85)],
    "W5g": [check("speedup >= 1.85", 1.85)],
    "W6": [check("cold start >= 1.5x pycos (time <= 1/1.5)", 1.5, vs=("pycos", "W6"))],
    "W7": [check("W7 / W1rr (2 servers) >= 1.0", 1.0, vs=("dispycos", "W1rr")),
           check("client <= 40 us CPU per task", 40.0, at_least=False, field="client_cpu_us_per_task")],
    "MEM": [check("node + 2 servers <= 90 MiB RSS", 90.0, at_least=False),
            check("node + 2 servers <= 30 MiB USS", 30.0, at_least=False, field="uss_mib")],
}
#: Seconds a driver may take before it is stopped (full size; quick: a fifth).
DRIVER_TIMEOUT = 300
DRIVER_TIMEOUTS = {"W1map": 600}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# -- the anchors' venv ---------------------------------------------------------------


def anchors_python():
    return os.path.join(ANCHORS_VENV, "bin", "python")


def install_anchors():
    """Create benchmarks/.anchors-venv and install the anchors from PyPI into it."""
    py = anchors_python()
    if not os.path.exists(py):
        log("creating %s" % ANCHORS_VENV)
        subprocess.check_call([sys.executable, "-m", "venv", ANCHORS_VENV])
    log("installing %s into it" % " ".join(ANCHOR_PACKAGES))
    subprocess.check_call([py, "-m", "pip", "install", "--quiet"] + ANCHOR_PACKAGES)


def _probe(python, code, timeout=60):
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["failed"])[-1]
    return r.stdout.strip(), None


def netns_prefix():
    """The command prefix that runs a program in a fresh network namespace (lo only), or None."""
    for prefix in (["unshare", "-n"], ["unshare", "-r", "-n"]):
        if shutil.which(prefix[0]) is None:
            return None
        try:
            r = subprocess.run(prefix + [sys.executable, "-c",
                                         "import sys; sys.path.insert(0, %r); import common, socket; common.lo_up(); "
                                         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
                                         "print(len(socket.if_nameindex()))" % HERE],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip() == "1":  # only "lo" in there
            return prefix
    return None


def available_systems(wanted, use_netns):
    """{system: (python, needs_netns)} for the systems that can run, and notes on the others."""
    notes, out = [], {}
    ns = netns_prefix() if use_netns or "pycos" in wanted else None
    apy = anchors_python()
    for s in wanted:
        if s in ("dispycos", "mp"):
            out[s] = sys.executable
            continue
        if not os.path.exists(apy):
            notes.append("%s skipped: anchors venv not installed (run with --install-anchors)" % s)
            continue
        if s == "pycos":
            v, err = _probe(apy, "import pycos, pycos.dispycos; print(pycos.__version__)")
            if v is None:
                notes.append("pycos skipped: not importable in the anchors venv (%s)" % err)
                continue
            if v != "4.12.2":
                notes.append("pycos is %s, not 4.12.2" % v)
            if ns is None:
                notes.append("pycos skipped: it discovers by UDP broadcast and no private network "
                             "namespace is available here (unshare -n failed), so it cannot be kept on loopback")
                continue
            out[s] = apy
        elif s == "dask":
            v, err = _probe(apy, "import distributed; print(distributed.__version__)")
            if v is None:
                notes.append("dask skipped: distributed not importable in the anchors venv (%s)" % err)
                continue
            out[s] = apy
    return out, (ns if use_netns or "pycos" in out else None), notes


def versions(pythons):
    v = {"python": platform.python_version()}
    code = {
        "dispycos": "import dispycos, twisted; print('dispycos %s, Twisted %s' % (dispycos.__version__, twisted.__version__))",
        "pycos": "import pycos; print('pycos %s' % pycos.__version__)",
        "dask": "import dask, distributed; print('dask %s, distributed %s' % (dask.__version__, distributed.__version__))",
        "mp": "import sys; print('multiprocessing (Python %s)' % sys.version.split()[0])",
    }
    for s, py in pythons.items():
        out, err = _probe(py, code[s])
        v[s] = out or err
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "dispycos"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        if head:
            v["dispycos_commit"] = head + (" (dispycos/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return v


# -- running one driver ---------------------------------------------------------------


def run_driver(system, python, workload, args, netns, workdir, cpu_iters):
    """Run one measurement in a fresh process; returns (result dict or None, error text)."""
    cmd = [python, os.path.join(HERE, "bench_%s.py" % system), "--workload", workload, "--workdir", workdir]
    if args.quick:
        cmd.append("--quick")
    if cpu_iters:
        cmd += ["--cpu-iters", str(cpu_iters)]
    if netns is not None and (system == "pycos" or not args.no_netns):
        cmd = list(netns) + cmd + ["--lo-up"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTHONWARNINGS", None)
    timeout = DRIVER_TIMEOUTS.get(workload, DRIVER_TIMEOUT) // (5 if args.quick else 1)
    out_path = os.path.join(workdir, "driver.out")
    err_path = os.path.join(workdir, "driver.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # A session of its own: on a timeout its whole process group goes (the
        # drivers keep their nodes and servers in it).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=workdir,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return None, "timed out after %d s" % timeout
        except BaseException:
            stop_group(proc)
            raise
        finally:
            if proc.poll() is not None:
                stop_group(proc)  # nothing should be left; make sure
    with open(out_path, "rb") as f:
        stdout = f.read().decode("utf-8", "replace")
    with open(err_path, "rb") as f:
        stderr = f.read().decode("utf-8", "replace")
    for line in stdout.splitlines():
        if line.startswith(common.RESULT_TAG):
            return json.loads(line[len(common.RESULT_TAG):]), None
    tail = "\n".join((stdout + "\n" + stderr).strip().splitlines()[-15:])
    return None, "exit code %s, no result:\n%s" % (proc.returncode, tail)


def stop_group(proc):
    """
    Stop the driver's process group (ours: it was started in a new session),
    then, by PID, any process still in its session or below it.
    """
    if proc.poll() is not None:
        # The leader is gone (and reaped): never signal its group id, which the
        # system may hand out again; stragglers of its session go by PID.
        common.kill_pids(common.session_members(proc.pid), grace=5.0)
        return
    pids = common.descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    common.kill_pids([p for p in pids + common.session_members(proc.pid) if p != proc.pid], grace=0.5)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# -- tables ---------------------------------------------------------------------------------


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.3f" % v


def ratio(workload, disp, anchor, higher=None):
    """dispycos vs anchor, oriented so that > 1 means dispycos is better (None when either is missing)."""
    if disp is None or anchor is None or disp <= 0 or anchor <= 0:
        return None
    if higher is None:
        higher = common.WORKLOADS[workload][2]
    return disp / anchor if higher else anchor / disp


def table(headers, rows):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def row_key(workload, field):
    """The key of a table row: the workload for its value, "W.field" for one of common.DETAILS."""
    return workload if field == "value" else "%s.%s" % (workload, field)


def table_rows(workloads):
    """(key, workload, field, label, unit, higher is better) of every row: each workload's value, then its details."""
    out = []
    for w in workloads:
        metric, unit, higher, _ = common.WORKLOADS[w]
        out.append((w, w, "value", metric, unit, higher))
        for field, label, unit, higher in common.DETAILS.get(w, ()):
            out.append((row_key(w, field), w, field, label, unit, higher))
    return out


def measured(results, system, workload, field="value"):
    """The values of C{field} in the trials of C{system} x C{workload} that have one (not failed, not skipped)."""
    return [r[field] for r in results.get(system, {}).get(workload, [])
            if r is not None and r.get(field) is not None]


def skipped(results, system, workload):
    """Why the trials of C{system} x C{workload} were skipped (the first reason), or None."""
    for r in results.get(system, {}).get(workload, []):
        if r is not None and r.get("skipped"):
            return r["skipped"]
    return None


def evaluate(t, workload, medians):
    """A copy of target C{t} of C{workload} with what was C{measured} and whether it was C{met} (None: unknown)."""
    t = dict(t)
    d = medians.get("dispycos", {}).get(row_key(workload, t["field"]))
    if t["vs"]:
        system, other = t["vs"]
        v = ratio(workload, d, medians.get(system, {}).get(other))
    else:
        v = d
    t["measured"] = v
    t["met"] = None if v is None else (v >= t["threshold"] if t["at_least"] else v <= t["threshold"])
    return t


def summarize(results, systems, workloads):
    """
    Medians ({system: {row key: median}}), ratios ({row key: {anchor:
    ratio}}) and targets ({workload: [evaluated targets]}).
    """
    rows = table_rows(workloads)
    medians = {s: {} for s in systems}
    for s in systems:
        for key, w, field, *_ in rows:
            vals = measured(results, s, w, field)
            medians[s][key] = statistics.median(vals) if vals else None
    ratios = {}
    for key, w, field, _, _, higher in rows:
        ratios[key] = {}
        for a in systems:
            if a != "dispycos":
                r = ratio(w, medians.get("dispycos", {}).get(key), medians[a].get(key), higher)
                if r is not None:
                    ratios[key][a] = r
    targets = {w: [evaluate(t, w, medians) for t in TARGETS[w]] for w in workloads if w in TARGETS}
    return medians, ratios, targets


def median_cell(results, system, w, key, field, medians):
    """One cell of the medians table: median [min-max], or n/a, skipped, failed, -."""
    if not applicable(system, w):
        return "n/a"
    vals = measured(results, system, w, field)
    m = medians[system].get(key)
    if m is None:
        if skipped(results, system, w):
            return "skipped" if field == "value" else "-"
        tried = results.get(system, {}).get(w)
        return "failed" if field == "value" and tried and all(r is None for r in tried) else "-"
    if len(vals) > 1:
        return "%s [%s-%s]" % (fmt(m), fmt(min(vals)), fmt(max(vals)))
    return fmt(m)


def target_cells(t):
    """The target and met? cells of one evaluated target."""
    if t["measured"] is None:
        got = "-"
    elif t["vs"]:
        got = "%.2fx" % t["measured"]
    else:
        got = fmt(t["measured"])
    return [t["text"], {True: "yes", False: "NO", None: "?"}[t["met"]] + " (%s)" % got]


def report(medians, ratios, targets, systems, workloads, trials, results):
    out = []
    rows = []
    for key, w, field, metric, unit, higher in table_rows(workloads):
        name = w if field == "value" else "  %s" % key
        row = [name, "%s (%s, %s)" % (metric, unit, "higher better" if higher else "lower better")]
        rows.append(row + [median_cell(results, s, w, key, field, medians) for s in systems])
    out.append("Medians of %d trials [min-max]:\n" % trials)
    out.append(table(["workload", "metric"] + systems, rows))
    anchors = [s for s in systems if s != "dispycos"]
    if anchors:
        out.append("\nRatios dispycos vs anchor, oriented so that > 1 means dispycos is better "
                   "(dispycos/anchor for rates and speedup, anchor/dispycos for times and memory); "
                   "targets checked against the medians of this run:\n")
        rows = []
        for key, w, field, *_ in table_rows(workloads):
            row = [w if field == "value" else "  %s" % key]
            for a in anchors:
                r = ratios[key].get(a)
                row.append("n/a" if not applicable(a, w) else ("%.2f" % r if r is not None else "-"))
            mine = [t for t in targets.get(w, ()) if t["field"] == field]
            if field != "value" and not mine and all(c in ("-", "n/a") for c in row[1:]):
                continue  # a detail with neither ratio nor target: the medians table has it
            row += target_cells(mine[0]) if mine else ["(none)" if field == "value" else "", ""]
            rows.append(row)
            for t in mine[1:]:
                rows.append([""] * (1 + len(anchors)) + target_cells(t))
        out.append(table(["workload"] + ["vs %s" % a for a in anchors] + ["target", "met?"], rows))
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--install-anchors", action="store_true",
                   help="create benchmarks/.anchors-venv with pycos==4.12.2, dask[distributed], psutil, matplotlib, py-spy")
    p.add_argument("--trials", type=int, default=3, help="trials per system and workload (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks that everything runs; numbers mean little)")
    p.add_argument("--json", help="write every trial, the medians and the ratios here")
    p.add_argument("--plot", help="write a PNG bar chart of the ratios here (needs matplotlib)")
    p.add_argument("--only", help="comma-separated workloads (%s)" % ",".join(common.WORKLOADS))
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems (default: all)")
    p.add_argument("--no-netns", action="store_true",
                   help="run dispycos, dask and mp drivers in the machine's own network namespace (pycos never)")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    return args


def compile_dispycos():
    """
    Write dispycos's bytecode (C{__pycache__}), as installing it with pip does:
    a source checkout run with C{PYTHONDONTWRITEBYTECODE=1} would otherwise
    compile every module again in every process it starts (~0.15 s of each
    node's start here), which the anchors, installed by pip, never pay.
    """
    import compileall

    compileall.compile_dir(os.path.join(ROOT, "dispycos"), quiet=1)


def main(argv=None):
    args = parse_args(argv)
    compile_dispycos()
    workloads = list(common.WORKLOADS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in common.WORKLOADS]
        if unknown:
            raise SystemExit("unknown workloads: %s (known: %s)" % (", ".join(unknown), ", ".join(common.WORKLOADS)))
        workloads = [w for w in workloads if w in wanted]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit("unknown systems: %s (known: %s)" % (", ".join(bad), ", ".join(SYSTEMS)))
    if args.install_anchors:
        install_anchors()
    pythons, netns, notes = available_systems(systems, not args.no_netns)
    systems = [s for s in systems if s in pythons]
    if netns is None and not args.no_netns:
        notes.append("no private network namespace available: drivers run in the machine's namespace (loopback addresses only)")
    full_run = not args.quick and not args.only and set(systems) == set(SYSTEMS)
    size = common.SIZES["quick" if args.quick else "full"]
    cpu_iters = common.calibrate(size["w5_seconds"]) if {"W5", "W5g"} & set(workloads) else 0
    load_before = os.getloadavg()
    started = time.time()
    info = versions(pythons)
    machine = "%d CPUs, %s, Python %s" % (os.cpu_count(), platform.platform(terse=True), info["python"])
    log("benchmarks: %s; systems: %s; workloads: %s; %d trial(s)%s; dispycos at %s"
        % (machine, ", ".join(systems), ", ".join(workloads), args.trials, " (quick sizes)" if args.quick else "",
           info.get("dispycos_commit", "?")))
    for n in notes:
        log("note: " + n)
    results = {s: {w: [] for w in workloads} for s in systems}
    errors = []
    workdir = tempfile.mkdtemp(prefix="dispycos-bench-")
    try:
        for trial in range(args.trials):
            for wi, w in enumerate(workloads):
                runnable = [s for s in systems if applicable(s, w)]
                k = (trial + wi) % max(len(runnable), 1)
                order = runnable[k:] + runnable[:k]  # alternate who goes first
                for s in order:
                    t = time.monotonic()
                    res, err = run_driver(s, pythons[s], w, args, netns, workdir, cpu_iters)
                    results[s][w].append(res)
                    if res is None:
                        errors.append({"system": s, "workload": w, "trial": trial, "error": err})
                        log("  trial %d %-5s %-8s FAILED: %s" % (trial + 1, w, s, err))
                    elif res.get("skipped"):
                        log("  trial %d %-5s %-8s skipped: %s" % (trial + 1, w, s, res["skipped"]))
                    else:
                        log("  trial %d %-5s %-8s %12s %-8s (%.1f s)"
                            % (trial + 1, w, s, fmt(res["value"]), res["unit"], time.monotonic() - t))
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
        full_run = False  # keep the saved results of the last complete run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians, ratios, targets = summarize(results, systems, workloads)
    text = report(medians, ratios, targets, systems, workloads, args.trials, results)
    print()
    print(text)
    for s in systems:
        for w in workloads:
            why = skipped(results, s, w)
            if why:
                notes.append("%s %s skipped: %s" % (s, w, why))
    for n in notes:
        print("note: " + n)
    if errors:
        print("note: %d measurement(s) failed; see the JSON output ('errors')" % len(errors))
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"summary": machine, "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": info,
        "config": {"trials": args.trials, "quick": args.quick, "sizes": size, "w5_cpu_iters": cpu_iters,
                   "netns": netns is not None and not args.no_netns, "pycos_in_netns": netns is not None,
                   "seconds": round(time.time() - started, 1)},
        "systems": systems,
        "workloads": workloads,
        "workload_info": {w: {"metric": m, "unit": u, "higher_is_better": h, "description": d}
                          for w, (m, u, h, d) in common.WORKLOADS.items() if w in workloads},
        "rows": [{"key": key, "workload": w, "field": field, "metric": metric, "unit": unit, "higher_is_better": h}
                 for key, w, field, metric, unit, h in table_rows(workloads)],
        "systems_of": {w: [s for s in SYSTEMS if applicable(s, w)] for w in workloads},
        "trials": results,
        "medians": medians,
        "ratios": ratios,
        "ratio_orientation": "> 1 means dispycos is better (dispycos/anchor for rates, anchor/dispycos for times and memory)",
        "targets": targets,
        "notes": notes,
        "errors": errors,
        "table": text,
    }
    json_path = args.json or (os.path.join(HERE, "results.json") if full_run else None)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
        log("wrote %s" % json_path)
    plot_path = args.plot or (os.path.join(HERE, "ratios.png") if full_run else None)
    if plot_path:
        make_plot(out, plot_path, workdir_json=json_path)
    return 1 if errors and not any(r for s in results.values() for v in s.values() for r in v) else 0


def make_plot(out, path, workdir_json=None):
    """Plot with whichever interpreter has matplotlib (ours, then the anchors'), or skip with a note."""
    tmp = None
    if workdir_json is None:
        fd, tmp = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f)
        workdir_json = tmp
    try:
        for py in (sys.executable, anchors_python()):
            if not os.path.exists(py) or _probe(py, "import matplotlib")[0] is None:
                continue
            r = subprocess.run([py, os.path.join(HERE, "plot.py"), workdir_json, path], capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0:
                log("wrote %s" % path)
            else:
                print("note: plotting failed: %s" % (r.stderr.strip().splitlines() or ["?"])[-1])
            return
        print("note: no plot: matplotlib is in neither this venv nor the anchors venv (--install-anchors adds it)")
    finally:
        if tmp:
            os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main())
