"""
multiprocessing driver: Pool(2) on this machine (no network at all), one
workload per process, run by benchmarks/run.py with this repository's venv.

    python benchmarks/bench_mp.py --workload W2

prints one line ``BENCH-RESULT {json}``. W1: ``apply_async`` per task, then
``get()`` of each; W1rr: ``pool.map`` (and ``apply_async`` per task as
``mp_apply_async_tasks_s``); W1map: ``pool.imap(chunksize=1000)`` with this
process's peak RSS; W3: a multiprocessing.Queue given to the workers at start;
the parent puts, one pool task gets.
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
    n_cpu = None
    if w == "W5":
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
    data = b"\x5a" * (size["w4_mib"] * 2**20) if w == "W4" else None
    q = multiprocessing.Queue() if w == "W3" else None

    t_spawn = time.perf_counter()
    pool = multiprocessing.Pool(2, initializer=_init, initargs=(q,))
    pids = [p.pid for p in pool._pool]
    try:
        assert pool.apply(noop) == 0
        if w == "W6":
            return time.perf_counter() - t_spawn, extra
        return common.measure_blocking(
            w, size, lambda fn, *a: pool.apply_async(fn, a), lambda r, timeout: r.get(timeout),
            noop, cpu_task, n_cpu=n_cpu, data=data,
            start_w3=lambda n: (pool.apply_async(receiver, (n,)), q.put),
            map_all=pool.map, imap=lambda fn, it: pool.imap(fn, it, chunksize=1000),
            per_task_key="mp_apply_async_tasks_s")
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
