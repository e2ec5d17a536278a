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
    "full": {"w1_tasks": 2000, "w1rr_tasks": 20000, "w1map_tasks": 1000000, "w2_calls": 1000, "w2_warmup": 50,
             "w3_msgs": 20000, "w4_mib": 64, "w5_tasks": 8, "w5_seconds": 0.5, "w7_nodes": 8, "w7_servers": 4,
             "w7_tasks": 20000, "mem_settle": 2.0},
    "quick": {"w1_tasks": 40, "w1rr_tasks": 200, "w1map_tasks": 2000, "w2_calls": 20, "w2_warmup": 2,
              "w3_msgs": 200, "w4_mib": 1, "w5_tasks": 4, "w5_seconds": 0.02, "w7_nodes": 2, "w7_servers": 2,
              "w7_tasks": 200, "mem_settle": 0.2},
}

#: Every workload, in the order they are run and printed:
#: name -> (metric, unit, True when higher is better, description).
WORKLOADS = {
    "W1": ("tasks/s", "tasks/s", True, "2,000 no-op CPU tasks, each run awaited before the next, then each result"),
    "W1g": ("tasks/s", "tasks/s", True, "2,000 no-op CPU tasks, all submitted concurrently, then gathered (old W1)"),
    "W1a": ("tasks/s", "tasks/s", True, "2,000 no-op async (I/O) tasks, submitted as W1"),
    "W1rr": ("tasks/s", "tasks/s", True, "run_results(noop, range(20,000)) on 2 servers"),
    "W1map": ("tasks/s", "tasks/s", True, "map(noop, range(1,000,000)), every result consumed, client peak RSS"),
    "W2": ("p50 round trip", "ms", False, "one no-op task at a time, run + result, p50 of 1,000"),
    "W3": ("msgs/s", "msgs/s", True, "20,000 small one-way messages client -> one remote task"),
    "W4": ("MiB/s", "MiB/s", True, "one 64 MiB bytes argument, the task returns its length"),
    "W5": ("speedup", "x", True, "8 CPU-bound ~0.5 s plain-function tasks on 2 servers: serial time / wall time"),
    "W5g": ("speedup", "x", True, "W5 with a generator function, submitted as W1 (run x 8, then result x 8)"),
    "W6": ("start + first result", "s", False, "spawn the node, first result of a trivial task"),
    "W7": ("tasks/s", "tasks/s", True, "run_results(noop, range(20,000)) on 8 nodes x 4 servers (127.0.0.1-8)"),
    "MEM": ("idle RSS", "MiB", False, "RSS of node + 2 servers (all child processes), idle; USS and PSS beside"),
}

#: Values a workload reports besides its own (in its result's extra fields), shown as rows of
#: their own: workload -> [(field, label, unit, True when higher is better)].
DETAILS = {
    "W1rr": [("mp_apply_async_tasks_s", "apply_async per task (mp)", "tasks/s", True),
             ("cluster_cpu_us_per_task", "node + servers CPU per task", "us", False)],
    "W1map": [("peak_rss_mib", "client peak RSS", "MiB", False),
              ("rss_growth_mib", "client RSS growth", "MiB", False)],
    "W7": [("client_cpu_us_per_task", "client CPU per task", "us", False),
           ("cluster_cpu_us_per_task", "node + servers CPU per task", "us", False)],
    "MEM": [("uss_mib", "idle USS", "MiB", False), ("pss_mib", "idle PSS", "MiB", False)],
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


def skip(workload, why):
    """Print the result line of a workload this system cannot run here (value None, C{skipped} says why)."""
    emit(workload, None, skipped=why)


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


def cpu_seconds_of(pids):
    """
    CPU seconds the processes C{pids} (all their threads) have run so far:
    /proc/PID/schedstat, in nanoseconds (stat's utime and stime count 10 ms
    ticks, too coarse for 32 servers that each run a few ms); gone ones count 0.
    """
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/schedstat" % (pid, tid), "rb") as f:
                    total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


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
    /proc), with PSS (shared pages divided among their users) and USS (pages
    of that process alone) when readable.
    """
    total, detail = 0, []
    try:
        import psutil
    except ImportError:
        psutil = None
    for pid in pids:
        full = None
        if psutil is not None:
            try:
                p = psutil.Process(pid)
                rss, cmd = p.memory_info().rss, " ".join(p.cmdline())[:100]
            except psutil.Error:
                continue
            try:
                full = p.memory_full_info()
            except (psutil.Error, AttributeError):
                full = None
        else:
            rss, cmd = rss_bytes(pid), ""
        total += rss
        d = {"pid": pid, "rss_mib": round(rss / 2**20, 1), "cmd": cmd}
        for field in ("pss", "uss"):
            if getattr(full, field, None) is not None:
                d[field + "_mib"] = round(getattr(full, field) / 2**20, 1)
        detail.append(d)
    return total / 2**20, detail


def detail_total(detail, field):
    """Sum of C{field} (C{"pss_mib"}, C{"uss_mib"}) of L{rss_of}'s details, or None when not known for every process."""
    if not detail or any(field not in d for d in detail):
        return None
    return round(sum(d[field] for d in detail), 1)


def pss_total(detail):
    """Sum of the PSS of L{rss_of}'s details in MiB, or None when not known for every process."""
    return detail_total(detail, "pss_mib")


def memory_report(pids):
    """
    MEM's value and extra fields for the processes C{pids}: (RSS in MiB,
    {"processes": per-process details, "pss_mib": ..., "uss_mib": ...}).
    """
    mib, detail = rss_of(pids)
    return mib, {"processes": detail, "pss_mib": detail_total(detail, "pss_mib"),
                 "uss_mib": detail_total(detail, "uss_mib")}


class PeakRSS:
    """
    The peak RSS of this process over a C{with} block: /proc/self/statm
    sampled every C{interval} s by a thread, and getrusage's ru_maxrss (the
    lifetime peak: when it grew inside the block, it is the block's exact
    peak). L{report} gives the fields W1map records.
    """

    def __init__(self, interval=0.05):
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = None
        self._thread = None

    @staticmethod
    def _maxrss():
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def _sample(self):
        while not self._stop.wait(self.interval):  # ends with the block
            self.peak = max(self.peak, rss_bytes(os.getpid()))

    def __enter__(self):
        import threading

        self.baseline = self.peak = rss_bytes(os.getpid())
        self._maxrss_before = self._maxrss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(os.getpid()))
        maxrss = self._maxrss()
        if maxrss > self._maxrss_before:
            self.peak = max(self.peak, maxrss)
        self.maxrss_after = maxrss
        return False

    def report(self):
        """{"peak_rss_mib", "baseline_rss_mib", "rss_growth_mib", "ru_maxrss_mib"}."""
        mib = lambda b: round(b / 2**20, 1)
        return {"peak_rss_mib": mib(self.peak), "baseline_rss_mib": mib(self.baseline),
                "rss_growth_mib": mib(self.peak - self.baseline), "ru_maxrss_mib": mib(self.maxrss_after)}


def wait_until(predicate, timeout, step=0.002, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("%s not met within %s s" % (what, timeout))
        time.sleep(step)


# -- workloads of the systems with a blocking API (dask, multiprocessing) ------------


def submit_then_collect(submit, result, fn, n):
    """
    W1 through a blocking API: C{submit(fn, i)} for i in range(C{n}), one
    after another, then C{result(handle, timeout)} of each in order.
    Returns (seconds, seconds the submissions took).
    """
    t = time.perf_counter()
    handles = [submit(fn, i) for i in range(n)]
    t_submitted = time.perf_counter() - t
    results = [result(h, 300) for h in handles]
    dt = time.perf_counter() - t
    assert results == [0] * n, results[:5]
    return dt, t_submitted


def measure_blocking(w, size, submit, result, noop, cpu_task, n_cpu=None, data=None, start_w3=None,
                     map_all=None, imap=None, per_task_key=None):
    """
    Measure workload C{w} (not W6, which spans the cluster's start: the driver
    times it) through a blocking API: C{submit(fn, *args)} returns a handle,
    C{result(handle, timeout)} its value; C{start_w3(n)} starts the W3
    receiver of C{n} items and returns its handle and the function that puts
    one; C{map_all(fn, iterable)} returns the list of results (W1rr; with
    C{per_task_key}, W1rr's tasks are also run through C{submit}/C{result}
    and their rate recorded under that name); C{imap(fn, iterable)} yields
    the results one by one (W1map). Returns (value, extra).
    """
    extra = {}
    if w == "W1":
        n = size["w1_tasks"]
        dt, extra["submit_seconds"] = submit_then_collect(submit, result, noop, n)
        extra["seconds"] = dt
        return n / dt, extra
    if w == "W1rr":
        n = size["w1rr_tasks"]
        t = time.perf_counter()
        results = map_all(noop, range(n))
        dt = time.perf_counter() - t
        assert list(results) == [0] * n
        extra["seconds"] = dt
        if per_task_key:
            extra[per_task_key] = n / submit_then_collect(submit, result, noop, n)[0]
        return n / dt, extra
    if w == "W1map":
        n = size["w1map_tasks"]
        count = 0
        with PeakRSS() as mem:
            t = time.perf_counter()
            for r in imap(noop, range(n)):
                count += r == 0
            dt = time.perf_counter() - t
        assert count == n, count
        extra.update(seconds=dt, **mem.report())
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
        serial = serial_seconds(cpu_task, n_cpu, k)
        t = time.perf_counter()
        handles = [submit(cpu_task, n_cpu) for _ in range(k)]
        for h in handles:
            result(h, 300)
        wall = time.perf_counter() - t
        value, more = speedup(serial, cpu_task, n_cpu, k, wall)
        extra.update(more)
        return value, extra
    if w == "MEM":
        time.sleep(size["mem_settle"])
        return memory_report(descendants(os.getpid()))
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


def speedup(serial_before, fn, n, k, wall):
    """
    W5's value and extra fields: the serial time of C{k} calls C{fn(n)}
    (L{serial_seconds}) measured right before the parallel run
    (C{serial_before}) and again right after it, both in the driver with
    the cluster up and idle, their mean over C{wall}. On a shared 2-core
    machine one call's time drifts by a quarter within seconds (and is
    slower still while the previous trial's processes end): a numerator
    taken on both sides of the wall keeps that drift out of the ratio, for
    every system alike.
    """
    serial_after = serial_seconds(fn, n, k)
    serial = (serial_before + serial_after) / 2
    return serial / wall, {"serial_seconds": serial, "serial_before_seconds": serial_before,
                           "serial_after_seconds": serial_after, "wall_seconds": wall, "cpu_iters": n}


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
