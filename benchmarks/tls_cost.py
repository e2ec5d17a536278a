"""
What TLS costs (SPEC 6.4 "Links"): W1, W3 and W4 of bench_dispycos.py between
two hosts in network namespaces this script makes (a veth pair, addresses
10.251.N.1 and .2, nothing in the root namespace), once over the TLS every
off-host link uses and once over plaintext (C{DISPYCOS_UNSAFE_PLAINTEXT=1} in
every process of the cluster, the measurement-only switch), alternating, each
C{--trials} times. A fresh node (2 servers) per run on host 2; the client and
its private scheduler on host 1. Needs root and iproute2.

    sudo python benchmarks/tls_cost.py [--trials 3] [--quick] [--json out.json]

prints the median of each workload in each mode and TLS / plaintext.
"""

import argparse
import json
import os
import secrets
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
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

import common  # noqa: E402

WORKLOADS = ("W1", "W3", "W4")
MODES = ("plaintext", "tls")


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=True)


class Pair:
    """Two namespaced hosts joined by a veth pair; removed on exit."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.names = ("dtls%d-1" % tag, "dtls%d-2" % tag)
        self.net = "10.251.%d" % (os.getpid() % 200 + 20)

    def addr(self, i):
        return "%s.%d" % (self.net, i)

    def argv(self, i, *argv):
        return ["ip", "netns", "exec", self.names[i - 1]] + list(argv)

    def __enter__(self):
        try:
            for n in self.names:
                sh("ip", "netns", "add", n)
                sh("ip", "-n", n, "link", "set", "lo", "up")
            sh("ip", "link", "add", "veth0", "netns", self.names[0], "type", "veth", "peer", "name", "veth0",
               "netns", self.names[1])
            for i, n in enumerate(self.names, 1):
                sh("ip", "-n", n, "addr", "add", "%s/24" % self.addr(i), "dev", "veth0")
                sh("ip", "-n", n, "link", "set", "veth0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for n in self.names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def child_env(secret, mode):
    env = dict(os.environ, DISPYCOS_SECRET=secret)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("DISPYCOS_UNSAFE_PLAINTEXT", None)
    if mode == "plaintext":
        env["DISPYCOS_UNSAFE_PLAINTEXT"] = "1"
    return env


def start_node(pair, secret, mode, dest):
    """A dispycosnode of 2 servers on host 2: (process, location)."""
    ready = os.path.join(dest, "ready")
    log = open(os.path.join(dest, "node.log"), "wb")
    proc = subprocess.Popen(pair.argv(2, sys.executable, "-m", "dispycos.scripts", "-c", "2", "-i", pair.addr(2),
                                      "--tcp_ports", "0", "--dest_path", dest, "--ready_file", ready, "--daemon"),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(secret, mode), cwd=dest, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    location = ""
    while not location:  # bounded by the deadline
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            with open(os.path.join(dest, "node.log"), "rb") as f:
                raise RuntimeError("dispycosnode did not start:\n" + f.read().decode("utf-8", "replace")[-3000:])
        if os.path.exists(ready):
            with open(ready) as f:
                location = f.read().strip()
        time.sleep(0.05)
    return proc, location


def stop(proc):
    """The node and its servers (its own process group), by PID and group."""
    pids = common.descendants(proc.pid)
    common.stop_tree(proc, grace=15)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_once(pair, mode, quick):
    """Every workload of one mode against a fresh node: {workload: value}."""
    secret = secrets.token_hex(8)
    dest = tempfile.mkdtemp(prefix="dispycos-tlscost-")
    proc = None
    try:
        proc, location = start_node(pair, secret, mode, dest)
        argv = pair.argv(1, sys.executable, os.path.abspath(__file__), "--client", location, pair.addr(1))
        if quick:
            argv.append("--quick")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=child_env(secret, mode), cwd=dest)
        lines = [l for l in out.stdout.splitlines() if l.startswith(common.RESULT_TAG)]
        if out.returncode != 0 or not lines:
            raise RuntimeError("%s client failed (rc %s):\n%s" % (mode, out.returncode, out.stderr[-3000:]))
        return json.loads(lines[-1][len(common.RESULT_TAG):])
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(dest, ignore_errors=True)


# -- the client (on host 1) ----------------------------------------------------------


def client(location, my_addr, quick):
    import cloudpickle
    from twisted.internet import defer, task

    import bench_dispycos

    cloudpickle.register_pickle_by_value(bench_dispycos)  # the servers have no benchmarks/ to import from
    size = common.SIZES["quick" if quick else "full"]
    out = _client_out

    async def main(reactor):
        import dispycos

        sched = dispycos.Scheduler(nodes=[location], ip_addr=my_addr, discover=False)
        comp = dispycos.Computation(bench_dispycos.COMPONENTS)
        try:
            await comp.schedule(timeout=60)
            assert await comp.run_result(bench_dispycos.noop) == 0  # warm: both servers' code loaded
            ctx = bench_dispycos.Context(comp, size, reactor, None)
            for w in WORKLOADS:
                out[w] = (await bench_dispycos.MEASURE[w](ctx))[0]
        finally:
            try:
                await comp.close(terminate=True)
            finally:
                await sched.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (trying things)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--client", nargs=2, metavar=("NODE", "MY_ADDR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        try:
            client(args.client[0], args.client[1], args.quick)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        print(common.RESULT_TAG + json.dumps(_client_out), flush=True)
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("tls_cost.py needs root and iproute2 (network namespaces)")
    results = {m: {w: [] for w in WORKLOADS} for m in MODES}
    with Pair() as pair:
        for trial in range(max(1, args.trials)):
            for mode in (MODES if trial % 2 == 0 else MODES[::-1]):
                got = run_once(pair, mode, args.quick)
                for w in WORKLOADS:
                    results[mode][w].append(got[w])
                print("trial %d %-9s %s" % (trial + 1, mode, "  ".join("%s %.1f" % (w, got[w]) for w in WORKLOADS)),
                      flush=True)
    print("\n%-4s %-9s %14s %14s %10s" % ("", "unit", "plaintext", "TLS", "TLS/plain"))
    summary = {}
    for w in WORKLOADS:
        plain, tls = (statistics.median(results[m][w]) for m in MODES)
        summary[w] = {"plaintext": plain, "tls": tls, "ratio": tls / plain}
        print("%-4s %-9s %14.1f %14.1f %10.2f" % (w, common.WORKLOADS[w][0], plain, tls, tls / plain))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"trials": results, "median": summary}, f, indent=1)


_client_out = {}

if __name__ == "__main__":
    main()
