"""
The monitor's event hub (dispycos.web.sse) with fake requests and a Clock:
every stream gets every event; at most max_streams; a stream that does not
read is dropped past max_unsent bytes; keepalives on the clock; close.
"""

import json

import pytest
from twisted.internet.task import Clock
from twisted.web import server

from dispycos.web.resources import Events
from dispycos.web.sse import MAX_STREAMS, MAX_UNSENT, EventHub, StreamRefused

from .webfakes import FakeRequest


def parse(data):
    """(event, data) of each complete event in C{data}, and its id (None for the hello)."""
    out = []
    for block in data.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("event"), json.loads(fields["data"]), fields.get("id")))
    return out


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def hub(clock):
    return EventHub(clock, hello=lambda: {"type": "hello", "seq": 0}, keepalive_sec=15)


def test_defaults_are_the_documented_limits():
    assert (MAX_STREAMS, MAX_UNSENT) == (32, 1024 * 1024)
    hub = EventHub(Clock())
    assert (hub.max_streams, hub.max_unsent, hub.keepalive_sec) == (32, 1024 * 1024, 15)


def test_every_stream_gets_hello_then_every_event(hub):
    requests = [FakeRequest(b"/events") for _ in range(3)]
    streams = [hub.add(r) for r in requests]
    assert all(r.producer is s for r, s in zip(requests, streams))  # registered as the connection's producer
    hub.broadcast("message", {"type": "node", "seq": 1})
    hub.broadcast("settings", {"type": "settings", "seq": 2, "poll_sec": 4})
    for r in requests:
        events = parse(r.body())
        assert events == [("hello", {"type": "hello", "seq": 0}, None), ("message", {"type": "node", "seq": 1}, "1"),
                          ("settings", {"type": "settings", "seq": 2, "poll_sec": 4}, "2")]
        assert r.body().startswith(b"retry: 3000\n")


def test_at_most_max_streams_and_a_place_frees_when_one_goes(clock):
    hub = EventHub(clock, max_streams=2)
    first, second = FakeRequest(b"/events"), FakeRequest(b"/events")
    hub.add(first)
    hub.add(second)
    with pytest.raises(StreamRefused, match="too many event streams"):
        hub.add(FakeRequest(b"/events"))
    # the resource answers 503 then
    refused = FakeRequest(b"/events")
    body = Events(hub).render(refused)
    assert refused.responseCode == 503 and "too many event streams (2)" in json.loads(body)["error"]
    first.lose_connection()  # a browser goes: its place is free
    assert len(hub.streams) == 1
    taken = FakeRequest(b"/events")
    assert Events(hub).render(taken) is server.NOT_DONE_YET
    assert taken.responseHeaders.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    assert len(hub.streams) == 2 and parse(taken.body())[0][0] == "hello"


def test_a_stream_that_does_not_read_is_dropped_past_max_unsent(hub):
    reading, stalled = FakeRequest(b"/events"), FakeRequest(b"/events")
    hub.add(reading)
    stream = hub.add(stalled)
    stream.pauseProducing()  # its send buffer is full: the browser does not read
    written = len(stalled.body())
    chunk = {"type": "node", "seq": 1, "pad": "x" * 10000}
    size = None
    while stream in hub.streams:
        hub.broadcast("message", chunk)
        size = size or stream.unsent
        assert stream.unsent <= MAX_UNSENT or stream not in hub.streams
    assert stalled.channel.transport.aborted and stream.unsent == 0 and not stream.pending
    assert len(stalled.body()) == written  # nothing more was written to it
    sent = len(parse(reading.body())) - 1
    assert sent == MAX_UNSENT // size + 1  # the one that reads got every event, and goes on
    hub.broadcast("message", dict(chunk, seq=2))
    assert len(parse(reading.body())) == sent + 2 and hub.streams == [hub.streams[0]]
    assert not reading.channel.transport.aborted


def test_a_paused_stream_gets_what_waited_when_resumed(hub):
    request = FakeRequest(b"/events")
    stream = hub.add(request)
    stream.pauseProducing()
    for seq in (1, 2, 3):
        hub.broadcast("message", {"type": "task", "seq": seq})
    assert [e[2] for e in parse(request.body())] == [None] and stream.unsent > 0
    stream.resumeProducing()
    assert [e[2] for e in parse(request.body())] == [None, "1", "2", "3"] and stream.unsent == 0


def test_a_lost_connection_is_not_written_to(hub):
    request = FakeRequest(b"/events")
    stream = hub.add(request)
    request.lose_connection()
    assert hub.streams == [] and not stream.open
    before = request.body()
    stream.write(b"data: late\n\n")  # (an event on its way when the connection went)
    assert request.body() == before


def test_keepalives_on_the_clock(hub, clock):
    request = FakeRequest(b"/events")
    hub.add(request)
    hub.start()
    clock.advance(14)
    assert b": keepalive" not in request.body()
    clock.advance(1)
    assert request.body().count(b": keepalive\n\n") == 1
    clock.pump([15, 15])
    assert request.body().count(b": keepalive\n\n") == 3


def test_close_ends_every_stream_and_refuses_new_ones(hub, clock):
    requests = [FakeRequest(b"/events") for _ in range(2)]
    for r in requests:
        hub.add(r)
    hub.start()
    hub.close()
    assert hub.streams == [] and all(r.finished == 1 and r.producer is None for r in requests)
    assert clock.getDelayedCalls() == []  # no keepalive left
    with pytest.raises(StreamRefused, match="shut down"):
        hub.add(FakeRequest(b"/events"))
    late = FakeRequest(b"/events")
    assert Events(hub).render(late) and late.responseCode == 503


def test_head_of_events_opens_no_stream(hub):
    request = FakeRequest(b"/events", method=b"HEAD")
    assert Events(hub).render(request) == b""
    assert hub.streams == [] and request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(
        b"text/event-stream")
