"""
Out-of-band buffers (pickle protocol 5, PEP 574) in L{dispycos.serialize}:
large buffers travel beside the pickle and are rebuilt on the bytes they were
read into.
"""

import io
import pickle
import struct

import pytest

from dispycos import serialize
from dispycos.protocol.receiving import _IncomingBlob

np = pytest.importorskip("numpy")


class _Buffered:
    """Pickles its buffer as a PickleBuffer, as numpy arrays do."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return (_Buffered, (pickle.PickleBuffer(self.data),))


class _Recording(_IncomingBlob):
    """A gathered blob that notes the buffers it reads into."""

    def __init__(self, data, piece=100_000):
        super().__init__(1, len(data))
        self.write([data[i : i + piece] for i in range(0, len(data), piece)])
        self.filled = []
        self.sizes = []

    def readinto(self, buffer):
        self.filled.append(buffer.obj if isinstance(buffer, memoryview) else buffer)
        self.sizes.append(memoryview(buffer).nbytes)
        return super().readinto(buffer)


def _blob(obj):
    return b"".join(serialize.dumps_parts(obj))


def _pickle_without_buffers(obj):
    """The bytes dumps gave before out-of-band buffers (none travel out-of-band)."""
    import cloudpickle

    out = serialize._Parts()
    cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return b"".join(out.parts)


def test_a_large_array_travels_out_of_band():
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    parts = serialize.dumps_parts({"a": a, "tag": "x"})
    assert parts[0].startswith(serialize.MAGIC)
    assert sum(map(len, parts)) < a.nbytes + 4096  # the data once, not twice
    assert any(len(p) == a.nbytes for p in parts)  # a part of its own
    back = serialize.loads(b"".join(parts))
    assert back["tag"] == "x"
    np.testing.assert_array_equal(back["a"], a)
    assert back["a"].flags.writeable  # it was writable: so it is again


def test_bytes_input_gives_views_of_a_read_only_buffer():
    a = np.arange(100_000, dtype=np.int64)
    a.flags.writeable = False
    blob = _blob(a)
    back = serialize.loads(blob)
    np.testing.assert_array_equal(back, a)
    assert not back.flags.writeable
    assert np.shares_memory(back, np.frombuffer(blob, dtype=np.uint8))  # no copy


def test_a_writable_blob_gives_views_without_a_copy():
    blob = bytearray(_blob(np.arange(100_000, dtype=np.int64)))
    back = serialize.loads(blob)
    assert back.flags.writeable
    assert np.shares_memory(back, np.frombuffer(blob, dtype=np.uint8))


def test_a_gathered_blob_is_read_into_preallocated_buffers():
    a = np.random.default_rng(1).random((1024, 512))  # 4 MiB
    big = bytes(range(256)) * (3 * serialize.BYTES_OOB // 256)  # 3 MiB
    blob = _blob((a, b"p" * 300_000, "text", big))
    f = _Recording(blob)
    # Filled as the pieces arrived: only the pickle waits in pieces.
    assert f.assembled.complete and f.remaining < 300_000 + 4096
    back, plain, text, big_back = serialize.loads(f)
    np.testing.assert_array_equal(back, a)
    assert plain == b"p" * 300_000 and text == "text"
    assert not back.flags.owndata and back.flags.writeable
    # The array sits on the very bytearray the blob was received into, and
    # the bytes value is the very bytes object: no copy after.
    ours = [b for b in f.assembled.buffers if type(b) is bytearray and len(b) == a.nbytes]
    assert len(ours) == 1
    assert np.shares_memory(back, np.frombuffer(ours[0], dtype=np.uint8))
    assert type(big_back) is bytes and big_back == big
    assert any(b is big_back for b in f.assembled.buffers)
    assert max(f.sizes) < serialize.BYTES_OOB  # nothing that large read into place
    assert f.remaining == 0


def test_a_seekable_file_is_read_into_buffers_too():
    a = np.arange(200_000, dtype=np.float32)
    back = serialize.loads(io.BytesIO(_blob([a, a[::-1].copy()])))
    np.testing.assert_array_equal(back[0], a)
    np.testing.assert_array_equal(back[1], a[::-1])
    assert not back[0].flags.owndata


def test_a_file_without_a_known_size_still_loads():
    class Stream:
        def __init__(self, data):
            self._f = io.BytesIO(data)
            self.read, self.readinto, self.readline = self._f.read, self._f.readinto, self._f.readline

    a = np.arange(100_000)
    np.testing.assert_array_equal(serialize.loads(Stream(_blob(a))), a)
    assert serialize.loads(Stream(_blob({"small": 1}))) == {"small": 1}


def test_small_arrays_stay_in_band():
    a = np.arange(100, dtype=np.int64)
    blob = serialize.dumps(a)
    assert blob.startswith(b"\x80\x05")
    np.testing.assert_array_equal(serialize.loads(blob), a)
    np.testing.assert_array_equal(serialize.loads(io.BytesIO(blob)), a)


def test_a_non_contiguous_array_stays_in_band():
    a = np.arange(200_000, dtype=np.int64)[::2]
    blob = serialize.dumps(a)
    assert blob.startswith(b"\x80\x05")
    np.testing.assert_array_equal(serialize.loads(blob), a)


@pytest.mark.parametrize("obj", [
    {"a": 1, "b": [1.5, "text", None]},
    (b"x" * 300_000, "y" * 200_000, bytearray(b"z" * 100_000)),
    list(range(10_000)),
])
def test_objects_without_buffers_pickle_as_before(obj):
    assert serialize.dumps(obj) == _pickle_without_buffers(obj)
    assert serialize.dumps(obj).startswith(b"\x80\x05")
    assert serialize.loads(serialize.dumps(obj)) == obj


def test_a_whole_bytes_buffer_is_sent_without_a_copy():
    data = b"b" * 200_000
    parts = serialize.dumps_parts(_Buffered(data))
    assert any(p is data for p in parts)
    assert bytes(serialize.loads(b"".join(parts)).data) == data


def test_a_mutable_buffer_is_copied_at_pickling_time():
    data = bytearray(b"q" * 200_000)
    parts = serialize.dumps_parts(_Buffered(data))
    data[:1] = b"X"
    back = serialize.loads(b"".join(parts))
    assert bytes(back.data) == b"q" * 200_000
    assert isinstance(back.data, (bytearray, memoryview)) and not memoryview(back.data).readonly


def _header(count, pickled, entries):
    return (struct.pack("!4sIQ", serialize.MAGIC, count, pickled)
            + b"".join(struct.pack("!QB", n, flag) for n, flag in entries))


@pytest.mark.parametrize("garbled", [
    serialize.MAGIC,  # nothing after the magic
    serialize.MAGIC + b"\0\0\0\1",  # a truncated header
    _header(1, 10, []),  # its entry missing
    _header(1, 10, [(10, 0)]) + b"x" * 5,  # lengths past the data
    _header(1, 2, [(3, 0)]) + b"abc" + b"xy" + b"extra",  # lengths short of the data
    _header(2, 0, [(1, 0), (1, 7)]) + b"ab",  # a flag that means nothing
    _header(0xFFFFFFFF, 0, []) + b"x" * 100,  # an absurd count
    _header(1, 1 << 62, [(1 << 62, 0)]) + b"x",  # absurd lengths
])
@pytest.mark.parametrize("as_file", [False, True])
def test_a_garbled_blob_raises_a_clear_error(garbled, as_file):
    data = _Recording(garbled) if as_file else garbled
    with pytest.raises(serialize.BlobError, match="malformed out-of-band blob"):
        serialize.loads(data)


def test_the_blob_error_is_an_unpickling_error():
    assert issubclass(serialize.BlobError, pickle.UnpicklingError)


def test_a_good_header_with_a_bad_pickle_fails_like_pickle():
    blob = bytearray(_blob(np.arange(100_000)))
    blob[-1:] = b"?"  # the STOP opcode gone
    with pytest.raises(pickle.UnpicklingError):
        serialize.loads(bytes(blob))


def test_dumps_is_the_join_of_dumps_parts():
    a = np.arange(300_000, dtype=np.int16)
    ro = np.arange(50_000, dtype=np.float64)
    ro.flags.writeable = False
    obj = {"a": a, "ro": ro, "bytes": _Buffered(b"c" * 100_000), "small": np.arange(3)}
    blob = serialize.dumps(obj)
    assert blob == b"".join(serialize.dumps_parts(obj))
    a[:] = 7  # the blob is a copy: what happens to the array after does not show
    back = serialize.loads(blob)
    np.testing.assert_array_equal(back["a"], np.arange(300_000, dtype=np.int16))
    assert back["a"].flags.writeable and not back["ro"].flags.writeable
    np.testing.assert_array_equal(back["ro"], ro)
    assert bytes(back["bytes"].data) == b"c" * 100_000
