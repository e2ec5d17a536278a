"""
dispycos.protocol.boxes.BoxReader, in memory: it reads what AMP writes,
however the bytes are cut, stops where a responder asks and hands over the
rest, and bounds what it holds; and batching's batch_box writes what AMP
would.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from dispycos import config
from dispycos.protocol import commands
from dispycos.protocol.batching import batch_box
from dispycos.protocol.boxes import MAX_KEY, BoxReader


class Reader(BoxReader):
    """A BoxReader that keeps the boxes it reads (and can stop after a given one)."""

    def __init__(self, stop_after=()):
        self.boxes = []
        self.stop_after = set(stop_after)
        self.dropped = []
        self.over = 0

    def ampBoxReceived(self, box):
        self.boxes.append(dict(box))
        if len(self.boxes) in self.stop_after:
            self.stop_reading()

    def _over(self):
        self.over += 1

    def _drop(self, why, **kw):
        self.dropped.append(why.format(**kw))
        self.stop_reading()


keys = st.binary(min_size=1, max_size=MAX_KEY)
boxes = st.lists(st.dictionaries(keys, st.binary(max_size=3000), max_size=6), min_size=1, max_size=8)


def wire(bs):
    return b"".join(amp.AmpBox(b).serialize() for b in bs)


@settings(max_examples=200, deadline=None)
@given(boxes, st.lists(st.integers(min_value=1, max_value=5000), max_size=20))
def test_it_reads_what_amp_writes_cut_anywhere(bs, cuts):
    data = wire(bs)
    r = Reader()
    pos = 0
    for n in cuts:
        r.read_boxes(data[pos:pos + n])
        pos += n
    r.read_boxes(data[pos:])
    assert r.boxes == bs and not r.dropped
    assert r._unparsed == b"" and r._box is None


def test_it_stops_after_a_box_and_hands_over_the_bytes_after_it():
    first, second, third = {b"_command": b"A"}, {b"_command": b"B", b"n": b"2"}, {b"_command": b"C"}
    r = Reader(stop_after={1})
    r.read_boxes(wire([first, second]) + b"raw bytes")
    assert r.boxes == [first]
    rest = r.take_unread()
    assert rest == wire([second]) + b"raw bytes"
    r.read_boxes(wire([third]))  # reading resumes with the next data
    assert r.boxes == [first, third]


def test_what_it_holds_is_one_key_and_one_value_at_most():
    value = b"v" * 60000
    data = wire([{b"k": value}])
    r = Reader()
    r.read_boxes(data[:-2])  # all but the end of the box: the pair is whole, the box not
    assert r._unparsed == b"" and r._box == {b"k": value}
    r = Reader()
    r.read_boxes(data[:100])  # a value cut short waits, whole, for the rest
    assert r._unparsed == data[:100] and r._box is None
    r.read_boxes(data[100:])
    assert r.boxes == [{b"k": value}]


def test_a_key_longer_than_amp_allows_drops_the_link():
    r = Reader()
    r.read_boxes(b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00")
    assert r.dropped == ["a key of 256 bytes (AMP allows 255)"] and r.boxes == []


def test_the_owner_hears_of_a_box_past_the_smallest_limits():
    r = Reader()
    r.read_boxes(wire([{b"%d" % i: b"" for i in range(17)}]))
    assert r.over == 1  # the 17th key
    r = Reader()
    r.read_boxes(wire([{b"k": b"v" * (config.MaxBoxBeforeAuth + 1)}]))
    assert r.over == 1


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=65535))
def test_a_batch_box_is_what_amp_writes(data):
    wire = batch_box(commands.Messages, data)
    assert wire == amp.AmpBox({b"_command": b"Messages", b"batch": data}).serialize()
    r = Reader()
    r.read_boxes(wire)
    assert r.boxes == [{b"_command": b"Messages", b"batch": data}]
