"""
The monitor as a whole, without sockets: L{Monitor}/L{HTTPServer} on a
MemoryReactorClock (it listens on its strports description when started,
not when made), and its site spoken to over an in-memory connection
(StringTransport): token, pages from static.File, the JSON resources,
an event stream dropped when it does not read, shutdown.
"""

import json

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor, StringTransport

from dispycos.status import Status
from dispycos.web import STATIC_DIR
from dispycos.web.monitor import HTTPServer, Monitor
from dispycos.web.service import listen_description
from dispycos.web.sse import MAX_UNSENT

from .webfakes import FakeComputation, node_status


class ClosingTransport(StringTransport):
    """A StringTransport that says when the server closed the connection (C{closed} fires)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.closed = defer.Deferred()

    def loseConnection(self):
        super().loseConnection()
        if not self.closed.called:
            self.closed.callback(None)


class Connection:
    """One in-memory HTTP/1.0 connection to C{site} (the server closes it when the answer is complete)."""

    def __init__(self, site):
        self.transport = ClosingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                                          hostAddress=IPv4Address("TCP", "127.0.0.1", 8181))
        self.protocol = site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, method, path, headers=(), body=b""):
        lines = [b"%s %s HTTP/1.0" % (method, path), b"Host: 127.0.0.1:8181"] + list(headers)
        if body:
            lines += [b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body)]
        self.protocol.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def response(self):
        """(code, headers dict with lower-case names and lists of values, body) of what came so far."""
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return int(status.split()[1]), headers, body


async def request(site, method, path, cookie=None, headers=(), body=b""):
    """
    (code, headers, body) of one request, once answered. (Files are sent
    by a pull producer that twisted.web drives with the global cooperator:
    the test waits for the server to close the connection.)
    """
    conn = Connection(site)
    extra = list(headers) + ([b"Cookie: " + cookie] if cookie else [])
    conn.send(method, path, extra, body)
    await conn.transport.closed
    return conn.response()


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def comp():
    seen = []
    c = FakeComputation(status_task=seen.append)
    c.own_status_task = seen.append
    return c


@pytest.fixture
def monitor(reactor, comp, capsys):
    m = HTTPServer(comp, port=8181, reactor=reactor, token="tok-123", poll_sec=5)
    yield m
    m.shutdown(wait=False)


def cookie_of(monitor):
    return b"%s=%s" % (monitor.cookie_name.encode(), monitor.token.encode())


def test_listens_when_started_not_when_made(reactor, comp, capsys):
    m = Monitor(comp, "tcp:8181:interface=127.0.0.1", reactor, token="t")
    assert reactor.tcpServers == [] and m.port is None and not m.running
    assert comp.status_task == m.status_task  # it watches already
    m.startService()
    [(port, factory, _, interface)] = reactor.tcpServers
    assert (port, interface) == (8181, "127.0.0.1") and m.running and m.port == 8181
    assert factory.wrappedFactory is m.site
    assert "dispycos monitor at http://127.0.0.1:8181/?token=t\n" in capsys.readouterr().out
    assert m.getServiceNamed("monitor-http") is m.http
    d = m.shutdown(wait=False)
    assert d.called and not m.running


def test_a_child_of_a_service_tree(reactor, comp, capsys):
    parent = MultiService()
    m = Monitor(comp, "tcp:0", reactor, token="t")
    m.setServiceParent(parent)
    assert reactor.tcpServers == []
    parent.startService()
    assert len(reactor.tcpServers) == 1 and m.http.running
    d = parent.stopService()
    assert d.called and not m.running and not m.http.running and m.hub.closed
    assert comp.status_task == comp.own_status_task  # the computation has its own status_task back


def test_http_server_starts_at_once_unless_told(reactor, comp, capsys):
    m = HTTPServer(comp, port=0, reactor=reactor, start=False)
    assert reactor.tcpServers == [] and capsys.readouterr().out == ""
    m.startService()
    assert len(reactor.tcpServers) == 1 and m.url.startswith("http://127.0.0.1:0/?token=")


def test_a_port_in_use_leaves_the_computation_as_it_was(comp):
    before = comp.status_task
    reactor = RaisingMemoryReactor(listenException=CannotListenError("127.0.0.1", 8181, OSError("in use")))
    with pytest.raises(CannotListenError):
        HTTPServer(comp, reactor=reactor)
    assert comp.status_task is before


def test_listen_descriptions():
    assert listen_description("127.0.0.1", 8181) == "tcp:8181:interface=127.0.0.1"
    assert listen_description("", 0) == "tcp:0"
    assert listen_description("::1", 0) == "tcp:0:interface=\\:\\:1"
    assert (listen_description("127.0.0.1", 443, "/c:d/cert.pem", "/k.pem")
            == "ssl:443:privateKey=/k.pem:certKey=/c\\:d/cert.pem:interface=127.0.0.1")
    assert listen_description("", 1, "/both.pem") == "ssl:1:privateKey=/both.pem:certKey=/both.pem"


def test_https_scheme_from_the_description(reactor, comp, tmp_path):
    m = HTTPServer(comp, reactor=reactor, listen="tcp:9000", start=False)
    assert m.scheme == "http"
    m = HTTPServer(comp, reactor=reactor, certfile=str(tmp_path / "c.pem"), start=False)
    assert m.scheme == "https" and m.http.description.startswith("ssl:8181:")


@pytest_twisted.ensureDeferred
async def test_every_request_needs_the_token(monitor):
    for path in (b"/", b"/cluster.html", b"/monitor.js", b"/cluster_status", b"/events", b"/?token=wrong"):
        code, headers, body = await request(monitor.site, b"GET", path)
        assert code == 403 and "access token" in json.loads(body)["error"] and b"set-cookie" not in headers, path
        assert headers[b"x-frame-options"] == [b"DENY"] and headers[b"content-security-policy"]
    code, headers, body = await request(monitor.site, b"GET", b"/?token=tok-123")
    assert code == 200 and b"<!DOCTYPE html>" in body
    [cookie] = headers[b"set-cookie"]
    assert cookie.startswith(cookie_of(monitor) + b";") and b"HttpOnly" in cookie and b"SameSite=strict" in cookie
    code, _, body = await request(monitor.site, b"GET", b"/cluster_status", cookie=cookie_of(monitor))
    assert code == 200 and json.loads(body)["poll_sec"] == 5
    code, _, _ = await request(monitor.site, b"POST", b"/update", cookie=cookie_of(monitor),
                         headers=[b"Origin: http://evil.example"], body=b"poll_sec=3")
    assert code == 403 and monitor.poll_sec == 5


@pytest_twisted.ensureDeferred
async def test_pages_served_by_static_file(monitor):
    c = cookie_of(monitor)
    code, headers, body = await request(monitor.site, b"GET", b"/", cookie=c)
    assert code == 200 and body == open(STATIC_DIR + "/cluster.html", "rb").read()
    assert headers[b"content-type"] == [b"text/html; charset=utf-8"] and headers[b"cache-control"] == [b"no-cache"]
    code, headers, body = await request(monitor.site, b"GET", b"/monitor.js", cookie=c)
    assert code == 200 and headers[b"content-type"] == [b"text/javascript; charset=utf-8"] and b"EventSource" in body
    code, headers, body = await request(monitor.site, b"HEAD", b"/monitor.css", cookie=c)
    assert code == 200 and headers[b"content-type"] == [b"text/css; charset=utf-8"] and body == b""
    for missing in (b"/nosuch.html", b"/../setup.py", b"/%2e%2e/httpd.py", b"/.hidden", b"/cluster.html/x"):
        code, headers, body = await request(monitor.site, b"GET", missing, cookie=c)
        assert code == 404 and json.loads(body) == {"error": "not found"}, missing
    code, _, body = await request(monitor.site, b"POST", b"/cluster.html", cookie=c)
    assert code == 405 and "not allowed" in json.loads(body)["error"]


@pytest_twisted.ensureDeferred
async def test_a_document_root_without_index_lists_nothing(reactor, comp, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text("<p>sub</p>")
    m = HTTPServer(comp, reactor=reactor, DocumentRoot=str(tmp_path), token="t")
    try:
        for path in (b"/", b"/sub/"):
            code, _, body = await request(m.site, b"GET", path, cookie=cookie_of(m))
            assert code == 404 and json.loads(body) == {"error": "not found"}, path
        code, _, body = await request(m.site, b"GET", b"/sub/page.html", cookie=cookie_of(m))
        assert code == 200 and body == b"<p>sub</p>"
    finally:
        m.shutdown(wait=False)
    with pytest.raises(ValueError):
        HTTPServer(comp, reactor=reactor, DocumentRoot=str(tmp_path / "nosuch"))


@pytest_twisted.ensureDeferred
async def test_status_messages_reach_the_pages_and_the_previous_status_task(monitor, comp):
    seen = []
    comp2 = FakeComputation(status_task=seen.append)
    monitor.attach(comp2)
    assert comp.status_task != monitor.status_task and comp2.status_task == monitor.status_task
    comp2.status_task(node_status(Status.NodeInitialized, addr="10.1.1.1"))
    assert seen and seen[-1].status == Status.NodeInitialized
    code, _, body = await request(monitor.site, b"GET", b"/node_info?host=10.1.1.1", cookie=cookie_of(monitor))
    assert code == 200 and json.loads(body)["status"] == "Initialized"


def test_a_stream_that_does_not_read_is_dropped(monitor, comp):
    reading, stalled = Connection(monitor.site), Connection(monitor.site)
    for conn in (reading, stalled):
        conn.send(b"GET", b"/events", [b"Cookie: " + cookie_of(monitor)])
    assert len(monitor._streams) == 2
    code, headers, body = stalled.response()
    assert code == 200 and headers[b"content-type"] == [b"text/event-stream; charset=utf-8"]
    assert b"event: hello" in body
    stalled.transport.producer.pauseProducing()  # as its transport does when the browser does not read
    stalled_had, reading_had = len(stalled.transport.value()), len(reading.transport.value())
    sent = 0
    while len(monitor._streams) == 2:
        sent += 1
        comp.status_task(node_status(Status.NodeDiscovered, addr="node-%d-%s" % (sent, "x" * 3000)))
        assert all(s.unsent <= MAX_UNSENT for s in monitor._streams)
    assert stalled.transport.disconnecting  # cut off, once more than MAX_UNSENT bytes waited for it
    assert len(stalled.transport.value()) == stalled_had
    flood = len(reading.transport.value()) - reading_had
    assert flood > MAX_UNSENT and flood - flood // sent <= MAX_UNSENT
    assert reading.transport.value().count(b"event: message") == sent and not reading.transport.disconnecting


def test_shutdown_tells_the_streams_then_ends_them(monitor, comp, reactor):
    conn = Connection(monitor.site)
    conn.send(b"GET", b"/events", [b"Cookie: " + cookie_of(monitor)])
    d = monitor.shutdown(wait=True)
    assert b"event: shutdown" in conn.transport.value() and not d.called
    assert len(monitor._streams) == 1  # browsers get a moment to fetch the final state
    reactor.advance(0.5)
    assert d.called and monitor._streams == [] and comp.status_task == comp.own_status_task
    assert conn.transport.disconnecting and not monitor.running
