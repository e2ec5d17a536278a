"""
Observability (SPEC 6.5) with real processes on 127.0.0.1: /metrics of a
node, a private and a shared scheduler; JSON logs of a node and its servers;
what tasks print forwarded to their client.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.python import usage

import dispycos
from dispycos import Computation, Scheduler

from .conftest import NodeProcess, Session, free_port, terminate_group
from .test_core import sleep, wait_for
from .test_shared import SchedulerProcess

parser = pytest.importorskip("prometheus_client.parser")



def fetch(url):
    """GET C{url} (blocking); C{(content type, text)}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode("utf-8")


async def scrape(url):
    """The samples of C{url}'s page (name -> value: none of dispycos's metrics has labels) and its text."""
    content_type, text = await threads.deferToThread(fetch, url)
    assert content_type.startswith("text/plain")
    values = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels == {}, sample  # counts only: nothing names a task, a computation or a secret
            values[sample.name] = sample.value
    return values, text


def promtool_check(text):
    """C{promtool check metrics} of C{text}: its complaints (an empty string when none)."""
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).strip()


# -- task functions (shipped by value) ----------------------------------------------


def square(x):
    return x * x


def gen_square(x, task=None):
    yield task.sleep(0.01)
    return x * x


def fail(text):
    raise ValueError(text)


def hold(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


def printer(n):
    import sys

    for i in range(n):
        print("line %d" % i)
    print("to stderr", file=sys.stderr)
    sys.stdout.write("no newline at the end")
    return n


def gen_printer(n, task=None):
    for i in range(n):
        print("gen line %d" % i)
        if i % 100 == 0:
            yield task.sleep(0)
    return n


def noisy(n, done_path):
    pad = "x" * 80
    for i in range(n):
        print("noisy %d %s" % (i, pad))
    open(done_path, "w").close()
    return n


def tick(i, done_path, task=None):
    yield task.sleep(0.05)
    print("tick %d" % i)
    open(done_path, "w").close()
    return i


# -- /metrics -----------------------------------------------------------------------------


@pytest.fixture
def metrics_node():
    port = free_port()
    node = NodeProcess(cpus=2, args=["--metrics_port", str(port)])
    node.metrics_url = "http://127.0.0.1:%d/metrics" % port
    yield node
    node.stop()


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_ran(metrics_node):
    node = metrics_node
    # This process's connections are its runtime's, which outlives schedulers (and may come from earlier
    # tests): they are counted from here on (the scheduler connects to the node as it is made).
    from twisted.internet import reactor

    from dispycos import metrics
    from dispycos.peer.registry import runtime_for

    runtime = runtime_for(reactor)
    base = metrics._connection_values(metrics.Counts(runtime.counts.as_list() if runtime else None))
    base = {name + "_total": value for name, value in base.items()}
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False, metrics_port=0)
    files = tempfile.mkdtemp(prefix="dispycos-test-files-")
    data_file = os.path.join(files, "data.bin")
    with open(data_file, "wb") as f:
        f.write(b"d" * 100_000)
    comp = Computation([square, gen_square, fail, data_file])  # the file travels as a stream
    try:
        assert scheduler.metrics_url.startswith("http://127.0.0.1:")
        before, _ = await scrape(scheduler.metrics_url)
        assert before["dispycos_tasks_finished_total"] == 0
        assert before["dispycos_servers"] == 0
        await comp.schedule(timeout=30)
        results = [await comp.run_result(square, i) for i in range(4)]
        results += await comp.run_results(gen_square, range(4, 7))
        assert results == [i * i for i in range(7)]

        values, text = await scrape(scheduler.metrics_url)
        assert values["dispycos_tasks_started_total"] == 7
        assert values["dispycos_tasks_finished_total"] == 7
        assert values["dispycos_tasks_failed_total"] == 0
        assert values["dispycos_tasks_running"] == 0
        assert values["dispycos_tasks_retried_total"] == 0
        assert values["dispycos_tasks_timed_out_total"] == 0
        assert values["dispycos_servers"] == 2
        assert values["dispycos_servers_busy"] == 0
        assert values["dispycos_nodes"] == 1
        assert values["dispycos_computations_active"] == 1
        assert values["dispycos_computations_total"] == 1
        assert values["dispycos_computations_queued"] == 0
        assert values["dispycos_connections"] >= 3  # the node and its two servers
        assert values["dispycos_messages_sent_total"] > 7 and values["dispycos_messages_received_total"] > 7
        assert values["dispycos_sent_bytes_total"] > 0 and values["dispycos_received_bytes_total"] > 0
        assert values["dispycos_streams_sent_total"] - base["dispycos_streams_sent_total"] == 1
        assert values["dispycos_streams_received_total"] - base["dispycos_streams_received_total"] == 0
        assert values["dispycos_auth_failures_total"] - base["dispycos_auth_failures_total"] == 0

        # The node hears from its servers once a second while their counts change.
        async def node_values():
            return (await scrape(node.metrics_url))[0]

        deadline = time.monotonic() + 30
        while True:
            nvalues = await node_values()
            if nvalues["dispycos_tasks_finished_total"] >= 7 or time.monotonic() > deadline:
                break
            await sleep(0.2)
        assert nvalues["dispycos_tasks_finished_total"] == 7
        assert nvalues["dispycos_tasks_started_total"] == 7
        assert nvalues["dispycos_tasks_failed_total"] == 0
        assert nvalues["dispycos_servers"] == 2
        assert nvalues["dispycos_computations_active"] == 1
        assert nvalues["dispycos_connections"] >= 3  # the scheduler's link, the client at each server
        assert nvalues["dispycos_messages_received_total"] > 7
        assert nvalues["dispycos_streams_received_total"] == 1

        # What this process sent the node and its servers is what they received, and back (once the
        # servers' last counts reached the node, and between pulses).
        pairs = [("messages_sent", "messages_received"), ("messages_received", "messages_sent"),
                 ("sent_bytes", "received_bytes"), ("received_bytes", "sent_bytes")]

        def disagreement(here, there):
            return [(a, here["dispycos_%s_total" % a] - base["dispycos_%s_total" % a], there["dispycos_%s_total" % b])
                    for a, b in pairs
                    if here["dispycos_%s_total" % a] - base["dispycos_%s_total" % a] != there["dispycos_%s_total" % b]]

        deadline = time.monotonic() + 30
        while True:
            here = (await scrape(scheduler.metrics_url))[0]
            there = await node_values()
            here_again = (await scrape(scheduler.metrics_url))[0]
            differ = disagreement(here, there)
            if (not differ and here == here_again) or time.monotonic() > deadline:
                break
            await sleep(0.3)
        assert differ == [] and here == here_again, (differ, here, there)

        # Failures and a task still running are counted apart.
        with pytest.raises(dispycos.RemoteTaskError):
            await comp.run_result(fail, "no")
        with pytest.raises(dispycos.RemoteTaskError):
            await comp.run_result(fail, "no again")
        running = await comp.run(hold, 30)
        values, _ = await scrape(scheduler.metrics_url)
        assert values["dispycos_tasks_started_total"] == 10
        assert values["dispycos_tasks_finished_total"] == 7
        assert values["dispycos_tasks_failed_total"] == 2
        assert values["dispycos_tasks_running"] == 1
        assert values["dispycos_servers_busy"] == 1
        await running.terminate()
        with pytest.raises(dispycos.TaskTerminated):
            await running.result()
        values, _ = await scrape(scheduler.metrics_url)
        assert values["dispycos_tasks_terminated_total"] == 1
        assert values["dispycos_tasks_finished_total"] == 7
        assert values["dispycos_tasks_running"] == 0

        deadline = time.monotonic() + 30
        while True:
            nvalues, ntext = await scrape(node.metrics_url)
            if nvalues["dispycos_tasks_terminated_total"] >= 1 or time.monotonic() > deadline:
                break
            await sleep(0.2)
        assert (nvalues["dispycos_tasks_finished_total"], nvalues["dispycos_tasks_failed_total"],
                nvalues["dispycos_tasks_terminated_total"], nvalues["dispycos_tasks_running"]) == (7, 2, 1, 0)
        texts = [text, ntext]
    finally:
        await comp.close(terminate=True)
        await scheduler.close()
        shutil.rmtree(files, ignore_errors=True)

    # What servers reported stays counted after their computation (and processes) ended.
    deadline = time.monotonic() + 30
    while True:
        nvalues, ntext = await scrape(node.metrics_url)
        if nvalues["dispycos_computations_active"] == 0 or time.monotonic() > deadline:
            break
        await sleep(0.2)
    assert nvalues["dispycos_computations_active"] == 0
    assert nvalues["dispycos_tasks_finished_total"] == 7
    assert nvalues["dispycos_computations_total"] == 1
    texts.append(ntext)
    with pytest.raises(OSError):  # a closed scheduler's /metrics is gone
        await threads.deferToThread(fetch, scheduler.metrics_url)

    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed: the exposition was not linted")
    for text in texts:
        assert promtool_check(text) == ""


@pytest_twisted.ensureDeferred
async def test_metrics_count_retries_and_timeouts(fresh_node, tmp_path):
    """A task retried once (retry_on) and one past its timeout, as a single task and in a map."""
    from .test_retries import fails_first, sleep_gen

    node = fresh_node()
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False, metrics_port=0)
    comp = Computation([fails_first, sleep_gen])
    try:
        await comp.schedule(timeout=30)
        once = comp.options(retries=2, retry_on=(ValueError,))
        assert await once.run_result(fails_first, str(tmp_path / "a")) == "attempt 2"
        mapped = [r async for r in once.map(fails_first, [str(tmp_path / "b"), str(tmp_path / "c")])]
        assert mapped == ["attempt 2", "attempt 2"]
        with pytest.raises(dispycos.TaskTimeout):
            await comp.options(timeout=1).run_result(sleep_gen, 30)
        values, text = await scrape(scheduler.metrics_url)
        assert values["dispycos_tasks_retried_total"] == 3
        assert values["dispycos_tasks_timed_out_total"] == 1
        assert values["dispycos_tasks_running"] == 0
        assert values["dispycos_tasks_started_total"] == 4
        assert values["dispycos_tasks_finished_total"] == 3
    finally:
        await comp.close(terminate=True)
        await scheduler.close()
    if shutil.which("promtool") is not None:
        assert promtool_check(text) == ""


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_metrics(fresh_node):
    node = fresh_node(cpus=1)
    port = free_port()
    sched = SchedulerProcess([node.location], node.secret, args=["--metrics_port", str(port)])
    url = "http://127.0.0.1:%d/metrics" % port
    first = Computation([hold], secret=node.secret)
    second = Computation([hold], secret=node.secret)
    try:
        await wait_for(lambda: _answers(url), timeout=30)
        await first.schedule(sched.location, timeout=30)
        queued = second.schedule(sched.location, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            values, text = await scrape(url)
            if values["dispycos_computations_queued"] >= 1 or time.monotonic() > deadline:
                break
            await sleep(0.1)
        assert values["dispycos_computations_queued"] == 1
        assert values["dispycos_computations_active"] == 1
        assert values["dispycos_computations_total"] == 2
        assert values["dispycos_nodes"] == 1
        assert values["dispycos_servers"] == 1
        assert values["dispycos_connections"] >= 3  # the node and the two clients
        assert not any(name.startswith("dispycos_tasks_") for name in values)  # it never sees tasks

        wrong = Computation([hold], secret="wrong")
        with pytest.raises(dispycos.ScheduleError):
            await wrong.schedule(sched.location, timeout=30)
        deadline = time.monotonic() + 30  # (the scheduler counts it when it sees the connection go)
        while True:
            values, _ = await scrape(url)
            if values["dispycos_auth_failures_total"] >= 1 or time.monotonic() > deadline:
                break
            await sleep(0.1)
        assert values["dispycos_auth_failures_total"] >= 1

        assert await first.run_result(hold, 0.01) == 0.01
        await first.close()
        await queued
        values, text2 = await scrape(url)
        assert values["dispycos_computations_queued"] == 0
        assert values["dispycos_computations_active"] == 1
    finally:
        await first.close()
        await second.close()
        sched.stop()
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed: the exposition was not linted")
    assert promtool_check(text) == ""
    assert promtool_check(text2) == ""


def _answers(url):
    try:
        fetch(url)
        return True
    except OSError:
        return False


def test_metrics_listen_on_loopback_only_by_default(metrics_node):
    """The node's /metrics answers on 127.0.0.1 and on no other address of the host."""
    port = int(metrics_node.metrics_url.rsplit(":", 1)[1].split("/")[0])
    addresses = {c.laddr for c in __import__("psutil").Process(metrics_node.proc.pid).net_connections("tcp")
                 if c.status == "LISTEN" and c.laddr.port == port}
    assert addresses and {a.ip for a in addresses} == {"127.0.0.1"}


def test_observability_options():
    from dispycos.node import tap as nodetap
    from dispycos.scheduler import tap

    for cls in (nodetap.Options, tap.Options):
        o = cls()
        o.parseOptions(["--metrics_port", "0", "--metrics_host", "127.0.0.2", "--log_format", "json"])
        assert (o["metrics_port"], o["metrics_host"], o["log_format"], o["log_file"]) == (0, "127.0.0.2", "json", None)
        o = cls()
        o.parseOptions([])
        assert (o["metrics_port"], o["metrics_host"], o["log_format"]) == (None, "127.0.0.1", "text")
        with pytest.raises(usage.UsageError, match="--log_format"):
            cls().parseOptions(["--log_format", "xml"])
        with pytest.raises(usage.UsageError, match="--metrics_port"):
            cls().parseOptions(["--metrics_port", "70000"])
        with pytest.raises(usage.UsageError, match="--log_file"):
            cls().parseOptions(["--log_file", "/nonexistent-dir/x.log"])


# -- JSON logs ----------------------------------------------------------------------------


def _json_records(text):
    """Every line of C{text} as a JSON object (each record may start with RS, RFC 7464)."""
    records = []
    for line in text.split("\n"):  # (not splitlines(): RS is a line boundary for it)
        if not line.strip("\x1e"):
            continue
        record = json.loads(line.lstrip("\x1e"))
        assert isinstance(record, dict), line
        assert isinstance(record.get("level"), str) and isinstance(record.get("message"), str), line
        records.append(record)
    return records


@pytest_twisted.ensureDeferred
async def test_json_log_of_node_and_servers(fresh_node):
    node = fresh_node(cpus=2, args=["--log_format", "json"])
    async with Session(node, [printer, fail]) as comp:
        assert await comp.run_result(printer, 3) == 3  # what it prints is logged, as records
        with pytest.raises(dispycos.RemoteTaskError):
            await comp.run_result(fail, "logged?")
    await wait_for(lambda: "closed" in node.output(), timeout=30)  # (its record: the log goes on)
    node.proc.terminate()  # (stop() removes its directory, the log with it)
    node.proc.wait(30)
    text = node.output()
    node.stop()
    records = _json_records(text)
    assert len(records) >= 5
    assert all(line.startswith("\x1e{") for line in text.split("\n") if line), text[:2000]
    levels = {r["level"] for r in records}
    assert "info" in levels
    messages = [r["message"] for r in records]
    assert any("ready at" in m for m in messages)
    servers = {m.split(":")[0] for m in messages if re.match(r"server \d+: ", m)}
    assert len(servers) == 2, servers  # the records of both servers, logged by the node
    assert any("line 2" in m for m in messages)  # a task's print: a record too


def test_log_file():
    """--log_file F: the records go to F, nothing to stderr; --log_format json there too."""
    dest = tempfile.mkdtemp(prefix="dispycos-test-node-")
    log_file = os.path.join(dest, "node-log.json")
    try:
        node = NodeProcess(cpus=1, args=["--log_format", "json", "--log_file", log_file])
        try:
            deadline = time.monotonic() + 30
            while "ready at" not in (open(log_file).read() if os.path.exists(log_file) else ""):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            node.stop()
        assert node.output().strip() == ""
        with open(log_file) as f:
            records = _json_records(f.read())
        assert any("ready at" in r["message"] for r in records)
        assert any(re.match(r"server \d+: ", r["message"]) for r in records)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# -- forward_output -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forward_output_in_order_with_prefix(node, capfd):
    async with Session(node, [printer, gen_printer], forward_output=True) as comp:
        rtask = await comp.run(printer, 1000)
        gtask = await comp.run(gen_printer, 300)
        assert await rtask.result() == 1000
        assert await gtask.result() == 300
        prefix = "[printer@%s] " % rtask.location
        gprefix = "[gen_printer@%s] " % gtask.location
        out, err = "", ""

        def complete():
            nonlocal out, err
            o, e = capfd.readouterr()
            out += o
            err += e
            return (prefix + "no newline at the end") in out and (gprefix + "gen line 299") in out \
                and (prefix + "to stderr") in err

        await wait_for(complete, timeout=30)
    lines = [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]
    assert lines == ["line %d" % i for i in range(1000)] + ["no newline at the end"]
    glines = [line[len(gprefix):] for line in out.splitlines() if line.startswith(gprefix)]
    assert glines == ["gen line %d" % i for i in range(300)]
    assert [line for line in err.splitlines() if line.startswith("[")] == [prefix + "to stderr"]


@pytest_twisted.ensureDeferred
async def test_output_not_forwarded_unless_asked(node, capfd):
    async with Session(node, [printer]) as comp:
        assert await comp.run_result(printer, 5) == 5
        await sleep(0.5)
    out, err = capfd.readouterr()
    assert "line 4" not in out and "[printer@" not in out + err


@pytest_twisted.ensureDeferred
async def test_forward_output_slow_client_does_not_block_the_server(node, capfd):
    done = tempfile.mkdtemp(prefix="dispycos-test-done-")
    n = 300_000  # ~30 MB of lines: more than the sockets hold and the server's buffer keeps
    try:
        async with Session(node, [noisy, tick], forward_output=True) as comp:
            loc = (await comp.servers())[0]
            assert await comp.run_result_at(loc, tick, -1, os.path.join(done, "warm")) == -1
            proto = await comp.runtime.connection(loc)
            proto.transport.pauseProducing()  # this client reads nothing from that server now
            try:
                big = await comp.run_async_at(loc, noisy, n, os.path.join(done, "noisy"))
                ticks = [await comp.run_async_at(loc, tick, i, os.path.join(done, "tick-%d" % i))
                         for i in range(10)]
                wanted = ["noisy"] + ["tick-%d" % i for i in range(10)]
                # The server runs them all, and its reactor (the generator tasks) keeps going.
                await wait_for(lambda: all(os.path.exists(os.path.join(done, w)) for w in wanted), timeout=300)
            finally:
                proto.transport.resumeProducing()
            assert await big.result() == n
            assert [await t.result() for t in ticks] == list(range(10))
            prefix = "[noisy@%s] " % loc
            dropped = re.compile(re.escape(prefix) + r"\.\.\. (\d+) lines? of output dropped")
            numbers, lost, seen = [], [], {"tick 9": False, "partial": ""}

            def complete():
                # The ticks ran while noisy printed, so their lines come among noisy's: what
                # is still on its way (kernel buffers, the server's transport) is waited for
                # until every noisy line has arrived or been counted as dropped.
                text = seen["partial"] + capfd.readouterr()[0]
                lines = text.split("\n")
                seen["partial"] = lines.pop()
                for line in lines:
                    if line.startswith(prefix + "noisy "):
                        numbers.append(int(line.split()[2]))
                    elif dropped.match(line):
                        lost.append(int(dropped.match(line).group(1)))
                    elif line == "[tick@%s] tick 9" % loc:
                        seen["tick 9"] = True
                return seen["tick 9"] and len(numbers) + sum(lost) >= n

            try:
                await wait_for(complete, timeout=120)
            except Exception:
                raise AssertionError("after 120 s: %d noisy lines, %d counted as dropped, of %d; tick 9 seen: %s"
                                     % (len(numbers), sum(lost), n, seen["tick 9"]))
    finally:
        shutil.rmtree(done, ignore_errors=True)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in order, none twice
    assert sum(lost) > 0
    assert len(numbers) + sum(lost) == n  # every line arrived or was counted as dropped
    assert numbers[0] == 0


def test_twistd_node_json_log_and_metrics():
    """The twistd plugin takes the same options: JSON records on its log, /metrics on its port."""
    from .conftest import env_for_children

    dest = tempfile.mkdtemp(prefix="dispycos-test-twistd-")
    env = env_for_children(dest)
    env["DISPYCOS_SECRET"] = "s5"
    ready = os.path.join(dest, "ready")
    port = free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    cmd = [twistd, "-n", "--pidfile=", "dispycosnode", "-c", "1", "-i", "127.0.0.1", "--tcp_ports", "0", "--daemon",
           "--dest_path", os.path.join(dest, "d"), "--ready_file", ready, "--log_format", "json",
           "--metrics_port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=dest,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(ready)
        _, page = fetch("http://127.0.0.1:%d/metrics" % port)
        values = {s.name: s.value for f in parser.text_string_to_metric_families(page) for s in f.samples}
        assert values["dispycos_tasks_finished_total"] == 0
        deadline = time.monotonic() + 30
        while values.get("dispycos_servers") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            _, page = fetch("http://127.0.0.1:%d/metrics" % port)
            values = {s.name: s.value for f in parser.text_string_to_metric_families(page) for s in f.samples}
        assert values["dispycos_servers"] == 1
    finally:
        try:
            text = terminate_group(proc)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    records = _json_records(text)
    assert any("ready at" in r["message"] for r in records)
    assert any("metrics at http://127.0.0.1:%d/metrics" % port in r["message"] for r in records)


def test_shared_scheduler_json_log(fresh_node):
    node = fresh_node(cpus=1)
    sched = SchedulerProcess([node.location], node.secret, args=["--log_format", "json"])
    sched.stop()
    text = sched.proc.stdout.read().decode("utf-8", "replace")
    # SIGTERM as soon as it listens: it must have been handled (a clean stop, exit 0), never the
    # default action that ends the process unlogged (which it was while services started before
    # the reactor ran, see dispycos.scripts.run_until_stopped).
    assert sched.proc.returncode == 0, text
    records = _json_records(text)
    assert any("listening at 127.0.0.1:%d" % sched.port in r["message"] for r in records), text
    assert all(line.startswith("\x1e{") for line in text.split("\n") if line), text[:2000]


@pytest_twisted.ensureDeferred
async def test_forward_output_through_a_shared_scheduler(fresh_node, capfd):
    node = fresh_node(cpus=1)
    sched = SchedulerProcess([node.location], node.secret)
    comp = Computation([printer], secret=node.secret, forward_output=True)
    try:
        await comp.schedule(sched.location, timeout=30)
        rtask = await comp.run(printer, 50)
        assert await rtask.result() == 50
        prefix = "[printer@%s] " % rtask.location
        out = ""

        def complete():
            nonlocal out
            out += capfd.readouterr()[0]
            return (prefix + "no newline at the end") in out

        await wait_for(complete, timeout=30)
    finally:
        await comp.close()
        sched.stop()
    lines = [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]
    assert lines == ["line %d" % i for i in range(50)] + ["no newline at the end"]
