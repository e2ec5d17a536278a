# -*- test-case-name: tests.unit.test_tasks -*-
"""
Defaults and limits shared by every dispycos process.
"""

import os
import tempfile

#: Default scheduler port (TCP and UDP).
SchedulerPort = 9705
#: Default node port (TCP and UDP); the node's servers follow it.
NodePort = 9706

#: Lowest and highest pulse interval a computation may ask for (seconds).
MinPulseInterval = 1
MaxPulseInterval = 100
#: A peer that misses this many pulses is declared lost.
MissedPulses = 5

#: Protocol version; peers with another version refuse each other.
ProtocolVersion = 3

#: Largest payload (pickled function, argument, result or message) sent inline.
MaxInlineBytes = 16 * 1024 * 1024

#: Seconds an unauthenticated connection may take to finish the handshake.
HandshakeTimeout = 10

#: Seconds a server gets to end its tasks before it is killed.
ServerKillGrace = 5

#: Seconds a new connection may stay silent before its Hello.
HelloTimeout = 3
#: Unauthenticated connections one address may hold open at once (the oldest is dropped for more).
MaxPendingPerAddress = 16
#: Unauthenticated connections a listener holds at once from all addresses (likewise).
MaxPending = 64
#: Largest AMP box before authentication (the handshake is tiny).
MaxBoxBeforeAuth = 4096
#: Largest AMP box after authentication (inline payloads plus framing).
MaxBox = MaxInlineBytes + 1024 * 1024
#: Most keys in one AMP box (a 16 MiB inline value needs 257). MaxBox and
#: MaxBoxKeys are never below the limits before authentication (4096 bytes,
#: 16 keys): DispycosAMP looks the limits up only past those.
MaxBoxKeys = 4096
#: Streams one connection may have open at once.
MaxOpenStreams = 64
#: Longest file or directory name a transfer may use (bytes of UTF-8, as file systems allow).
MaxNameBytes = 255
#: Most directory levels a transfer may reach below its destination.
MaxPathDepth = 32
#: Bytes queued for a peer that does not read before its connection is dropped.
MaxOutgoingBuffer = 256 * 1024 * 1024
#: Messages a task's mailbox holds; more are refused with an error to the sender
#: ($DISPYCOS_MAX_MAILBOX overrides it, for a node and its servers).
MaxMailbox = int(os.environ.get("DISPYCOS_MAX_MAILBOX", "1000000"))
#: Bytes of unread messages (as they arrived) a task's mailbox holds ($DISPYCOS_MAX_MAILBOX_BYTES).
MaxMailboxBytes = int(os.environ.get("DISPYCOS_MAX_MAILBOX_BYTES", str(1 << 30)))
#: Large payloads (blobs) one connection may have received and not yet used; past
#: either cap the oldest is let go.
MaxUnclaimedBlobs = 64
MaxUnclaimedBlobBytes = 2 << 30


def default_dest_path():
    """
    The default prefix under which nodes and schedulers keep computation
    files: C{<tempdir>/dispycos-<uid>}, this user's own (L{paths.private_dir}
    makes it 0700 and refuses one another user made first).

    Not C{$XDG_RUNTIME_DIR}: that is a small memory file system, removed
    when the user's last login session ends and unset for services, while
    computation files can be large and a node outlives a login.
    """
    return os.path.join(tempfile.gettempdir(), "dispycos-%d" % os.geteuid())


def parse_size(text):
    """
    Parse a size such as C{"10m"} (suffixes k, m, g, t; powers of 1024).

    @raise ValueError: for anything else.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError("size must not be negative")
        return text
    text = str(text).strip().lower()
    if not text:
        return 0
    factor = 1
    for i, suffix in enumerate("kmgt", 1):
        if text.endswith(suffix):
            factor = 1024**i
            text = text[:-1]
            break
    value = int(text)
    if value < 0:
        raise ValueError("size must not be negative")
    return value * factor
