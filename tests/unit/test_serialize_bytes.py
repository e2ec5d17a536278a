"""
Large C{bytes} values out-of-band (L{dispycos.serialize}): sent from where
they are, received straight into the bytes object that becomes the value
(L{dispycos.blobs.BufferAssembler}, L{dispycos._cpython.new_bytes}),
whatever pieces the blob arrives in; garbled blobs still fail clearly.
"""

import struct

import pytest

from dispycos import _cpython, blobs, serialize
from dispycos.protocol.receiving import _IncomingBlob

BIG = serialize.BYTES_OOB


def _received(blob, piece):
    """C{blob} as a blob stream receives it, in pieces of C{piece} bytes."""
    f = _IncomingBlob(1, len(blob))
    f.write([blob[i : i + piece] for i in range(0, len(blob), piece)])
    return f


def test_new_bytes_is_written_through_its_view():
    value, view = _cpython.new_bytes(10)
    view[:] = b"0123456789"
    del view
    assert value == b"0123456789" and hash(value) == hash(b"0123456789")
    if _cpython._API is not None:
        assert type(value) is bytes
    assert _cpython.new_bytes(0)[0] == b""


def test_a_large_bytes_value_is_a_part_of_its_own_and_named_by_persistent_id():
    big = b"\x5a" * (2 * BIG)
    parts = serialize.dumps_parts((len, (big,), {}))
    assert parts[0].startswith(serialize.MAGIC)
    assert any(p is big for p in parts)  # not copied
    assert sum(map(len, parts)) < len(big) + 1024
    _, count, _ = struct.unpack_from("!4sIQ", parts[0])
    assert count == 1 and struct.unpack_from("!QB", parts[0], 16) == (len(big), blobs.BYTES)
    fn, (back,), _ = serialize.loads(b"".join(parts))
    assert fn is len and type(back) is bytes and back == big


def test_smaller_bytes_stay_in_the_pickle():
    parts = serialize.dumps_parts([b"s" * (BIG - 1)])
    assert not parts[0].startswith(serialize.MAGIC)
    assert serialize.loads(b"".join(parts)) == [b"s" * (BIG - 1)]


def test_a_value_met_twice_travels_once_and_comes_back_as_one_object():
    big = bytes(BIG)
    blob = serialize.dumps({"a": big, "b": [big, big]})
    assert len(blob) < BIG + 1024
    back = serialize.loads(blob)
    assert back["a"] == big and back["a"] is back["b"][0] is back["b"][1]


@pytest.mark.parametrize("piece", [1, 7, 16, 25, 4096, BIG - 3, 10 * BIG])
def test_whatever_the_pieces_the_value_is_the_bytes_received_into(piece):
    big1 = bytes(range(256)) * (BIG // 256 + 1)
    big2 = b"\x01" * (BIG + 5)
    blob = serialize.dumps((big1, "middle", big2, b"small"))
    f = _received(blob, piece) if piece > 1000 else _received(blob[: 4 * BIG], piece)
    if piece <= 1000:  # the header in tiny pieces, the rest in one
        f.write([blob[4 * BIG :]])
    assert f.assembled.complete and f.remaining < 1024  # only the pickle waits in pieces
    got = serialize.loads(f)
    assert got == (big1, "middle", big2, b"small")
    if _cpython._API is not None:
        assert got[0] is f.assembled.buffers[0] and got[2] is f.assembled.buffers[1]


def test_a_plain_blob_passes_through_the_assembler():
    blob = serialize.dumps({"x": list(range(1000))})
    f = _received(blob, 5)
    assert f.assembled.entries is None and f.remaining == len(blob)
    assert serialize.loads(f) == {"x": list(range(1000))}


def _header(count, pickled, entries):
    return (struct.pack("!4sIQ", serialize.MAGIC, count, pickled)
            + b"".join(struct.pack("!QB", n, kind) for n, kind in entries))


def test_a_persistent_id_without_its_value_is_refused():
    # a pickle asking for value 3 of a blob that has one
    bad = b"\x80\x05K\x03Q."
    blob = _header(1, len(bad), [(2, blobs.BYTES)]) + b"ab" + bad
    for data in (blob, _received(blob, 3)):
        with pytest.raises(serialize.BlobError, match="no bytes value 3"):
            serialize.loads(data)


@pytest.mark.parametrize("garbled", [
    _header(1, 10, [(10, blobs.BYTES)]) + b"x" * 5,  # lengths past the data
    _header(2, 0, [(1, blobs.BYTES), (1, 9)]) + b"ab",  # a kind that means nothing
    serialize.MAGIC + b"\0\0",  # shorter than a header
])
def test_a_garbled_header_passes_through_and_fails_clearly(garbled):
    f = _received(garbled, 2)
    assert f.assembled.entries is None and f.remaining == len(garbled)
    with pytest.raises(serialize.BlobError, match="malformed out-of-band blob"):
        serialize.loads(f)


@pytest.mark.parametrize("obj", [
    ("noop", (), {}), (0, 5), ("f", (1, 2.5, "s", None, True, b"b"), {"k": 3}), 7, "x", None,
    ("f", ([1, 2], (3,)), {"a": (1, 2)}),
])
def test_plain_data_is_pickled_by_the_standard_pickler(obj):
    import pickle

    assert serialize._plain(obj)
    assert serialize.dumps(obj) == pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    assert serialize.loads(serialize.dumps(obj)) == obj


class _Int(int):
    pass


@pytest.mark.parametrize("obj", [
    (lambda: 1,), (_Int(3),), [b"x" * serialize.OOB_THRESHOLD], tuple(range(17)), ((((1,),),),),
    {1: "non-str key"}, {"f": print},
])
def test_anything_else_goes_through_cloudpickle(obj):
    assert not serialize._plain(obj)
    back = serialize.loads(serialize.dumps(obj))
    assert type(back) is type(obj)


def test_register_types_of_looks_at_each_distinct_non_scalar_type_once(monkeypatch):
    seen = []
    monkeypatch.setattr(serialize, "register_by_value", seen.append)

    class A:
        pass

    serialize.register_types_of([1, 2.5, "s", None, A(), A(), _Int(1), (1,), A()])
    assert seen == [A, _Int, tuple]
