"""
Helpers shared by the benchmark drivers (each system's driver runs in its own
interpreter: this repository's venv for dispycos and multiprocessing, the
anchors venv for pycos and dask). Standard library only, plus psutil when
present.

Every driver prints exactly one line ``BENCH-RESULT {json}`` on success.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import time

RESULT_TAG = "BENCH-RESULT "

#: Workload sizes. "quick" is a tiny size for the smoke test and trying things.
SIZES = {
    "full": {"w1_tasks": 2000, "w2_calls": 1000, "w2_warmup": 50, "w3_msgs": 20000, "w4_mib": 64,
             "w5_tasks": 8, "w5_seconds": 0.5, "mem_settle": 2.0},
    "quick": {"w1_tasks": 40, "w2_calls": 20, "w2_warmup": 2, "w3_msgs": 200, "w4_mib": 1,
              "w5_tasks": 4, "w5_seconds": 0.02, "mem_settle": 0.2},
}

#: Every workload, in the order they are run and printed:
#: name -> (metric, unit, True when higher is better, description).
WORKLOADS = {
    "W1": ("tasks/s", "tasks/s", True, "2,000 no-op CPU tasks, submit all then gather"),
    "W1a": ("tasks/s", "tasks/s", True, "2,000 no-op async (I/O) tasks, submit all then gather"),
    "W2": ("p50 round trip", "ms", False, "one no-op task at a time, run + result, p50 of 1,000"),
    "W3": ("msgs/s", "msgs/s", True, "20,000 small one-way messages client -> one remote task"),
    "W4": ("MiB/s", "MiB/s", True, "one 64 MiB bytes argument, the task returns its length"),
    "W5": ("speedup", "x", True, "8 CPU-bound ~0.5 s tasks on 2 servers: serial time / wall time"),
    "W6": ("start + first result", "s", False, "spawn the node, first result of a trivial task"),
    "MEM": ("idle RSS", "MiB", False, "RSS of node + 2 servers (all child processes), idle"),
}


def driver_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cpu-iters", type=int, default=0, help="W5 loop count (0: calibrate here)")
    p.add_argument("--lo-up", action="store_true", help="bring up 'lo' first (inside unshare -n)")
    p.add_argument("--workdir", default=None, help="scratch directory (removed by the caller)")
    args = p.parse_args(argv)
    args.size = SIZES["quick" if args.quick else "full"]
    if args.lo_up:
        lo_up()
    return args


def emit(workload, value, **extra):
    """Print the one result line of a driver."""
    metric, unit, higher, _ = WORKLOADS[workload]
    out = {"workload": workload, "value": value, "unit": unit, "higher_is_better": higher}
    out.update(extra)
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")
    sys.stdout.flush()


def p50(values):
    return statistics.median(values)


# -- network namespace ------------------------------------------------------------


def lo_up():
    """Set the loopback interface up (a fresh network namespace has it down)."""
    import fcntl
    import socket
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
    finally:
        s.close()


# -- processes --------------------------------------------------------------------


def _proc_stats():
    """(pid, fields of /proc/PID/stat after the command name) of every live process."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        yield int(name), data[data.rfind(b")") + 2:].split()


def _children_map():
    """pid -> list of child pids, from /proc (no psutil needed)."""
    kids = {}
    for pid, rest in _proc_stats():
        kids.setdefault(int(rest[1]), []).append(pid)
    return kids


def session_members(sid):
    """PIDs of the live processes in session C{sid} (from /proc), the leader included."""
    out = []
    for pid, rest in _proc_stats():
        if rest[0] != b"Z" and int(rest[3]) == sid:
            out.append(pid)
    return out


def descendants(pid):
    """PIDs of every descendant of C{pid} (children first)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        for c in kids.get(p, ()):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 2:data.rfind(b")") + 3] != b"Z"
    except OSError:
        return False


def stop_tree(proc, grace=10.0):
    """
    Stop the process C{proc} (a subprocess.Popen we started) and every process
    below it, by PID: SIGTERM to the root, then SIGKILL to whatever is left
    after C{grace} seconds. Bounded in time.
    """
    pids = descendants(proc.pid)
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    # processes created meanwhile (bounded look-up)
    pids = list(dict.fromkeys(pids + descendants(proc.pid)))
    deadline = time.monotonic() + min(grace, 3.0)
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in [proc.pid] + pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(5)
    except Exception:
        pass


def kill_pids(pids, grace=5.0):
    """SIGTERM each of C{pids} (processes we started), SIGKILL what is left after C{grace} s."""
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def rss_bytes(pid):
    """Resident set size of C{pid} (0 when gone)."""
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def rss_of(pids):
    """
    Sum of RSS in MiB and per-process details (psutil when present, else
    /proc), with PSS (shared pages divided among their users) when readable.
    """
    total, detail = 0, []
    try:
        import psutil
    except ImportError:
        psutil = None
    for pid in pids:
        pss = None
        if psutil is not None:
            try:
                p = psutil.Process(pid)
                rss, cmd = p.memory_info().rss, " ".join(p.cmdline())[:100]
            except psutil.Error:
                continue
            try:
                pss = p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                pss = None
        else:
            rss, cmd = rss_bytes(pid), ""
        total += rss
        d = {"pid": pid, "rss_mib": round(rss / 2**20, 1), "cmd": cmd}
        if pss is not None:
            d["pss_mib"] = round(pss / 2**20, 1)
        detail.append(d)
    return total / 2**20, detail


def pss_total(detail):
    """Sum of the PSS of L{rss_of}'s details in MiB, or None when not known for every process."""
    if not detail or any("pss_mib" not in d for d in detail):
        return None
    return round(sum(d["pss_mib"] for d in detail), 1)


def wait_until(predicate, timeout, step=0.002, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("%s not met within %s s" % (what, timeout))
        time.sleep(step)


# -- workloads of the systems with a blocking API (dask, multiprocessing) ------------


def measure_blocking(w, size, submit, result, noop, cpu_task, n_cpu=None, serial=None, data=None, start_w3=None):
    """
    Measure workload C{w} (not W6, which spans the cluster's start: the driver
    times it) through a blocking API: C{submit(fn, *args)} returns a handle,
    C{result(handle, timeout)} its value; C{start_w3(n)} starts the W3
    receiver of C{n} items and returns its handle and the function that puts
    one. Returns (value, extra).
    """
    extra = {}
    if w == "W1":
        n = size["w1_tasks"]
        t = time.perf_counter()
        handles = [submit(noop, i) for i in range(n)]
        extra["submit_seconds"] = time.perf_counter() - t
        results = [result(h, 300) for h in handles]
        dt = time.perf_counter() - t
        assert results == [0] * n
        extra["seconds"] = dt
        return n / dt, extra
    if w == "W2":
        lat = []
        for i in range(size["w2_warmup"] + size["w2_calls"]):  # bounded
            t = time.perf_counter()
            r = result(submit(noop, i), 300)
            if i >= size["w2_warmup"]:
                lat.append(time.perf_counter() - t)
        assert r == 0
        lat.sort()
        extra.update(p90_ms=lat[int(len(lat) * 0.9)] * 1000, min_ms=lat[0] * 1000)
        return p50(lat) * 1000, extra
    if w == "W3":
        n = size["w3_msgs"]
        handle, put = start_w3(n)
        t = time.perf_counter()
        for i in range(n):
            put(i)
        extra["send_loop_seconds"] = time.perf_counter() - t
        count = result(handle, 600)
        dt = time.perf_counter() - t
        assert count == n, count
        extra["seconds"] = dt
        return n / dt, extra
    if w == "W4":
        t = time.perf_counter()
        r = result(submit(len, data), 300)
        dt = time.perf_counter() - t
        assert r == len(data)
        extra["seconds"] = dt
        return size["w4_mib"] / dt, extra
    if w == "W5":
        k = size["w5_tasks"]
        t = time.perf_counter()
        handles = [submit(cpu_task, n_cpu) for _ in range(k)]
        for h in handles:
            result(h, 300)
        wall = time.perf_counter() - t
        extra.update(serial_seconds=serial, wall_seconds=wall, cpu_iters=n_cpu)
        return serial / wall, extra
    if w == "MEM":
        time.sleep(size["mem_settle"])
        mib, detail = rss_of(descendants(os.getpid()))
        extra.update(processes=detail, pss_mib=pss_total(detail))
        return mib, extra
    raise ValueError(w)


# -- CPU-bound work -----------------------------------------------------------------


def cpu_loop(n):
    """A pure Python loop (the CPU-bound task body of W5; copies of it live in the drivers)."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


def serial_seconds(fn, n, k, runs=3):
    """
    The serial time of C{k} calls C{fn(n)}: C{k} times the fastest of C{runs}
    calls here (W5's numerator; the fastest run is the least disturbed by
    other load on the machine).
    """
    best = None
    for _ in range(runs):
        t = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return k * best


def calibrate(seconds, fn=cpu_loop):
    """The loop count for which C{fn(count)} takes about C{seconds} here."""
    n = 10000
    for _ in range(30):  # bounded
        t = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t
        if dt >= 0.05:
            break
        n *= 4
    # three measured runs at this size, take the fastest (least disturbed)
    dts = []
    for _ in range(3):
        t = time.perf_counter()
        fn(n)
        dts.append(time.perf_counter() - t)
    return max(1, int(n * seconds / min(dts)))
