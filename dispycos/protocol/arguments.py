# -*- test-case-name: tests.unit.test_protocol -*-
"""
AMP argument types for values larger than AMP's 64 KiB limit, and for JSON
metadata.

None of these unpickle: they carry bytes, and the responders decide, after
the peer authenticated, what to decode.
"""

import json
import struct

from twisted.protocols import amp

from dispycos.config import MaxInlineBytes
from dispycos.errors import PayloadTooLarge
from dispycos._twisted import wire_name_to_identifier

_PIECE = 0xFFFF


class BigBytes(amp.Argument):
    """
    Bytes of any length up to C{cap}, split over the keys C{name}, C{name.2},
    C{name.3}, ... of one box.

    @param pieces: decode to the list of pieces as received rather than to
        their join (for stream chunks, which are gathered or written anyway).
    """

    def __init__(self, optional=False, cap=MaxInlineBytes, pieces=False):
        super().__init__(optional)
        self.cap = cap
        self.pieces = pieces

    def toBox(self, name, strings, objects, proto):
        value = self.retrieve(objects, wire_name_to_identifier(name), proto)
        if value is None and self.optional:
            return
        view = memoryview(value)
        if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
            view = memoryview(bytes(value))
        if view.nbytes > self.cap:
            raise PayloadTooLarge(
                "payload of %d bytes exceeds the inline cap of %d bytes" % (view.nbytes, self.cap)
            )
        if view.nbytes <= _PIECE and isinstance(value, bytes):
            strings[name] = value
            return
        # The pieces are views, not copies: the box is serialized (joined)
        # before this call returns, so the value cannot change under them.
        strings[name] = view[:_PIECE]
        for i, start in enumerate(range(_PIECE, view.nbytes, _PIECE), 2):
            strings[b"%s.%d" % (name, i)] = view[start : start + _PIECE]

    def fromBox(self, name, strings, objects, proto):
        key = wire_name_to_identifier(name)
        first = strings.get(name)
        if first is None:
            if self.optional:
                objects[key] = None
                return
            raise KeyError(name)
        pieces = [first]
        size = len(first)
        i = 2
        while True:
            piece = strings.get(b"%s.%d" % (name, i))
            if piece is None:
                break
            pieces.append(piece)
            size += len(piece)
            i += 1
            if size > self.cap:
                raise PayloadTooLarge("incoming payload exceeds the inline cap of %d bytes" % self.cap)
        if self.pieces:
            objects[key] = pieces
        else:
            objects[key] = b"".join(pieces) if len(pieces) > 1 else first


_ITEM = struct.Struct("!QI")


def pack_items(items):
    """
    Pack C{(int, bytes)} pairs into one byte string (for batches of small
    messages: many per AMP box).
    """
    out = []
    for number, blob in items:
        out.append(_ITEM.pack(number, len(blob)))
        out.append(blob)
    return b"".join(out)


def unpack_items(data):
    """
    Inverse of L{pack_items}.

    @raise ValueError: for a malformed batch.
    """
    items = []
    view = memoryview(data)
    offset = 0
    end = len(data)
    while offset < end:
        if offset + _ITEM.size > end:
            raise ValueError("truncated batch header")
        number, size = _ITEM.unpack_from(view, offset)
        offset += _ITEM.size
        if offset + size > end:
            raise ValueError("truncated batch item")
        items.append((number, bytes(view[offset : offset + size])))
        offset += size
    return items


class JSON(BigBytes):
    """A JSON document (UTF-8), for metadata; never pickle."""

    def toBox(self, name, strings, objects, proto):
        key = wire_name_to_identifier(name)
        if key in objects:
            objects[key] = json.dumps(objects[key]).encode("utf-8")
        super().toBox(name, strings, objects, proto)

    def fromBox(self, name, strings, objects, proto):
        super().fromBox(name, strings, objects, proto)
        key = wire_name_to_identifier(name)
        if objects.get(key) is not None:
            objects[key] = json.loads(objects[key].decode("utf-8"))
