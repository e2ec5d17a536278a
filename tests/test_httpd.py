"""
The browser monitor's HTTP side (dispycos.httpd): its JSON resources while
tasks run and after the computation closed, terminating and suspending from
POSTs, the refusal of cross-site requests, HTTPS, server-sent events to
several clients, and the examples that use it. A real node; requests go
through twisted.web.client.Agent. (The pages in a real browser:
tests/test_httpd_browser.py.)
"""

import datetime
import http.cookiejar
import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from io import BytesIO

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor, ssl
from twisted.internet.protocol import Protocol
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, CookieAgent, FileBodyProducer, ResponseDone,
                                 ResponseFailed, ResponseNeverReceived)
from twisted.web.http_headers import Headers

import dispycos
import dispycos.httpd
from dispycos import Computation, DispycosStatus, Scheduler, Status

from .conftest import ROOT, env_for_children
from .test_core import sleep, wait_for


def long_job(index, label, seconds=60, task=None):
    yield task.sleep(seconds)
    return label


def quick_job(n, task=None):
    yield task.sleep(0.05)
    return n * 2


# -- HTTP helpers ------------------------------------------------------------------


#: The cookies the monitors set (as a browser keeps them): every request through L{http} sends them.
JAR = http.cookiejar.CookieJar()


async def http(method, url, fields=None, headers=None, agent=None, timeout=20, cookies=True):
    """
    (code, headers, body bytes) of one request; C{fields}: a form (list of
    pairs or dict). With C{cookies}, those of L{JAR} go along (and it keeps
    what the answer sets).
    """
    agent = agent or Agent(reactor)
    if cookies:
        agent = CookieAgent(agent, JAR)
    hdrs = Headers()
    for k, v in (headers or {}).items():
        hdrs.addRawHeader(k, v)
    body = None
    if fields is not None:
        hdrs.addRawHeader("content-type", "application/x-www-form-urlencoded")
        body = FileBodyProducer(BytesIO(urllib.parse.urlencode(fields, doseq=True).encode()))
    d = agent.request(method.encode(), url.encode(), hdrs, body)
    d.addTimeout(timeout, reactor)
    response = await d
    reader = BodyReader()
    response.deliverBody(reader)
    data = await reader.done.addTimeout(timeout, reactor)
    return response.code, response.headers, data


class BodyReader(Protocol):
    """A whole response body (what readBody does, minus its warning about abortConnection)."""

    def __init__(self):
        self.chunks = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def base_of(monitor):
    """The monitor's address without its token."""
    return monitor.url.partition("?")[0]


async def login(monitor, agent=None):
    """
    Open the address the monitor printed, as its user does: the token comes
    back as an HttpOnly, SameSite=Strict cookie (kept in L{JAR}). Returns
    the address without the token.
    """
    code, headers, body = await http("GET", monitor.url, agent=agent)
    assert code == 200 and b"<!DOCTYPE html>" in body, (code, body)
    [cookie] = [c for c in headers.getRawHeaders("set-cookie") if c.startswith(monitor.cookie_name + "=")]
    assert cookie.split(";")[0] == "%s=%s" % (monitor.cookie_name, monitor.token)
    assert {"httponly", "samesite=strict", "path=/"} <= {a.strip().lower() for a in cookie.split(";")}, cookie
    return base_of(monitor)


async def get_json(url, **kw):
    code, headers, body = await http("GET", url, **kw)
    assert code == 200, (code, body)
    assert headers.getRawHeaders("content-type")[0].startswith("application/json")
    return json.loads(body)


async def post_json(url, fields, origin=None, **kw):
    headers = dict(kw.pop("headers", {}))
    if origin:
        headers["origin"] = origin
    code, _, body = await http("POST", url, fields, headers=headers, **kw)
    return code, json.loads(body) if body else None


class Monitored:
    """A private scheduler on the test node, a computation and its monitor."""

    def __init__(self, node, components, monitor_after_schedule=False, status_task=None, **monitor_kw):
        self.statuses = []
        self.scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
        self.comp = Computation(components, status_task=status_task or self.statuses.append, pulse_interval=1)
        self.after = monitor_after_schedule
        self.monitor_kw = dict(port=0, **monitor_kw)
        self.monitor = None if self.after else dispycos.httpd.HTTPServer(self.comp, **self.monitor_kw)

    @property
    def url(self):
        """The monitor's address without the token (the cookie serves instead, after L{login})."""
        return base_of(self.monitor)

    async def __aenter__(self):
        await self.comp.schedule(timeout=30)
        if self.after:
            self.monitor = dispycos.httpd.HTTPServer(self.comp, **self.monitor_kw)
        await login(self.monitor)
        return self

    async def __aexit__(self, *exc):
        try:
            await self.comp.close(terminate=True)
        finally:
            try:
                if self.monitor is not None:
                    await self.monitor.shutdown(wait=False)
            finally:
                await self.scheduler.close()


# -- JSON resources ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_resources_while_tasks_run_and_after_close(node):
    async with Monitored(node, [long_job, quick_job], poll_sec=3) as m:
        url = m.url
        assert url == "http://127.0.0.1:%d/" % m.monitor.port and m.monitor.port > 0
        assert m.monitor.url == url + "?token=" + m.monitor.token
        rtasks = [await m.comp.run_async(long_job, i, "label-%d" % i, seconds=60) for i in range(3)]
        assert await m.comp.run_results(quick_job, [1, 2]) == [2, 4]
        servers = await m.comp.servers()
        assert len(servers) == 2
        await wait_for(lambda: m.monitor.nodes and len(m.monitor.nodes["127.0.0.1"].history) >= 2, timeout=15)

        status = await get_json(url + "cluster_status")
        assert (status["tasks_submitted"], status["tasks_running"], status["tasks_done"]) == (5, 3, 2)
        assert status["computation"] == "Scheduled" and status["poll_sec"] == 3 and status["show_task_args"] is True
        [n] = status["nodes"]
        assert n["addr"] == "127.0.0.1" and n["status"] == "Initialized" and n["name"]
        assert (n["servers"], n["tasks_submitted"], n["tasks_running"], n["tasks_done"]) == (2, 5, 3, 2)
        assert set(n["avail"]) == {"cpu", "memory", "disk", "swap"}
        assert 0 <= n["avail"]["cpu"] <= 100 and n["avail"]["memory"] > 0 and n["avail"]["disk"] > 0
        assert abs(n["update_time"] - time.time()) < 30
        assert len(n["history"]) >= 2 and all(len(h) == 3 for h in n["history"])
        assert "history" not in (await get_json(url + "cluster_status?history=0"))["nodes"][0]

        info = await get_json(url + "node_info?host=127.0.0.1")
        assert info["addr"] == "127.0.0.1" and info["tasks_running"] == 3 and info["name"] == n["name"]
        assert sorted(s["location"] for s in info["servers"]) == sorted(str(s) for s in servers)
        for s in info["servers"]:
            assert s["status"] == "Initialized"
            assert set(s) >= {"location", "status", "tasks_submitted", "tasks_running", "tasks_done"}
        assert sum(s["tasks_running"] for s in info["servers"]) == 3
        assert sum(s["tasks_done"] for s in info["servers"]) == 2
        assert (await get_json(url + "node_info?host=" + n["name"]))["addr"] == "127.0.0.1"  # by name too
        code, _, body = await http("GET", url + "node_info?host=10.9.9.9")
        assert code == 404 and "error" in json.loads(body)

        where = rtasks[0].location
        srv = await get_json(url + "server_info?location=%s&limit=0" % where)
        on_server = [t for t in rtasks if t.location == where]
        assert srv["location"] == str(where) and srv["status"] == "Initialized" and srv["node"] == "127.0.0.1"
        assert srv["tasks_running"] == len(on_server)
        assert sorted(t["task"] for t in srv["tasks"]) == sorted(str(t) for t in on_server)
        first = [t for t in srv["tasks"] if t["task"] == str(rtasks[0])][0]
        assert first["name"] == "long_job" and first["args"] == "0, 'label-0'" and first["kwargs"] == "seconds=60"
        assert abs(first["start_time"] - time.time()) < 60
        limited = await get_json(url + "server_info?location=%s&limit=1" % where)
        assert len(limited["tasks"]) == 1
        code, _, _ = await http("GET", url + "server_info?location=127.0.0.1:1")
        assert code == 404

        # the arguments can be hidden (and shown again) from the pages
        code, settings = await post_json(url + "update", {"show_task_args": "false", "poll_sec": "7"})
        assert code == 200 and settings == {"poll_sec": 7, "show_task_args": False}
        srv = await get_json(url + "server_info?location=%s" % where)
        assert all(t["args"] == "" and t["kwargs"] == "" for t in srv["tasks"])
        assert srv["show_task_args"] is False and srv["poll_sec"] == 7
        assert (await get_json(url + "update")) == settings
        code, settings = await post_json(url + "update", {"show_task_args": "true"})
        assert settings == {"poll_sec": 7, "show_task_args": True}
        code, _ = await post_json(url + "update", {"poll_sec": "soon"})
        assert code == 400

        await m.comp.close(terminate=True)
        for t in rtasks:
            with pytest.raises(dispycos.TaskTerminated):
                await t.result(timeout=10)

        # after the computation closed: the final state
        status = await get_json(url + "cluster_status")
        assert status["computation"] == "Closed"
        assert (status["tasks_submitted"], status["tasks_running"], status["tasks_done"]) == (5, 0, 5)
        assert status["nodes"][0]["status"] == "Closed" and status["nodes"][0]["tasks_done"] == 5
        info = await get_json(url + "node_info?host=127.0.0.1")
        assert all(s["status"] == "Closed" and s["tasks_running"] == 0 for s in info["servers"])
        srv = await get_json(url + "server_info?location=%s" % where)
        assert srv["tasks"] == [] and srv["status"] == "Closed"
        outcomes = {f["task"]: f["outcome"] for f in srv["finished"]}
        assert all(outcomes[str(t)] == "TaskTerminated" for t in on_server), outcomes

    # the computation's own status_task saw everything, ComputationClosed last
    kinds = [s.status for s in m.statuses if isinstance(s, DispycosStatus)]
    assert kinds.count(Status.TaskCreated) == 5 and kinds.count(Status.TaskFinished) == 5
    assert kinds[-1] == Status.ComputationClosed
    assert any(isinstance(s, dispycos.DispycosNodeAvailInfo) for s in m.statuses)
    # after shutdown nothing listens, and the computation has its own status_task back
    assert m.comp.status_task == m.statuses.append
    with pytest.raises(error.ConnectionRefusedError):
        await http("GET", url + "cluster_status", timeout=5)


# -- actions ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_terminate_suspend_and_resume_by_post(node):
    received = []

    def status_proc(task=None):
        while True:
            msg = yield task.receive()
            received.append(msg)

    status_task = dispycos.Task(status_proc)  # chained to a local Task
    # created after schedule(): it still follows what happens afterwards
    async with Monitored(node, [long_job], monitor_after_schedule=True, status_task=status_task) as m:
        url = m.url
        rtask = await m.comp.run_async(long_job, 1, "victim", seconds=60)
        other = await m.comp.run_async(long_job, 2, "survivor", seconds=60)
        await wait_for(lambda: str(other) in m.monitor.tasks, timeout=10)
        srv = await get_json(url + "server_info?location=%s" % rtask.location)
        assert str(rtask) in [t["task"] for t in srv["tasks"]]

        code, _, _ = await http("GET", url + "terminate_tasks?task=" + urllib.parse.quote(str(rtask)))
        assert code == 405  # actions are POST only
        code, done = await post_json(url + "terminate_tasks", [("task", str(rtask)), ("task", "nosuch/1@1.2.3.4:5")],
                                     origin=url.rstrip("/"))
        assert code == 200 and done == [str(rtask)]
        with pytest.raises(dispycos.TaskTerminated):
            await rtask.result(timeout=15)
        await wait_for(lambda: str(rtask) not in m.monitor.tasks, timeout=10)
        status = await get_json(url + "cluster_status")
        assert (status["tasks_submitted"], status["tasks_running"], status["tasks_done"]) == (2, 1, 1)
        assert other.outcome is None  # the other task runs on

        # suspend and resume the node (form field "host", repeated)
        code, answer = await post_json(url + "suspend_node", [("host", "127.0.0.1")], origin=url.rstrip("/"))
        assert code == 200 and answer == {"done": ["127.0.0.1"], "failed": {}}
        await wait_for(lambda: m.monitor.nodes["127.0.0.1"].status == "Suspended", timeout=10)
        assert (await get_json(url + "node_info?host=127.0.0.1"))["status"] == "Suspended"
        code, answer = await post_json(url + "resume_node", [("host", "127.0.0.1"), ("host", "10.9.9.9")],
                                       headers={"referer": url + "cluster.html"})
        assert code == 200 and answer["done"] == ["127.0.0.1"] and "10.9.9.9" in answer["failed"]
        await wait_for(lambda: m.monitor.nodes["127.0.0.1"].status == "Initialized", timeout=10)
        # and a server
        code, answer = await post_json(url + "suspend_server", [("location", str(other.location))])
        assert answer == {"done": [str(other.location)], "failed": {}}
        await wait_for(lambda: m.monitor._find_server(str(other.location)).status == "Suspended", timeout=10)
        code, answer = await post_json(url + "resume_server", [("location", str(other.location))])
        assert answer["done"] == [str(other.location)]
    assert any(isinstance(s, DispycosStatus) and s.status == Status.NodeSuspended for s in received)
    assert any(isinstance(s, DispycosStatus) and s.status == Status.TaskCreated and s.info.task == rtask
               for s in received)


@pytest_twisted.ensureDeferred
async def test_cross_site_requests_are_refused(node):
    async with Monitored(node, [long_job]) as m:
        url = m.url
        rtask = await m.comp.run_async(long_job, 1, "kept", seconds=60)
        await wait_for(lambda: str(rtask) in m.monitor.tasks, timeout=10)
        form = [("task", str(rtask))]
        for headers in ({"origin": "http://evil.example"},
                        {"origin": "null"},
                        {"origin": "http://127.0.0.1:%d" % (m.monitor.port + 1)},
                        {"origin": "https://127.0.0.1:%d" % m.monitor.port},
                        {"referer": "http://evil.example/page.html"},
                        {"sec-fetch-site": "cross-site"}):
            code, _, body = await http("POST", url + "terminate_tasks", form, headers=headers)
            assert code == 403, (headers, code, body)
            assert "cross-site" in json.loads(body)["error"]
        code, _, _ = await http("POST", url + "suspend_node", [("host", "127.0.0.1")],
                                headers={"origin": "http://evil.example"})
        assert code == 403
        # a name that is not this host (DNS rebinding) is refused even for reading
        code, _, _ = await http("GET", url + "cluster_status", headers={"host": "evil.example:%d" % m.monitor.port})
        assert code == 403
        await sleep(0.5)
        assert str(rtask) in m.monitor.tasks and rtask.outcome is None
        assert m.monitor.nodes["127.0.0.1"].status == "Initialized"
        # the same site may
        code, done = await post_json(url + "terminate_tasks", form, origin="http://127.0.0.1:%d" % m.monitor.port,
                                     headers={"sec-fetch-site": "same-origin"})
        assert code == 200 and done == [str(rtask)]
        with pytest.raises(dispycos.TaskTerminated):
            await rtask.result(timeout=15)
        code, _, _ = await http("GET", url + "cluster_status",
                                headers={"host": "localhost:%d" % m.monitor.port})
        assert code == 200


# -- server-sent events ------------------------------------------------------------------


class EventReader(Protocol):
    """Collects a text/event-stream body."""

    def __init__(self):
        self.data = b""
        self.ended = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.ended.callback(None)

    def events(self):
        out = []
        for block in self.data.decode().split("\n\n")[:-1]:  # (the last one may be still arriving)
            fields = {}
            for line in block.split("\n"):
                if line and not line.startswith(":") and ":" in line:
                    k, _, v = line.partition(":")
                    fields[k] = v.strip()
            if "data" in fields:
                out.append((fields.get("event", "message"), json.loads(fields["data"])))
        return out

    def task_events(self, tid):
        return [d.get("status") for e, d in self.events() if e == "message" and d.get("task") == tid]


async def open_stream(url):
    response = await CookieAgent(Agent(reactor), JAR).request(b"GET", (url + "events").encode()).addTimeout(10, reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    reader = EventReader()
    response.deliverBody(reader)
    return reader


@pytest_twisted.ensureDeferred
async def test_two_event_stream_clients_both_get_every_event(node, monkeypatch):
    monkeypatch.setattr(dispycos.httpd.HTTPServer, "keepalive_sec", 0.3)
    async with Monitored(node, [quick_job]) as m:
        streams = [await open_stream(m.url), await open_stream(m.url)]
        await wait_for(lambda: all(any(e == "hello" for e, _ in s.events()) for s in streams), timeout=10)
        rtask = await m.comp.run(quick_job, 21)
        assert await rtask.result(timeout=15) == 42
        tid = str(rtask)
        await wait_for(lambda: all(s.task_events(tid) == ["TaskCreated", "TaskFinished"] for s in streams),
                       timeout=10)
        for s in streams:
            finished = [d for e, d in s.events() if d.get("task") == tid and d.get("status") == "TaskFinished"][0]
            assert finished["tasks_done"] >= 1 and finished["server"] == str(rtask.location)
        # resource reports, settings and keepalive comments reach both too
        await wait_for(lambda: all(any(d.get("type") == "avail" for _, d in s.events()) for s in streams), timeout=10)
        await post_json(m.url + "update", {"poll_sec": "4"})
        await wait_for(lambda: all(any(e == "settings" and d["poll_sec"] == 4 for e, d in s.events())
                                   for s in streams), timeout=10)
        await wait_for(lambda: all(b": keepalive\n\n" in s.data for s in streams), timeout=10)
        # every id is larger than the one before
        ids = [int(i) for i in re.findall(rb"^id: (\d+)$", streams[0].data, re.M)]
        assert ids == sorted(set(ids))
        # shutdown ends the streams
        await m.monitor.shutdown(wait=True)
        await defer.gatherResults([s.ended for s in streams]).addTimeout(10, reactor)
        assert all(any(e == "shutdown" for e, _ in s.events()) for s in streams)
        assert m.monitor._streams == []


# -- HTTPS, pages, document root --------------------------------------------------------------


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1 / localhost: (certfile, keyfile, PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(certfile, "wb") as f:
        f.write(cert_pem)
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return certfile, keyfile, cert_pem


@pytest_twisted.ensureDeferred
async def test_https_with_a_generated_certificate(tmp_path):
    certfile, keyfile, pem = make_certificate(str(tmp_path))
    comp = Computation([quick_job])  # not scheduled: the monitor answers all the same
    monitor = dispycos.httpd.HTTPServer(comp, port=0, certfile=certfile, keyfile=keyfile)
    try:
        assert monitor.url == "https://127.0.0.1:%d/?token=%s" % (monitor.port, monitor.token)
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(pem)))
        code, headers, _ = await http("GET", monitor.url, agent=agent)
        assert code == 200 and "Secure" in headers.getRawHeaders("set-cookie")[0]  # the cookie stays on https
        url = await login(monitor, agent)
        status = await get_json(url + "cluster_status", agent=agent)
        assert status["nodes"] == [] and status["computation"] == "Created"
        code, _, body = await http("GET", url, agent=agent)
        assert code == 200 and b"dispycos" in body
        code, settings = await post_json(url + "update", {"poll_sec": "5"}, agent=agent,
                                         origin="https://127.0.0.1:%d" % monitor.port)
        assert code == 200 and settings["poll_sec"] == 5
        code, _ = await post_json(url + "update", {"poll_sec": "5"}, agent=agent,
                                  origin="http://127.0.0.1:%d" % monitor.port)
        assert code == 403  # the http:// origin is another site
        # an agent that does not trust the certificate is refused
        with pytest.raises(ResponseNeverReceived) as refused:
            await http("GET", monitor.url, timeout=5)
        assert "certificate verify failed" in str(refused.value.reasons[0].value)
        # and plain HTTP gets no answer
        with pytest.raises((ResponseNeverReceived, ResponseFailed)):
            await http("GET", "http://127.0.0.1:%d/cluster_status" % monitor.port, timeout=5)
        # a combined file (certificate and key) works as well
        both = tmp_path / "both.pem"
        both.write_bytes(open(certfile, "rb").read() + open(keyfile, "rb").read())
        other = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0, certfile=str(both))
        try:
            assert (await get_json(await login(other, agent) + "cluster_status", agent=agent))["nodes"] == []
        finally:
            await other.shutdown(wait=False)
    finally:
        await monitor.shutdown()


@pytest_twisted.ensureDeferred
async def test_pages_and_document_root(tmp_path):
    seen = []
    comp = Computation([quick_job], status_task=seen.append)
    monitor = dispycos.httpd.HTTPServer(comp, port=0, poll_sec=0.2)
    try:
        assert monitor.poll_sec == 1  # at least a second
        url = await login(monitor)
        for page in ("", "cluster.html", "node.html?host=127.0.0.1", "server.html?location=127.0.0.1:1"):
            code, headers, body = await http("GET", url + page)
            assert code == 200 and b"<!DOCTYPE html>" in body and b'src="monitor.js"' in body
            assert headers.getRawHeaders("content-security-policy")
            assert headers.getRawHeaders("x-frame-options") == ["DENY"]
            assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere
        code, headers, body = await http("GET", url + "monitor.js")
        assert code == 200 and b"EventSource" in body and "javascript" in headers.getRawHeaders("content-type")[0]
        code, headers, _ = await http("GET", url + "monitor.css")
        assert code == 200 and headers.getRawHeaders("content-type")[0].startswith("text/css")
        for path in ("cluster_status", "events", "cluster.html"):
            code, _, body = await http("HEAD", url + path)
            assert code == 200 and body == b"", path
        code, headers, _ = await http("DELETE", url + "cluster_status")
        assert code == 405 and "GET" in headers.getRawHeaders("allow")[0]
        for missing in ("nosuch.html", "../setup.py", "%2e%2e/httpd.py"):
            code, _, _ = await http("GET", url + missing)
            assert code == 404, missing
        # status messages are forwarded to the status_task the computation had
        comp._status(Status.NodeDiscovered, dispycos.DispycosNodeInfo("n1", "10.1.1.1", 4, "test-os"))
        assert seen and seen[-1].status == Status.NodeDiscovered
        assert (await get_json(url + "node_info?host=n1"))["status"] == "Discovered"
    finally:
        await monitor.shutdown(wait=False)
    assert comp.status_task == seen.append

    root = tmp_path / "pages"
    root.mkdir()
    (root / "cluster.html").write_text("<p>my own cluster page</p>")
    monitor = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0, DocumentRoot=str(root))
    try:
        code, _, body = await http("GET", monitor.url)
        assert code == 200 and body == b"<p>my own cluster page</p>"
        assert (await get_json(base_of(monitor) + "cluster_status"))["nodes"] == []
    finally:
        await monitor.shutdown(wait=False)
    with pytest.raises(ValueError):
        dispycos.httpd.HTTPServer(Computation([quick_job]), port=0, DocumentRoot=str(tmp_path / "nosuch"))


@pytest_twisted.ensureDeferred
async def test_attach_to_the_next_computation():
    first_seen, second_seen = [], []
    first = Computation([quick_job], status_task=first_seen.append)
    second = Computation([quick_job], status_task=second_seen.append)
    monitor = dispycos.httpd.HTTPServer(first, port=0)
    try:
        url = await login(monitor)
        first._status(Status.NodeInitialized, dispycos.DispycosNodeInfo("n1", "10.1.1.1", 4, "test-os"))
        assert [n["addr"] for n in (await get_json(url + "cluster_status"))["nodes"]] == ["10.1.1.1"]
        monitor.attach(second)
        assert first.status_task == first_seen.append and second.status_task == monitor.status_task
        assert (await get_json(url + "cluster_status"))["nodes"] == []
        second._status(Status.NodeInitialized, dispycos.DispycosNodeInfo("n2", "10.1.1.2", 2, "test-os"))
        assert [n["addr"] for n in (await get_json(url + "cluster_status"))["nodes"]] == ["10.1.1.2"]
        assert len(first_seen) == 1 and len(second_seen) == 1
    finally:
        await monitor.shutdown(wait=False)
    assert second.status_task == second_seen.append


# -- the access token; the event streams' limits ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_request_needs_the_token(capsys):
    from twisted.logger import globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        monitor = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    fixed = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0, token="a-fixed-token")
    try:
        # printed and logged at start, with the token; random and long enough not to be guessed
        printed = capsys.readouterr().out
        assert "dispycos monitor at %s\n" % monitor.url in printed and "dispycos monitor at %s\n" % fixed.url in printed
        assert any(e.get("url") == monitor.url for e in logged)
        assert len(monitor.token) >= 32 and monitor.token != fixed.token
        assert fixed.url == "http://127.0.0.1:%d/?token=a-fixed-token" % fixed.port
        base = base_of(monitor)
        same_site = {"origin": base.rstrip("/")}
        requests = [("GET", ""), ("GET", "cluster.html"), ("GET", "monitor.js"), ("GET", "cluster_status"),
                    ("GET", "events"), ("HEAD", "events"), ("GET", "update"), ("POST", "update"),
                    ("POST", "terminate_tasks"), ("POST", "suspend_node")]
        for token in (None, "wrong", fixed.token, "%E2%82%AC%ff"):  # none, wrong ones, another monitor's
            for method, path in requests:
                url = base + path + ("" if token is None else "?token=" + token)
                fields = {"poll_sec": "3"} if method == "POST" else None
                code, headers, body = await http(method, url, fields, headers=same_site, cookies=False)
                assert code == 403 and not headers.getRawHeaders("set-cookie"), (token, method, path, code)
                if method != "HEAD":
                    assert "access token" in json.loads(body)["error"]
            code, _, _ = await http("GET", base + "cluster_status", cookies=False,
                                    headers={"cookie": "%s=%s" % (monitor.cookie_name, token or "")})
            assert code == 403, token
        assert monitor.poll_sec == 10  # no POST got through
        # the token in the query: answered, and the cookie given; the cookie alone serves then
        code, headers, _ = await http("GET", base + "cluster_status?token=" + monitor.token, cookies=False)
        assert code == 200 and headers.getRawHeaders("set-cookie")[0].startswith(monitor.cookie_name + "=")
        cookie = {"cookie": "%s=%s" % (monitor.cookie_name, monitor.token)}
        code, _, body = await http("POST", base + "update", {"poll_sec": "3"}, headers=dict(cookie, **same_site),
                                   cookies=False)
        assert code == 200 and json.loads(body)["poll_sec"] == 3
        code, _, _ = await http("HEAD", base + "events", headers=cookie, cookies=False)
        assert code == 200
        # the fixed token works the same way
        assert (await get_json(await login(fixed) + "cluster_status"))["nodes"] == []
    finally:
        await monitor.shutdown(wait=False)
        await fixed.shutdown(wait=False)


ATTACKER = """
import json, sys, urllib.error, urllib.request
base, task = sys.argv[1:]
tries = [("GET", "cluster_status", None), ("GET", "server_info?location=x", None), ("GET", "events", None),
         ("POST", "terminate_tasks", {"task": task}), ("POST", "update", {"show_task_args": "true"}),
         ("POST", "suspend_node", {"host": "127.0.0.1"}), ("GET", "cluster_status?token=guess", None)]
out = {}
for method, path, form in tries:
    data = urllib.parse.urlencode(form).encode() if form else None
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data, method=method), timeout=10) as r:
            out[method + " " + path] = r.status
    except urllib.error.HTTPError as e:
        out[method + " " + path] = e.code
print(json.dumps(out))
"""


@pytest_twisted.ensureDeferred
async def test_another_local_user_can_neither_watch_nor_act(node):
    from twisted.internet import threads

    from .conftest import run_as_nobody

    async with Monitored(node, [long_job], show_task_args=False) as m:
        rtask = await m.comp.run_async(long_job, 1, "password=hunter2", seconds=60)
        await wait_for(lambda: str(rtask) in m.monitor.tasks, timeout=10)
        r = await threads.deferToThread(run_as_nobody, ATTACKER, m.url, str(rtask))
        assert r.returncode == 0, r.stderr
        assert set(json.loads(r.stdout).values()) == {403}, r.stdout
        assert "hunter2" not in r.stdout
        # nothing happened: the task runs on, the node is not suspended, the arguments stay hidden
        assert rtask.outcome is None and str(rtask) in m.monitor.tasks
        assert m.monitor.nodes["127.0.0.1"].status == "Initialized" and m.monitor.show_task_args is False
        # while its user, with the token, sees and acts
        srv = await get_json(m.url + "server_info?location=%s" % rtask.location)
        assert [t["task"] for t in srv["tasks"]] == [str(rtask)]
        code, done = await post_json(m.url + "terminate_tasks", [("task", str(rtask))], origin=m.url.rstrip("/"))
        assert code == 200 and done == [str(rtask)]


def raw_stream(monitor, rcvbuf=None):
    """A socket that asks for /events with the cookie and then never reads (unless the test does)."""
    import socket

    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", monitor.port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nCookie: %s=%s\r\n\r\n"
                 % (monitor.port, monitor.cookie_name.encode(), monitor.token.encode()))
    return sock


def read_until_reset(sock, limit=64 * 1024 * 1024, timeout=30):
    """Read what the monitor sent until it cut the connection: True if it did (bounded in bytes and time)."""
    import socket

    deadline = time.monotonic() + timeout
    got = 0
    while got < limit and time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True
        got += len(data)
    return False


@pytest_twisted.ensureDeferred
async def test_event_streams_are_capped(monkeypatch):
    monitor = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0)
    socks = []
    try:
        assert monitor.max_streams == 32
        url = await login(monitor)
        socks = [raw_stream(monitor) for _ in range(32)]
        await wait_for(lambda: len(monitor._streams) == 32, timeout=20)
        code, _, body = await http("GET", url + "events")
        assert code == 503 and "too many event streams" in json.loads(body)["error"]
        assert len(monitor._streams) == 32
        socks.pop().close()  # one goes: another may come
        await wait_for(lambda: len(monitor._streams) == 31, timeout=20)
        reader = await open_stream(url)
        await wait_for(lambda: any(e == "hello" for e, _ in reader.events()), timeout=10)
        assert len(monitor._streams) == 32
    finally:
        for sock in socks:
            sock.close()
        await monitor.shutdown(wait=False)
    small = dispycos.httpd.HTTPServer(Computation([quick_job]), port=0, max_streams=1)
    try:
        url = await login(small)
        reader = await open_stream(url)
        code, _, _ = await http("GET", url + "events")
        assert code == 503
    finally:
        await small.shutdown(wait=False)


@pytest_twisted.ensureDeferred
async def test_a_stream_that_does_not_read_is_dropped_past_1_mib_unsent():
    import psutil
    from twisted.internet import threads

    comp = Computation([quick_job])
    monitor = dispycos.httpd.HTTPServer(comp, port=0)
    stalled = []
    try:
        url = await login(monitor)
        reader = await open_stream(url)  # a browser that reads
        stalled = [raw_stream(monitor, rcvbuf=4096) for _ in range(20)]  # twenty that never do
        await wait_for(lambda: len(monitor._streams) == 21, timeout=20)
        rss = psutil.Process().memory_info().rss
        most_unsent, sent = 0, 0
        for batch in range(400):  # at most ~40 MiB of events, until every stalled stream is gone
            for i in range(30):  # ~100 KiB of events per turn of the reactor
                sent += 1
                comp._status(Status.NodeDiscovered, dispycos.DispycosNodeInfo(
                    "n", "node-%d-%s" % (sent, "x" * 3000), 1, "test-os"))
            most_unsent = max([most_unsent] + [s.unsent for s in monitor._streams])
            await sleep(0)
            if len(monitor._streams) == 1:
                break
        assert len(monitor._streams) == 1 and monitor._streams[0].request is not None, len(monitor._streams)
        assert most_unsent <= dispycos.httpd.MAX_UNSENT
        assert psutil.Process().memory_info().rss - rss < 100 * 1024 * 1024  # not 20 copies of the flood
        # the stalled ones were cut off; the reading one got every event, and goes on
        assert all(await defer.gatherResults([threads.deferToThread(read_until_reset, s) for s in stalled]))
        await wait_for(lambda: sum(1 for e, d in reader.events() if d.get("type") == "node") == sent, timeout=30)
        await post_json(url + "update", {"poll_sec": "4"})
        await wait_for(lambda: any(e == "settings" for e, _ in reader.events()), timeout=10)
    finally:
        for sock in stalled:
            sock.close()
        await monitor.shutdown(wait=False)


# -- the examples ----------------------------------------------------------------------------


class Example:
    """An example as a child process, with the node of the test; stdin piped."""

    def __init__(self, node, name, *args):
        env = env_for_children()
        env.update(DISPYCOS_NODES=node.location, DISPYCOS_SECRET=node.secret, DISPYCOS_HTTP_PORT="0")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", name)] + [str(a) for a in args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT, start_new_session=True)
        self.out = []
        self.reader = threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def text(self):
        return "".join(self.out)

    def wait_for(self, pattern, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self.reader.is_alive()):
                raise AssertionError("no %r in:\n%s" % (pattern, self.text()))
            time.sleep(0.05)

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout=90):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
            self.reader.join(5)
        assert self.proc.returncode == 0, self.text()
        return self.text()


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


#: The line every monitor prints at start: its address and its token.
MONITOR_LINE = r"dispycos monitor at (http://127\.0\.0\.1:\d+/)\?token=([\w-]+)$"


def fetch_with_token(line, path):
    """C{path} of the monitor that printed C{line} (a match of L{MONITOR_LINE}), with its token."""
    base, token = line.groups()
    return fetch_json(base + path + ("&" if "?" in path else "?") + "token=" + token)


def test_example_httpd1(node):
    ex = Example(node, "httpd1.py")
    try:
        monitor = ex.wait_for(MONITOR_LINE)
        ex.wait_for(r"^enter seconds for a job")
        ex.send("1\nnot-a-number\n2\n")
        ex.wait_for(r"^  job 1: 2\.0 seconds, task (\S+)")
        status = fetch_with_token(monitor, "cluster_status")
        assert status["tasks_submitted"] == 2 and status["nodes"][0]["addr"] == "127.0.0.1"
        ex.send("quit\n")  # close(await_async=True): both jobs end normally
    finally:
        out = ex.finish()
    assert '  "not-a-number" is not a number' in out
    assert re.search(r"^    job 0 started at 127\.0\.0\.1:\d+$", out, re.M), out
    assert "    job 0 done after 1.0 seconds" in out and "    job 1 done after 2.0 seconds" in out
    assert out.rstrip().endswith("done: 2 jobs"), out


def test_example_httpd2(node):
    ex = Example(node, "httpd2.py")
    try:
        monitor = ex.wait_for(MONITOR_LINE)
        ex.wait_for(r"^press Enter")
        ex.send("0.5\n")
        short = ex.wait_for(r"^    task (\S+) done: 0\.5$").group(1)
        ex.send("60\n")
        long = ex.wait_for(r"^  task (\S+) created \(sleeps 60\.0 s\)$").group(1)
        server = long.rpartition("@")[2]
        info = fetch_with_token(monitor, "server_info?location=" + server)
        assert [t["task"] for t in info["tasks"]] == [long] and info["tasks"][0]["args"] == "60.0"
        ex.send("quit\n")  # plain close(): the running task is terminated
    finally:
        out = ex.finish()
    assert "  task %s created (sleeps 0.5 s)" % short in out
    assert "    task %s ended: TaskTerminated" % long in out
    assert "computation closed\ndone: 2 tasks" in out, out


def test_example_client1_monitor(node):
    ex = Example(node, "client1_monitor.py", 4)
    out = ex.finish()
    assert re.search(MONITOR_LINE, out, re.M), out
    placed = re.findall(r"^  job (\d+) processed by 127\.0\.0\.1:\d+$", out, re.M)
    assert placed == ["0", "1", "2", "3"], out
    assert "done: 4 jobs (monitor: 4 submitted, 4 done)" in out, out
