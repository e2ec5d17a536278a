"""
multiprocessing driver: Pool(2) on this machine (no network at all), one
workload per process, run by benchmarks/run.py with this repository's venv.

    python benchmarks/bench_mp.py --workload W2

prints one line ``BENCH-RESULT {json}``. W3: a multiprocessing.Queue given to
the workers at start; the parent puts, one pool task gets.
"""

import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

_queue = None


def _init(q):
    global _queue
    _queue = q


def noop(i=None):
    return 0


def receiver(n):
    count = 0
    for _ in range(n):
        _queue.get(timeout=300)
        count += 1
    return count


def cpu_task(n):
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


def run_workload(args):
    w, size = args.workload, args.size
    extra = {}
    serial = None
    if w == "W5":
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
        serial = common.serial_seconds(cpu_task, n_cpu, size["w5_tasks"])
    data = b"\x5a" * (size["w4_mib"] * 2**20) if w == "W4" else None
    q = multiprocessing.Queue() if w == "W3" else None

    t_spawn = time.perf_counter()
    pool = multiprocessing.Pool(2, initializer=_init, initargs=(q,))
    pids = [p.pid for p in pool._pool]
    try:
        assert pool.apply(noop) == 0
        if w == "W6":
            return time.perf_counter() - t_spawn, extra
        if w == "W1":
            n = size["w1_tasks"]
            t = time.perf_counter()
            rs = [pool.apply_async(noop, (i,)) for i in range(n)]
            extra["submit_seconds"] = time.perf_counter() - t
            results = [r.get(300) for r in rs]
            dt = time.perf_counter() - t
            assert results == [0] * n
            extra["seconds"] = dt
            return n / dt, extra
        if w == "W2":
            lat = []
            for i in range(size["w2_warmup"] + size["w2_calls"]):
                t = time.perf_counter()
                r = pool.apply(noop, (i,))
                if i >= size["w2_warmup"]:
                    lat.append(time.perf_counter() - t)
            assert r == 0
            lat.sort()
            extra.update(p90_ms=lat[int(len(lat) * 0.9)] * 1000, min_ms=lat[0] * 1000)
            return common.p50(lat) * 1000, extra
        if w == "W3":
            n = size["w3_msgs"]
            fut = pool.apply_async(receiver, (n,))
            t = time.perf_counter()
            for i in range(n):
                q.put(i)
            extra["send_loop_seconds"] = time.perf_counter() - t
            count = fut.get(600)
            dt = time.perf_counter() - t
            assert count == n, count
            extra["seconds"] = dt
            return n / dt, extra
        if w == "W4":
            t = time.perf_counter()
            r = pool.apply(len, (data,))
            dt = time.perf_counter() - t
            assert r == len(data)
            extra["seconds"] = dt
            return size["w4_mib"] / dt, extra
        if w == "W5":
            k = size["w5_tasks"]
            t = time.perf_counter()
            pool.map(cpu_task, [n_cpu] * k, chunksize=1)
            wall = time.perf_counter() - t
            extra.update(serial_seconds=serial, wall_seconds=wall, cpu_iters=n_cpu)
            return serial / wall, extra
        if w == "MEM":
            time.sleep(size["mem_settle"])
            mib, detail = common.rss_of(common.descendants(os.getpid()))
            extra.update(processes=detail, pss_mib=common.pss_total(detail))
            return mib, extra
        raise ValueError(w)
    finally:
        pool.terminate()
        pool.join()
        common.kill_pids(pids, grace=1)


def main(argv=None):
    args = common.driver_args(argv)
    value, extra = run_workload(args)
    common.emit(args.workload, value, **extra)


if __name__ == "__main__":
    main()
