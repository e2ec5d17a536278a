# -*- test-case-name: tests.unit.test_protocol -*-
"""
Reading AMP boxes off the wire: L{BoxReader}.

AMP's framing is public and small: a box is key/value pairs, each a 16-bit
big-endian length and that many bytes (keys at most 255 bytes), ended by an
empty key. Twisted reads it with a length-prefixed string receiver and a
state method per string; reading it here in one loop saves a few
microseconds on every box, that is on the path of every task, outcome and
message. It also lets a box's responder stop the reading where that box
ends and take the bytes after it (the raw frame that follows a C{StreamData}
box), without reaching into Twisted's parser. AMP's protocol switching
(C{ProtocolSwitchCommand}, AMP's own C{StartTLS}) is not used by dispycos and
does not go through here.
"""

from twisted.protocols import amp

from dispycos import config

#: The longest key AMP allows.
MAX_KEY = 255


class BoxReader:
    """
    Mixed in before C{amp.AMP}: L{read_boxes} hands every complete box in
    the data to C{ampBoxReceived}, keeping what is incomplete for the next
    read. The class using it has C{_over()}, called when a box grows past
    16 keys or L{config.MaxBoxBeforeAuth} bytes (the smallest limits: it
    looks up the ones that apply), and C{_drop(why, **kw)}.
    """

    #: What came after the last whole key and value (reading goes on from there).
    _unparsed = b""
    #: The box read so far (None between boxes).
    _box = None
    #: Set by L{stop_reading}: no box is read after the current one until L{take_unread}.
    _stopped = False
    #: Keys and bytes of the box read so far (what its limits are checked against).
    _box_keys = 0
    _box_bytes = 0

    def read_boxes(self, data):
        """Read the boxes in C{data} (bytes), after what an earlier call left unread."""
        if self._unparsed:
            data = self._unparsed + data
        end = len(data)
        pos = 0
        box = self._box
        while not self._stopped and pos + 2 <= end:
            klen = data[pos] << 8 | data[pos + 1]
            if not klen:  # the end of a box
                pos += 2
                self._box, self._box_keys, self._box_bytes = None, 0, 0
                self.ampBoxReceived(box if box is not None else amp.AmpBox())
                box = None
                continue
            if klen > MAX_KEY:
                self._unparsed, self._box = b"", None
                self._drop("a key of {n} bytes (AMP allows {most})", n=klen, most=MAX_KEY)
                return
            vstart = pos + 2 + klen
            if vstart + 2 > end:
                break
            vend = vstart + 2 + (data[vstart] << 8 | data[vstart + 1])
            if vend > end:
                break  # (so what waits is at most one key and one value: 64 KiB)
            if box is None:
                box = amp.AmpBox()
            box[data[pos + 2:vstart]] = data[vstart + 2:vend]
            pos = vend
            self._box_keys += 1
            self._box_bytes += vend - vstart + klen + 2
            if self._box_keys > 16 or self._box_bytes > config.MaxBoxBeforeAuth:
                self._over()  # may drop the connection (which stops the reading)
        self._box = box
        self._unparsed = data[pos:] if pos < end else b""

    def stop_reading(self):
        """Read no box after the one being handled; its bytes wait for L{take_unread}."""
        self._stopped = True

    def take_unread(self):
        """The bytes received and not read since L{stop_reading}; reading resumes with the next data."""
        rest, self._unparsed = self._unparsed, b""
        self._stopped = False
        return rest
